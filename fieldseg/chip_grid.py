"""Where chips go on a scene: a regular grid with overlap, edge chips shifted inward.

Shared by ``tile`` and ``predict`` so that training chips and prediction chips follow one rule:
every chip is full size; the last chip of a row or column is moved inward to end at the scene
edge (overlapping its neighbour more) rather than hanging over it; a scene smaller than a chip
gets one chip at the origin, padded with nodata beyond the scene.
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from fieldseg.errors import ConfigError


def check_chip_geometry(chip_size: int, overlap: int) -> int:
    """Validate chip size and overlap; return the stride (``chip_size - overlap``)."""
    for name, value in (("chip size", chip_size), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be a whole number of pixels, got {value!r}")
    if chip_size < 16:
        raise ConfigError(f"chip size must be at least 16 pixels, got {chip_size}")
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0, got {overlap}")
    if overlap >= chip_size:
        raise ConfigError(f"overlap ({overlap}) must be smaller than the chip size ({chip_size})")
    return chip_size - overlap


def chip_starts(length: int, chip_size: int, stride: int) -> list[int]:
    """Chip offsets along one axis of ``length`` pixels; the last one ends at the edge."""
    if length <= chip_size:
        return [0]
    starts = list(range(0, length - chip_size, stride))
    starts.append(length - chip_size)
    return starts


def chip_windows(width: int, height: int, chip_size: int, overlap: int) -> list[Window]:
    """All chip windows of a ``width`` x ``height`` scene, row by row."""
    stride = check_chip_geometry(chip_size, overlap)
    return [
        Window(col, row, chip_size, chip_size)
        for row in chip_starts(height, chip_size, stride)
        for col in chip_starts(width, chip_size, stride)
    ]
