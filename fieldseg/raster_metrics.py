"""Pixel, boundary and COCO mask metrics of predicted against true field polygons.

Both sets of polygons are rasterised on one :class:`EvaluationGrid` with fieldseg's one rule:
a pixel belongs to a polygon when its centre does (see :mod:`fieldseg.rasterization`). Every
figure below is a count of such pixels. Beyond the grid there is no field.

Counted pixels:
    Only pixels whose centre lies in ``region`` are counted (the whole grid without one). The
    region chooses what is counted, not what the fields are: a field cut by the region's edge
    keeps its own shape, so no boundary is drawn along the region's edge, and a boundary pixel
    inside the region may be matched by one just outside it.

Extent (:func:`pixel_metrics`):
    A pixel is *true* when a truth field covers it and *predicted* when a prediction does (field
    or no field; which field does not matter). TP = true and predicted, FP = predicted only,
    FN = true only. IoU = TP / (TP + FP + FN), precision = TP / (TP + FP), recall =
    TP / (TP + FN), F1 = their harmonic mean (the Dice coefficient).

Boundaries (:func:`pixel_metrics`):
    A field's *boundary pixels* are its pixels with at least one 4-neighbour (up, down, left or
    right) outside that field: no field, another field, or beyond the grid. Two touching fields
    therefore both have boundary pixels along their shared edge, and a prediction that merges
    them misses those. Every field is taken on its own, so overlapping fields (which predictions
    may have) keep their own boundaries; a set's boundary is the union of its fields'.
    A predicted boundary pixel is *matched* when a truth boundary pixel lies within the
    tolerance ``t`` (``boundary_tolerance_px``): at most ``t`` pixels away along the rows and
    along the columns, a (2t + 1) x (2t + 1) square. Truth boundary pixels are matched by
    predicted ones in the same way. Boundary precision = matched predicted boundary pixels /
    predicted boundary pixels, boundary recall = matched truth boundary pixels / truth boundary
    pixels, boundary F1 = their harmonic mean.

Empty sets:
    A ratio whose denominator is 0 is 1.0 when the other set has no pixels of that kind either
    (nothing to find and nothing wrongly found) and 0.0 when it has some; an IoU whose union is
    empty is 1.0, an F1 of precision and recall both 0 is 0.0. Two empty sets thus score 1.0
    everywhere, one empty set 0.0 (as :mod:`fieldseg.object_matching` scores objects). NaN is
    never returned; the one undefined case is a size bin without pixels, reported as ``None``
    (JSON null). Mask AP follows COCO instead: ``None`` without a truth piece to find (even if
    there is no detection either), 0.0 with truth pieces but no detection.

By size (:func:`pixel_metrics`):
    Each truth field and each prediction may be given a size bin (see :func:`size_bin_index`).
    For a bin ``b``: pixel recall = true pixels of truth fields of ``b`` that are predicted /
    pixels of truth fields of ``b``; boundary recall = matched boundary pixels of truth fields
    of ``b`` / their boundary pixels; pixel precision = pixels of predictions of ``b`` that are
    true / pixels of predictions of ``b``; boundary precision likewise with the predictions'
    boundary pixels. The truth-side figures use the truth bins and the prediction-side figures
    the predicted bins; a pixel shared by overlapping fields of one bin counts once. Where a bin
    holds no pixel (no field of that size, or none in the region) its figures are ``None``.

Mask AP (:func:`mask_average_precision`):
    COCO mask average precision (pycocotools) over tiles: the grid is cut into tiles of
    ``tile_px`` x ``tile_px`` pixels (the last row and column of tiles smaller), each one COCO
    image. The part of a truth field in a tile is one annotation, the part of a prediction one
    detection with the prediction's score. A field cut by a tile edge is thus a separate piece
    in each tile, and a prediction is matched piece by piece; the figures are therefore not
    whole-field AP (:mod:`fieldseg.object_matching` scores whole fields). Pixels outside the
    region are removed from every piece, truth and detection alike, just as a tile edge cuts
    them; a piece left without pixels is dropped, and tiles without a region pixel are no
    images. AP is COCO's: interpolated precision at recalls 0, 0.01, ..., 1, averaged over IoU
    thresholds 0.50, 0.55, ..., 0.95 (``ap``), or at 0.50 (``ap50``) and 0.75 (``ap75``). Up to
    ``max_detections`` detections per tile count, highest scores first (COCO's ``maxDets``;
    pycocotools' ``summarize()`` would cap them at 100). By size, COCO's area ranges are set to
    the size bins converted to pixels (1 ha = 10 000 m² / pixel area), half open like the bins,
    and applied to the pixel area of the *piece* in its tile, not of the whole field. AP is
    ``None`` where there is no truth piece (in the bin) to find.

    pycocotools' per-image matching loops in Python over every (IoU threshold, detection, truth)
    triple, quadratic in the pieces of a tile. It is replaced here by an equivalent matching
    that visits only the pairs whose IoU reaches the lowest threshold; the results are
    pycocotools' own (tested against it).

Overlapping polygons (predictions of any source may overlap; ``fieldseg predict`` writes none):
all polygons are rasterised at once into an id image, and a second, adding rasterisation finds
pixels covered more than once. The polygons that may cover such a pixel are taken out of the
id image and rasterised each on its own slot of a scratch image, still in one call, so each
keeps its own pixels, boundary and piece. Both functions go through the grid in strips of rows
(``strip_rows``, or one row of tiles), so memory stays bounded for a whole Sentinel-2 tile.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from rasterio import features
from rasterio.enums import MergeAlg
from shapely.geometry.base import BaseGeometry

from fieldseg.coco_evaluation import ALL_AREAS, _average_precision
from fieldseg.coco_format import encode_label_image, rles_from_runs
from fieldseg.rasterization import geojson_shapes, rasterize_shapes

#: Field size bins in hectares: (lower bound, upper bound, label); a field of area ``a`` is in
#: the bin with ``lower <= a < upper``.
SIZE_BINS_HA: tuple[tuple[float, float, str], ...] = (
    (0.0, 1.0, "<1 ha"),
    (1.0, 5.0, "1-5 ha"),
    (5.0, math.inf, ">5 ha"),
)

#: Share of a grid pixel within which a bound counts as lying on a grid line (a millionth: a
#: micrometre at 1 m, far above float rounding, far below any drawn edge).
GRID_SNAP = 1e-6
_SQUARE_METRES_PER_HECTARE = 10_000.0
_POLYGONAL_TYPES = (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON)
_FIELD_CATEGORY = {"id": 1, "name": "field"}


@dataclass(frozen=True)
class EvaluationGrid:
    """The north-up pixel grid the polygons are rasterised on.

    Attributes:
        transform: pixel (col, row) to map coordinates; no rotation, rows running south.
        height: rows.
        width: columns.
    """

    transform: Affine
    height: int
    width: int

    def __post_init__(self) -> None:
        """Reject grids the strip and window arithmetic cannot handle."""
        t = self.transform
        if t.b != 0 or t.d != 0 or not t.a > 0 or not t.e < 0:
            raise ValueError(f"the evaluation grid must be north-up without rotation, got {t!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"the evaluation grid is empty: {self.height} x {self.width} pixels")

    @classmethod
    def covering(
        cls, bounds: tuple[float, float, float, float], pixel_size: float
    ) -> EvaluationGrid:
        """The smallest grid of square ``pixel_size`` pixels on multiples of it covering ``bounds``.

        Snapping to multiples of the pixel size puts pixel edges where a 10 m raster of the same
        CRS has them, so fields traced from such a raster keep their pixels. At least one pixel.

        Args:
            bounds: ``(xmin, ymin, xmax, ymax)`` in the polygons' CRS units.
            pixel_size: the pixel's side in the same units.

        Raises:
            ValueError: a pixel size that is not positive, or bounds that are not finite and
                ordered (such as the NaN bounds of an empty geometry).
        """
        if not (math.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"pixel_size must be positive, got {pixel_size}")
        xmin, ymin, xmax, ymax = (float(v) for v in bounds)
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            raise ValueError(f"bounds must be finite, got {bounds}")
        if xmin > xmax or ymin > ymax:
            raise ValueError(f"bounds must be (xmin, ymin, xmax, ymax), got {bounds}")
        # a bound within GRID_SNAP of a grid line is on it: a truth reprojected there and back
        # lands 1e-10 m off its 10 m grid, which would add a row or column of pixels
        col0 = math.floor(xmin / pixel_size + GRID_SNAP)
        col1 = max(math.ceil(xmax / pixel_size - GRID_SNAP), col0 + 1)
        row_top = math.ceil(ymax / pixel_size - GRID_SNAP)
        row_bottom = min(math.floor(ymin / pixel_size + GRID_SNAP), row_top - 1)
        transform = Affine(
            pixel_size, 0.0, col0 * pixel_size, 0.0, -pixel_size, row_top * pixel_size
        )
        return cls(transform=transform, height=row_top - row_bottom, width=col1 - col0)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in squared CRS units (m² in a metre CRS)."""
        return abs(self.transform.a * self.transform.e)

    def window_transform(self, row: int, col: int) -> Affine:
        """The transform of a window whose top-left pixel is ``(row, col)`` of this grid."""
        t = self.transform
        return Affine(t.a, 0.0, t.c + col * t.a, 0.0, t.e, t.f + row * t.e)


