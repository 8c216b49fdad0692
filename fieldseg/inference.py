"""Predict a whole scene: windowed reading, batched inference, streaming stitching and writing.

``predict_scene`` is the library side of ``fieldseg predict``. It reads the scene one row of
chips at a time, runs the model on batches of chips (skipping chips with no data), makes each
chip's instances disjoint (:mod:`fieldseg.chip_resolution`), stitches them across seams
(:mod:`fieldseg.stitching`), traces finished fields into polygons (:mod:`fieldseg.field_polygons`)
and appends them to the output (:mod:`fieldseg.field_output`) while the window moves on. Peak
memory therefore depends on the chip size and the scene width, not on the scene height. With
``write_rasters`` the blended probability maps of a per-pixel model are written as GeoTIFFs
(:mod:`fieldseg.probability_rasters`) as they stream by too.

It accepts any :class:`fieldseg.models.FieldModel` (a trained model, or the oracle of
:mod:`fieldseg.oracle`), or a checkpoint file or run folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import torch
from rasterio.transform import array_bounds
from rasterio.windows import Window, from_bounds

from fieldseg.atomic_output import check_output_path
from fieldseg.chip_grid import check_chip_geometry, chip_starts
from fieldseg.chip_resolution import ResolvedChip, empty_chip, resolve_chip
from fieldseg.cpu_cores import usable_cores
from fieldseg.dense_stitching import DenseBlender
from fieldseg.devices import select_device
from fieldseg.errors import ConfigError, InputFileError, first_line
from fieldseg.field_output import FieldWriter
from fieldseg.field_polygons import FieldTracer
from fieldseg.models.base import ChipPrediction, FieldModel
from fieldseg.models.boxed_masks import BoxedMasks
from fieldseg.probability_rasters import ProbabilityRasterWriter, check_raster_outputs
from fieldseg.progress import progress, progress_shown
from fieldseg.raster_io import (
    RasterInfo,
    chip_valid_mask,
    default_band_names,
    nodata_mask,
    open_raster,
    raster_info,
    read_window,
    strip_block_cache,
)
from fieldseg.rasterization import rasterize_mask
from fieldseg.stitching import SceneStitcher
from fieldseg.vector_io import check_vector_format, could_be_lon_lat, read_area_of_interest

if TYPE_CHECKING:
    import geopandas as gpd

logger = logging.getLogger(__name__)

#: Defaults when neither the caller nor the checkpoint says otherwise.
DEFAULT_CHIP_SIZE = 256
MIN_FIELD_PIXELS = 4
#: How chips are joined (``predict_scene``'s ``seams``).
SEAM_MODES = ("auto", "instances", "blend")
#: A band whose 2-98 % spread differs from the trained one by more than this factor, either
#: way, is scaled differently (reflectance against digital numbers differ by 10,000).
SCALE_RATIO = 50.0
#: Scene pixels larger or smaller than the trained ones by more than this factor are warned of.
PIXEL_SIZE_RATIO = 1.2
#: Fewer valid pixels than this (a 32 x 32 px area) are too few to judge a band's spread by.
SCALE_MIN_PIXELS = 1024


@dataclass
class PredictSummary:
    """What a prediction did: counts, timings by stage (``seconds``) and the settings used."""

    output: Path
    n_fields: int
    n_chips: int
    n_chips_skipped: int
    #: The area predicted: pixels with data inside the extent or bbox (nodata left out).
    area_km2: float
    seconds: dict[str, float] = field(default_factory=dict)
    #: The probability rasters written (``write_rasters``), by map name.
    rasters: dict[str, Path] = field(default_factory=dict)
    #: The settings used, defaults resolved: chip side and overlap in pixels, the seam mode
    #: (``blend`` or ``instances``), the score threshold and the ``model`` tag of the fields.
    chip_size: int = 0
    overlap: int = 0
    seams: str = ""
    score_threshold: float = 0.0
    model: str = ""


@dataclass
class _LoadedModel:
    model: FieldModel
    name: str
    chip_size: int
    categories: tuple[str, ...]


def predict_scene(
    scene: str | os.PathLike[str],
    model: FieldModel | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    chip_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    score_threshold: float | None = None,
    min_area_m2: float | None = None,
    simplify_m: float = 0.0,
    extent: str | os.PathLike[str] | None = None,
    bbox: Sequence[float] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    debug_layers: bool = False,
    show_progress: bool | None = None,
    seams: str = "auto",
    write_rasters: str | os.PathLike[str] | None = None,
    ignore_band_names: bool = False,
) -> PredictSummary:
    """Find the fields of a scene and write them as polygons.

    Args:
        scene: a GeoTIFF or VRT with the bands the model was trained on.
        model: a :class:`FieldModel`, or a checkpoint file or run folder (its best.pt). A
            model object is used as it is: it is left on ``device``, in eval mode, with
            ``score_threshold`` set.
        output: ``.gpkg`` (layer ``fields``; read it back with ``layer="fields"``, the file
            also holds QGIS's ``layer_styles`` table), ``.parquet``, ``.fgb`` or ``.geojson``.
        chip_size: chip side in pixels; default the checkpoint's training chips.
        overlap: overlap of neighbouring chips; default a quarter of a chip.
        batch_size: chips per model call.
        score_threshold: instances scoring less are dropped; default the model's
            (``FieldModel.default_score_threshold``: 0.5 for instance models, 0 for the U-Net,
            whose extraction drops fields below its own tuned score floor).
        min_area_m2: fields smaller are dropped; default four pixels.
        simplify_m: simplify the polygons by this tolerance in metres, keeping shared edges
            shared (0: exact pixel edges).
        extent: a vector file: predict only inside its polygons.
        bbox: ``(xmin, ymin, xmax, ymax)`` in the scene CRS: predict only inside.
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: replace an existing output.
        debug_layers: add ``chips`` and ``seams`` layers (GeoPackage output).
        show_progress: progress bar on or off for this call; None: as set globally
            (:func:`fieldseg.progress.set_progress_enabled`, on where stderr is a terminal).
        seams: how chips are joined: ``instances`` (each chip's instances made disjoint and
            stitched across seams), ``blend`` (models with per-pixel outputs only: overlapping
            chips' maps blended and fields extracted on the blend), or ``auto`` (``blend``
            where the model can, else ``instances``).
        write_rasters: a folder (created when missing) to also write the blended probability
            maps into: ``extent.tif`` and ``boundary.tif``, float32 in [0, 1], NaN where no
            chip saw a valid pixel, on the predicted area's grid
            (:mod:`fieldseg.probability_rasters`). Only where chips are blended; other files
            in the folder are left alone, the two maps are replaced only with ``overwrite``.
        ignore_band_names: match the scene's bands to the model's by position alone (another
            year's stack, whose names carry other dates); the count must still agree, and the
            names that differ are logged.

    Returns:
        A :class:`PredictSummary`: the output, how many fields, chips (and chips skipped as
        all nodata) and km2, the seconds per stage, the rasters written, and the settings
        used with their defaults resolved (chip size, overlap, seam mode, score threshold,
        model tag).

    Raises:
        FieldsegError: bad input (the message says which and why).
    """
    started = time.perf_counter()
    check_vector_format(output)
    inputs = [scene, *([extent] if extent is not None else [])]
    if isinstance(model, (str, os.PathLike)):
        inputs.append(model)
    check_output_path(output, overwrite=overwrite, inputs=inputs)
    if write_rasters is not None:
        check_raster_outputs(write_rasters, overwrite=overwrite, inputs=inputs)
    if extent is not None and bbox is not None:
        raise ConfigError("give --extent or --bbox, not both")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if simplify_m < 0:
        raise ConfigError(f"--simplify-m must be >= 0, got {simplify_m}")
    if score_threshold is not None and not 0 <= score_threshold <= 1:
        raise ConfigError(f"--score-threshold is a score between 0 and 1, got {score_threshold}")
    if min_area_m2 is not None and min_area_m2 < 0:
        raise ConfigError(f"--min-area-m2 must be >= 0, got {min_area_m2}")
    if debug_layers and Path(output).suffix.lower() != ".gpkg":
        raise ConfigError(
            f"--debug-layers adds layers to a GeoPackage; {Path(output).name} holds one layer "
            "(write a .gpkg to see the chips and seams)"
        )
    loaded = _load_model(model)
    chip_size = chip_size or loaded.chip_size
    overlap = chip_size // 4 if overlap is None else overlap
    check_chip_geometry(chip_size, overlap)
    if overlap < 2:
        raise ConfigError("overlap must be at least 2 pixels: seams are joined where chips overlap")
    if seams not in SEAM_MODES:
        raise ConfigError(f"seams must be one of {', '.join(SEAM_MODES)}; got {seams!r}")
    if seams == "blend" and not loaded.model.dense_output:
        raise ConfigError(
            f"--seams blend needs a model with per-pixel outputs; {loaded.model.family} "
            "predicts instances only (use --seams instances)"
        )
    blend = seams == "blend" or (seams == "auto" and loaded.model.dense_output)
    if write_rasters is not None and not blend:
        reason = (
            f"{loaded.model.family} predicts instances only"
            if not loaded.model.dense_output
            else "--seams instances joins chip instances and blends no maps"
        )
        raise ConfigError(
            f"--write-rasters needs blended per-pixel maps: {reason}; "
            "use --seams blend with a model that has them"
        )
    chosen = select_device(device)
    net = loaded.model.to(chosen).eval()
    if score_threshold is None:
        score_threshold = net.default_score_threshold
    net.set_score_threshold(score_threshold)
    timings = dict.fromkeys(("read", "model", "resolve", "stitch", "trace", "write"), 0.0)

    # no more of GDAL's block cache than reading strips of chips needs
    with strip_block_cache(scene, chip_size), open_raster(scene) as src:
        info = raster_info(src)
        _check_bands(info, net, ignore_names=ignore_band_names)
        area_window, aoi = _prediction_area(info, extent, bbox)
        if net.checks_scene_statistics:
            _warn_if_statistics_differ(src, info, net, area_window)
        area_transform = rasterio.windows.transform(area_window, info.transform)
        height, width = int(area_window.height), int(area_window.width)
        pixel_m2 = _pixel_area_m2(info, area_window)
        _warn_if_pixel_size_differs(net, _ground_pixel_m(info, area_window))
        _warn_if_bit_depth_differs(net, info)
        min_area = MIN_FIELD_PIXELS * pixel_m2 if min_area_m2 is None else min_area_m2
        rows = chip_starts(height, chip_size, chip_size - overlap)
        cols = chip_starts(width, chip_size, chip_size - overlap)
        _warn_if_dense_grid(chip_size, overlap, len(rows) * len(cols))
        _warn_if_mostly_padding(chip_size, loaded.chip_size, height, width)
        rasters: ProbabilityRasterWriter | None = None
        if write_rasters is not None:
            params = net.extraction_params  # type: ignore[attr-defined]
            rasters = ProbabilityRasterWriter(
                write_rasters,
                crs=info.crs,
                transform=area_transform,
                height=height,
                width=width,
                overwrite=overwrite,
                tags={
                    "model": loaded.name,
                    "extent_threshold": params.extent_threshold,
                    "marker_threshold": params.marker_threshold,
                    "chip_size": chip_size,
                    "overlap": overlap,
                },
            )
        stitcher: SceneStitcher | DenseBlender
        if blend:
            stitcher = DenseBlender(
                height,
                width,
                chip_size=chip_size,
                overlap=overlap,
                params=net.extraction_params,  # type: ignore[attr-defined]
                chip_rows=rows,
                chip_cols=cols,
                score_threshold=score_threshold,
                row_sink=None if rasters is None else rasters.write_rows,
            )
        else:
            stitcher = SceneStitcher(height, width, overlap=overlap)
        tracer = FieldTracer(
            area_transform,
            info.crs,
            categories=loaded.categories,
            model=loaded.name,
            min_area_m2=min_area,
            simplify_m=simplify_m,
            pixel_m=math.sqrt(pixel_m2),
        )
        n_skipped = valid_pixels = 0
        above: _ChipRow | None = None  # the row of chips last predicted
        with progress_shown(show_progress):  # read when the bar is made
            bar = progress(range(len(rows) * len(cols)), desc="predict", unit="chip")
        cores = usable_cores()
        with (
            bar,
            ThreadPoolExecutor(cores) if cores > 1 else contextlib.nullcontext() as pool,
            FieldWriter(output, info.crs, overwrite=overwrite) as writer,
            rasters if rasters is not None else contextlib.nullcontext(),
        ):
            for index, row in enumerate(rows):
                tick = time.perf_counter()
                strip = read_window(
                    src,
                    Window(area_window.col_off, area_window.row_off + row, width, chip_size),
                    fill_value=info.nodata,
                )
                strip_valid = chip_valid_mask(strip, info.nodata, min(chip_size, height - row),
                                              width)  # fmt: skip
                if aoi is not None:
                    strip_valid &= rasterize_mask(
                        aoi,
                        transform=area_transform * rasterio.Affine.translation(0, row),
                        shape=strip_valid.shape,
                    )
                timings["read"] += time.perf_counter() - tick
                last = index + 1 == len(rows)
                own_rows = (height if last else rows[index + 1]) - row  # not the next strip's
                valid_pixels += int(np.count_nonzero(strip_valid[:own_rows]))
                chips = []
                for col in cols:
                    image = _pad(strip[:, :, col : col + chip_size], chip_size, info.nodata)
                    valid = _pad(strip_valid[None, :, col : col + chip_size], chip_size, False)[0]
                    # nodata, padding and pixels outside the AOI reach the model as NaN, which
                    # every model treats as missing, whatever nodata value it was trained with
                    image = np.where(valid, image, np.float32(np.nan)).astype(np.float32)
                    chips.append((col, image, valid))
                if isinstance(stitcher, DenseBlender):
                    with_data = [i for i, (_, _, valid) in enumerate(chips) if valid.any()]
                    _blend_row(net, chips, with_data, row, stitcher, chosen, batch_size, timings)
                    n_skipped += len(chips) - len(with_data)
                    below = None if last else rows[index + 1]
                    frame = _close_rows(stitcher, below, tracer, timings)
                else:
                    # this row's chips are resolved on the pool's threads while the row above
                    # is stitched and traced
                    chip_row = _predict_row(net, chips, row, chosen, batch_size,
                                            score_threshold, timings, pool)  # fmt: skip
                    n_skipped += chip_row.skipped
                    frame = None
                    if above is not None:
                        above.add_to(stitcher, timings)
                        frame = _close_rows(stitcher, row, tracer, timings)
                    chip_row.wait(timings)  # before writing: file writing is timed apart
                    if last:
                        if frame is not None:
                            _write_frame(frame, writer, timings)
                        chip_row.add_to(stitcher, timings)
                        frame = _close_rows(stitcher, None, tracer, timings)
                    above = chip_row
                bar.update(len(cols))
                if frame is not None:
                    _write_frame(frame, writer, timings)
                bar.set_postfix(km2=f"{valid_pixels * pixel_m2 / 1e6:.1f}",
                                fields=writer.n_fields)  # fmt: skip
            tick = time.perf_counter()
            held = tracer.finish()
            timings["trace"] += time.perf_counter() - tick
            tick = time.perf_counter()
            writer.write(held)
            timings["write"] += time.perf_counter() - tick
            if n_skipped == len(rows) * len(cols):
                raise InputFileError(
                    f"{info.path} holds no data in the area to predict (every pixel is nodata"
                    f"{' or outside the extent' if aoi is not None else ''}): no output written"
                )
            if debug_layers:
                _write_debug_layers(writer, rows, cols, chip_size, area_transform, info)
    timings["total"] = time.perf_counter() - started
    pixel_km2 = pixel_m2 / 1e6
    return PredictSummary(
        output=Path(output),
        n_fields=writer.n_fields,
        n_chips=len(rows) * len(cols),
        n_chips_skipped=n_skipped,
        area_km2=valid_pixels * pixel_km2,
        seconds={k: round(v, 3) for k, v in timings.items()},
        rasters=dict(rasters.paths) if rasters is not None else {},
        chip_size=chip_size,
        overlap=overlap,
        seams="blend" if blend else "instances",
        score_threshold=float(score_threshold),
        model=loaded.name,
    )


@dataclass
class _ChipRow:
    """One row of chips, its instances resolved or being resolved on the pool's threads."""

    row: int
    chips: list[tuple[int, np.ndarray]]  # each chip's column and valid mask
    resolved: dict[int, ResolvedChip | Future[ResolvedChip]]
    skipped: int

    def wait(self, timings: dict[str, float]) -> None:
        """Wait for every chip's resolution (the time waited counts as ``resolve``)."""
        tick = time.perf_counter()
        for i, chip in self.resolved.items():
            if isinstance(chip, Future):
                self.resolved[i] = chip.result()
        timings["resolve"] += time.perf_counter() - tick

    def add_to(self, stitcher: SceneStitcher, timings: dict[str, float]) -> None:
        """Add the row's resolved chips to the stitcher, in column order."""
        tick = time.perf_counter()
        for i, (col, valid) in enumerate(self.chips):
            chip = self.resolved.get(i)
            if chip is None:  # no data: nothing to find
                chip = empty_chip(*valid.shape)
            stitcher.add_chip(self.row, col, chip, valid)  # type: ignore[arg-type]
        timings["stitch"] += time.perf_counter() - tick


def _predict_row(
    net: FieldModel,
    chips: list[tuple[int, np.ndarray, np.ndarray]],
    row: int,
    device: torch.device,
    batch_size: int,
    score_threshold: float,
    timings: dict[str, float],
    pool: ThreadPoolExecutor | None = None,
) -> _ChipRow:
    """Predict one row of chips (the ones holding data) and start resolving their instances.

    Chips are resolved independently, on a ``pool``'s threads where there is one (the rule's
    compiled loops let go of the GIL), with the same results as one by one. On a GPU each
    batch's chips are handed to the threads at once, to be resolved while the GPU works on
    the next batch; on the CPU, where the model uses every core itself, only once the row's
    model work is done. Dense (N, H, W) masks are boxed first, so a row of them is small, and
    the predictions are brought to the CPU here, so the threads never wait on the GPU.
    """
    with_data = [i for i, (_, _, valid) in enumerate(chips) if valid.any()]
    resolved: dict[int, ResolvedChip | Future[ResolvedChip]] = {}
    waiting: list[tuple[int, ChipPrediction]] = []

    def resolve(i: int, prediction: ChipPrediction) -> ResolvedChip:
        return resolve_chip(prediction, chips[i][2], score_threshold=score_threshold)

    def hand_over() -> None:
        tick = time.perf_counter()
        for i, prediction in waiting:
            resolved[i] = pool.submit(resolve, i, prediction) if pool else resolve(i, prediction)
        waiting.clear()
        timings["resolve"] += time.perf_counter() - tick

    for start in range(0, len(with_data), batch_size):
        batch = with_data[start : start + batch_size]
        tick = time.perf_counter()
        images = [_to_device(chips[i][1], device) for i in batch]
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            predictions = net.predict(images)
        timings["model"] += time.perf_counter() - tick
        tick = time.perf_counter()
        waiting.extend(zip(batch, map(_boxed_on_cpu, predictions), strict=True))
        timings["resolve"] += time.perf_counter() - tick
        if device.type == "cuda":
            hand_over()
    hand_over()
    kept = [(col, valid) for col, _, valid in chips]  # not the images
    return _ChipRow(row, kept, resolved, len(chips) - len(with_data))


def _boxed_on_cpu(prediction: ChipPrediction) -> ChipPrediction:
    """The prediction's masks boxed (dense ones), and all of it on the CPU."""
    masks = prediction.masks
    if not isinstance(masks, BoxedMasks):
        masks = BoxedMasks.from_dense(masks.detach())
    elif masks.boxes.device.type == "cpu" and prediction.scores.device.type == "cpu":
        return prediction  # as it is: nothing to move
    return ChipPrediction(
        masks=BoxedMasks.from_flat(
            masks.boxes.cpu(), masks.values.detach().cpu(), masks.height, masks.width
        ),
        scores=prediction.scores.detach().cpu(),
        labels=prediction.labels.detach().cpu(),
        touches_edge=prediction.touches_edge.detach().cpu(),
    )


def _blend_row(
    net: FieldModel,
    chips: list[tuple[int, np.ndarray, np.ndarray]],
    with_data: list[int],
    row: int,
    blender: DenseBlender,
    device: torch.device,
    batch_size: int,
    timings: dict[str, float],
) -> None:
    """Predict one row of chips' maps and add them to the blend."""
    for start in range(0, len(with_data), batch_size):
        batch = with_data[start : start + batch_size]
        tick = time.perf_counter()
        images = [_to_device(chips[i][1], device) for i in batch]
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            maps = net.dense_maps(images)  # type: ignore[attr-defined]
        timings["model"] += time.perf_counter() - tick
        tick = time.perf_counter()
        for i, chip_maps in zip(batch, maps, strict=True):
            col, _, valid = chips[i]
            blender.add_chip(
                row,
                col,
                chip_maps["extent"].float().cpu().numpy(),
                chip_maps["boundary"].float().cpu().numpy(),
                valid & chip_maps["valid"].cpu().numpy(),
            )
        timings["stitch"] += time.perf_counter() - tick


def _to_device(image: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(image)  # float32 already
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _pad(array: np.ndarray, size: int, fill: float | bool | None) -> np.ndarray:
    """A (bands, H, W) piece padded to size x size with ``fill`` (nodata, or False)."""
    bands, rows, cols = array.shape
    if rows == size and cols == size:
        return array
    out = np.full((bands, size, size), 0 if fill is None else fill, dtype=array.dtype)
    out[:, :rows, :cols] = array
    return out


def _close_rows(
    stitcher: SceneStitcher | DenseBlender,
    below: int | None,
    tracer: FieldTracer,
    timings: dict[str, float],
) -> gpd.GeoDataFrame | None:
    """Finish the fields above scene row ``below`` (None: all that are left) and trace them."""
    tick = time.perf_counter()
    batch = stitcher.finish() if below is None else stitcher.close_rows(below)
    timings["stitch"] += time.perf_counter() - tick
    if batch is None:
        return None
    tick = time.perf_counter()
    frame = tracer.trace(batch)
    timings["trace"] += time.perf_counter() - tick
    return frame


def _write_frame(frame: gpd.GeoDataFrame, writer: FieldWriter, timings: dict[str, float]) -> None:
    tick = time.perf_counter()
    writer.write(frame)
    timings["write"] += time.perf_counter() - tick


def _load_model(model: FieldModel | str | os.PathLike[str]) -> _LoadedModel:
    """The model and what it was built for.

    A model object built for a dataset (by ``build_model`` or from a checkpoint) predicts
    exactly as its checkpoint path would: same chips, classes and ``model`` tag.
    """
    if not isinstance(model, FieldModel):
        from fieldseg.checkpoint import load_checkpoint

        model = load_checkpoint(model).build_model()
    spec = model.spec
    return _LoadedModel(
        model,
        model.source or model.family,
        spec.chip_size if spec is not None else DEFAULT_CHIP_SIZE,
        spec.categories if spec is not None else ("field",),
    )


def _check_bands(info: RasterInfo, model: FieldModel, *, ignore_names: bool = False) -> None:
    """The scene must have the model's band count, and its names where both name their bands.

    Unnamed bands (``band_1``, ``band_2``, ...: no description in the file) match any names
    in order, on either side: a model trained on an unnamed scene runs on the named one. With
    ``ignore_names`` other names are only logged.
    """
    expected = list(model.band_names)
    if info.count != len(expected):
        raise InputFileError(
            f"{info.path} has {info.count} bands; the model was trained on {len(expected)} "
            f"({', '.join(expected)})"
        )
    names = list(info.band_names)
    unnamed = list(default_band_names(info.count))
    if unnamed in (names, expected) or names == expected:
        return
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(names, expected, strict=True), 1) if a != b]
    first = "; ".join(f"band {i} is {a!r}, the model's {b!r}" for i, a, b in differ[:3]) + (
        f"; {len(differ) - 3} more" if len(differ) > 3 else ""
    )
    if ignore_names:
        logger.warning("bands matched by position, their names ignored: %s", first)
        return
    raise InputFileError(
        f"{info.path}'s bands are not the model's: {first}. If they are the same bands under "
        "other names (another year's dates, say), pass --ignore-band-names "
        "(ignore_band_names=True in Python) to match them by position"
    )


def _warn_if_dense_grid(chip_size: int, overlap: int, n_chips: int) -> None:
    """Warn when the overlap leaves so short a stride that each pixel is predicted many times.

    ``--chip-size 64 --overlap 63`` is more likely a typo than a plan: 64 x 64 chips per pixel.
    """
    stride = chip_size - overlap
    if stride * 4 < chip_size:
        logger.warning(
            "--overlap %d leaves a stride of %d px between %d px chips: %d chips, each pixel "
            "predicted about %d times",
            overlap, stride, chip_size, n_chips, round((chip_size / stride) ** 2),
        )  # fmt: skip


def _warn_if_mostly_padding(chip_size: int, trained: int, height: int, width: int) -> None:
    """Warn when chips larger than the training chips are mostly padding beyond the area.

    ``tile`` refuses such chips; here they run, but the model sees a chip mostly of nodata,
    unlike anything it learned from, and finds fewer fields.
    """
    padding = 1 - min(height, chip_size) * min(width, chip_size) / chip_size**2
    if chip_size > trained and padding > 0.5:
        logger.warning(
            "%d px chips over a %d x %d px area are %.0f%% padding, unlike the model's %d px "
            "training chips: leave --chip-size at its default",
            chip_size, height, width, 100 * padding, trained,
        )  # fmt: skip


def _warn_if_statistics_differ(
    src: rasterio.DatasetReader, info: RasterInfo, model: FieldModel, window: Window
) -> None:
    """Warn when a band's values are far from those the model was trained on.

    Far means its median lies far outside the trained 2-98 % range, or its own 2-98 % spread is
    of another order of magnitude (a reflectance scene of 0-1 values for a model trained on
    digital numbers of 0-10,000, whose median the range test alone would let pass).
    """
    scale = max(1, math.ceil(max(window.width, window.height) / 512))
    shape = (info.count, max(1, int(window.height) // scale), max(1, int(window.width) // scale))
    try:
        sample = src.read(window=window, out_shape=shape)
    except rasterio.errors.RasterioIOError as exc:
        raise InputFileError(f"cannot read {info.path}: {first_line(exc)}") from exc
    missing = nodata_mask(sample, info.nodata)
    low = model.normaliser.low.flatten().tolist()
    high = model.normaliser.high.flatten().tolist()
    far = []
    for band, values in enumerate(sample):
        data = values.astype(np.float64)
        keep = ~missing
        if not keep.any():
            continue
        p2, median, p98 = (float(v) for v in np.percentile(data[keep], (2, 50, 98)))
        spread = max(high[band] - low[band], 1e-6)
        # a flat band (no spread at all) or a small area (one field, say) says nothing about
        # the scale: only the median is judged there
        rescaled = (
            p98 > p2
            and int(keep.sum()) * scale**2 >= SCALE_MIN_PIXELS  # scene pixels, not sampled
            and not spread / SCALE_RATIO <= p98 - p2 <= spread * SCALE_RATIO
        )
        if median < low[band] - spread or median > high[band] + spread or rescaled:
            name = model.band_names[band]
            far.append(f"{name} (median {median:g}, 2-98 % {p2:g}-{p98:g}; trained "
                       f"{low[band]:g}-{high[band]:g})")  # fmt: skip
    if far:
        logger.warning(
            "the scene's values are far from those the model was trained on: %s; "
            "check the bands and their scaling",
            "; ".join(far),
        )


def _prediction_area(
    info: RasterInfo, extent: str | os.PathLike[str] | None, bbox: Sequence[float] | None
) -> tuple[Window, object | None]:
    """The scene window to predict, and the AOI polygon inside it (None: the whole window)."""
    full = Window(0, 0, info.width, info.height)
    aoi = None
    if extent is not None:
        aoi = read_area_of_interest(extent, info.crs)
        bounds = aoi.bounds  # type: ignore[attr-defined]
    elif bbox is not None:
        if len(bbox) != 4 or not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
            raise ConfigError("--bbox needs xmin ymin xmax ymax with xmin < xmax and ymin < ymax")
        bounds = tuple(bbox)
    else:
        return full, None
    # the pixels whose centres lie inside: centre of pixel i at i + 0.5
    raw = from_bounds(*bounds, transform=info.transform)
    col0, row0 = math.ceil(raw.col_off - 0.5), math.ceil(raw.row_off - 0.5)
    col1 = math.floor(raw.col_off + raw.width - 0.5) + 1
    row1 = math.floor(raw.row_off + raw.height - 0.5) + 1
    window = Window(col0, row0, col1 - col0, row1 - row0)
    try:
        window = window.intersection(full)
    except rasterio.errors.WindowError:
        window = None
    if window is None or window.width < 1 or window.height < 1:
        raise InputFileError(_area_outside(info, bounds, extent))
    return window, aoi


def _area_outside(
    info: RasterInfo, bounds: Sequence[float], extent: str | os.PathLike[str] | None
) -> str:
    """Why a bbox or an extent misses the scene: where each lies, and a hint."""
    from pyproj import CRS

    crs = CRS.from_user_input(info.crs)
    epsg = crs.to_epsg()

    def span(values: Sequence[float]) -> str:
        return " ".join(f"{v:.0f}" if crs.is_projected else f"{v:.6g}" for v in values)

    scene = (
        f"the scene {info.path}, which spans "
        f"{span(array_bounds(info.height, info.width, info.transform))} in "
        f"{f'EPSG:{epsg}' if epsg else crs.name}"
    )
    if extent is not None:
        return (
            f"--extent {extent} does not overlap {scene}; the extent spans {span(bounds)} once "
            "reprojected there: check that its file declares the CRS it was drawn in"
        )
    degrees = crs.is_projected and could_be_lon_lat(bounds)
    return f"--bbox {' '.join(f'{v:g}' for v in bounds)} does not overlap {scene}" + (
        "; the bbox looks like longitude/latitude: give it in the scene's CRS" if degrees else ""
    )


def _pixel_area_m2(info: RasterInfo, window: Window) -> float:
    """Area in m2 of the centre pixel of ``window``, measured as the output's ``area_m2`` is.

    Planar in a projected CRS, ellipsoidal in a geographic one: so the default minimum area of
    four pixels keeps a field of four pixels.
    """
    from fieldseg.field_polygons import pixel_polygon, true_area_perimeter

    pixel = pixel_polygon(info.transform, *_centre_pixel(window))
    area, _ = true_area_perimeter(np.asarray([pixel], dtype=object), info.crs)
    return float(area[0])


def _ground_pixel_m(info: RasterInfo, window: Window) -> float:
    """The ground side in metres of the centre pixel of ``window`` (see ``pixel_side_m``)."""
    from fieldseg.field_polygons import pixel_side_m

    return pixel_side_m(info.crs, info.transform, *_centre_pixel(window))


def _centre_pixel(window: Window) -> tuple[int, int]:
    """The scene column and row of the pixel at the centre of ``window``."""
    return int(window.col_off + window.width // 2), int(window.row_off + window.height // 2)


def _warn_if_pixel_size_differs(model: FieldModel, pixel_m: float) -> None:
    """Warn when the scene's pixels differ in size from the training pixels.

    The model would see every field larger or smaller than it learned fields to be.
    """
    trained = model.spec.pixel_size_m if model.spec is not None else None
    if trained and not 1 / PIXEL_SIZE_RATIO <= pixel_m / trained <= PIXEL_SIZE_RATIO:
        logger.warning(
            "the scene's pixels are %.3g m; the model was trained on %.3g m pixels, so every "
            "field looks %.2g times as wide to it: resample the scene to %.3g m first "
            "(e.g. gdalwarp -tr)",
            pixel_m, trained, trained / pixel_m, trained,
        )  # fmt: skip


def _warn_if_bit_depth_differs(model: FieldModel, info: RasterInfo) -> None:
    """Warn when the scene stores integers of another width than the training scenes did.

    An 8-bit scene for a model trained on 16-bit reflectances is almost always a picture
    stretched for display, whose values the statistics check may let pass. Integer types of
    one width (int16 against uint16) and floating-point scenes are not warned about here.
    """
    trained = model.spec.dtype if model.spec is not None else None
    if trained is None:
        return
    scene, learned = np.dtype(info.dtype), np.dtype(trained)
    if scene.kind in "iu" and learned.kind in "iu" and scene.itemsize != learned.itemsize:
        logger.warning(
            "the scene stores %s values; the model was trained on %s scenes: %s",
            scene.name, learned.name,
            "an 8-bit scene is usually a picture stretched for display; predict on the "
            "original data" if scene.itemsize == 1 else "check the bands and their scaling",
        )  # fmt: skip


def _write_debug_layers(
    writer: FieldWriter,
    rows: list[int],
    cols: list[int],
    chip_size: int,
    transform: rasterio.Affine,
    info: RasterInfo,
) -> None:
    """Chip footprints and seam lines (chip edges) as extra GeoPackage layers."""
    import geopandas as gpd
    import shapely

    boxes, names = [], []
    for r in rows:
        for c in cols:
            x0, y0 = transform * (c, r)
            x1, y1 = transform * (c + chip_size, r + chip_size)
            boxes.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
            names.append(f"r{r}_c{c}")
    chips = gpd.GeoDataFrame({"chip": names}, geometry=boxes, crs=info.crs)
    edges = [shapely.LineString(b.exterior.coords) for b in boxes]
    seams = gpd.GeoDataFrame({"chip": names}, geometry=edges, crs=info.crs)
    writer.write_layer("chips", chips)
    writer.write_layer("seams", seams)
