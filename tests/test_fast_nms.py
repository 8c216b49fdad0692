"""Fast NMS: torchvision's NMS unless a suppressed box is the only cover of another."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms, box_iou

from fieldseg.models.fast_nms import _batched_box_iou, _fast_nms, fast_nms


def _tensors(
    boxes: list[tuple[float, float, float, float]], scores: list[float], labels: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.int64),
    )


def _reference(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float
) -> set[int]:
    """Fast NMS by its definition: kept iff no higher-scoring box of its class overlaps > t."""
    iou = box_iou(boxes, boxes).double()
    n = len(scores)
    return {
        j
        for j in range(n)
        if not any(
            labels[i] == labels[j] and scores[i] > scores[j] and iou[i, j] > threshold
            for i in range(n)
        )
    }


def _random_scene(seed: int, n: int, classes: int) -> tuple[torch.Tensor, ...]:
    """Integer boxes (exact in float32 even after batched_nms's offsets), distinct scores."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.randint(0, 40, (n, 2), generator=generator)
    size = torch.randint(1, 16, (n, 2), generator=generator)
    boxes = torch.cat([corner, corner + size], dim=1).float()
    scores = (torch.randperm(n, generator=generator).float() + 1) / n
    labels = torch.randint(0, classes, (n,), generator=generator)
    return boxes, scores, labels


CHAIN = _tensors([(0, 0, 10, 10), (4, 0, 14, 10), (8, 0, 18, 10)], [0.9, 0.8, 0.7], [0, 0, 0])


def test_chain_is_where_fast_nms_differs() -> None:
    boxes, scores, labels = CHAIN
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] == pytest.approx(60 / 140) and iou[1, 2] == pytest.approx(60 / 140)
    assert iou[0, 2] == pytest.approx(20 / 180)
    assert batched_nms(boxes, scores, labels, 0.3).tolist() == [0, 2]
    # B is suppressed by A, yet still suppresses C
    assert fast_nms(boxes, scores, labels, 0.3).tolist() == [0]
    # above both IoUs nothing is suppressed; between them only B's overlaps count
    assert fast_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 2]
    assert fast_nms(boxes, scores, labels, 0.1).tolist() == [0]


def test_identical_boxes_of_different_labels_are_both_kept() -> None:
    boxes, scores, labels = _tensors([(0, 0, 10, 10)] * 3, [0.5, 0.9, 0.7], [1, 0, 1])
    assert fast_nms(boxes, scores, labels, 0.5).tolist() == [1, 2]


def test_iou_equal_to_threshold_is_kept_as_in_torchvision() -> None:
    # IoU of exactly 1/2 and of float32(0.3) (a hair above 0.3, which torchvision suppresses)
    boxes, scores, labels = _tensors(
        [(0, 0, 10, 10), (0, 0, 10, 5), (0, 0, 10, 3)], [0.9, 0.8, 0.7], [0, 1, 2]
    )
    boxes = torch.cat([boxes, boxes[1:]])
    scores = torch.cat([scores, torch.tensor([0.6, 0.5])])
    labels = torch.tensor([0, 1, 2, 0, 0])  # box 3 vs 0: IoU 1/2; box 4 vs 0: IoU 3/10
    assert box_iou(boxes[:1], boxes[4:])[0, 0].item() > 0.3
    for threshold in (0.5, 0.3, 0.29):
        expected = batched_nms(boxes, scores, labels, threshold).tolist()
        assert fast_nms(boxes, scores, labels, threshold).tolist() == expected
    assert fast_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 2, 3]
    assert fast_nms(boxes, scores, labels, 0.3).tolist() == [0, 1, 2]


def test_max_candidates_keeps_only_the_top_of_each_class() -> None:
    # four disjoint boxes per class: nothing overlaps, so only the top-k cut removes boxes
    boxes = torch.tensor([(20.0 * i, 0.0, 20.0 * i + 10, 10.0) for i in range(8)])
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.8, 0.2, 0.6, 0.3])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert fast_nms(boxes, scores, labels, 0.5).tolist() == [1, 4, 3, 6, 2, 7, 5, 0]
    assert fast_nms(boxes, scores, labels, 0.5, max_candidates=2).tolist() == [1, 4, 3, 6]
    assert fast_nms(boxes, scores, labels, 0.5, max_candidates=1).tolist() == [1, 4]


def test_candidates_dropped_by_top_k_do_not_suppress() -> None:
    boxes, scores, labels = CHAIN
    # only A and B are candidates: C is dropped though B, the box that suppressed it, is too
    assert fast_nms(boxes, scores, labels, 0.5, max_candidates=2).tolist() == [0, 1]
    boxes, scores, labels = _tensors([(0, 0, 10, 10), (1, 0, 11, 10)], [0.9, 0.8], [0, 0])
    assert fast_nms(boxes, scores, labels, 0.5, max_candidates=1).tolist() == [0]


def test_empty_input() -> None:
    keep = fast_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert keep.dtype == torch.int64 and keep.shape == (0,)