def size_bin_index(
    areas_m2: Sequence[float] | np.ndarray,
    size_bins_ha: Sequence[tuple[float, float, str]] = SIZE_BINS_HA,
) -> np.ndarray:
    """The size bin of each area (square metres): index of the bin with ``lower <= ha < upper``.

    The bins of ``truth_size_bins`` / ``predicted_size_bins`` of :func:`pixel_metrics`; -1 for an
    area in no bin (NaN, negative, or beyond the last bin).
    """
    hectares = np.asarray(areas_m2, dtype=np.float64) / _SQUARE_METRES_PER_HECTARE
    index = np.full(hectares.shape, -1, dtype=np.int64)
    for b, (lower, upper, _) in enumerate(size_bins_ha):
        index[(hectares >= lower) & (hectares < upper) & (index < 0)] = b
    return index


# --------------------------------------------------------------------------------------------
# Rasterising the polygons of a window, overlaps included


@dataclass(frozen=True, eq=False)
class _Polygons:
    """The polygons of one set that may cover a grid pixel, with the pixels they may cover.

    ``rows`` and ``cols`` are the first and last grid row and column whose pixel centre may lie
    in the polygon's bounding box, with a pixel of slack for rounding; they may lie beyond the
    grid when the polygon does.
    """

    geometries: np.ndarray  # object array of polygons and multi-polygons
    source: np.ndarray  # (n,) int64 index in the caller's array
    rows: np.ndarray  # (n, 2) int64
    cols: np.ndarray  # (n, 2) int64

    def __len__(self) -> int:
        return len(self.geometries)

    def in_rows(self, top: int, bottom: int) -> np.ndarray:
        """Indices of the polygons that may cover a pixel of rows ``top`` to ``bottom - 1``."""
        return np.flatnonzero((self.rows[:, 0] < bottom) & (self.rows[:, 1] >= top))


def _polygons(
    geometries: Sequence[BaseGeometry | None] | np.ndarray, grid: EvaluationGrid, name: str
) -> _Polygons:
    """The non-empty polygons of ``geometries`` whose bounding box reaches a grid pixel centre.

    Raises:
        ValueError: a geometry that is neither a polygon nor a multi-polygon.
    """
    array = np.empty(len(geometries), dtype=object)
    array[:] = list(geometries)
    present = np.flatnonzero(~shapely.is_missing(array) & ~shapely.is_empty(array))
    types = shapely.get_type_id(array[present])
    bad = ~np.isin(types, _POLYGONAL_TYPES)
    if bad.any():
        kinds = sorted({int(k) for k in types[bad]})
        names = ", ".join(shapely.GeometryType(k).name for k in kinds)
        raise ValueError(f"{name} geometries must be polygons or multi-polygons, got {names}")
    bounds = shapely.bounds(array[present]).reshape(-1, 4)
    t = grid.transform
    col_lo = np.floor((bounds[:, 0] - t.c) / t.a - 0.5)
    col_hi = np.ceil((bounds[:, 2] - t.c) / t.a - 0.5)
    row_lo = np.floor((bounds[:, 3] - t.f) / t.e - 0.5)
    row_hi = np.ceil((bounds[:, 1] - t.f) / t.e - 0.5)
    keep = (col_hi >= 0) & (col_lo < grid.width) & (row_hi >= 0) & (row_lo < grid.height)
    return _Polygons(
        geometries=array[present[keep]],
        source=present[keep].astype(np.int64),
        rows=np.stack([row_lo[keep], row_hi[keep]], axis=1).astype(np.int64).reshape(-1, 2),
        cols=np.stack([col_lo[keep], col_hi[keep]], axis=1).astype(np.int64).reshape(-1, 2),
    )


