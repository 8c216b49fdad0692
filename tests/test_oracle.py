"""The oracle chip model: the truth fields of each chip, exact or noisy as specified."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from fieldseg.models.boxed_masks import BoxedMasks
from fieldseg.oracle import OracleFieldModel


def _chip() -> np.ndarray:
    """Touching fields, one across a one-pixel gap, one at the chip edge; 0 is background."""
    ids = np.zeros((24, 24), np.int32)
    ids[2:10, 2:10] = 7
    ids[2:10, 10:16] = 9  # shares an edge with 7
    ids[11:20, 2:16] = 4  # across a 1 px gap from 7 and 9: not touching
    ids[12:24, 17:24] = 12  # cut by the chip edge
    return ids


def _predict(ids: np.ndarray, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    oracle = OracleFieldModel(**kwargs)  # type: ignore[arg-type]
    (prediction,) = oracle.predict([torch.from_numpy(ids[None].astype(np.float32))])
    assert isinstance(prediction.masks, BoxedMasks)
    return prediction.dense_masks(), prediction.scores


def _reference_leak(ids: np.ndarray, field: int, reach: int) -> np.ndarray:
    """Field ``field`` grown ``reach`` px (chessboard) onto the fields sharing an edge with it."""
    own = ids == field
    edge = ndi.binary_dilation(own, structure=ndi.generate_binary_structure(2, 1)) & ~own
    touching = set(np.unique(ids[edge]).tolist()) - {0}
    grown = ndi.binary_dilation(own, structure=np.ones((2 * reach + 1,) * 2, bool))
    return own | (grown & np.isin(ids, list(touching)))


def test_exact_masks_are_the_fields_of_the_chip() -> None:
    ids = _chip()
    masks, scores = _predict(ids)
    fields = [4, 7, 9, 12]  # in ascending id order
    assert len(masks) == len(fields) and torch.equal(scores, torch.ones(4))
    for mask, field in zip(masks, fields, strict=True):
        assert np.array_equal(mask.numpy(), (ids == field).astype(np.float32))


def test_noisy_masks_leak_two_pixels_into_touching_fields_only() -> None:
    ids = _chip()
    masks, scores = _predict(ids, noisy=True, seed=3, drop_share=0.0)
    for mask, field in zip(masks, [4, 7, 9, 12], strict=True):
        assert np.array_equal(mask.numpy() > 0, _reference_leak(ids, field, 2))
    assert ((scores >= 0.5) & (scores <= 1.0)).all() and len(set(scores.tolist())) == 4
    # 7 and 9 leak into each other; 4 and 12 touch nothing and keep their shape
    assert (masks[1].numpy() > 0)[ids == 9].sum() == 2 * 8
    assert np.array_equal(masks[0].numpy() > 0, ids == 4)


def test_noisy_mode_drops_only_pieces_cut_by_the_chip_edge() -> None:
    ids = _chip()
    masks, _ = _predict(ids, noisy=True, seed=0, drop_share=1.0)
    assert len(masks) == 3  # field 12 (at the edge) is missing, the others are all there
    assert not (masks.numpy()[:, ids == 12] > 0).any()
