"""Field labels: read any OGR vector file, repair it, and make the fields a clean partition.

Users' label files are messy: invalid rings, empty rows, points mixed with polygons, fields
drawn over each other. :func:`load_field_labels` fixes what can be fixed, says how much it
fixed, and refuses what cannot be used.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from fieldseg.errors import ConfigError, CRSError, InputFileError
from fieldseg.vector_io import read_vector
from fieldseg.wording import counted

logger = logging.getLogger(__name__)

#: Accepted spellings in a ``--split-column``, mapped to fieldseg's split names.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_CATEGORY = "field"
#: An overlap below this share of the smaller field is floating-point noise, not a field drawn
#: over another: 0.01 m2 of a 1 ha field, a strip a tenth of a millimetre wide along a 100 m
#: edge, where a thin real overlap (a strip holding a row of pixel centres) is decimetres wide.
OVERLAP_NOISE_SHARE = 1e-6
#: A class column with more distinct values than this (and than half the fields) is suspect.
MANY_CLASSES = 20


@dataclass
class FieldLabels:
    """Clean field polygons and what was done to get them.

    ``fields`` has the columns ``field_id`` (1-based row number in the input file, stable across
    runs), ``category`` (a name), ``split`` (only with a split column) and ``geometry``.
    """

    fields: gpd.GeoDataFrame
    categories: list[str]
    n_read: int = 0
    n_repaired: int = 0
    n_dropped_empty: int = 0
    n_dropped_no_class: int = 0
    n_overlapping_pairs: int = 0
    n_covered_by_smaller: int = 0

    def summary(self) -> str:
        """One line on how the labels were cleaned; the drops add up to what was not kept."""
        text = (
            f"labels: {counted(len(self.fields), 'field')} kept of {self.n_read} read; "
            f"{self.n_repaired} invalid geometries repaired, {self.n_dropped_empty} empty or "
            f"non-polygon dropped, {self.n_overlapping_pairs} overlapping pairs "
            "(overlap given to the smaller field)"
        )
        if self.n_covered_by_smaller:
            text += f", {self.n_covered_by_smaller} dropped as wholly covered by smaller fields"
        if self.n_dropped_no_class:
            text += f", {self.n_dropped_no_class} dropped for a missing class value"
        return text


def load_field_labels(
    path: str | os.PathLike[str],
    *,
    class_column: str | None = None,
    split_column: str | None = None,
    overlap_crs: object | None = None,
) -> FieldLabels:
    """Read field polygons and make them valid, non-empty and non-overlapping.

    Args:
        path: any vector file OGR reads (GPKG, GeoJSON, shapefile, GeoParquet, ...).
        class_column: column whose values become categories (default: one category, ``field``).
        split_column: column holding ``train``/``val``/``test`` per field.
        overlap_crs: the CRS the fields will be used in (``tile``: the scene's); overlaps are
            measured there (see :func:`resolve_overlaps`). None: the file's CRS.

    Returns:
        The cleaned labels, still in the file's CRS.

    Raises:
        InputFileError: unreadable file, no polygons left, or bad split values.
        CRSError: the file has no CRS.
        ConfigError: a named column does not exist.
    """
    frame = read_vector(path)
    n_read = len(frame)
    if n_read == 0:
        raise InputFileError(f"{path} holds no features")
    check_coordinates_fit_crs(frame, path)
    for option, column in (("--class-column", class_column), ("--split-column", split_column)):
        if column is not None and column not in frame.columns:
            available = ", ".join(c for c in frame.columns if c != frame.geometry.name)
            raise ConfigError(
                f"{option} {column!r} is not a column of {path} (columns: {available or 'none'})"
            )

    polygonal, invalid = repaired_polygons(frame.geometry.to_numpy())
    keep = shapely.area(polygonal) > 0  # None and empty: NaN or 0

    fields = gpd.GeoDataFrame(
        {"field_id": np.arange(1, n_read + 1, dtype=np.int64)[keep]},
        geometry=list(polygonal[keep]),
        crs=frame.crs,
    )
    if fields.empty:
        raise InputFileError(f"{path} holds no polygon with an area ({n_read} features read)")

    def column(name: str) -> pd.Series:
        """Values of ``name`` for the kept fields (rows located by their field_id)."""
        return frame[name].iloc[fields["field_id"].to_numpy() - 1].reset_index(drop=True)

    if class_column is not None:
        values = column(class_column)
        missing = values.isna().to_numpy()
        n_no_class = int(missing.sum())
        fields = fields[~missing].reset_index(drop=True)
        _warn_continuous_classes(values[~missing], class_column)
        fields["category"] = values[~missing].astype(str).to_numpy()
    else:
        fields["category"] = DEFAULT_CATEGORY
        n_no_class = 0
    if split_column is not None:
        values = column(split_column)
        n_empty = int(values.isna().sum())
        if n_empty:
            raise InputFileError(
                f"--split-column {split_column!r} has no value for {n_empty} of {len(values)} "
                "fields; give each field train, val or test"
            )
        raw = values.astype(str).str.strip().str.lower()
        unknown = sorted(set(raw) - set(SPLIT_ALIASES))
        if unknown:
            shown = ", ".join(repr(v[:40]) for v in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise InputFileError(
                f"--split-column {split_column!r} has values {shown}{more}; expected train, val "
                "or test"
            )
        fields["split"] = raw.map(SPLIT_ALIASES).to_numpy()
    fields = fields.reset_index(drop=True)

    n_pairs = resolve_overlaps(fields, measure_crs=overlap_crs)
    emptied = fields.geometry.is_empty.to_numpy()
    fields = fields[~emptied].reset_index(drop=True)
    labels = FieldLabels(
        fields=fields,
        categories=sorted(set(fields["category"])),
        n_read=n_read,
        n_repaired=int(invalid.sum()),
        n_dropped_empty=int((~keep).sum()),
        n_dropped_no_class=n_no_class,
        n_overlapping_pairs=n_pairs,
        n_covered_by_smaller=int(emptied.sum()),
    )
    logger.debug(labels.summary())
    return labels


def _warn_continuous_classes(values: pd.Series, class_column: str) -> None:
    """Warn when a class column looks continuous (an area, a score): each value becomes a class."""
    n_classes = values.nunique()
    fractional = pd.api.types.is_float_dtype(values) and bool(
        (values.to_numpy(dtype=float) % 1 != 0).any()
    )
    if fractional or (n_classes > MANY_CLASSES and n_classes > len(values) / 2):
        logger.warning(
            "--class-column %r holds %d distinct values over %d fields%s: each becomes a "
            "class; is it a class column?",
            class_column, n_classes, len(values), " (non-integer numbers)" if fractional else "",
        )  # fmt: skip


def resolve_overlaps(
    fields: gpd.GeoDataFrame,
    *,
    min_overlap_share: float = OVERLAP_NOISE_SHARE,
    measure_crs: object | None = None,
) -> int:
    """Cut every overlap out of the larger field of each overlapping pair, in place.

    The smaller field keeps the disputed area: a small field drawn over a large one is almost
    always a detail the large one missed. Even a thin overlap can hold a row of pixel centres,
    so only floating-point noise along shared edges (below ``min_overlap_share`` of the smaller
    field) is left alone. With ``measure_crs`` (the CRS the fields will be rasterised in) the
    overlaps are measured there: a shared edge whose vertices lie on a neighbour's edge in that
    CRS (fields drawn in UTM, shipped in EPSG:4326) bends off it in the file's CRS, leaving
    slivers that vanish again once reprojected. Returns the number of overlapping pairs.
    """
    geometries = fields.geometry.to_numpy()
    tree = shapely.STRtree(geometries)
    left, right = tree.query(geometries, predicate="intersects")
    pairs = left < right
    left, right = left[pairs], right[pairs]
    areas = shapely.area(geometries)
    # an overlap is no larger than the boxes' overlap: with a share above float noise, most
    # neighbours that overlap by a hair are ruled out here without computing intersections
    b = shapely.bounds(geometries)
    box_w = np.minimum(b[left, 2], b[right, 2]) - np.maximum(b[left, 0], b[right, 0])
    box_h = np.minimum(b[left, 3], b[right, 3]) - np.maximum(b[left, 1], b[right, 1])
    near = box_w * box_h > min_overlap_share * np.minimum(areas[left], areas[right])
    left, right = left[near], right[near]
    # neighbours that only share an edge are the common case: skip computing their intersection
    inside = ~shapely.touches(geometries[left], geometries[right])
    left, right = left[inside], right[inside]
    if len(left) == 0:
        return 0
    measured, measured_areas = geometries, areas
    if measure_crs is not None and fields.crs is not None and fields.crs != measure_crs:
        involved = np.unique(np.concatenate([left, right]))
        reprojected = gpd.GeoSeries(geometries[involved], crs=fields.crs).to_crs(measure_crs)
        measured = np.full(len(geometries), None, dtype=object)
        measured[involved] = shapely.make_valid(reprojected.to_numpy())  # rings may bend
        measured_areas = shapely.area(measured)
    overlap = shapely.area(shapely.intersection(measured[left], measured[right]))
    smaller_area = np.minimum(measured_areas[left], measured_areas[right])
    real = overlap > min_overlap_share * smaller_area
    cut_from: dict[int, list[int]] = defaultdict(list)
    for i, j in zip(left[real], right[real], strict=True):
        # the larger loses; equal areas: the later row loses, so results do not depend on luck
        larger, smaller = (i, j) if (areas[i], i) > (areas[j], j) else (j, i)
        cut_from[int(larger)].append(int(smaller))
    for larger, smaller in cut_from.items():
        rest = shapely.difference(geometries[larger], shapely.union_all(geometries[smaller]))
        geometries[larger] = polygonal_part(rest) or shapely.Polygon()
    fields.geometry = gpd.GeoSeries(geometries, index=fields.index, crs=fields.crs)
    return int(real.sum())


def to_crs_valid(fields: gpd.GeoDataFrame, crs: object) -> gpd.GeoDataFrame:
    """Reproject and re-validate (reprojection can bend a valid ring into an invalid one)."""
    out = fields.to_crs(crs)
    invalid = ~out.geometry.is_valid
    if invalid.any():
        fixed = [polygonal_part(shapely.make_valid(g)) for g in out.geometry[invalid]]
        out.loc[invalid, "geometry"] = [g if g is not None else shapely.Polygon() for g in fixed]
    return out[~out.geometry.is_empty]


def check_coordinates_fit_crs(frame: gpd.GeoDataFrame, path: str | os.PathLike[str]) -> None:
    """Refuse projected coordinates under a geographic CRS (e.g. a CRS-less GeoJSON in metres).

    GDAL reads a GeoJSON without a CRS as EPSG:4326, so metres would silently become degrees
    and every field would fall far off the scene.
    """
    if frame.crs is None or not frame.crs.is_geographic:
        return
    xmin, ymin, xmax, ymax = frame.total_bounds
    if xmin < -360 or xmax > 360 or ymin < -90 or ymax > 90:
        raise CRSError(
            f"{path} has coordinates up to {max(abs(xmin), abs(xmax), abs(ymin), abs(ymax)):.0f} "
            "under a "
            f"geographic CRS ({frame.crs.name}): they look projected; set the right CRS"
        )


def repaired_polygons(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invalid geometries made valid and every geometry cut to its polygons (None where none).

    Returns:
        The polygonal geometries (object array, None for missing, empty or non-polygonal
        ones) and which inputs were invalid.
    """
    present = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries))
    invalid = present & ~shapely.is_valid(geometries)
    fixed = geometries.copy()
    fixed[invalid] = shapely.make_valid(geometries[invalid])
    polygons = np.where(present, fixed, None)
    odd = present & ~np.isin(shapely.get_type_id(fixed), _POLYGONAL_TYPES)
    polygons[odd] = [polygonal_part(g) for g in fixed[odd]]  # collections, lines, points
    return polygons, invalid


_POLYGONAL_TYPES = (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON)


def polygonal_part(geometry: BaseGeometry | None) -> BaseGeometry | None:
    """The polygons of a geometry (dropping points and lines a repair may leave), or None."""
    if geometry is None or geometry.is_empty:
        return None
    kind = geometry.geom_type
    if kind in ("Polygon", "MultiPolygon"):
        return geometry
    if kind == "GeometryCollection":
        # flatten nested collections; the union keeps overlapping parts valid
        parts = shapely.get_parts(geometry)
        collection = shapely.GeometryType.GEOMETRYCOLLECTION
        while (nested := shapely.get_type_id(parts) == collection).any():
            parts = np.concatenate([parts[~nested], shapely.get_parts(parts[nested])])
        kinds = shapely.get_type_id(parts)
        polygons = parts[
            (kinds == shapely.GeometryType.POLYGON) | (kinds == shapely.GeometryType.MULTIPOLYGON)
        ]
        if len(polygons) == 0:
            return None
        return polygons[0] if len(polygons) == 1 else shapely.union_all(polygons)
    return None
