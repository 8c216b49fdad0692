"""Stitched fields -> georeferenced polygons with their attributes.

Polygons are traced on the pixel grid (``rasterio.features.shapes``, 4-connected) through the
predicted area's transform, so they are exact and neighbours share their edges. A field whose
pixels fall apart into several pieces keeps its largest piece; the others are dropped (they
are left to no field). Areas and perimeters are true metres: planar in a projected CRS (scaled
by its unit), on the ellipsoid in a geographic one. The output schema is in docs/formats.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Geod
from rasterio import features
from rasterio.transform import Affine

from fieldseg.stitching import FieldBatch

#: Output columns in order (``field_id`` is given by the writer).
FIELD_COLUMNS = ("field_id", "score", "area_m2", "perimeter_m", "n_chips", "seam_merged",
                 "touches_edge_or_nodata", "model", "class")  # fmt: skip


def trace_fields(
    batch: FieldBatch,
    transform: Affine,
    crs: CRS,
    *,
    categories: Sequence[str],
    model: str,
    min_area_m2: float = 0.0,
) -> gpd.GeoDataFrame:
    """The polygons of a batch of stitched fields, with their attributes (no ``field_id``).

    Args:
        batch: fields from :class:`fieldseg.stitching.SceneStitcher`.
        transform: the predicted area's transform (its row 0 is the scene row of the area's top).
        crs: the scene CRS.
        categories: class names by category id - 1.
        model: the ``model`` attribute (family and checkpoint hash).
        min_area_m2: smaller fields are dropped.
    """
    band_transform = transform * Affine.translation(0, batch.row_offset)
    values: list[int] = []
    geometries: list[dict] = []
    for geometry, value in features.shapes(
        batch.labels, mask=batch.labels > 0, connectivity=4, transform=band_transform
    ):
        geometries.append(geometry)
        values.append(int(value))
    if not geometries:
        return empty_fields(crs)
    polygons = np.array([shapely.geometry.shape(g) for g in geometries], dtype=object)
    ids = np.asarray(values) - 1
    areas = shapely.area(polygons)
    order = np.lexsort((-areas, ids))  # per field, its largest piece first
    largest = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]
    polygons, ids = polygons[largest], ids[largest]
    area_m2, perimeter_m = true_area_perimeter(polygons, crs)
    keep = area_m2 >= min_area_m2
    polygons, ids = polygons[keep], ids[keep]
    area_m2, perimeter_m = area_m2[keep], perimeter_m[keep]
    names = np.asarray(list(categories) or ["field"], dtype=object)
    class_index = np.clip(batch.class_id[ids] - 1, 0, len(names) - 1)
    frame = pd.DataFrame({
        "score": batch.score[ids].astype(np.float64).round(4),
        "area_m2": area_m2.round(2),
        "perimeter_m": perimeter_m.round(2),
        "n_chips": batch.n_chips[ids].astype(np.int32),
        "seam_merged": batch.seam_merged[ids],
        "touches_edge_or_nodata": batch.touches_edge_or_nodata[ids],
        "model": model,
        "class": names[class_index],
    })  # fmt: skip
    return gpd.GeoDataFrame(frame, geometry=polygons, crs=crs)


def empty_fields(crs: CRS) -> gpd.GeoDataFrame:
    """A frame with the output columns and no rows."""
    frame = pd.DataFrame({
        "score": pd.Series(dtype="float64"),
        "area_m2": pd.Series(dtype="float64"),
        "perimeter_m": pd.Series(dtype="float64"),
        "n_chips": pd.Series(dtype="int32"),
        "seam_merged": pd.Series(dtype="bool"),
        "touches_edge_or_nodata": pd.Series(dtype="bool"),
        "model": pd.Series(dtype="object"),
        "class": pd.Series(dtype="object"),
    })  # fmt: skip
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def true_area_perimeter(polygons: np.ndarray, crs: CRS) -> tuple[np.ndarray, np.ndarray]:
    """Areas (m2) and perimeters (m, holes included) of polygons in ``crs``."""
    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        geod = crs.get_geod() or Geod(ellps="WGS84")
        figures = np.array([geod.geometry_area_perimeter(p) for p in polygons], dtype=np.float64)
        if figures.size == 0:
            return np.zeros(0), np.zeros(0)
        return np.abs(figures[:, 0]), figures[:, 1]
    unit = _metres_per_unit(crs)
    return shapely.area(polygons) * unit**2, shapely.length(polygons) * unit


def _metres_per_unit(crs: CRS) -> float:
    axis = crs.axis_info[0] if crs.axis_info else None
    factor = getattr(axis, "unit_conversion_factor", None)
    return float(factor) if factor else 1.0
