"""Score predicted field polygons against truth polygons: objects, pixels, boundaries, mask AP.

:func:`evaluate_files` (the library side of ``fieldseg evaluate``) reads both files, brings them
into one metric CRS and applies a label mode; :func:`evaluate_fields` does the scoring:

* **Objects** by :mod:`fieldseg.object_matching`, fieldseg's one definition of matches (IoU >
  0.5, one to one), split truth fields (over-segmentation) and merged truth fields
  (under-segmentation); plus the mean F1 over IoU thresholds 0.5:0.95.
* **Pixels, boundaries and mask AP** by :mod:`fieldseg.raster_metrics` on a grid of
  ``pixel_size_m`` (10 m by default) covering the evaluated area.
* **By size**: every object figure also per truth field size bin (< 1 ha, 1-5 ha, > 5 ha);
  predictions (precision, false positives) are binned by their own size.

Label modes, with the names ``fieldseg tile`` uses:

* ``complete`` (default): the truth holds every field of the area; everything counts.
* ``label_extent`` (an AOI): the truth is complete inside the AOI. A field, predicted or true,
  counts when more than half of its area lies inside; pixels count inside the AOI.
* ``sparse``: the truth holds only the drawn fields. Predictions count when they overlap the
  drawn fields by at least :data:`SPARSE_OVERLAP_SHARE` of their own area, or of a drawn field's
  area; others may be right about undrawn fields and are left out. Pixels count inside the
  drawn fields and the counted predictions.

Areas and sizes are in square metres of the metric CRS: the truth's CRS when projected in
metres with true areas where the truth lies, else (geographic, feet, Web Mercator) the UTM
zone of the truth's centre, so size bins mean true hectares.

What cannot be scored is refused before any rasterising, since it would otherwise come out as
plausible-looking figures (all 1 for two empty sets, all 0 for a file mix-up): a truth without a
field polygon (as ``fieldseg tile`` refuses such labels), predictions whose extent does not
overlap the truth's (a wrong CRS or the wrong file), a label extent holding no truth field,
and predictions whose features are all without a polygon area (points, say: the wrong file).
Predictions may be empty: a model may find nothing, which scores recall 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Proj, Transformer
from pyproj.exceptions import ProjError
from shapely.geometry.base import BaseGeometry

from fieldseg.atomic_output import atomic_file
from fieldseg.errors import ConfigError, InputFileError
from fieldseg.labels import check_coordinates_fit_crs, repaired_polygons, resolve_overlaps
from fieldseg.object_matching import (
    IOU_THRESHOLDS,
    SPARSE_OVERLAP_SHARE,
    ObjectMatches,
    ObjectOverlaps,
    object_overlaps,
)
from fieldseg.raster_metrics import (
    SIZE_BINS_HA,
    EvaluationGrid,
    mask_average_precision,
    pixel_metrics,
    size_bin_index,
)
from fieldseg.vector_io import read_area_of_interest, read_vector

logger = logging.getLogger(__name__)

LABEL_MODES = ("complete", "label_extent", "sparse")

#: A projected CRS whose areas are off by more than this share at the truth's centre is
#: replaced by the UTM zone there (UTM itself is off by at most about 0.2 % within its zone).
MAX_AREA_DISTORTION = 0.01
#: A truth overlap is resolved when it covers more than this share of the smaller field.
TRUTH_OVERLAP_SHARE = 0.01

#: A field counts in ``label_extent`` mode when more than this share of it lies in the AOI.
EXTENT_SHARE = 0.5

#: A grid whose pixels make the truth's median field smaller than this many is warned of.
COARSE_GRID_PIXELS = 4
#: Grids larger than this are refused: pixel metrics would take hours; use a coarser grid.
MAX_GRID_PIXELS = 2_000_000_000

#: Error classes of each field in the ``--errors`` layers and the ``--plot`` map.
TRUTH_ERRORS = ("tp", "fn", "split", "merged")
PREDICTED_ERRORS = ("tp", "fp", "split", "merged")


#: The widest boundary tolerance, in grid pixels (1 km at 10 m): a wider one says nothing about
#: boundaries, and matching slows down with it (1e9 m ran for minutes).
MAX_BOUNDARY_TOLERANCE_PX = 100


@dataclass(frozen=True)
class EvaluationSettings:
    """How the figures are computed (the defaults are the field-boundary community's)."""

    iou_threshold: float = 0.5
    pixel_size_m: float = 10.0
    boundary_tolerance_m: float = 10.0
    ap_tile_px: int = 256
    max_detections: int = 1000
    mask_ap: bool = True
    pixel_metrics: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ConfigError(f"IoU threshold must lie in [0, 1), got {self.iou_threshold}")
        if not self.pixel_size_m > 0:
            raise ConfigError(f"pixel size must be positive, got {self.pixel_size_m}")
        if not self.boundary_tolerance_m >= 0:
            raise ConfigError(
                f"boundary tolerance must be 0 or more, got {self.boundary_tolerance_m}"
            )
        if self.pixel_metrics and self.boundary_tolerance_px > MAX_BOUNDARY_TOLERANCE_PX:
            raise ConfigError(
                f"boundary tolerance must be at most {MAX_BOUNDARY_TOLERANCE_PX} pixels "
                f"({MAX_BOUNDARY_TOLERANCE_PX * self.pixel_size_m:g} m at "
                f"{self.pixel_size_m:g} m), got {self.boundary_tolerance_m:g} m"
            )
        if self.ap_tile_px < 16:
            raise ConfigError(f"AP tiles must be at least 16 px, got {self.ap_tile_px}")

    @property
    def boundary_tolerance_px(self) -> int:
        """The tolerance in whole grid pixels (rounded)."""
        return round(self.boundary_tolerance_m / self.pixel_size_m)


@dataclass
class FieldEvaluation:
    """The report of one evaluation, and each evaluated field with its status.

    Attributes:
        report: the JSON-ready report (see :func:`evaluate_fields`).
        truth: the evaluated truth fields with ``field_id``, ``error`` (tp, fn, split, merged),
            ``matched_id``, ``iou``, ``area_ha``, ``size`` and geometry, in the metric CRS.
        predicted: the evaluated predictions with the same columns (error tp, fp, split,
            merged) and ``score`` where the input had one.
    """

    report: dict[str, Any]
    truth: gpd.GeoDataFrame
    predicted: gpd.GeoDataFrame
    extent: BaseGeometry | None = field(default=None)

    def table(self) -> str:
        """The report as a readable table (what ``fieldseg evaluate`` prints)."""
        from fieldseg.evaluation_report import format_table

        return format_table(self.report)

    def write_json(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the report atomically as indented JSON (``--output``)."""
        with atomic_file(path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(self.report, indent=2, allow_nan=False) + "\n")
        return Path(path)

    def write_report(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the report atomically, by its extension (``-o``).

        ``.json`` holds the full report (as :meth:`write_json`), ``.txt`` the printed figures
        (:meth:`table`).

        Raises:
            ConfigError: another extension.
        """
        check_report_path(path)
        if Path(path).suffix.lower() == ".json":
            return self.write_json(path, overwrite=overwrite)
        with atomic_file(path, overwrite=overwrite) as tmp:
            tmp.write_text(self.table() + "\n")
        return Path(path)

    def write_errors(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the styled ``truth`` and ``predicted`` error layers, a ``.gpkg`` (``--errors``)."""
        from fieldseg.evaluation_report import write_error_layers

        return write_error_layers(self, path, overwrite=overwrite)

    def plot(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Draw the PNG map of matched, missed, false, split and merged fields (``--plot``)."""
        from fieldseg.evaluation_report import plot_errors

        return plot_errors(self, path, overwrite=overwrite)


def check_report_path(path: str | os.PathLike[str]) -> None:
    """Refuse a report path :meth:`FieldEvaluation.write_report` cannot write (before the work)."""
    if Path(path).suffix.lower() not in (".json", ".txt"):
        raise ConfigError(
            "--output writes the full report as *.json or the printed figures as *.txt, not "
            f"{Path(path).name}"
        )


def evaluate_files(
    predicted_path: str | os.PathLike[str],
    truth_path: str | os.PathLike[str],
    *,
    label_extent: str | os.PathLike[str] | None = None,
    sparse: bool = False,
    settings: EvaluationSettings | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> FieldEvaluation:
    """Read a predicted and a truth polygon file (any OGR format) and evaluate them.

    Args:
        predicted_path: predicted fields, e.g. ``fieldseg predict``'s output; a ``score``
            column enables mask AP.
        truth_path: truth field polygons.
        label_extent: an AOI file inside which the truth is complete.
        sparse: the truth holds only some drawn fields.
        settings: thresholds, grid and tiles.
        on_stage: called with a short text as each stage starts (progress for the CLI).

    Raises:
        InputFileError, CRSError: unreadable files, no CRS, coordinates that do not fit the CRS;
            and whatever :func:`evaluate_fields` refuses (no truth field polygon, extents that
            do not overlap, a label extent without truth fields).
        ConfigError: both label modes at once.
    """
    if label_extent is not None and sparse:
        raise ConfigError("--label-extent and --sparse exclude each other; choose one")
    started = time.perf_counter()
    _stage(on_stage, "reading")
    truth = _read_fields(truth_path, "truth")
    predicted = _read_fields(predicted_path, "predicted")
    crs = _metric_crs(truth)
    reprojected = [name for name, f in (("truth", truth), ("predicted", predicted)) if f.crs != crs]
    truth, predicted = _to_crs(truth, crs), _to_crs(predicted, crs)
    extent = read_area_of_interest(label_extent, crs) if label_extent is not None else None
    read_seconds = time.perf_counter() - started
    evaluation = evaluate_fields(
        predicted,
        truth,
        label_extent=extent,
        sparse=sparse,
        settings=settings,
        on_stage=on_stage,
    )
    report = evaluation.report
    report["inputs"] = {
        "predicted": str(predicted_path),
        "truth": str(truth_path),
        "label_extent": str(label_extent) if label_extent is not None else None,
        "reprojected": reprojected,
        **report["inputs"],
    }
    report["seconds"] = {"read": round(read_seconds, 3), **report["seconds"]}
    report["seconds"]["total"] = round(time.perf_counter() - started, 3)
    return evaluation


def evaluate_fields(
    predicted: gpd.GeoDataFrame,
    truth: gpd.GeoDataFrame,
    *,
    label_extent: BaseGeometry | None = None,
    sparse: bool = False,
    settings: EvaluationSettings | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> FieldEvaluation:
    """Evaluate predicted against truth fields, both in one projected CRS in metres.

    Args:
        predicted: predicted polygons; optional ``field_id`` and ``score`` columns.
        truth: truth polygons; optional ``field_id``.
        label_extent: the truth is complete inside this geometry only (``label_extent`` mode).
        sparse: the truth holds only the drawn fields (``sparse`` mode).
        settings: thresholds, grid and tiles.
        on_stage: called with a short text as each stage starts.

    Returns:
        The report: ``label_mode``, ``counts``, ``object`` (matching figures at the IoU
        threshold, ``mean_f1`` and ``f1_by_iou``), ``by_size`` (the object figures per size
        bin), ``pixel`` (extent and boundary figures, or None), ``mask_ap`` (or None, with the
        reason in ``mask_ap_skipped``), ``settings`` and ``seconds``; plus each field's status.

    Raises:
        InputFileError: the truth, or predictions that have features, hold no polygon with
            an area; the predictions' extent does not overlap the truth's; the label extent
            holds no truth field. Nothing could be scored, so this is refused rather than
            reported as zeros (or ones).
        ConfigError: both label modes, or the sets not in one projected CRS.
    """
    settings = settings or EvaluationSettings()
    if label_extent is not None and sparse:
        raise ConfigError("label_extent and sparse exclude each other; choose one")
    if truth.crs is None or predicted.crs is None or not _in_metres(truth.crs):
        raise ConfigError("evaluate_fields needs both sets in one projected CRS in metres")
    if predicted.crs != truth.crs:
        raise ConfigError("evaluate_fields needs both sets in one CRS; reproject first")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    n_truth_read, n_predicted_read = len(truth), len(predicted)
    truth = _prepared(truth, "truth")
    if truth.empty:  # the labels check of `tile` (load_field_labels), on repaired_polygons
        held = (
            f"its {n_truth_read} feature(s) are points, lines or empty geometries"
            if n_truth_read
            else "it has no features"
        )
        raise InputFileError(
            f"the truth holds no field polygon with an area: {held}; nothing to evaluate against"
        )
    n_without_area = {"truth": n_truth_read - len(truth)}
    predicted = _prepared(predicted, "predicted")
    if predicted.empty and n_predicted_read:  # none at all is a model that found nothing
        raise InputFileError(
            f"the predictions hold no field polygon with an area: their {n_predicted_read} "
            "feature(s) are points, lines or empty geometries; nothing to score"
        )
    _check_extents_overlap(predicted, truth)
    n_without_area["predicted"] = n_predicted_read - len(predicted)

    mode = "complete"
    region: BaseGeometry | None = None
    if label_extent is not None:
        mode = "label_extent"
        region = shapely.make_valid(label_extent)
        inside = _mostly_inside(truth.geometry.to_numpy(), region)
        predicted_inside = _mostly_inside(predicted.geometry.to_numpy(), region)
        if not inside.any() and not predicted_inside.any():
            _refuse_extent_without_truth(region, truth)
        if not inside.any():  # land known to hold no field: what is predicted there is wrong
            logger.warning(
                "the label extent holds no truth field: its %d predicted fields are all false "
                "positives", int(predicted_inside.sum()),
            )  # fmt: skip
        truth = truth[inside]
        predicted = predicted[predicted_inside]
    elif sparse:
        mode = "sparse"
        counted = _overlapping_drawn(predicted.geometry.to_numpy(), truth.geometry.to_numpy())
        predicted = predicted[counted]
        region = shapely.union_all(
            np.concatenate([truth.geometry.to_numpy(), predicted.geometry.to_numpy()])
        )
    _stage(on_stage, f"checking {len(truth)} truth fields for overlaps")
    truth, n_truth_overlaps, n_truth_left_out = _without_overlaps(truth)
    truth = truth.reset_index(drop=True)
    predicted = predicted.reset_index(drop=True)

    _stage(on_stage, f"matching {len(predicted)} predicted to {len(truth)} truth fields")
    pred_geoms, truth_geoms = predicted.geometry.to_numpy(), truth.geometry.to_numpy()
    overlaps = object_overlaps(
        pred_geoms, truth_geoms, min_iou=min(settings.iou_threshold, min(IOU_THRESHOLDS))
    )
    matches = overlaps.match(settings.iou_threshold)
    f1_by_iou = overlaps.f1_over_thresholds(IOU_THRESHOLDS)
    truth_bins = size_bin_index(overlaps.truth_area)
    pred_bins = size_bin_index(overlaps.predicted_area)
    truth_status = _truth_status(truth, matches, predicted, overlaps, truth_bins)
    pred_status = _predicted_status(predicted, matches, truth, overlaps, pred_bins)
    seconds["objects"] = time.perf_counter() - clock

    grid = None
    pixel: dict[str, Any] | None = None
    mask_ap: dict[str, Any] | None = None
    ap_skipped: str | None = None
    if settings.pixel_metrics or settings.mask_ap:
        grid = _grid(region, truth_geoms, pred_geoms, settings.pixel_size_m)
    if settings.pixel_metrics and grid is not None:
        _stage(on_stage, f"pixel and boundary figures on a {grid.width} x {grid.height} grid")
        clock = time.perf_counter()
        pixel = pixel_metrics(
            pred_geoms,
            truth_geoms,
            grid,
            region=region,
            boundary_tolerance_px=settings.boundary_tolerance_px,
            truth_size_bins=truth_bins,
            predicted_size_bins=pred_bins,
        )
        seconds["pixel"] = time.perf_counter() - clock
    if not settings.mask_ap:
        ap_skipped = "not asked for"
    elif "score" not in predicted.columns:
        ap_skipped = "the predictions have no score column"
    elif grid is None:
        ap_skipped = "nothing to evaluate"
    else:
        _stage(on_stage, f"mask AP on {settings.ap_tile_px} px tiles")
        clock = time.perf_counter()
        mask_ap = mask_average_precision(
            pred_geoms,
            predicted["score"].to_numpy(dtype=np.float64),
            truth_geoms,
            grid,
            region=region,
            tile_px=settings.ap_tile_px,
            max_detections=settings.max_detections,
        )
        seconds["mask_ap"] = time.perf_counter() - clock

    report: dict[str, Any] = {
        "label_mode": mode,
        "inputs": {
            "crs": truth.crs.to_string(),
            "n_truth_read": n_truth_read,
            "n_predicted_read": n_predicted_read,
            "n_without_area": n_without_area,
            "n_truth_overlapping_pairs": n_truth_overlaps,
            "n_truth_left_out": n_truth_left_out,
        },
        "counts": {"n_truth": len(truth), "n_predicted": len(predicted)},
        "object": {
            **_clean_numbers(matches.metrics()),
            "mean_f1": _number(float(np.mean(list(f1_by_iou.values())))),
            "f1_by_iou": {f"{t:.2f}": _number(v) for t, v in f1_by_iou.items()},
        },
        "by_size": _by_size(truth_status, pred_status, matches),
        "pixel": pixel,
        "mask_ap": mask_ap,
        "mask_ap_skipped": ap_skipped,
        "settings": {
            "iou_threshold": settings.iou_threshold,
            "pixel_size_m": settings.pixel_size_m,
            "boundary_tolerance_m": settings.boundary_tolerance_m,
            "boundary_tolerance_px": settings.boundary_tolerance_px,
            "ap_tile_px": settings.ap_tile_px,
            "max_detections": settings.max_detections,
            "size_bins_ha": [
                [lo, None if math.isinf(hi) else hi, name] for lo, hi, name in SIZE_BINS_HA
            ],
            "sparse_overlap_share": SPARSE_OVERLAP_SHARE if mode == "sparse" else None,
            "extent_share": EXTENT_SHARE if mode == "label_extent" else None,
        },
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    return FieldEvaluation(report, truth_status, pred_status, extent=region)


# --------------------------------------------------------------------------------------------
# Reading and preparing


def _read_fields(path: str | os.PathLike[str], name: str) -> gpd.GeoDataFrame:
    """Read one set; an empty truth file is refused here already, naming the file."""
    frame = read_vector(path)
    if len(frame) == 0 and name == "truth":
        raise InputFileError(
            f"the truth file {path} holds no features: nothing to evaluate against"
        )
    if len(frame) == 0:
        logger.warning("the %s file %s holds no features", name, path)
    check_coordinates_fit_crs(frame, path)
    return frame


def _in_metres(crs: CRS) -> bool:
    """A projected CRS whose axes are in metres (areas in hectares, a grid in metres)."""
    return bool(crs.is_projected) and all(
        axis.unit_name in ("metre", "meter") for axis in crs.axis_info[:2]
    )


def _metric_crs(truth: gpd.GeoDataFrame) -> CRS:
    """The truth's CRS where it measures true metres, else the UTM zone of its centre."""
    if not np.isfinite(truth.total_bounds).all():  # no geometry at all: refused later
        if _in_metres(truth.crs):
            return truth.crs
        raise InputFileError("the truth holds no field polygon with an area; nothing to evaluate")
    return truth.crs if _true_areas(truth) else truth.estimate_utm_crs()


def _true_areas(frame: gpd.GeoDataFrame) -> bool:
    """Whether the frame's CRS measures true metres where the frame lies.

    In metres, and areas off by at most :data:`MAX_AREA_DISTORTION` at its centre (Web
    Mercator is not: 2.3x at 48 N).
    """
    if not _in_metres(frame.crs):
        return False
    x, y = (frame.total_bounds[:2] + frame.total_bounds[2:]) / 2
    lon, lat = Transformer.from_crs(frame.crs, "EPSG:4326", always_xy=True).transform(x, y)
    try:
        scale = Proj(frame.crs).get_factors(lon, lat).areal_scale
    except ProjError:  # a projection PROJ cannot differentiate there: trust it
        return True
    return bool(abs(scale - 1.0) <= MAX_AREA_DISTORTION)


def _to_crs(frame: gpd.GeoDataFrame, crs: object) -> gpd.GeoDataFrame:
    return frame if frame.crs == crs else frame.to_crs(crs)


def _prepared(frame: gpd.GeoDataFrame, name: str) -> gpd.GeoDataFrame:
    """Valid polygonal geometries with an area, a ``field_id`` and (if any) a float ``score``."""
    polygons, _ = repaired_polygons(frame.geometry.to_numpy())
    keep = shapely.area(polygons) > 0  # None has area NaN
    if "field_id" in frame.columns and pd.api.types.is_integer_dtype(frame["field_id"]):
        ids = frame["field_id"].to_numpy(dtype=np.int64)
    else:
        ids = np.arange(1, len(frame) + 1, dtype=np.int64)  # row numbers, as `tile` numbers
    columns: dict[str, Any] = {"field_id": ids[keep]}
    if "score" in frame.columns:
        scores = pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(scores[keep]).any():
            raise InputFileError(f"the {name} score column has empty or non-numeric values")
        columns["score"] = scores[keep]
    n_dropped = int((~keep).sum())
    if n_dropped:
        logger.warning("%d %s features without a polygon area were left out", n_dropped, name)
    return gpd.GeoDataFrame(columns, geometry=list(polygons[keep]), crs=frame.crs)


def _without_overlaps(truth: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, int, int]:
    """The truth with its real overlaps resolved as ``tile`` resolves them.

    Fields are matched one to one, so two truth fields drawn over the same ground (a duplicate
    row, a field drawn twice) could never both be found. An overlap covering more than
    :data:`TRUTH_OVERLAP_SHARE` of the smaller field goes to the smaller one; a field left
    with less than half its area (a copy, or a field drawn under smaller ones) is left out.
    Hand-drawn neighbours that overlap by centimetres are left as they are: matching at an IoU
    of 0.5 does not notice them. Returns the truth, the overlapping pairs and the fields left
    out.
    """
    if len(truth) < 2:
        return truth, 0, 0
    resolved = truth.copy()
    n_pairs = resolve_overlaps(resolved, min_overlap_share=TRUTH_OVERLAP_SHARE)
    if not n_pairs:
        return truth, 0, 0
    area_before, area_after = (shapely.area(f.geometry.to_numpy()) for f in (truth, resolved))
    kept = area_after >= 0.5 * area_before
    n_left_out = int((~kept).sum())
    logger.warning(
        "the truth holds %d overlapping pairs of fields: each overlap was given to the smaller "
        "field, as `tile` does; %d field(s) left with less than half their area were left out",
        n_pairs, n_left_out,
    )  # fmt: skip
    return resolved[kept], n_pairs, n_left_out


def _mostly_inside(geometries: np.ndarray, region: BaseGeometry) -> np.ndarray:
    """True for geometries with more than :data:`EXTENT_SHARE` of their area in ``region``."""
    if len(geometries) == 0:
        return np.zeros(0, bool)
    shapely.prepare(region)
    inside = shapely.area(shapely.intersection(geometries, region))
    return inside > EXTENT_SHARE * shapely.area(geometries)


def _check_extents_overlap(predicted: gpd.GeoDataFrame, truth: gpd.GeoDataFrame) -> None:
    """Refuse predictions whose bounding box does not overlap the truth's (empty ones pass).

    Disjoint sets have nothing to match: every figure would be 0, and the grid covering both
    could be huge (two files 300 km apart make a 30000 x 30000 px grid). It is almost always a
    wrong CRS (a file's coordinates read in another CRS land far away) or the wrong file.
    """
    if predicted.empty:
        return
    p_bounds, t_bounds = predicted.total_bounds, truth.total_bounds
    apart = (
        p_bounds[0] >= t_bounds[2]
        or t_bounds[0] >= p_bounds[2]
        or p_bounds[1] >= t_bounds[3]
        or t_bounds[1] >= p_bounds[3]
    )
    if apart:
        raise InputFileError(
            f"the predicted fields ({_bounds_text(p_bounds)}) and the truth fields "
            f"({_bounds_text(t_bounds)}) do not overlap in {truth.crs.to_string()}: "
            "nothing can be matched; is a file's CRS wrong, or are they files of different areas?"
        )


def _refuse_extent_without_truth(region: BaseGeometry, truth: gpd.GeoDataFrame) -> None:
    """Raise the error for a label extent in which no field, truth or predicted, counts."""
    where = f"the label extent ({_bounds_text(region.bounds)})"
    crs = truth.crs.to_string()
    if not shapely.intersects(truth.geometry.to_numpy(), region).any():
        raise InputFileError(
            f"{where} overlaps no truth field (the truth: {_bounds_text(truth.total_bounds)}) "
            f"in {crs}: nothing can be scored there; "
            "is it the area of interest of this truth, with the right CRS?"
        )
    raise InputFileError(
        f"{where} holds no field, truth or predicted: none lies more than {EXTENT_SHARE:.0%} "
        "inside it, so nothing can be scored there"
    )


def _bounds_text(bounds: Any) -> str:
    """Bounds ``(xmin, ymin, xmax, ymax)`` as text in whole CRS units, for error messages."""
    xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    return f"x {xmin:.0f} to {xmax:.0f}, y {ymin:.0f} to {ymax:.0f}"


def _overlapping_drawn(predicted: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """Predictions overlapping drawn fields by :data:`SPARSE_OVERLAP_SHARE` of either's area."""
    counted = np.zeros(len(predicted), bool)
    if len(predicted) == 0 or len(drawn) == 0:
        return counted
    pi, ti = shapely.STRtree(drawn).query(predicted, predicate="intersects")
    if len(pi) == 0:
        return counted
    shared = shapely.area(shapely.intersection(predicted[pi], drawn[ti]))
    own = np.bincount(pi, weights=shared, minlength=len(predicted))
    counted |= own >= SPARSE_OVERLAP_SHARE * shapely.area(predicted)
    of_field = shared >= SPARSE_OVERLAP_SHARE * shapely.area(drawn[ti])
    counted[pi[of_field & (shared > 0)]] = True
    return counted & (own > 0)


def _grid(
    region: BaseGeometry | None, truth: np.ndarray, predicted: np.ndarray, pixel_size: float
) -> EvaluationGrid | None:
    """The grid covering the region, or both sets; None when there is nothing to cover."""
    if region is not None and not region.is_empty:
        bounds = region.bounds
    else:
        every = np.concatenate([truth, predicted])
        if len(every) == 0:
            return None
        bounds = tuple(shapely.total_bounds(every))
    typical = float(np.median(shapely.area(truth))) if len(truth) else 0.0
    if typical and typical < COARSE_GRID_PIXELS * pixel_size**2:
        logger.warning(
            "the truth's median field is %.0f m2, %.1f grid pixels of %g m: the figures on that "
            "grid (pixel, boundary, mask AP) cannot tell its fields apart; use the imagery's "
            "pixel size",
            typical, typical / pixel_size**2, pixel_size,
        )  # fmt: skip
    grid = EvaluationGrid.covering(bounds, pixel_size)
    if grid.width * grid.height > MAX_GRID_PIXELS:
        raise ConfigError(
            f"the evaluated area is {grid.width} x {grid.height} pixels of {pixel_size:g} m; "
            "use a coarser --pixel-size, --label-extent on a part, or --no-pixel-metrics"
        )
    return grid


# --------------------------------------------------------------------------------------------
# Field status and figures by size


def _split_pieces(overlaps: ObjectOverlaps, matches: ObjectMatches) -> np.ndarray:
    """(n_predicted,) True for predictions lying more than half inside a split truth field."""
    inside = overlaps.intersection > 0.5 * overlaps.predicted_area[overlaps.predicted]
    split = np.zeros(overlaps.n_truth, bool)
    split[matches.split_truth] = True
    pieces = np.zeros(overlaps.n_predicted, bool)
    pieces[overlaps.predicted[inside & split[overlaps.truth]]] = True
    return pieces


def _truth_status(
    truth: gpd.GeoDataFrame,
    matches: ObjectMatches,
    predicted: gpd.GeoDataFrame,
    overlaps: ObjectOverlaps,
    bins: np.ndarray,
) -> gpd.GeoDataFrame:
    matched = np.full(len(truth), -1, np.int64)
    iou = matches.best_iou_truth.astype(np.float64).copy()
    matched[matches.pairs[:, 1]] = matches.pairs[:, 0]
    iou[matches.pairs[:, 1]] = matches.pair_iou
    error = np.where(matched >= 0, "tp", "fn").astype(object)
    error[matches.split_truth] = "split"
    error[matches.merged_truth] = "merged"
    pred_ids = predicted["field_id"].to_numpy()
    return gpd.GeoDataFrame(
        {
            "field_id": truth["field_id"].to_numpy(),
            "error": error,
            "matched": matched >= 0,
            "matched_id": _matched_ids(pred_ids, matched),
            "iou": np.round(iou, 4),
            "area_ha": np.round(overlaps.truth_area / 10_000.0, 4),
            "size": [SIZE_BINS_HA[b][2] for b in bins],
        },
        geometry=truth.geometry.to_numpy(),
        crs=truth.crs,
    )


def _predicted_status(
    predicted: gpd.GeoDataFrame,
    matches: ObjectMatches,
    truth: gpd.GeoDataFrame,
    overlaps: ObjectOverlaps,
    bins: np.ndarray,
) -> gpd.GeoDataFrame:
    matched = matches.matched_truth_of
    iou = matches.best_iou_predicted.astype(np.float64).copy()
    iou[matches.pairs[:, 0]] = matches.pair_iou
    error = np.where(matched >= 0, "tp", "fp").astype(object)
    error[_split_pieces(overlaps, matches) & (matched < 0)] = "split"
    error[matches.merged_predictions] = "merged"
    truth_ids = truth["field_id"].to_numpy()
    columns: dict[str, Any] = {
        "field_id": predicted["field_id"].to_numpy(),
        "error": error,
        "matched": matched >= 0,
        "matched_id": _matched_ids(truth_ids, matched),
        "iou": np.round(iou, 4),
        "area_ha": np.round(overlaps.predicted_area / 10_000.0, 4),
        "size": [SIZE_BINS_HA[b][2] for b in bins],
    }
    if "score" in predicted.columns:
        columns["score"] = predicted["score"].to_numpy()
    return gpd.GeoDataFrame(columns, geometry=predicted.geometry.to_numpy(), crs=predicted.crs)


def _matched_ids(other_ids: np.ndarray, index: np.ndarray) -> pd.arrays.IntegerArray:
    """The ``field_id`` of each object's match in the other set, or NA where unmatched."""
    ids = np.zeros(len(index), np.int64)
    ids[index >= 0] = other_ids[index[index >= 0]]
    return pd.arrays.IntegerArray(ids, mask=index < 0)


def _by_size(
    truth: gpd.GeoDataFrame, predicted: gpd.GeoDataFrame, matches: ObjectMatches
) -> dict[str, dict[str, Any]]:
    """Object figures per size bin: truth-side by truth size, prediction-side by own size.

    Split and merged count as in ``object`` (a field may be both), not by the one error label
    each field shows in the error layers.
    """
    split = np.zeros(len(truth), bool)
    split[matches.split_truth] = True
    merged = np.zeros(len(truth), bool)
    merged[matches.merged_truth] = True
    out: dict[str, dict[str, Any]] = {}
    for _, _, name in SIZE_BINS_HA:
        in_bin = (truth["size"] == name).to_numpy()
        t = truth[in_bin]
        p = predicted[predicted["size"] == name]
        n_truth, n_pred = len(t), len(p)
        tp_truth = int(t["matched"].sum())
        tp_pred = int(p["matched"].sum())
        recall = tp_truth / n_truth if n_truth else None
        precision = tp_pred / n_pred if n_pred else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else (0.0 if precision is not None and recall is not None else None)
        )
        out[name] = {
            "n_truth": n_truth,
            "n_predicted": n_pred,
            "tp": tp_truth,
            "fn": n_truth - tp_truth,
            "fp": n_pred - tp_pred,
            "precision": _number(precision),
            "recall": _number(recall),
            "f1": _number(f1),
            "n_split_truth": int(split[in_bin].sum()),
            "split_rate": _number(split[in_bin].mean() if n_truth else None),
            "n_merged_truth": int(merged[in_bin].sum()),
            "merged_rate": _number(merged[in_bin].mean() if n_truth else None),
        }
    return out


def _number(value: float | None) -> float | None:
    """A plain float for JSON; None for a missing or undefined (NaN) figure."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _clean_numbers(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _number(v) if isinstance(v, float) else v for k, v in values.items()}


def _stage(on_stage: Callable[[str], None] | None, text: str) -> None:
    logger.debug(text)
    if on_stage is not None:
        on_stage(text)
