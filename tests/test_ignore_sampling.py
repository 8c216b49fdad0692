"""Ignore-aware sampling: negatives on unlabelled land are not sampled, positives untouched."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldseg.band_statistics import BandStatistics
from fieldseg.models.ignore_sampling import IgnoreAwareRoIHeads, IgnoreAwareRPN, ignore_share
from fieldseg.models.maskrcnn import MaskRCNNConfig, MaskRCNNFieldModel


def _model() -> MaskRCNNFieldModel:
    stats = [BandStatistics(name=f"b{i}", p2=0, p98=1, mean=0.5, std=0.2, n_pixels=1)
             for i in range(4)]  # fmt: skip
    torch.manual_seed(0)
    config = MaskRCNNConfig(backbone="resnet18")
    return MaskRCNNFieldModel(config, ["blue", "green", "red", "nir"], stats, None,
                              chip_size=64, num_classes=1)  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 30),
                          st.integers(1, 30)), min_size=1, max_size=8),
       st.integers(0, 2**32 - 1))  # fmt: skip
def test_ignore_share_matches_counting(boxes: list[tuple[int, int, int, int]], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    ignore = torch.rand((32, 32), generator=generator) > 0.6
    tensor = torch.tensor([(x, y, min(x + w, 32), min(y + h, 32)) for x, y, w, h in boxes],
                          dtype=torch.float32)  # fmt: skip
    shares = ignore_share(tensor, ignore, (1.0, 1.0))
    for (x0, y0, x1, y1), share in zip(tensor.long().tolist(), shares.tolist(), strict=True):
        area = (x1 - x0) * (y1 - y0)
        expected = ignore[y0:y1, x0:x1].sum().item() / area if area else 0.0
        assert abs(share - expected) < 1e-6


def test_ignore_share_scales_to_upsampled_inputs() -> None:
    ignore = torch.zeros((32, 32), dtype=torch.bool)
    ignore[:, :16] = True
    boxes = torch.tensor([[0.0, 0.0, 32.0, 64.0], [32.0, 0.0, 64.0, 64.0]])  # input is 2x
    assert ignore_share(boxes, ignore, (0.5, 0.5)).tolist() == [1.0, 0.0]


def _ignore_left_half() -> torch.Tensor:
    ignore = torch.zeros((64, 64), dtype=torch.bool)
    ignore[:, :32] = True
    return ignore


def test_rpn_ignores_negative_anchors_on_unlabelled_land() -> None:
    rpn = _model().detector.rpn
    assert isinstance(rpn, IgnoreAwareRPN)
    rpn._image_sizes = [(64, 64)]
    anchors = torch.tensor([
        [2.0, 2.0, 20.0, 20.0],  # background, all in the ignore mask -> ignored
        [40.0, 40.0, 60.0, 60.0],  # background on labelled land -> negative
        [36.0, 4.0, 52.0, 20.0],  # the field -> positive
        [20.0, 40.0, 36.0, 56.0],  # 75 % in ignore -> ignored
    ])  # fmt: skip
    target = {"boxes": torch.tensor([[36.0, 4.0, 52.0, 20.0]]), "ignore": _ignore_left_half()}
    (labels,), _ = rpn.assign_targets_to_anchors([anchors], [target])
    assert labels.tolist() == [-1.0, 0.0, 1.0, -1.0]
    # without an ignore mask torchvision's labels are kept
    (plain,), _ = rpn.assign_targets_to_anchors([anchors], [{"boxes": target["boxes"]}])
    assert plain.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_roi_heads_ignore_negative_proposals_on_unlabelled_land() -> None:
    heads = _model().detector.roi_heads
    assert isinstance(heads, IgnoreAwareRoIHeads)
    heads._image_shapes = [(64, 64)]
    heads._ignore = [_ignore_left_half()]
    proposals = torch.tensor([[2.0, 2.0, 20.0, 20.0], [40.0, 40.0, 60.0, 60.0],
                              [36.0, 4.0, 52.0, 20.0]])  # fmt: skip
    gt_boxes = torch.tensor([[36.0, 4.0, 52.0, 20.0]])
    _, (labels,) = heads.assign_targets_to_proposals([proposals], [gt_boxes],
                                                     [torch.tensor([1])])  # fmt: skip
    assert labels.tolist() == [-1, 0, 1]


def test_an_image_that_is_all_ignore_keeps_its_negatives() -> None:
    rpn = _model().detector.rpn
    rpn._image_sizes = [(64, 64)]
    anchors = torch.tensor([[2.0, 2.0, 20.0, 20.0], [40.0, 40.0, 60.0, 60.0]])
    target = {"boxes": torch.zeros((0, 4)), "ignore": torch.ones((64, 64), dtype=torch.bool)}
    (labels,), _ = rpn.assign_targets_to_anchors([anchors], [target])
    assert labels.tolist() == [0.0, 0.0]  # never a loss averaged over nothing


def test_training_on_a_sparse_chip_gives_finite_losses() -> None:
    model = _model()
    image = torch.rand((4, 64, 64))
    masks = torch.zeros((1, 64, 64), dtype=torch.uint8)
    masks[0, 4:20, 36:52] = 1
    target = {"boxes": torch.tensor([[36.0, 4.0, 52.0, 20.0]]), "labels": torch.tensor([1]),
              "masks": masks, "ignore": _ignore_left_half()}  # fmt: skip
    losses = model.training_step([image], [target])
    assert all(torch.isfinite(v) for v in losses.values())
