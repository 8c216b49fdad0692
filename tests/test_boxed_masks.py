"""Masks stored inside their boxes stand for the same (N, H, W) stack, in less memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fieldseg.models.base import ChipPrediction, touches_edge
from fieldseg.models.boxed_masks import BoxedMasks


def _random_stack(seed: int, n: int = 6, height: int = 20, width: int = 17) -> torch.Tensor:
    """Soft masks, each nonzero only inside a random box (some empty, some at the edges)."""
    rng = np.random.default_rng(seed)
    stack = torch.zeros((n, height, width))
    for i in range(n - 1):  # the last mask stays empty
        y0, x0 = rng.integers(0, height - 1), rng.integers(0, width - 1)
        y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
        stack[i, y0:y1, x0:x1] = torch.from_numpy(rng.uniform(0.1, 1.0, (y1 - y0, x1 - x0)))
    return stack.float()


@pytest.mark.parametrize("seed", range(5))
def test_boxing_a_dense_stack_keeps_every_value(seed: int) -> None:
    stack = _random_stack(seed)
    boxed = BoxedMasks.from_dense(stack)
    assert boxed.shape == tuple(stack.shape) and len(boxed) == len(stack)
    assert torch.equal(boxed.dense(), stack)
    assert boxed.boxes[-1].tolist() == [0, 0, 0, 0]  # the empty mask
    assert torch.equal(boxed.touches_edge(), touches_edge(stack))
    assert torch.equal(touches_edge(boxed), touches_edge(stack))
    for index in ([4, 0, 2], np.array([True, False, True, False, True, False])):
        assert torch.equal(boxed.select(index).dense(), stack[torch.as_tensor(index)])
    assert boxed.select([]).shape == (0, *stack.shape[1:])
    with pytest.raises(ValueError, match="a selector of 2 for 6 masks"):
        boxed.select(np.array([True, False]))


def test_masks_from_a_label_image_take_their_values_in_tight_boxes() -> None:
    labels = np.zeros((8, 10), np.int32)
    labels[1:3, 2:6] = 1
    labels[4:8, 7:10] = 3  # label 2 has no pixel
    values = torch.arange(80, dtype=torch.float32).reshape(8, 10) / 80
    boxed = BoxedMasks.from_labels(labels, 3, values)
    assert boxed.boxes.tolist() == [[2, 1, 6, 3], [0, 0, 0, 0], [7, 4, 10, 8]]
    dense = boxed.dense()
    for k in (1, 2, 3):
        expected = torch.where(torch.from_numpy(labels == k), values, 0.0)
        assert torch.equal(dense[k - 1], expected)
    assert boxed.touches_edge().tolist() == [False, False, True]  # 3 reaches the last row
    binary = BoxedMasks.from_labels(labels, 3)
    assert torch.equal(binary.dense(), torch.stack([torch.from_numpy(labels == k).float()
                                                    for k in (1, 2, 3)]))  # fmt: skip


def test_a_prediction_gives_its_dense_stack_in_either_form() -> None:
    stack = _random_stack(0)
    n = len(stack)
    common = {"scores": torch.ones(n), "labels": torch.ones(n, dtype=torch.int64),
              "touches_edge": touches_edge(stack)}  # fmt: skip
    dense = ChipPrediction(masks=stack, **common)
    boxed = ChipPrediction(masks=BoxedMasks.from_dense(stack), **common)
    assert dense.dense_masks() is stack and torch.equal(boxed.dense_masks(), stack)


def test_inconsistent_boxes_and_crops_are_refused() -> None:
    crop = torch.ones((2, 3))
    with pytest.raises(ValueError, match="crop 0 is"):
        BoxedMasks(torch.tensor([[0, 0, 2, 2]]), (crop,), 5, 5)
    with pytest.raises(ValueError, match="inside the 5 x 5 chip"):
        BoxedMasks(torch.tensor([[3, 0, 6, 2]]), (crop,), 5, 5)
    with pytest.raises(ValueError, match="2 boxes but 1 crops"):
        BoxedMasks(torch.tensor([[0, 0, 3, 2], [0, 0, 3, 2]]), (crop,), 5, 5)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        BoxedMasks(torch.tensor([0, 0, 3, 2]), (crop,), 5, 5)


@pytest.mark.parametrize("seed", range(3))
def test_flat_and_per_crop_storage_are_the_same_masks(seed: int) -> None:
    per_crop = BoxedMasks.from_dense(_random_stack(seed))
    flat = BoxedMasks.from_flat(per_crop.boxes, per_crop.values, 20, 17)
    assert torch.equal(flat.dense(), per_crop.dense())
    assert torch.equal(flat.touches_edge(), per_crop.touches_edge())
    for index in ([4, 0, 2], np.array([True, False, True, False, True, False]), []):
        chosen = flat.select(index)
        assert chosen.crops is not None and torch.equal(
            chosen.dense(), per_crop.select(index).dense()
        )
        assert torch.equal(chosen.values, per_crop.select(index).values)
    assert all(torch.equal(a, b) for a, b in zip(flat.crops, per_crop.crops, strict=True))


def test_flat_values_must_fill_the_boxes() -> None:
    with pytest.raises(ValueError, match="5 values for boxes of 6"):
        BoxedMasks.from_flat(torch.tensor([[0, 0, 3, 2]]), torch.zeros(5), 5, 5)
