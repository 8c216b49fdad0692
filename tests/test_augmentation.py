"""Augmentations keep masks, ignore and nodata aligned, and jitter each band kind alike on
every date."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fieldseg.augmentation import (
    AugmentationConfig,
    AugmentedChip,
    ChipAugmentation,
    band_kinds,
)


def test_band_kinds_from_names_and_positions() -> None:
    assert band_kinds(["red_d1", "nir_d1", "red_d2", "nir_d2"]) == [0, 1, 0, 1]
    stacked = ["20210615_blue", "20210615_red", "20210715_blue", "20210715_red"]
    assert band_kinds(stacked) == [0, 1, 0, 1]
    assert band_kinds(["B02_2021-06-15", "B02_2021-07-15"]) == [0, 0]
    assert band_kinds(["band_1", "band_2", "band_3"]) == [0, 1, 2]  # nothing to tell dates
    assert band_kinds(["b1", "b2", "b3", "b4", "b5", "b6"], bands_per_date=3) == [0, 1, 2] * 2


def _chip(rng: np.random.Generator) -> AugmentedChip:
    """A chip whose first band *is* its instance mask, so alignment can be read back."""
    mask = np.zeros((2, 16, 16), dtype=bool)
    mask[0, 2:6, 3:12] = True
    mask[1, 9:15, 1:4] = True
    image = rng.uniform(100, 1000, size=(4, 16, 16)).astype(np.float32)
    image[0] = 1000 + 1000 * mask[0] + 3000 * mask[1]
    image[2] = image[0]  # the same kind on a second date
    ignore = np.zeros((16, 16), dtype=bool)
    ignore[0, :] = True
    valid = np.ones((16, 16), dtype=bool)
    valid[:, 15] = False
    image[:, :, 15] = -9999  # nodata column
    return AugmentedChip(image=image, masks=mask, ignore=ignore, valid=valid)


@pytest.mark.parametrize("seed", range(8))
def test_geometry_moves_image_and_masks_together(seed: int) -> None:
    rng = np.random.default_rng(seed)
    chip = _chip(rng)
    config = AugmentationConfig(brightness=0, contrast=0)
    out = ChipAugmentation(config, ["a_d1", "b_d1", "a_d2", "b_d2"])(chip, rng)
    assert out.image.shape == chip.image.shape and out.masks.shape == chip.masks.shape
    assert np.array_equal(out.masks[0], out.image[0] == 2000)
    assert np.array_equal(out.masks[1], out.image[0] == 4000)
    assert np.array_equal(~out.valid, out.image[1] == -9999)
    assert out.ignore.sum() == 16 and out.valid.sum() == 16 * 15
    assert np.array_equal(out.image[0], out.image[2])


def test_jitter_is_shared_across_dates_and_spares_nodata() -> None:
    rng = np.random.default_rng(3)
    chip = _chip(rng)
    out = ChipAugmentation(
        AugmentationConfig(hflip=0, vflip=0, rot90=False, brightness=0.3, contrast=0.3),
        ["a_d1", "b_d1", "a_d2", "b_d2"],
    )(chip, np.random.default_rng(1))
    assert np.allclose(out.image[0], out.image[2])  # same kind, same jitter
    assert not np.allclose(out.image[0], chip.image[0])  # but jittered
    assert np.all(out.image[:, :, 15] == -9999)  # nodata untouched
    assert np.array_equal(out.masks, chip.masks)


def test_same_rng_state_same_result_and_disabled_is_identity() -> None:
    chip = _chip(np.random.default_rng(0))
    augment = ChipAugmentation(AugmentationConfig(), ["a", "b", "c", "d"])
    one = augment(chip, np.random.default_rng(42))
    two = augment(chip, np.random.default_rng(42))
    assert np.array_equal(one.image, two.image) and np.array_equal(one.masks, two.masks)
    off = ChipAugmentation(AugmentationConfig(enabled=False), ["a", "b", "c", "d"])
    assert off(chip, np.random.default_rng(0)) is chip


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        AugmentationConfig(mixup=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        AugmentationConfig(hflip=1.5)