def _region_polygons(region: BaseGeometry | None, grid: EvaluationGrid) -> _Polygons | None:
    """The region's polygons (parts of a multi-polygon apart, so each strip burns only its own)."""
    if region is None:
        return None
    return _polygons(shapely.get_parts(np.array([region], dtype=object)), grid, "region")


def _region_rows(
    region: _Polygons | None, grid: EvaluationGrid, top: int, bottom: int
) -> np.ndarray | None:
    """Boolean mask of the region's pixels in rows ``top`` to ``bottom - 1``; None: every pixel."""
    if region is None:
        return None
    chosen = region.in_rows(top, bottom)
    ids = rasterize_shapes(
        geojson_shapes(region.geometries[chosen]),
        np.ones(len(chosen), dtype=np.int64),
        transform=grid.window_transform(top, 0),
        shape=(bottom - top, grid.width),
    )
    return ids != 0


@dataclass(frozen=True, eq=False)
class _Apart:
    """Every pixel of the polygons rasterised apart, in coordinates of a strip of rows."""

    polygon: np.ndarray  # index in _Polygons of each pixel's polygon
    row: np.ndarray  # row in the strip
    col: np.ndarray  # grid column
    boundary: np.ndarray  # bool: a boundary pixel of its polygon (see _boundary)

    def __len__(self) -> int:
        return len(self.polygon)


_EMPTY = np.zeros(0, dtype=np.int64)
_NO_PIXELS = _Apart(polygon=_EMPTY, row=_EMPTY, col=_EMPTY, boundary=np.zeros(0, dtype=bool))


