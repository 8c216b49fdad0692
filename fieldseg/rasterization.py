"""The one rasterisation rule of fieldseg: a pixel belongs to a polygon when its centre does.

This is rasterio's default (``all_touched=False``). Tiling, model targets, the oracle and
evaluation all rasterise through these functions, so a field covers the same pixels everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from rasterio.transform import array_bounds, rowcol
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely.geometry.base import BaseGeometry


def geojson_shapes(geometries: Sequence[BaseGeometry] | np.ndarray) -> list[object]:
    """Geometries in the form rasterio burns, polygons built in bulk as GeoJSON-like dicts.

    Shapely's per-geometry ``__geo_interface__`` dominates rasterising thousands of small
    fields; building the polygon dicts from one ragged coordinate array is several times faster.
    Other geometry types (multi-polygons, collections) are passed as they are.
    """
    geometries = np.asarray(geometries, dtype=object)
    shapes: list[object] = list(geometries)
    polygons = np.flatnonzero(shapely.get_type_id(geometries) == shapely.GeometryType.POLYGON)
    if len(polygons) == 0:
        return shapes
    _, coords, (ring_array, poly_array) = shapely.to_ragged_array(geometries[polygons])
    points, rings, polys = coords.tolist(), ring_array.tolist(), poly_array.tolist()
    for k, index in enumerate(polygons.tolist()):
        shapes[index] = {
            "type": "Polygon",
            "coordinates": [points[rings[r] : rings[r + 1]] for r in range(polys[k], polys[k + 1])],
        }
    return shapes


def rasterize_shapes(
    shapes: Sequence[object],
    values: Sequence[int] | np.ndarray,
    *,
    transform: Affine,
    shape: tuple[int, int],
) -> np.ndarray:
    """Burn ``values[i]`` where pixel centres fall in ``shapes[i]`` (see :func:`geojson_shapes`).

    0 elsewhere (int32); where shapes overlap the later one wins.
    """
    if len(shapes) == 0:
        return np.zeros(shape, dtype=np.int32)
    return features.rasterize(
        zip(shapes, np.asarray(values).tolist(), strict=True),
        out_shape=shape,
        transform=transform,
        fill=0,
        all_touched=False,
        dtype="int32",
    )


def rasterize_labels(
    geometries: Sequence[BaseGeometry] | np.ndarray,
    values: Sequence[int] | np.ndarray,
    *,
    transform: Affine,
    shape: tuple[int, int],
) -> np.ndarray:
    """Burn ``values[i]`` where pixel centres fall in ``geometries[i]``; 0 elsewhere (int32).

    Where geometries overlap the later one wins; fieldseg's labels are made non-overlapping
    first (see :mod:`fieldseg.labels`), so the order does not matter there.
    """
    geometries = np.asarray(geometries, dtype=object)
    present = ~shapely.is_empty(geometries)
    return rasterize_shapes(
        geojson_shapes(geometries[present]),
        np.asarray(values)[present],
        transform=transform,
        shape=shape,
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


def rasterize_labels_in_strips(
    geometries: Sequence[BaseGeometry] | np.ndarray,
    *,
    transform: Affine,
    out: np.ndarray,
    strip_rows: int = 512,
) -> np.ndarray:
    """Burn ``i + 1`` for geometry ``i`` into ``out`` strip by strip; return pixels per geometry.

    ``out`` (rows, cols) may be a numpy memmap: only one strip is held in memory at a time, so
    a whole Sentinel-2 tile of labels can be rasterised on a small machine. The geometries must
    not overlap, since each pixel holds one label.
    """
    geometries = np.asarray(geometries, dtype=object)
    counts = np.zeros(len(geometries) + 1, dtype=np.int64)
    height, width = out.shape
    tree = shapely.STRtree(geometries)
    for top in range(0, height, strip_rows):
        rows = min(strip_rows, height - top)
        local = window_transform(Window(0, top, width, rows), transform)
        strip_box = shapely.box(*array_bounds(rows, width, local))
        hits = tree.query(strip_box, predicate="intersects")
        strip = rasterize_labels(geometries[hits], hits + 1, transform=local, shape=(rows, width))
        out[top : top + rows] = strip
        counts += np.bincount(strip.ravel(), minlength=len(counts))
    return counts[1:]


def count_pixels(geometry: BaseGeometry, transform: Affine, *, strip_rows: int = 512) -> int:
    """Pixels of the (unbounded) grid ``transform`` whose centres fall in ``geometry``.

    Works strip by strip over the geometry's own extent, so even a field far larger than the
    scene is counted exactly in bounded memory.
    """
    if geometry.is_empty:
        return 0
    xmin, ymin, xmax, ymax = geometry.bounds
    rows, cols = rowcol(
        transform, [xmin, xmin, xmax, xmax], [ymin, ymax, ymin, ymax], op=lambda v: v
    )
    col0, row0 = math.floor(min(cols)) - 1, math.floor(min(rows)) - 1
    width, height = math.ceil(max(cols)) + 1 - col0, math.ceil(max(rows)) + 1 - row0
    total = 0
    for top in range(row0, row0 + height, strip_rows):
        rows_here = min(strip_rows, row0 + height - top)
        local = window_transform(Window(col0, top, width, rows_here), transform)
        total += int(rasterize_mask(geometry, transform=local, shape=(rows_here, width)).sum())
    return total