def test_ties_are_broken_by_index() -> None:
    boxes, scores, labels = _tensors(
        [(0, 0, 10, 10), (0, 0, 10, 10), (50, 0, 60, 10), (1, 0, 11, 10)],
        [0.5, 0.5, 0.5, 0.5],
        [0, 0, 0, 0],
    )
    assert fast_nms(boxes, scores, labels, 0.5).tolist() == [0, 2]
    assert fast_nms(boxes[[1, 0, 2, 3]], scores, labels, 0.5).tolist() == [0, 2]


def test_zero_area_boxes_neither_suppress_nor_are_suppressed() -> None:
    boxes, scores, labels = _tensors(
        [(5, 5, 5, 5), (5, 5, 5, 5), (0, 0, 10, 10)], [0.9, 0.8, 0.7], [0, 0, 0]
    )
    assert fast_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 2]


def test_bad_shapes_and_max_candidates_raise() -> None:
    boxes, scores, labels = CHAIN
    with pytest.raises(ValueError, match=r"boxes \(N, 4\)"):
        fast_nms(boxes[:, :3], scores, labels, 0.5)
    with pytest.raises(ValueError, match="3 boxes but 2 scores"):
        fast_nms(boxes, scores[:2], labels[:2], 0.5)
    with pytest.raises(ValueError, match="max_candidates"):
        fast_nms(boxes, scores, labels, 0.5, max_candidates=0)


def test_clusters_without_chains_match_torchvision() -> None:
    """Far-apart clusters: a leader, then followers moved by at most 2 px (IoU >= 0.68 with it)."""
    generator = torch.Generator().manual_seed(3)
    boxes, scores, labels, leaders = [], [], [], []
    for cluster in range(12):
        corner = torch.tensor([100.0 * (cluster % 4), 100.0 * (cluster // 4)])
        leader = torch.cat([corner, corner + 20])
        followers = int(torch.randint(0, 4, (1,), generator=generator))
        shifts = torch.randint(-2, 3, (followers, 2), generator=generator).float()
        cluster_scores = torch.rand(followers + 1, generator=generator).sort(descending=True)
        leaders.append(len(boxes))
        boxes += [leader, *(leader + torch.cat([shift, shift]) for shift in shifts)]
        scores += cluster_scores.values.tolist()
        labels += [cluster % 3] * (followers + 1)
    box_tensor, score_tensor = torch.stack(boxes), torch.tensor(scores)
    label_tensor = torch.tensor(labels)
    expected = batched_nms(box_tensor, score_tensor, label_tensor, 0.5)
    keep = fast_nms(box_tensor, score_tensor, label_tensor, 0.5)
    assert sorted(keep.tolist()) == leaders
    assert keep.tolist() == expected.tolist()


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 30),
    st.integers(1, 3),
    st.sampled_from([0.1, 0.3, 0.5, 0.7]),
)
def test_random_scenes_against_torchvision_and_definition(
    seed: int, n: int, classes: int, threshold: float
) -> None:
    boxes, scores, labels = _random_scene(seed, n, classes)
    keep = fast_nms(boxes, scores, labels, threshold)
    nms_keep = batched_nms(boxes, scores, labels, threshold)
    assert set(keep.tolist()) == _reference(boxes, scores, labels, threshold)
    assert set(keep.tolist()) <= set(nms_keep.tolist())
    assert torch.all(scores[keep][:-1] > scores[keep][1:])
    # without chains (every box torchvision keeps has no higher overlapping box) they agree
    iou = box_iou(boxes, boxes)
    chain_free = all(
        not (labels[i] == labels[j] and scores[i] > scores[j] and iou[i, j] > threshold)
        for j in nms_keep.tolist()
        for i in range(n)
    )
    if chain_free:
        assert keep.tolist() == nms_keep.tolist()


@pytest.mark.parametrize("max_candidates", [None, 1, 3])
def test_padded_and_masked_strategies_agree(max_candidates: int | None) -> None:
    for seed in range(10):
        boxes, scores, labels = _random_scene(seed, 25, 4)
        labels[:12] = 0  # one dominant class and small ones, so "auto" picks both ways
        padded = _fast_nms(boxes, scores, labels, 0.4, max_candidates, strategy="padded")
        masked = _fast_nms(boxes, scores, labels, 0.4, max_candidates, strategy="masked")
        assert torch.equal(padded, masked)
        assert torch.equal(
            fast_nms(boxes, scores, labels, 0.4, max_candidates=max_candidates), padded
        )


def test_batched_iou_matches_torchvision_per_set() -> None:
    boxes = _random_scene(0, 24, 1)[0].reshape(3, 8, 4)
    batched = _batched_box_iou(boxes)
    for c in range(3):
        assert torch.equal(batched[c], box_iou(boxes[c], boxes[c]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stays_on_the_input_device() -> None:
    boxes, scores, labels = _random_scene(5, 30, 2)
    keep = fast_nms(boxes.cuda(), scores.cuda(), labels.cuda(), 0.3)
    assert keep.device.type == "cuda"
    assert keep.cpu().tolist() == fast_nms(boxes, scores, labels, 0.3).tolist()