def _burn(
    polygons: _Polygons, grid: EvaluationGrid, top: int, bottom: int
) -> tuple[np.ndarray, _Apart]:
    """Rasterise the polygons in rows ``top:bottom``: one id image, and the overlapping apart.

    The id image holds index in ``polygons`` + 1. Polygons whose bounding pixels hold a pixel
    covered more than once are left out of it (0 at their pixels) and rasterised apart; every
    other polygon covers its pixels alone, so the id image holds it exactly.
    """
    shape = (bottom - top, grid.width)
    chosen = polygons.in_rows(top, bottom)
    if len(chosen) == 0:
        return np.zeros(shape, dtype=np.int32), _NO_PIXELS
    transform = grid.window_transform(top, 0)
    shapes = geojson_shapes(polygons.geometries[chosen])
    ids = rasterize_shapes(shapes, chosen + 1, transform=transform, shape=shape)
    if len(chosen) == 1:
        return ids, _NO_PIXELS
    coverage = features.rasterize(  # polygons per pixel
        ((shape_, 1) for shape_ in shapes),
        out_shape=shape,
        transform=transform,
        fill=0,
        all_touched=False,
        dtype="int32",
        merge_alg=MergeAlg.add,
    )
    overlap = coverage > 1
    if not overlap.any():
        return ids, _NO_PIXELS
    # Overlap pixels within each polygon's bounding pixels, from a summed-area table.
    table = np.zeros((shape[0] + 1, shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = overlap.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    r0 = (polygons.rows[chosen, 0] - top).clip(0, shape[0] - 1)
    r1 = (polygons.rows[chosen, 1] - top).clip(0, shape[0] - 1) + 1
    c0 = polygons.cols[chosen, 0].clip(0, shape[1] - 1)
    c1 = polygons.cols[chosen, 1].clip(0, shape[1] - 1) + 1
    inside = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    alone = chosen[inside > 0]
    dropped = np.zeros(len(polygons) + 1, dtype=bool)
    dropped[alone + 1] = True
    ids[dropped[ids]] = 0
    return ids, _rasterise_apart(polygons, alone, grid, top, bottom)


def _rasterise_apart(
    polygons: _Polygons, alone: np.ndarray, grid: EvaluationGrid, top: int, bottom: int
) -> _Apart:
    """Pixels of polygons that may overlap, each rasterised on its own, all in one call.

    Each polygon is moved by whole pixels onto its own slot of an atlas (its bounding pixels,
    packed in shelves), so it covers the same pixel centres there and no other polygon's; a
    polygon reaching beyond the strip or the grid is first clipped to them along pixel edges.
    Boundaries are found on the atlas, where a slot's edge is the end of its polygon (as the
    edge of the strip is in the id image).
    """
    if len(alone) == 0:
        return _NO_PIXELS
    t, width = grid.transform, grid.width
    geometries = polygons.geometries[alone].copy()
    rows, cols = polygons.rows[alone], polygons.cols[alone]
    spills = (rows[:, 0] < top) | (rows[:, 1] >= bottom) | (cols[:, 0] < 0) | (cols[:, 1] >= width)
    if spills.any():
        strip = (t.c, t.f + bottom * t.e, t.c + width * t.a, t.f + top * t.e)
        geometries[spills] = shapely.clip_by_rect(geometries[spills], *strip)
    r0 = rows[:, 0].clip(top, bottom - 1) - top
    r1 = rows[:, 1].clip(top, bottom - 1) - top + 1
    c0 = cols[:, 0].clip(0, width - 1)
    c1 = cols[:, 1].clip(0, width - 1) + 1
    # Shelf packing, tallest first; a slot is never wider than the grid.
    slot_row = np.zeros(len(alone), dtype=np.int64)
    slot_col = np.zeros(len(alone), dtype=np.int64)
    x = y = shelf = 0
    heights, widths = (r1 - r0).tolist(), (c1 - c0).tolist()
    for i in np.argsort(r0 - r1, kind="stable").tolist():
        if x + widths[i] > width:
            y, x, shelf = y + shelf, 0, 0
        slot_row[i], slot_col[i] = y, x
        x += widths[i]
        shelf = max(shelf, heights[i])
    shift = np.stack([(slot_col - c0) * t.a, (slot_row - (r0 + top)) * t.e], axis=1)
    per_coordinate = np.repeat(shift, shapely.get_num_coordinates(geometries), axis=0)
    moved = shapely.transform(geometries, lambda xy: xy + per_coordinate)
    present = np.flatnonzero(~shapely.is_empty(moved))
    atlas = rasterize_shapes(
        geojson_shapes(moved[present]),
        present + 1,
        transform=grid.transform,
        shape=(y + shelf, width),
    )
    flat = np.flatnonzero(atlas)
    which = atlas.ravel()[flat].astype(np.int64) - 1
    atlas_row, atlas_col = np.divmod(flat, width)
    return _Apart(
        polygon=alone[which],
        row=atlas_row - slot_row[which] + r0[which],
        col=atlas_col - slot_col[which] + c0[which],
        boundary=_boundary(atlas).ravel()[flat],
    )


# --------------------------------------------------------------------------------------------
# Pixel and boundary metrics


def _boundary(ids: np.ndarray) -> np.ndarray:
    """Pixels of a field with a 4-neighbour of another id, no field, or beyond the array."""
    edge = np.zeros(ids.shape, dtype=bool)
    vertical = ids[1:] != ids[:-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    horizontal = ids[:, 1:] != ids[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[0] = edge[-1] = True
    edge[:, 0] = edge[:, -1] = True
    edge &= ids != 0
    return edge


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` of a mask pixel along rows and columns (a square's reach)."""
    if radius == 0:
        return mask
    rows = mask.copy()
    for shift in range(1, radius + 1):
        rows[shift:] |= mask[:-shift]
        rows[:-shift] |= mask[shift:]
    out = rows.copy()
    for shift in range(1, radius + 1):
        out[:, shift:] |= rows[:, :-shift]
        out[:, :-shift] |= rows[:, shift:]
    return out


@dataclass(eq=False)
class _StripFields:
    """One set's fields in a strip of rows: extent and boundary, overall and per size bin."""

    extent: np.ndarray
    boundary: np.ndarray
    bin_extent: list[np.ndarray]  # empty without size bins
    bin_boundary: list[np.ndarray]


def _strip_fields(
    polygons: _Polygons,
    bin_lookup: np.ndarray | None,
    n_bins: int,
    grid: EvaluationGrid,
    top: int,
    bottom: int,
) -> _StripFields:
    """Rasterise one set in rows ``top:bottom``; ``bin_lookup[i + 1]`` is polygon i's bin."""
    ids, apart = _burn(polygons, grid, top, bottom)
    fields = _StripFields(extent=ids != 0, boundary=_boundary(ids), bin_extent=[], bin_boundary=[])
    if bin_lookup is not None:
        bins = bin_lookup[ids]
        fields.bin_extent = [bins == b for b in range(n_bins)]
        fields.bin_boundary = [extent & fields.boundary for extent in fields.bin_extent]
    if len(apart):
        edge = apart.boundary
        fields.extent[apart.row, apart.col] = True
        fields.boundary[apart.row[edge], apart.col[edge]] = True
        if bin_lookup is not None:
            bins = bin_lookup[apart.polygon + 1]
            for b in range(n_bins):
                here = bins == b
                fields.bin_extent[b][apart.row[here], apart.col[here]] = True
                here &= edge
                fields.bin_boundary[b][apart.row[here], apart.col[here]] = True
    return fields


def _bin_lookup(
    bins: Sequence[int] | np.ndarray | None,
    n_objects: int,
    polygons: _Polygons,
    n_bins: int,
    name: str,
) -> np.ndarray | None:
    """Bin of each rasterised polygon, indexed by id (0: no field, bin -1).

    Raises:
        ValueError: bins of the wrong length, or values outside -1 .. n_bins - 1.
    """
    if bins is None:
        return None
    values = np.asarray(bins)
    if values.shape != (n_objects,):
        raise ValueError(f"{name} must have one bin per geometry ({n_objects}), got {values.shape}")
    if values.size and (
        not np.issubdtype(values.dtype, np.integer) or values.min() < -1 or values.max() >= n_bins
    ):
        raise ValueError(f"{name} must be integers from -1 (no bin) to {n_bins - 1}")
    lookup = np.full(len(polygons) + 1, -1, dtype=np.int16)
    lookup[1:] = values[polygons.source]
    return lookup


def _ratio(numerator: int, denominator: int, other: int) -> float:
    """``numerator / denominator``; without a denominator 1.0 if ``other`` is 0 too, else 0.0."""
    if denominator > 0:
        return numerator / denominator
    return 1.0 if other == 0 else 0.0


def _f1(precision: float, recall: float) -> float:
    """Harmonic mean; 0.0 when both are 0."""
    total = precision + recall
    return 2 * precision * recall / total if total > 0 else 0.0


def _bin_ratio(numerator: int, denominator: int) -> float | None:
    """``numerator / denominator``, None (undefined) for a bin without pixels."""
    return numerator / denominator if denominator > 0 else None


_BIN_COUNTS = (
    "truth_pixels",
    "covered_truth_pixels",
    "truth_boundary_pixels",
    "matched_truth_boundary_pixels",
    "predicted_pixels",
    "correct_predicted_pixels",
    "predicted_boundary_pixels",
    "matched_predicted_boundary_pixels",
)


def pixel_metrics(
    predicted: Sequence[BaseGeometry | None] | np.ndarray,
    truth: Sequence[BaseGeometry | None] | np.ndarray,
    grid: EvaluationGrid,
    *,
    region: BaseGeometry | None = None,
    boundary_tolerance_px: int = 1,
    truth_size_bins: Sequence[int] | np.ndarray | None = None,
    predicted_size_bins: Sequence[int] | np.ndarray | None = None,
    strip_rows: int = 1024,
    size_bins_ha: Sequence[tuple[float, float, str]] = SIZE_BINS_HA,
) -> dict[str, Any]:
    """Pixel IoU, precision and recall of the field extent, and boundary precision and recall.

    Definitions, empty sets and size bins are in the module docstring. The grid is processed
    in strips of ``strip_rows`` rows, each rasterised with ``boundary_tolerance_px + 1`` rows
    of halo on either side, so the figures are exactly those of the whole grid at once.

    Args:
        predicted: predicted field polygons (polygons or multi-polygons; None or empty ones
            have no pixels), in the grid's CRS. They may overlap.
        truth: truth field polygons, likewise.
        grid: the pixel grid.
        region: only pixels whose centre lies in it are counted; None: the whole grid.
        boundary_tolerance_px: ``t``, how far (in pixels, along rows and columns) a boundary
            pixel may be from one of the other set and still match.
        truth_size_bins: ``(len(truth),)`` integer bin of each truth field in ``size_bins_ha``
            (-1: none), e.g. :func:`size_bin_index` of the true areas; None: no truth-side
            figures by size.
        predicted_size_bins: likewise for the predictions.
        strip_rows: rows rasterised at a time (memory, not results).
        size_bins_ha: the bins whose labels key ``by_size``.

    Returns:
        A JSON-ready dict; all pixels counted are in the region:

        * ``pixel_iou`` = tp / (tp + fp + fn), ``pixel_precision`` = tp / (tp + fp),
          ``pixel_recall`` = tp / (tp + fn), ``pixel_f1``: of the extent (field or no field).
        * ``boundary_precision`` = matched predicted boundary pixels / predicted boundary
          pixels, ``boundary_recall`` = matched truth boundary pixels / truth boundary pixels,
          ``boundary_f1``; ``boundary_tolerance_px``.
        * ``counts`` (ints): ``region_pixels``, ``truth_pixels``, ``predicted_pixels``,
          ``tp_pixels``, ``fp_pixels``, ``fn_pixels``, ``truth_boundary_pixels``,
          ``predicted_boundary_pixels``, ``matched_truth_boundary_pixels``,
          ``matched_predicted_boundary_pixels``.
        * ``by_size``: bin label -> ``pixel_recall`` = covered_truth_pixels / truth_pixels,
          ``boundary_recall`` = matched_truth_boundary_pixels / truth_boundary_pixels (truth
          fields of the bin), ``pixel_precision`` = correct_predicted_pixels /
          predicted_pixels, ``boundary_precision`` = matched_predicted_boundary_pixels /
          predicted_boundary_pixels (predictions of the bin), each None without pixels, and
          those eight counts. A side whose bins were not given has None for its figures and
          counts; ``by_size`` is empty when neither was given.

    Raises:
        ValueError: a tolerance below 0, ``strip_rows`` below 1, bins that do not fit, or
            geometries that are not polygonal.
    """
    tolerance = int(boundary_tolerance_px)
    if tolerance < 0 or tolerance != boundary_tolerance_px:
        raise ValueError(
            f"boundary_tolerance_px must be an integer >= 0, got {boundary_tolerance_px}"
        )
    if strip_rows < 1:
        raise ValueError(f"strip_rows must be at least 1, got {strip_rows}")
    n_bins = len(size_bins_ha)
    pred = _polygons(predicted, grid, "predicted")
    true = _polygons(truth, grid, "truth")
    area = _region_polygons(region, grid)
    truth_bins = _bin_lookup(truth_size_bins, len(truth), true, n_bins, "truth_size_bins")
    pred_bins = _bin_lookup(
        predicted_size_bins, len(predicted), pred, n_bins, "predicted_size_bins"
    )

    counts = dict.fromkeys(
        (
            "region_pixels",
            "truth_pixels",
            "predicted_pixels",
            "tp_pixels",
            "truth_boundary_pixels",
            "predicted_boundary_pixels",
            "matched_truth_boundary_pixels",
            "matched_predicted_boundary_pixels",
        ),
        0,
    )
    bin_counts = {key: np.zeros(n_bins, dtype=np.int64) for key in _BIN_COUNTS}
    halo = tolerance + 1

    def count(mask: np.ndarray, inside: np.ndarray | None) -> int:
        return int(np.count_nonzero(mask if inside is None else mask & inside))

    for top in range(0, grid.height, strip_rows):
        bottom = min(top + strip_rows, grid.height)
        first, last = max(0, top - halo), min(grid.height, bottom + halo)
        rows = slice(top - first, bottom - first)
        inside = _region_rows(area, grid, top, bottom)
        t = _strip_fields(true, truth_bins, n_bins, grid, first, last)
        p = _strip_fields(pred, pred_bins, n_bins, grid, first, last)
        near_truth = _dilate(t.boundary, tolerance)[rows]
        near_pred = _dilate(p.boundary, tolerance)[rows]
        truth_in = t.extent[rows] if inside is None else t.extent[rows] & inside
        pred_here = p.extent[rows]
        truth_edge = t.boundary[rows] if inside is None else t.boundary[rows] & inside
        pred_edge = p.boundary[rows] if inside is None else p.boundary[rows] & inside
        counts["region_pixels"] += (
            (bottom - top) * grid.width if inside is None else count(inside, None)
        )
        counts["truth_pixels"] += count(truth_in, None)
        counts["predicted_pixels"] += count(pred_here, inside)
        counts["tp_pixels"] += count(truth_in, pred_here)
        counts["truth_boundary_pixels"] += count(truth_edge, None)
        counts["predicted_boundary_pixels"] += count(pred_edge, None)
        counts["matched_truth_boundary_pixels"] += count(truth_edge, near_pred)
        counts["matched_predicted_boundary_pixels"] += count(pred_edge, near_truth)
        for b in range(n_bins) if truth_bins is not None else ():
            extent = t.bin_extent[b][rows] if inside is None else t.bin_extent[b][rows] & inside
            edge = t.bin_boundary[b][rows] if inside is None else t.bin_boundary[b][rows] & inside
            bin_counts["truth_pixels"][b] += count(extent, None)
            bin_counts["covered_truth_pixels"][b] += count(extent, pred_here)
            bin_counts["truth_boundary_pixels"][b] += count(edge, None)
            bin_counts["matched_truth_boundary_pixels"][b] += count(edge, near_pred)
        for b in range(n_bins) if pred_bins is not None else ():
            extent = p.bin_extent[b][rows] if inside is None else p.bin_extent[b][rows] & inside
            edge = p.bin_boundary[b][rows] if inside is None else p.bin_boundary[b][rows] & inside
            bin_counts["predicted_pixels"][b] += count(extent, None)
            bin_counts["correct_predicted_pixels"][b] += count(extent, t.extent[rows])
            bin_counts["predicted_boundary_pixels"][b] += count(edge, None)
            bin_counts["matched_predicted_boundary_pixels"][b] += count(edge, near_truth)

    tp, n_true, n_pred = counts["tp_pixels"], counts["truth_pixels"], counts["predicted_pixels"]
    counts["fp_pixels"] = n_pred - tp
    counts["fn_pixels"] = n_true - tp
    union = n_true + n_pred - tp
    precision = _ratio(tp, n_pred, n_true)
    recall = _ratio(tp, n_true, n_pred)
    n_true_edge = counts["truth_boundary_pixels"]
    n_pred_edge = counts["predicted_boundary_pixels"]
    edge_precision = _ratio(counts["matched_predicted_boundary_pixels"], n_pred_edge, n_true_edge)
    edge_recall = _ratio(counts["matched_truth_boundary_pixels"], n_true_edge, n_pred_edge)
    return {
        "pixel_iou": tp / union if union > 0 else 1.0,
        "pixel_precision": precision,
        "pixel_recall": recall,
        "pixel_f1": _f1(precision, recall),
        "boundary_precision": edge_precision,
        "boundary_recall": edge_recall,
        "boundary_f1": _f1(edge_precision, edge_recall),
        "boundary_tolerance_px": tolerance,
        "counts": counts,
        "by_size": _by_size(bin_counts, size_bins_ha, truth_bins is not None, pred_bins is not None)
        if truth_bins is not None or pred_bins is not None
        else {},
    }


def _by_size(
    bin_counts: dict[str, np.ndarray],
    size_bins_ha: Sequence[tuple[float, float, str]],
    has_truth: bool,
    has_pred: bool,
) -> dict[str, dict[str, Any]]:
    """Per-bin figures and counts; a side without bins gives None throughout."""
    result: dict[str, dict[str, Any]] = {}
    for b, (_, _, label) in enumerate(size_bins_ha):
        c = {key: int(values[b]) for key, values in bin_counts.items()}
        entry: dict[str, Any] = {
            "pixel_recall": _bin_ratio(c["covered_truth_pixels"], c["truth_pixels"]),
            "boundary_recall": _bin_ratio(
                c["matched_truth_boundary_pixels"], c["truth_boundary_pixels"]
            ),
            "pixel_precision": _bin_ratio(c["correct_predicted_pixels"], c["predicted_pixels"]),
            "boundary_precision": _bin_ratio(
                c["matched_predicted_boundary_pixels"], c["predicted_boundary_pixels"]
            ),
            **c,
        }
        if not has_truth:
            for key in ("pixel_recall", "boundary_recall", *_BIN_COUNTS[:4]):
                entry[key] = None
        if not has_pred:
            for key in ("pixel_precision", "boundary_precision", *_BIN_COUNTS[4:]):
                entry[key] = None
        result[label] = entry
    return result


# --------------------------------------------------------------------------------------------
# COCO mask AP over tiles


class _SparseCOCOeval(COCOeval):
    """``COCOeval`` whose per-image matching visits only pairs reaching the lowest IoU threshold.

    pycocotools' ``evaluateImg`` tries every truth object for every detection at every IoU
    threshold in Python: a tile of a few hundred pieces costs millions of steps. A pair whose
    IoU is below the lowest threshold can never match, and skipping it changes nothing (a
    detection already matched to a real object stops at the first ignored one either way), so
    the matching below gives pycocotools' results exactly. Where no truth object is a crowd and
    every detection and truth object has at most one such pair (non-overlapping sets), the
    greedy matching reduces to those pairs and is done in numpy.
    """

    def evaluateImg(
        self,
        imgId: int,
        catId: int,
        aRng: Sequence[float],
        maxDet: int,
    ) -> dict[str, Any] | None:
        """The result of pycocotools' ``evaluateImg`` for one image, by sparse matching."""
        p = self.params
        if p.useCats:
            gt = self._gts[imgId, catId]
            dt = self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if len(gt) == 0 and len(dt) == 0:
            return None
        for g in gt:
            g["_ignore"] = 1 if g["ignore"] or g["area"] < aRng[0] or g["area"] > aRng[1] else 0
        gtind = np.argsort([g["_ignore"] for g in gt], kind="mergesort")
        gt = [gt[i] for i in gtind]
        dtind = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in dtind[0:maxDet]]
        iscrowd = [int(o["iscrowd"]) for o in gt]
        ious = self.ious[imgId, catId]
        ious = ious[:, gtind] if len(ious) > 0 else ious

        n_thresholds, n_gt, n_dt = len(p.iouThrs), len(gt), len(dt)
        gtm = np.zeros((n_thresholds, n_gt))
        dtm = np.zeros((n_thresholds, n_dt))
        gt_ignore = np.array([g["_ignore"] for g in gt])
        dt_ignore = np.zeros((n_thresholds, n_dt))
        if len(ious) > 0:
            _match(
                np.asarray(ious),
                [min(float(t), 1 - 1e-10) for t in p.iouThrs],
                iscrowd,
                gt_ignore,
                np.array([g["id"] for g in gt]),
                np.array([d["id"] for d in dt]),
                gtm,
                dtm,
                dt_ignore,
            )
        outside = np.array([d["area"] < aRng[0] or d["area"] > aRng[1] for d in dt])
        outside = outside.reshape((1, n_dt))
        dt_ignore = np.logical_or(
            dt_ignore, np.logical_and(dtm == 0, np.repeat(outside, n_thresholds, 0))
        )
        return {
            "image_id": imgId,
            "category_id": catId,
            "aRng": aRng,
            "maxDet": maxDet,
            "dtIds": [d["id"] for d in dt],
            "gtIds": [g["id"] for g in gt],
            "dtMatches": dtm,
            "gtMatches": gtm,
            "dtScores": [d["score"] for d in dt],
            "gtIgnore": gt_ignore,
            "dtIgnore": dt_ignore,
        }


def _match(
    ious: np.ndarray,
    floors: list[float],
    iscrowd: list[int],
    gt_ignore: np.ndarray,
    gt_ids: np.ndarray,
    dt_ids: np.ndarray,
    gtm: np.ndarray,
    dtm: np.ndarray,
    dt_ignore: np.ndarray,
) -> None:
    """The greedy matching of pycocotools per IoU threshold, over pairs that can match; in place.

    ``ious`` is (detections by score, truth with ignored last); ``floors`` the thresholds as
    pycocotools uses them (``min(t, 1 - 1e-10)``).
    """
    det, obj = np.nonzero(ious >= min(floors))
    if len(det) == 0:
        return
    values = ious[det, obj]
    one_to_one = (
        not any(iscrowd) and len(np.unique(det)) == len(det) and len(np.unique(obj)) == len(obj)
    )
    if one_to_one:
        for t, floor in enumerate(floors):
            hit = values >= floor
            d, g = det[hit], obj[hit]
            dtm[t, d] = gt_ids[g]
            gtm[t, g] = dt_ids[d]
            dt_ignore[t, d] = gt_ignore[g]
        return
    starts = np.flatnonzero(np.r_[True, det[1:] != det[:-1]])
    ends = np.r_[starts[1:], len(det)]
    objects, scores = obj.tolist(), values.tolist()
    candidates = [
        (int(det[s]), list(zip(objects[s:e], scores[s:e], strict=True)))
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
    ignored = gt_ignore.tolist()
    truth_ids, detection_ids = gt_ids.tolist(), dt_ids.tolist()
    for t, floor in enumerate(floors):
        matched = [0] * len(ignored)
        for d, pairs in candidates:
            best, m = floor, -1
            for g, iou in pairs:
                if matched[g] > 0 and not iscrowd[g]:
                    continue
                if m > -1 and ignored[m] == 0 and ignored[g] == 1:
                    break
                if iou < best:
                    continue
                best, m = iou, g
            if m == -1:
                continue
            dt_ignore[t, d] = ignored[m]
            dtm[t, d] = truth_ids[m]
            matched[m] = detection_ids[d]
        gtm[t] = matched


def _area_ranges(
    size_bins_ha: Sequence[tuple[float, float, str]], pixel_area: float
) -> tuple[list[list[float]], list[str]]:
    """COCO area ranges in pixels: ``all``, then each bin, half open like the bins.

    COCO's ranges include both ends; as piece areas are pixel counts compared in floats, the
    upper end is moved just below the bin's bound so that a piece falls in exactly one bin.
    """
    ranges, labels = [list(ALL_AREAS)], ["all"]
    pixels_per_hectare = _SQUARE_METRES_PER_HECTARE / pixel_area
    for lower, upper, label in size_bins_ha:
        high = upper * pixels_per_hectare
        ranges.append([lower * pixels_per_hectare, float(np.nextafter(high, -np.inf))])
        labels.append(label)
    return ranges, labels


def _area_average_precision(evaluation: COCOeval, iou_threshold: float | None, label: str) -> float:
    """:func:`fieldseg.coco_evaluation._average_precision` for the area range ``label``."""
    params = evaluation.params
    precision = evaluation.eval["precision"]  # (iou, recall, category, area, max dets)
    if iou_threshold is not None:
        precision = precision[np.isclose(params.iouThrs, iou_threshold)]
    values = precision[:, :, :, params.areaRngLbl.index(label), -1]
    values = values[values > -1]
    return float(values.mean()) if values.size else float("nan")


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _tile_pieces(
    ids: np.ndarray,
    apart: _Apart,
    inside: np.ndarray | None,
    left: int,
    image_id: int,
    sources: np.ndarray,
    scores: np.ndarray | None,
    annotations: list[dict[str, Any]],
) -> None:
    """Append the pieces of one tile as COCO entries (RLE and pixel area; score if given).

    ``ids`` and ``inside`` are the tile's columns of the strip's id image and region mask,
    ``apart`` the pixels of the polygons rasterised apart that fall in the tile.
    """
    height, width = ids.shape
    if inside is not None:
        ids = np.where(inside, ids, 0)
    values, rles, areas = encode_label_image(ids)
    pieces = list(zip((values.astype(np.int64) - 1).tolist(), rles, areas.tolist(), strict=True))
    if len(apart):
        keep = slice(None) if inside is None else inside[apart.row, apart.col - left]
        values, rles, areas = _encode_pixels(
            apart.polygon[keep], apart.row[keep], apart.col[keep] - left, height, width
        )
        pieces += zip(values.tolist(), rles, areas.tolist(), strict=True)
    for k, rle, area in pieces:
        entry = {
            "id": len(annotations) + 1,  # 0 would read as "unmatched" to COCOeval
            "image_id": image_id,
            "category_id": _FIELD_CATEGORY["id"],
            "segmentation": rle,
            "area": area,
            "iscrowd": 0,
        }
        if scores is not None:
            entry["score"] = float(scores[sources[k]])
        annotations.append(entry)


def _encode_pixels(
    label: np.ndarray, row: np.ndarray, col: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """RLE of pixel sets given pixel by pixel, which may overlap one another.

    As :func:`fieldseg.coco_format.encode_label_image` (labels ascending, their RLEs and pixel
    counts), but from ``(label, row, col)`` triples, each pixel once per label.
    """
    flat = col.astype(np.int64) * height + row
    order = np.lexsort((flat, label))
    label, flat = label[order], flat[order]
    if len(label) == 0:
        return label, [], np.zeros(0, dtype=np.int64)
    start = np.flatnonzero(np.r_[True, (label[1:] != label[:-1]) | (flat[1:] != flat[:-1] + 1)])
    starts = flat[start]
    ends = flat[np.r_[start[1:], len(flat)] - 1] + 1
    return rles_from_runs(label[start], starts, ends, height, width)


def _split_by_tile(apart: _Apart, tile_px: int) -> dict[int, _Apart]:
    """The pixels apart of a strip, by tile column (index)."""
    if len(apart) == 0:
        return {}
    tile = apart.col // tile_px
    order = np.argsort(tile, kind="stable")
    tile = tile[order]
    starts = np.flatnonzero(np.r_[True, tile[1:] != tile[:-1]])
    stops = [*starts[1:].tolist(), len(tile)]
    return {
        int(tile[start]): _Apart(
            polygon=apart.polygon[order[start:stop]],
            row=apart.row[order[start:stop]],
            col=apart.col[order[start:stop]],
            boundary=apart.boundary[order[start:stop]],
        )
        for start, stop in zip(starts.tolist(), stops, strict=True)
    }


def mask_average_precision(
    predicted: Sequence[BaseGeometry | None] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    truth: Sequence[BaseGeometry | None] | np.ndarray,
    grid: EvaluationGrid,
    *,
    region: BaseGeometry | None = None,
    tile_px: int = 256,
    max_detections: int = 1000,
    size_bins_ha: Sequence[tuple[float, float, str]] = SIZE_BINS_HA,
) -> dict[str, Any]:
    """COCO mask AP, AP50 and AP75 of the predictions over tiles of the grid (pycocotools).

    See the module docstring for tiles, pieces, the region and size ranges.

    Args:
        predicted: predicted field polygons in the grid's CRS; they may overlap.
        scores: ``(len(predicted),)`` confidence of each prediction (higher ranks first).
        truth: truth field polygons.
        grid: the pixel grid.
        region: only pixels whose centre lies in it count; None: the whole grid.
        tile_px: side of a tile (a COCO image) in pixels.
        max_detections: detections per tile that count, highest scores first.
        size_bins_ha: the size bins (hectares) of ``by_size``.

    Returns:
        ``ap``, ``ap50``, ``ap75`` (area range ``all``), ``by_size``: bin label -> ``ap``,
        ``ap50``, ``ap75`` (each None where there is no truth piece to find);
        ``n_tiles`` (images evaluated: tiles with a region pixel), ``n_truth_pieces``,
        ``n_predicted_pieces``, ``max_detections``, ``tile_px``.

    Raises:
        ValueError: ``tile_px`` or ``max_detections`` below 1, scores that are not one finite
            number per prediction, or geometries that are not polygonal.
    """
    if tile_px < 1:
        raise ValueError(f"tile_px must be at least 1, got {tile_px}")
    if max_detections < 1:
        raise ValueError(f"max_detections must be at least 1, got {max_detections}")
    score_values = np.asarray(scores, dtype=np.float64)
    if score_values.shape != (len(predicted),) or not np.isfinite(score_values).all():
        raise ValueError(
            f"scores must be one finite number per prediction ({len(predicted)}), "
            f"got shape {score_values.shape}"
        )
    pred = _polygons(predicted, grid, "predicted")
    true = _polygons(truth, grid, "truth")
    area = _region_polygons(region, grid)

    images: list[dict[str, Any]] = []
    truth_pieces: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for top in range(0, grid.height, tile_px):
        bottom = min(top + tile_px, grid.height)
        inside = _region_rows(area, grid, top, bottom)
        if inside is not None and not inside.any():
            continue
        truth_ids, truth_apart = _burn(true, grid, top, bottom)
        pred_ids, pred_apart = _burn(pred, grid, top, bottom)
        truth_by_tile = _split_by_tile(truth_apart, tile_px)
        pred_by_tile = _split_by_tile(pred_apart, tile_px)
        for tile, left in enumerate(range(0, grid.width, tile_px)):
            right = min(left + tile_px, grid.width)
            tile_inside = None if inside is None else inside[:, left:right]
            if tile_inside is not None and not tile_inside.any():
                continue
            image_id = len(images) + 1
            images.append({"id": image_id, "height": bottom - top, "width": right - left})
            _tile_pieces(
                truth_ids[:, left:right],
                truth_by_tile.get(tile, _NO_PIXELS),
                tile_inside,
                left,
                image_id,
                true.source,
                None,
                truth_pieces,
            )
            _tile_pieces(
                pred_ids[:, left:right],
                pred_by_tile.get(tile, _NO_PIXELS),
                tile_inside,
                left,
                image_id,
                pred.source,
                score_values,
                detections,
            )

    ranges, labels = _area_ranges(size_bins_ha, grid.pixel_area)
    evaluation = _evaluate_segm(images, truth_pieces, detections, max_detections, ranges, labels)
    result: dict[str, Any] = {
        "ap": _none_if_nan(_average_precision(evaluation, None)),
        "ap50": _none_if_nan(_average_precision(evaluation, 0.5)),
        "ap75": _none_if_nan(_average_precision(evaluation, 0.75)),
        "by_size": {
            label: {
                "ap": _none_if_nan(_area_average_precision(evaluation, None, label)),
                "ap50": _none_if_nan(_area_average_precision(evaluation, 0.5, label)),
                "ap75": _none_if_nan(_area_average_precision(evaluation, 0.75, label)),
            }
            for label in labels[1:]
        },
        "n_tiles": len(images),
        "n_truth_pieces": len(truth_pieces),
        "n_predicted_pieces": len(detections),
        "max_detections": int(max_detections),
        "tile_px": int(tile_px),
    }
    return result


def _evaluate_segm(
    images: list[dict[str, Any]],
    truth: list[dict[str, Any]],
    detections: list[dict[str, Any]],
    max_detections: int,
    area_ranges: list[list[float]],
    area_labels: list[str],
) -> COCOeval:
    """``evaluate()`` and ``accumulate()`` of segm AP with the given area ranges, prints silenced.

    As :func:`fieldseg.coco_evaluation._run_cocoeval` (COCO objects built in memory, no
    ``loadRes``), with area ranges of one's own, one ``maxDets`` and the sparse matching.
    """
    categories = [dict(_FIELD_CATEGORY)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_truth = COCO()
        coco_truth.dataset = {"images": images, "categories": categories, "annotations": truth}
        coco_truth.createIndex()
        coco_detections = COCO()
        coco_detections.dataset = {
            "images": images,
            "categories": categories,
            "annotations": detections,
        }
        coco_detections.createIndex()
        evaluation = _SparseCOCOeval(coco_truth, coco_detections, iouType="segm")
        evaluation.params.maxDets = [int(max_detections)]
        evaluation.params.areaRng = [list(r) for r in area_ranges]
        evaluation.params.areaRngLbl = list(area_labels)
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation
