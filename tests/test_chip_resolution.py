"""One chip's overlapping instances -> one label image, by the rule of fieldseg.chip_resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldseg import chip_resolution as cr
from fieldseg.chip_resolution import resolve_chip
from fieldseg.models.base import ChipPrediction, touches_edge
from fieldseg.models.boxed_masks import BoxedMasks
from fieldseg.oracle import OracleFieldModel

SIZE = 32


def _prediction(masks: list[np.ndarray], scores: list[float]) -> ChipPrediction:
    stack = torch.from_numpy(np.stack(masks).astype(np.float32))
    return ChipPrediction(
        masks=stack,
        scores=torch.tensor(scores),
        labels=torch.ones(len(scores), dtype=torch.int64),
        touches_edge=touches_edge(stack),
    )


def _box(r0: int, r1: int, c0: int, c1: int, value: float = 1.0) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[r0:r1, c0:c1] = value
    return mask


ALL_VALID = np.ones((SIZE, SIZE), bool)


def test_disjoint_masks_pass_through() -> None:
    a, b = _box(2, 10, 2, 12), _box(2, 10, 12, 20)
    chip = resolve_chip(_prediction([a, b], [0.9, 0.8]), ALL_VALID)
    assert len(chip) == 2
    assert np.array_equal(chip.labels == 1, a > 0) and np.array_equal(chip.labels == 2, b > 0)
    assert chip.probability[chip.labels > 0].min() == 1.0
    assert np.allclose(chip.scores, [0.9, 0.8])


def test_two_pixel_leak_between_touching_fields_is_undone() -> None:
    # fields a (columns 2-11) and b (12-19); each mask leaks 2 px into the other, equally sure
    a, b = _box(4, 14, 2, 14), _box(4, 14, 10, 20)
    chip = resolve_chip(_prediction([a, b], [0.6, 0.9]), ALL_VALID)
    truth_a, truth_b = _box(4, 14, 2, 12) > 0, _box(4, 14, 12, 20) > 0
    assert np.array_equal(chip.labels == 1, truth_a)
    assert np.array_equal(chip.labels == 2, truth_b)


def test_noisy_oracle_chip_is_resolved_back_to_its_fields() -> None:
    # a 5 x 5 field inside a large one, a 1 px strip and a 2 px strip between two fields;
    # every mask leaks 2 px into the fields it touches (the oracle's noisy mode, no drops)
    ids = np.zeros((SIZE, SIZE), np.int32)
    ids[0:16, 0:16] = 1
    ids[5:10, 5:10] = 2  # enclosed by field 1
    ids[18:30, 2:12] = 3
    ids[18:30, 12] = 4  # 1 px strip
    ids[18:30, 13:15] = 5  # 2 px strip
    ids[18:30, 15:28] = 6
    oracle = OracleFieldModel(noisy=True, seed=0, drop_share=0.0)
    (prediction,) = oracle.predict([torch.from_numpy(ids[None].astype(np.float32))])
    assert (
        prediction.dense_masks().sum(dim=(1, 2)) > torch.bincount(torch.from_numpy(ids.ravel()))[1:]
    ).all()
    chip = resolve_chip(prediction, ALL_VALID, min_pixels=1)
    assert len(chip) == 6
    for field in range(1, 7):
        assert len(np.unique(chip.labels[ids == field])) == 1  # each field one label ...
    assert len(np.unique(chip.labels[ids > 0])) == 6  # ... and no two fields share one
    assert np.array_equal(chip.labels > 0, ids > 0)


def test_a_clearly_more_probable_mask_wins_over_depth() -> None:
    sure = _box(4, 14, 2, 14, 0.95)
    unsure = _box(4, 14, 10, 20, 0.6)
    chip = resolve_chip(_prediction([sure, unsure], [0.8, 0.8]), ALL_VALID)
    assert np.array_equal(chip.labels == 1, sure > 0)
    assert np.allclose(chip.probability[chip.labels == 1], 0.95)


def test_a_weak_detection_nested_in_a_sure_one_is_not_a_field() -> None:
    sure, weak = _box(2, 30, 2, 30, 0.99), _box(8, 24, 8, 24, 0.6)  # IoU 0.33: no duplicate
    chip = resolve_chip(_prediction([sure, weak], [0.9, 0.8]), ALL_VALID)
    assert len(chip) == 1 and np.array_equal(chip.labels == 1, sure > 0)


def test_duplicates_are_dropped_and_thresholds_apply() -> None:
    field = _box(4, 14, 4, 14)
    shifted = _box(4, 14, 5, 14)  # IoU 0.9 with field: the same field detected twice
    faint = _box(20, 28, 20, 28)
    tiny = _box(0, 1, 30, 32)  # two pixels
    prediction = _prediction([field, shifted, faint, tiny], [0.7, 0.9, 0.3, 0.9])
    chip = resolve_chip(prediction, ALL_VALID, score_threshold=0.5, min_pixels=4)
    assert len(chip) == 1 and np.allclose(chip.scores, [0.9])
    assert np.array_equal(chip.labels == 1, shifted > 0)


def test_nothing_on_nodata_and_background_evidence() -> None:
    soft = _box(0, 16, 0, 16, 0.8) + _box(20, 30, 20, 30, 0.3)
    valid = ALL_VALID.copy()
    valid[:, :8] = False
    chip = resolve_chip(_prediction([soft], [0.9]), valid)
    assert not chip.labels[:, :8].any() and (chip.labels[:16, 8:16] == 1).all()
    assert np.allclose(chip.probability[20:30, 20:30], 0.7)  # 1 - the strongest mask there
    assert np.allclose(chip.probability[0, 20], 1.0)
    empty = resolve_chip(_prediction([soft], [0.1]), valid)
    assert len(empty) == 0 and not empty.labels.any()


def _reference_depths(masks: np.ndarray, cap: int) -> np.ndarray:
    """(N, H, W) depths by the rule, one mask at a time on the dense grid (slow, plain)."""
    claimed = masks.any(axis=0)
    out = np.full(masks.shape, cap, np.int64)
    for i, own in enumerate(masks):
        other = np.pad(claimed & ~own, 1)
        mine = np.pad(own, 1)
        depth = np.full(own.shape, cap, np.int64)
        for _ in range(cap):
            padded = np.pad(depth, 1, constant_values=cap)
            nearest = np.full(own.shape, cap, np.int64)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if dy == dx == 0:
                        continue
                    at = (
                        slice(1 + dy, 1 + dy + own.shape[0]),
                        slice(1 + dx, 1 + dx + own.shape[1]),
                    )
                    value = np.where(other[at], 0, np.where(mine[at], padded[at], cap))
                    nearest = np.minimum(nearest, value)
            depth = np.minimum(nearest + 1, cap)
        out[i] = np.where(own, depth, cap)
    return out


def _kernel_depths(masks: BoxedMasks, valid: np.ndarray, cap: int) -> np.ndarray:
    """(N, H, W) depths as the kernel finds them: each mask's bit planes, read back."""
    height, width = valid.shape
    boxes = masks.boxes.numpy().astype(np.int64)
    claims = (masks.dense().numpy() >= 0.5) & valid
    count = claims.sum(axis=0).astype(np.int32).ravel()
    claimed = cr._claimed_bitmap(count, height, width)
    sizes = (boxes[:, 3] - boxes[:, 1] + 2) * ((boxes[:, 2] - boxes[:, 0] + 2 + 63) // 64)
    planes = cr._depth_planes(np.r_[0, np.cumsum(sizes)], cap)
    out = np.full((len(boxes), height, width), cap, np.int64)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        words = (x1 - x0 + 2 + 63) // 64
        bits = [0] * ((y1 - y0 + 2) * words)  # the claims over the ringed crop, as in pass A
        for y, x in zip(*np.nonzero(claims[i]), strict=True):
            column = int(x) - x0 + 1
            bits[(int(y) - y0 + 1) * words + column // 64] |= 1 << (column % 64)
        levels = cr._instance_depths(
            np.array(bits, np.uint64), 0, claimed, boxes[i], height, width, cap, planes
        )
        for y, x in zip(*np.nonzero(claims[i]), strict=True):
            column = int(x) - x0 + 1
            word = (int(y) - y0 + 1) * words + column // 64
            for level in range(1, levels + 1):
                if int(planes[level + 1, word]) >> (column % 64) & 1:
                    out[i, y, x] = level
                    break
    return out


def test_depths_are_steps_inside_the_mask_to_another_claim() -> None:
    # a U-shaped field around a square one (across the gap the U's arms are near the other
    # field, along the U far), fields at the chip edge, every mask leaking 2 px
    ids = np.zeros((SIZE, SIZE), np.int32)
    ids[2:20, 2:22] = 1
    ids[2:14, 8:16] = 2  # the U's inside
    ids[20:32, 0:14] = 3
    ids[22:32, 14:32] = 4
    ids[0:20, 24:32] = 5
    oracle = OracleFieldModel(noisy=True, seed=0, drop_share=0.0)
    (prediction,) = oracle.predict([torch.from_numpy(ids[None].astype(np.float32))])
    masks = prediction.dense_masks().numpy() >= 0.5
    for cap in (1, 2, 3, 6, 12):
        depth = _kernel_depths(prediction.masks, ALL_VALID, cap)
        assert np.array_equal(depth[masks], _reference_depths(masks, cap)[masks])
    assert depth[masks].max() > 6  # deep enough to test the cap


def test_depths_of_masks_wider_than_one_word() -> None:
    # crops of 130 and 70 columns (3 and 2 words of 64 pixels a row with the ring), the second
    # at the chip's right edge, fields meeting across word boundaries; nodata across one
    height, width = 24, 200
    ids = np.zeros((height, width), np.int32)
    ids[2:20, 0:130] = 1
    ids[6:12, 60:70] = 2  # inside field 1, across its first word boundary
    ids[2:22, 130:200] = 3
    ids[20:24, 0:130] = 4
    valid = np.ones((height, width), bool)
    valid[8:24, 61:66] = False
    oracle = OracleFieldModel(noisy=True, seed=0, drop_share=0.0)
    (prediction,) = oracle.predict([torch.from_numpy(ids[None].astype(np.float32))])
    masks = (prediction.dense_masks().numpy() >= 0.5) & valid
    boxes = prediction.masks.boxes
    assert (boxes[:, 2] - boxes[:, 0]).max() >= 130 and (boxes[:, 2] == width).any()
    for cap in (3, 9, 40):
        depth = _kernel_depths(prediction.masks, valid, cap)
        assert np.array_equal(depth[masks], _reference_depths(masks, cap)[masks])
    assert depth[masks].max() > 9
    chip = resolve_chip(prediction, valid, min_pixels=1)
    labels, probability, _ = _reference_resolve(
        prediction.dense_masks().numpy(), prediction.scores.numpy(), valid, min_pixels=1
    )
    assert len(chip) == 4 and np.array_equal(chip.labels, labels)
    assert np.array_equal(chip.probability, probability)
    assert (chip.labels == np.where(valid, ids, 0)).mean() > 0.99  # all but near the nodata


def _reference_resolve(
    masks: np.ndarray,
    scores: np.ndarray,
    valid: np.ndarray,
    *,
    score_threshold: float = 0.5,
    min_pixels: int = 4,
    margin: float = 0.1,
    duplicate_share: float = 0.8,
    max_depth: int = 6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The module docstring's rule on the dense stack, plainly (slow): labels, probability,
    the kept instances' positions among all."""
    kept = np.flatnonzero(scores >= score_threshold)
    masks, scores = masks[kept].astype(np.float32), scores[kept].astype(np.float32)
    n = len(masks)
    pmax = np.where(valid, masks.max(axis=0), 0).astype(np.float32) if n else ~valid * 0.0
    claims = (masks >= 0.5) & valid
    own = claims.sum(axis=(1, 2))
    duplicate = np.zeros(n, bool)
    for a in range(n):
        for b in range(a + 1, n):
            common = int((claims[a] & claims[b]).sum())
            if common > duplicate_share * (own[a] + own[b] - common):
                duplicate[b if scores[a] >= scores[b] else a] = True
    claims[duplicate] = False
    count = claims.sum(axis=0)
    depth = _reference_depths(claims, max_depth)
    rank = masks.astype(np.float64) + (cr.SCORE_TIE_WEIGHT * scores)[:, None, None]
    strongest = np.where(claims, rank, -np.inf).max(axis=0, initial=-np.inf)
    near = claims & (rank >= strongest - margin)
    labels = np.zeros(valid.shape, np.int64)
    best = np.full(valid.shape, -1), np.full(valid.shape, -np.inf)
    for k in range(n):
        labels[claims[k] & (count == 1)] = k + 1
        better = (
            near[k]
            & (count > 1)
            & ((depth[k] > best[0]) | ((depth[k] == best[0]) & (rank[k] > best[1])))
        )
        labels[better], best[0][better], best[1][better] = k + 1, depth[k][better], rank[k][better]
    if (count > 1).any():  # the swallowed take their innermost pixels back
        held = np.bincount(labels.ravel(), minlength=n + 1)
        for k in range(n):
            n_near = int(near[k].sum())
            if n_near and held[k + 1] < cr.SWALLOWED_SHARE * n_near:
                deepest = int(depth[k][near[k]].max())
                labels[near[k] & (depth[k] >= max(deepest - 1, min(deepest, 3)))] = k + 1
    area = np.bincount(labels.ravel(), minlength=n + 1)
    survivors = np.flatnonzero((area[1:] >= min_pixels) & (area[1:] > 0))
    number = np.zeros(n + 1, np.int64)
    number[survivors + 1] = np.arange(1, len(survivors) + 1)
    out = number[labels]
    at = np.clip(labels - 1, 0, None)
    chosen = np.take_along_axis(masks, at[None], axis=0)[0] if n else pmax
    probability = np.where(out > 0, chosen, np.float32(1) - pmax).astype(np.float32)
    return out, probability, kept[survivors]


@st.composite
def _chips(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Small chips of overlapping masks: constant, ragged and tied values, twins, nodata."""
    height = draw(st.integers(4, 18))
    width = draw(st.sampled_from([height, 70]))  # 70: crops across two words
    n = draw(st.integers(0, 6))
    masks = np.zeros((n, height, width), np.float32)
    level = st.sampled_from([0.0, 0.3, 0.5, 0.55, 0.8, 0.9, 1.0])
    for i in range(n):
        y0, x0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        y1, x1 = draw(st.integers(y0 + 1, height)), draw(st.integers(x0 + 1, width))
        if i and draw(st.booleans()) and draw(st.booleans()):
            masks[i] = masks[i - 1]  # detected twice
            continue
        seed = draw(st.integers(0, 2**16))
        ragged = np.random.default_rng(seed).choice([0.0, 0.6, 0.95], (y1 - y0, x1 - x0))
        masks[i, y0:y1, x0:x1] = ragged if draw(st.booleans()) else draw(level)
    scores = np.array(draw(st.lists(st.sampled_from([0.4, 0.6, 0.7, 0.9]), min_size=n,
                                    max_size=n)), np.float32)  # fmt: skip
    valid = np.ones((height, width), bool)
    valid[: draw(st.integers(0, height // 2))] = False
    options = {"min_pixels": draw(st.integers(1, 5)), "max_depth": draw(st.integers(1, 8)),
               "margin": draw(st.sampled_from([0.0, 0.1, 0.5]))}  # fmt: skip
    return masks, scores, valid, options


@settings(max_examples=150, deadline=None)
@given(_chips())
def test_resolution_follows_the_plain_rule(
    chip: tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]],
) -> None:
    masks, scores, valid, options = chip
    labels, probability, kept = _reference_resolve(masks, scores, valid, **options)
    prediction = ChipPrediction(
        masks=BoxedMasks.from_dense(torch.from_numpy(masks)),
        scores=torch.from_numpy(scores),
        labels=torch.arange(len(scores)) + 1,
        touches_edge=torch.zeros(len(scores), dtype=torch.bool),
    )
    resolved = resolve_chip(prediction, valid, **options)  # type: ignore[arg-type]
    assert np.array_equal(resolved.labels, labels)
    assert np.array_equal(resolved.probability, probability)
    assert np.array_equal(resolved.classes, kept + 1)
    assert np.array_equal(resolved.scores, scores[kept])


def test_nan_in_a_mask_claims_nothing() -> None:
    field, other = _box(4, 14, 4, 14), _box(4, 14, 14, 24)
    broken = other.copy()
    broken[4:14, 8:20] = np.nan  # over both fields
    chip = resolve_chip(_prediction([field, broken], [0.9, 0.9]), ALL_VALID, min_pixels=1)
    assert np.array_equal(chip.labels == 1, field > 0)
    assert np.array_equal(chip.labels == 2, (other > 0) & ~np.isnan(broken))
    assert not np.isnan(chip.probability).any()


def test_dense_stacks_crops_and_flat_masks_resolve_alike() -> None:
    ids = np.zeros((SIZE, SIZE), np.int32)
    ids[0:16, 0:16], ids[0:16, 16:30], ids[18:30, 2:28] = 1, 2, 3
    oracle = OracleFieldModel(noisy=True, seed=0, drop_share=0.0)
    (prediction,) = oracle.predict([torch.from_numpy(ids[None].astype(np.float32))])
    rng = np.random.default_rng(0)
    soft = prediction.dense_masks() * torch.from_numpy(rng.uniform(0.55, 1.0, (3, 1, 1))).float()
    soft[0, 30:32, 0:8] = 0.2  # faint evidence on background, in rows of its own
    valid = ALL_VALID.copy()
    valid[10:14, 10:20] = False
    prediction.masks = soft
    dense = resolve_chip(prediction, valid, min_pixels=1)
    flat = BoxedMasks.from_dense(soft)
    prediction.masks = flat
    boxed = resolve_chip(prediction, valid, min_pixels=1)
    x0, y0, x1, y1 = flat.boxes.T.tolist()
    prediction.masks = BoxedMasks.from_crops(
        list(zip(x0, y0, x1, y1, strict=True)), list(flat.crops), SIZE, SIZE
    )
    cropped = resolve_chip(prediction, valid, min_pixels=1)
    assert len(dense) == 3
    for name in ("labels", "probability", "scores", "classes"):
        assert np.array_equal(getattr(boxed, name), getattr(dense, name))
        assert np.array_equal(getattr(cropped, name), getattr(dense, name))
    assert np.allclose(dense.probability[30:32, 0:8], 0.8)  # 1 - the faint evidence
    # a score floor keeps a subset; half-precision crops read as the dense stack does
    prediction.scores = torch.tensor([0.9, 0.3, 0.8])
    prediction.masks = BoxedMasks.from_dense(soft.half())
    boxed = resolve_chip(prediction, valid, min_pixels=1)
    prediction.masks = soft.half()
    dense = resolve_chip(prediction, valid, min_pixels=1)
    assert len(boxed) == 2
    for name in ("labels", "probability", "scores", "classes"):
        assert np.array_equal(getattr(boxed, name), getattr(dense, name))


def test_every_pair_of_detections_of_one_field_is_compared() -> None:
    field = _box(4, 14, 4, 14)
    for scores in ([0.9, 0.8, 0.7, 0.6, 0.55], [0.8, 0.7, 0.6, 0.55, 0.9]):
        # five detections of one field (five claimants of each pixel): only the best stays
        chip = resolve_chip(_prediction([field] * 5, scores), ALL_VALID)
        assert len(chip) == 1 and np.allclose(chip.scores, [0.9])
    # a mask covering 0.85 of another is a duplicate (IoU 0.85 > 0.8), one covering 0.75 is
    # not: equally sure of its pixels, it keeps its innermost ones
    big, inner = _box(4, 24, 4, 24), _box(4, 24, 4, 21)
    assert len(resolve_chip(_prediction([big, inner], [0.9, 0.8]), ALL_VALID)) == 1
    inner = _box(4, 24, 4, 19)
    assert len(resolve_chip(_prediction([big, inner], [0.9, 0.8]), ALL_VALID)) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_masks_on_the_gpu_resolve_as_on_the_cpu() -> None:
    ids = np.zeros((SIZE, SIZE), np.int32)
    ids[0:16, 0:16], ids[0:16, 16:30], ids[18:30, 2:28] = 1, 2, 3
    oracle = OracleFieldModel(noisy=True, seed=0, drop_share=0.0)
    (cpu,) = oracle.predict([torch.from_numpy(ids[None].astype(np.float32))])
    cpu.scores = torch.tensor([0.9, 0.3, 0.8])  # one dropped
    cpu.masks = cpu.dense_masks() * 0.9
    gpu = ChipPrediction(
        masks=cpu.masks.half().cuda(),
        scores=cpu.scores.cuda(),
        labels=cpu.labels.cuda(),
        touches_edge=cpu.touches_edge.cuda(),
    )
    cpu.masks = cpu.masks.half()
    a, b = resolve_chip(cpu, ALL_VALID), resolve_chip(gpu, ALL_VALID)
    for name in ("labels", "probability", "scores", "classes"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
