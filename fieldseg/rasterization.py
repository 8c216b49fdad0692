"""The one rasterisation rule of fieldseg: a pixel belongs to a polygon when its centre does.

This is rasterio's default (``all_touched=False``). Tiling, model targets, the oracle and
evaluation all rasterise through these functions, so a field covers the same pixels everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from affine import Affine
from rasterio import features
from rasterio.windows import Window, from_bounds
from shapely.geometry.base import BaseGeometry


def rasterize_labels(
    geometries: Sequence[BaseGeometry],
    values: Sequence[int] | np.ndarray,
    *,
    transform: Affine,
    shape: tuple[int, int],
) -> np.ndarray:
    """Burn ``values[i]`` where pixel centres fall in ``geometries[i]``; 0 elsewhere (int32).

    Where geometries overlap the later one wins; fieldseg's labels are made non-overlapping
    first (see :mod:`fieldseg.labels`), so the order does not matter there.
    """
    out = np.zeros(shape, dtype=np.int32)
    pairs = [(g, int(v)) for g, v in zip(geometries, values, strict=True) if not g.is_empty]
    if not pairs:
        return out
    return features.rasterize(
        pairs, out_shape=shape, transform=transform, fill=0, all_touched=False, dtype="int32"
    )


def rasterize_mask(
    geometry: BaseGeometry, *, transform: Affine, shape: tuple[int, int]
) -> np.ndarray:
    """Boolean mask of the pixels whose centres fall in ``geometry``."""
    if geometry.is_empty:
        return np.zeros(shape, dtype=bool)
    return features.geometry_mask(
        [geometry], out_shape=shape, transform=transform, invert=True, all_touched=False
    )


def pixel_window(geometry: BaseGeometry, transform: Affine) -> Window:
    """The smallest whole-pixel window of the grid ``transform`` that holds ``geometry``."""
    window = from_bounds(*geometry.bounds, transform=transform)
    return window.round_offsets(op="floor").round_lengths(op="ceil")


def pixel_counts(geometries: Sequence[BaseGeometry], transform: Affine) -> np.ndarray:
    """Number of pixels of the grid ``transform`` each geometry covers, anywhere on the grid.

    The grid is unbounded here: a field crossing the scene edge counts its pixels beyond it, so
    that a piece clipped by the scene edge is known to be a piece.
    """
    counts = np.zeros(len(geometries), dtype=np.int64)
    for index, geometry in enumerate(geometries):
        if geometry.is_empty:
            continue
        window = pixel_window(geometry, transform)
        # one pixel of margin absorbs floating-point rounding at the window edges
        col, row = int(window.col_off) - 1, int(window.row_off) - 1
        width, height = int(window.width) + 2, int(window.height) + 2
        local = transform * Affine.translation(col, row)
        counts[index] = rasterize_mask(geometry, transform=local, shape=(height, width)).sum()
    return counts
