"""Training augmentations that keep instance masks, ignore masks and nodata aligned.

Geometric changes (flips, 90-degree rotations) move the image and every mask together. Radiometric
jitter (brightness and contrast per band) is drawn once per band *kind* and applied to that kind
on every date of a multi-date stack, so that a crop's change between dates, the signal that
separates neighbouring fields, is kept. Jitter touches valid pixels only: nodata stays nodata.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: Name tokens that say which date a band belongs to: d1, t2, date3, 20210615, 2021-06-15.
#: Separators between name tokens; a hyphen between digits belongs to an ISO date.
_SEPARATOR = re.compile(r"[_\s.]+|(?<!\d)-|-(?!\d)")
_DATE_TOKEN = re.compile(r"^(?:d|t|date)\d+$|^\d{6,8}$|^\d{4}-\d{2}-\d{2}$", re.IGNORECASE)


class AugmentationConfig(BaseModel):
    """Augmentation settings of a training config (all off with ``enabled: false``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a left-right flip")
    vflip: float = Field(0.5, ge=0, le=1, description="probability of an up-down flip")
    rot90: bool = Field(True, description="rotate by a random multiple of 90 degrees")
    brightness: float = Field(0.1, ge=0, lt=1, description="gain drawn from 1 +/- this")
    contrast: float = Field(0.1, ge=0, lt=1, description="contrast factor drawn from 1 +/- this")
    bands_per_date: int | None = Field(
        None, ge=1, description="bands of one date, when band names do not tell the dates apart"
    )


def band_kinds(band_names: Sequence[str], bands_per_date: int | None = None) -> list[int]:
    """A kind index per band: bands of one kind on different dates share an index.

    With ``bands_per_date`` the kind is the position within its date. Otherwise it is the name
    without its date tokens (``red_d1``/``red_d2`` and ``20210615_red``/``20210715_red`` are both
    ``red``); names without date tokens each make their own kind.
    """
    if bands_per_date is not None:
        return [i % bands_per_date for i in range(len(band_names))]
    keys = []
    for name in band_names:
        tokens = [t for t in _SEPARATOR.split(name) if t]
        kept = [t for t in tokens if not _DATE_TOKEN.match(t)]
        keys.append("_".join(kept).lower() if kept and len(kept) < len(tokens) else name)
    order = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return [order[key] for key in keys]


@dataclass
class AugmentedChip:
    """A chip and its masks, as the augmentation hands them on."""

    image: np.ndarray  # (bands, rows, cols) float32, raw values
    masks: np.ndarray  # (instances, rows, cols) bool
    ignore: np.ndarray  # (rows, cols) bool
    valid: np.ndarray  # (rows, cols) bool


class ChipAugmentation:
    """Random flips, rotations and per-kind radiometric jitter of a chip and its masks.

    Args:
        config: the augmentation settings.
        band_names: the dataset's band names, to find the kinds (see :func:`band_kinds`).
    """

    def __init__(self, config: AugmentationConfig, band_names: Sequence[str]) -> None:
        self.config = config
        self.kinds = np.asarray(band_kinds(band_names, config.bands_per_date))

    def __call__(self, chip: AugmentedChip, rng: np.random.Generator) -> AugmentedChip:
        """Return an augmented copy of ``chip``; the same ``rng`` state gives the same result."""
        if not self.config.enabled:
            return chip
        image, masks, ignore, valid = chip.image, chip.masks, chip.ignore, chip.valid
        turns = int(rng.integers(4)) if self.config.rot90 else 0
        flips = [axis for axis, p in ((-1, self.config.hflip), (-2, self.config.vflip))
                 if rng.random() < p]  # fmt: skip
        stacks = [image, masks, ignore[np.newaxis], valid[np.newaxis]]
        for axis in flips:
            stacks = [np.flip(a, axis=axis) for a in stacks]
        if turns:
            stacks = [np.rot90(a, k=turns, axes=(-2, -1)) for a in stacks]
        image, masks, ignore, valid = (np.ascontiguousarray(a) for a in stacks)
        ignore, valid = ignore[0], valid[0]
        image = self._jitter(image, valid, rng)
        return AugmentedChip(image=image, masks=masks, ignore=ignore, valid=valid)

    def _jitter(self, image: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        kinds = self.kinds.max() + 1
        gain = 1 + rng.uniform(-self.config.brightness, self.config.brightness, size=kinds)
        contrast = 1 + rng.uniform(-self.config.contrast, self.config.contrast, size=kinds)
        if not valid.any() or (self.config.brightness == 0 and self.config.contrast == 0):
            return image
        out = image.astype(np.float32, copy=True)
        for band in range(image.shape[0]):
            kind = self.kinds[band]
            values = out[band][valid]
            mean = values.mean()
            out[band][valid] = (mean + (values - mean) * contrast[kind]) * gain[kind]
        return out
