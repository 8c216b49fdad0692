"""``fieldseg tile``: labelled scenes -> overlapping chips + georeferenced COCO + splits.

The output layout, the COCO extras and the rules used here (chip placement, rasterisation,
slivers, label modes, splits) are the contract documented in docs/formats.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import forkserver, resource_tracker
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from pycocotools import mask as mask_utils
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from fieldseg import __version__
from fieldseg.atomic_output import atomic_directory, check_output_path
from fieldseg.band_statistics import BandStatistics, BandStatisticsAccumulator
from fieldseg.chip_grid import check_chip_geometry, chip_windows
from fieldseg.chip_writer import (
    SKIPPED_NO_DRAWN_FIELD,
    SKIPPED_NODATA,
    ChipRecord,
    SceneJob,
    SceneLabels,
    chip_folder,
    cut_chips,
)
from fieldseg.coco_format import rle_to_json, write_coco
from fieldseg.cpu_cores import usable_cores
from fieldseg.dataset_description import (
    DESCRIPTION_FILE,
    Category,
    CRSRecord,
    DatasetDescription,
    LabelMode,
    SceneRecord,
    SliverRule,
    SplitMethod,
    SplitRecord,
)
from fieldseg.errors import ConfigError, FieldsegError, InputFileError
from fieldseg.labels import SPLITS, FieldLabels, load_field_labels, to_crs_valid
from fieldseg.progress import progress, progress_shown
from fieldseg.raster_io import (
    RasterInfo,
    check_nodata_value,
    chip_valid_mask,
    crs_to_json,
    open_raster,
    raster_info,
    same_nodata,
    transform_to_json,
)
from fieldseg.splits import (
    assign_blocks,
    block_keys,
    drop_cross_split_overlaps,
    parse_fractions,
)
from fieldseg.vector_io import read_area_of_interest
from fieldseg.wording import counted

logger = logging.getLogger(__name__)

COMPRESSIONS = ("deflate", "zstd", "lzw", "none")
DEFAULT_SPLIT = "0.8,0.1,0.1"
#: In the default label mode (labels complete over the scene) a scene is warned about when
#: fewer than this share of its written chips reach the labels' bounding box: the others are
#: written as background, which is wrong where fields there are only undrawn. Hand-drawn labels
#: of a whole scene leave a margin, far smaller than the 30 % this lets through.
MIN_LABEL_COVER = 0.7


@dataclass
class TileSummary:
    """What ``tile`` did, for the closing report and for tests."""

    output: Path
    chips_by_split: dict[str, int]
    instances_by_split: dict[str, int]
    fractions: dict[str, float]
    candidate_chips: int = 0
    skipped_nodata: int = 0
    skipped_outside_extent: int = 0
    skipped_no_drawn_field: int = 0
    dropped_split_overlap: int = 0
    slivers_dropped: int = 0
    fields_in_dataset: int = 0
    labels: FieldLabels | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    @property
    def chips_written(self) -> int:
        """Chips in the dataset, all splits together."""
        return sum(self.chips_by_split.values())

    def lines(self) -> list[str]:
        """A short human-readable report (warnings are logged, not repeated here)."""
        realised = ", ".join(
            f"{name} {counted(self.chips_by_split[name], 'chip')} ({self.fractions[name]:.1%}, "
            f"{counted(self.instances_by_split[name], 'instance')})"
            for name in SPLITS
        )
        out = [
            f"dataset: {self.output}",
            f"chips written: {self.chips_written} of {self.candidate_chips} candidates: {realised}",
            f"chips skipped: {self.skipped_nodata} too much nodata, "
            f"{self.skipped_outside_extent} outside the label extent, "
            f"{self.skipped_no_drawn_field} without a drawn field, "
            f"{self.dropped_split_overlap} dropped for overlapping a chip of another split",
            f"fields in dataset: {self.fields_in_dataset}; clipped slivers dropped (and ignored): "
            f"{self.slivers_dropped}",
        ]
        if self.labels is not None:
            out.append(self.labels.summary())
        return out


@dataclass
class _Scene:
    """An input scene with the labels that fall on it, in its CRS."""

    scene_id: str
    info: RasterInfo
    nodata: float | None
    fields: gpd.GeoDataFrame
    windows: list[Window]
    geometries: np.ndarray = field(init=False)
    field_ids: np.ndarray = field(init=False)
    categories: np.ndarray = field(init=False)
    splits: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        # plain arrays: per-piece lookups in the chip loop stay cheap
        self.geometries = self.fields.geometry.to_numpy()
        self.field_ids = self.fields["field_id"].to_numpy()
        self.categories = self.fields["category"].to_numpy()
        self.splits = self.fields["split"].to_numpy() if "split" in self.fields else None


def tile_scenes(
    scenes: Sequence[str | os.PathLike[str]],
    labels: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    chip_size: int = 256,
    overlap: int = 64,
    split: str | Sequence[float] | None = None,
    split_column: str | None = None,
    class_column: str | None = None,
    label_extent: str | os.PathLike[str] | None = None,
    sparse: bool = False,
    max_nodata: float = 0.5,
    nodata: float | None = None,
    seed: int = 0,
    block_size: int | None = None,
    min_piece_pixels: int = 10,
    min_piece_share: float = 0.02,
    compress: str = "zstd",
    workers: int | None = 1,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> TileSummary:
    """Cut labelled scenes into chips with COCO annotations, splits and band statistics.

    Args:
        scenes: one raster (GeoTIFF or VRT) per scene, all with the same bands.
        labels: field polygons, any OGR-readable file; reprojected to each scene's CRS.
        output: the dataset directory to create (refused if non-empty unless ``overwrite``).
        chip_size: chip width and height in pixels.
        overlap: pixels shared by neighbouring chips.
        split: train,val,test fractions for spatial-block splitting (None: 0.8,0.1,0.1).
        split_column: take each chip's split from this label column instead (then neither
            ``split`` nor ``block_size`` may be given).
        class_column: label column whose values become COCO categories.
        label_extent: AOI inside which labels are complete; only chips fully inside are kept.
        sparse: only drawn fields are known; chips go where they are, the rest is ignored.
        max_nodata: skip chips with a larger share of nodata pixels.
        nodata: nodata value for scenes whose file declares none.
        seed: seed of the block split and the pixel samples.
        block_size: side of the split blocks in pixels (default: see default_block_size).
        min_piece_pixels: a clipped piece of a field with fewer pixels is dropped.
        min_piece_share: a clipped piece with a smaller share of its field is dropped.
        compress: GeoTIFF compression of the chips (zstd is fast; deflate the most portable).
        workers: processes cutting chips; None picks them (see :func:`default_workers`). The
            output is the same whatever the number. More than one starts worker processes,
            which re-import the calling script: guard it with ``if __name__ == "__main__":``.
        overwrite: replace an existing dataset.
        show_progress: progress bars on or off for this call; None: as set globally
            (:func:`fieldseg.progress.set_progress_enabled`, on where stderr is a terminal).

    Returns:
        A summary of chips, splits and label repairs.
    """
    stride = check_chip_geometry(chip_size, overlap)
    if split_column is not None:
        for option, value in (("--split", split), ("--block-size", block_size)):
            if value is not None:
                raise ConfigError(
                    f"{option} and --split-column are exclusive: the split column gives each "
                    f"chip its split, so {option} would not be used"
                )
    fractions = None if split_column else parse_fractions(DEFAULT_SPLIT if split is None else split)
    if label_extent is not None and sparse:
        raise ConfigError("--label-extent and --sparse are exclusive: choose one label mode")
    if not 0 <= max_nodata <= 1:
        raise ConfigError(f"--max-nodata is a share between 0 and 1, got {max_nodata}")
    if not 0 <= min_piece_share <= 1:
        raise ConfigError(f"min_piece_share is a share between 0 and 1, got {min_piece_share}")
    if min_piece_pixels < 0:
        raise ConfigError(f"min_piece_pixels must be >= 0, got {min_piece_pixels}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1 (or None: automatic), got {workers}")
    if compress not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    if block_size is not None and block_size < stride:
        raise ConfigError(f"--block-size ({block_size}) must be at least the stride ({stride})")
    if isinstance(scenes, (str, os.PathLike)):
        scenes = [scenes]  # one path, not a sequence of its characters
    if not scenes:
        raise ConfigError("tile needs at least one scene")
    _refuse_duplicate_scenes(scenes)
    inputs = [*scenes, labels, *([label_extent] if label_extent else [])]
    output = check_output_path(output, overwrite=overwrite, marker=DESCRIPTION_FILE, inputs=inputs)
    mode: LabelMode = "sparse" if sparse else ("label_extent" if label_extent else "complete")

    lap = _Laps()
    infos: list[RasterInfo] = []
    for path in scenes:
        with open_raster(path) as src:
            infos.append(raster_info(src))
    small_scenes = _refuse_scenes_smaller_than_a_chip(infos, chip_size, overlap, max_nodata)
    logger.info("reading labels from %s", labels)
    field_labels = load_field_labels(
        labels,
        class_column=class_column,
        split_column=split_column,
        overlap_crs=infos[0].crs,  # overlaps are judged where the labels are rasterised
    )
    lap("labels")
    category_ids = {name: i for i, name in enumerate(field_labels.categories, start=1)}
    prepared, summary = _prepare_scenes(
        infos, field_labels, nodata, chip_size, overlap, mode, label_extent, output
    )
    summary.labels = field_labels
    summary.warnings[:0] = small_scenes
    lap("scenes")
    # splits are decided in the first scene's CRS and pixel size, shared by every scene
    pixel_side = float(np.sqrt(abs(prepared[0].info.transform.determinant)))
    if fractions is not None and block_size is None:
        windows = [(i, w) for i, scene in enumerate(prepared) for w in scene.windows]
        centres = shapely.get_coordinates(shapely.centroid(_footprints(prepared, windows)))
        block_size = default_block_size(centres / pixel_side, chip_size, stride, fractions)
    first = prepared[0].info
    sliver_rule = SliverRule(min_pixels=min_piece_pixels, min_share=min_piece_share)

    with (
        progress_shown(show_progress),
        atomic_directory(
            output, overwrite=overwrite, marker=DESCRIPTION_FILE, inputs=inputs
        ) as tmp,
    ):
        chips = _write_chips(
            prepared,
            tmp,
            category_ids,
            sliver_rule,
            max_nodata,
            compress,
            summary,
            chip_size=chip_size,
            sparse=sparse,
            workers=workers or default_workers(sum(len(s.windows) for s in prepared)),
        )
        lap("chips")
        if not chips:
            raise InputFileError(
                f"no chip was written: all {summary.candidate_chips} candidate chips have more "
                f"than {max_nodata:.0%} nodata or hold no drawn field"
            )
        if mode == "complete":
            _warn_chips_beyond_labels(prepared, chips, summary)
        footprints = _footprints(prepared, [(c.scene, c.window) for c in chips])
        if fractions is not None:
            centres = shapely.get_coordinates(shapely.centroid(footprints))
            blocks = block_keys(centres, block_size * pixel_side)
            splits = assign_blocks(blocks, fractions, seed)
        else:
            splits = np.array([_majority_split(c) for c in chips], dtype=object)
        keep = drop_cross_split_overlaps(footprints, splits, min_overlap_area=0.5 * pixel_side**2)
        summary.dropped_split_overlap = int((~keep).sum())
        for chip, chip_split, kept in zip(chips, splits, keep, strict=True):
            chip.split = chip_split
            if not kept:
                (tmp / chip.file_name).unlink()
        chips = [c for c, kept in zip(chips, keep, strict=True) if kept]
        lap("splits")

        statistics = _train_statistics(chips, prepared, tmp, seed)
        lap("statistics")
        if not statistics:
            dropped = summary.dropped_split_overlap
            raise InputFileError(
                "the train split holds no valid pixel"
                + (f" ({counted(dropped, 'chip')} dropped at split borders)" if dropped else "")
                + ": give train a larger --split share or use larger split blocks"
            )

        categories = [
            {"id": i, "name": n, "supercategory": "field"} for n, i in category_ids.items()
        ]
        info = {
            "description": "fieldseg dataset",
            "version": str(__version__),
            "date_created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        split_records: dict[str, SplitRecord] = {}
        next_ids = [0, 0]  # image and annotation ids are unique across the splits
        for name in SPLITS:
            images, annotations = _coco_split(chips, prepared, name, chip_size, next_ids)
            write_coco(
                tmp / f"{name}.json",
                images=images,
                annotations=annotations,
                categories=categories,
                info=info,
            )
            summary.chips_by_split[name] = len(images)
            summary.instances_by_split[name] = len(annotations)
            split_records[name] = SplitRecord(
                annotations=f"{name}.json",
                chips=len(images),
                instances=len(annotations),
                fraction=len(images) / len(chips),
            )
            summary.fractions[name] = len(images) / len(chips)
        in_dataset = {
            p["field_id"] for c in chips for p in c.pieces if p["split"] in (None, c.split)
        }
        summary.fields_in_dataset = len(in_dataset)
        _warn_small_splits(summary, fractions)
        if mode != "label_extent":  # fields outside the extent are left out by design
            _warn_fields_left_out(prepared, in_dataset, summary, sparse=sparse)

        description = DatasetDescription(
            fieldseg_version=__version__,
            bands=list(first.band_names),
            dtype=first.dtype,
            nodata=prepared[0].nodata,
            chip_size=chip_size,
            overlap=overlap,
            label_mode=mode,
            categories=[Category(id=i, name=n) for n, i in category_ids.items()],
            splits=split_records,
            split_method=SplitMethod(
                method="column" if split_column else "blocks",
                requested=fractions,
                block_size=None if split_column else block_size,
                column=split_column,
                seed=seed,
            ),
            normalisation=statistics,
            sliver_rule=sliver_rule,
            scenes=[
                SceneRecord(
                    scene_id=s.scene_id,
                    path=str(s.info.path.resolve()),
                    width=s.info.width,
                    height=s.info.height,
                    crs=CRSRecord(**crs_to_json(s.info.crs)),
                    transform=transform_to_json(s.info.transform),
                    nodata=s.nodata,
                )
                for s in prepared
            ],
        )
        description.save(tmp / DESCRIPTION_FILE)
    lap("coco")
    summary.timings = lap.timings
    logger.debug("timings (s): %s", ", ".join(f"{k} {v:.2f}" for k, v in lap.timings.items()))
    for line in summary.warnings:
        logger.warning(line)
    return summary


class _Laps:
    """Seconds spent in each phase, for ``-v`` and the benchmark."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = now - self._start
        self._start = now


def default_block_size(
    centres: np.ndarray, chip_size: int, stride: int, fractions: dict[str, float]
) -> int:
    """Split block side: four chips, halved (down to two strides) until there are blocks enough.

    Enough means about five blocks for the smallest requested split, so that a small scene
    still gets val and test chips; blocks of at least two strides keep the chips lost at split
    borders (see :func:`fieldseg.splits.drop_cross_split_overlaps`) a minority.

    Args:
        centres: (n, 2) centres of the candidate chips, in pixels of the shared grid.
        chip_size: chip side in pixels.
        stride: chip side less the overlap.
        fractions: requested split fractions.
    """
    smallest = min(f for f in fractions.values() if f > 0)
    wanted = math.ceil(5 / smallest)
    size = 4 * chip_size
    while size > 2 * stride and len(set(block_keys(centres, size))) < wanted:
        size = max(2 * stride, size // 2)
    return size


def _footprints(scenes: list[_Scene], chips: Sequence[tuple[int, Window]]) -> np.ndarray:
    """In-scene footprints of ``(scene index, window)`` chips in the first scene's CRS."""
    out = np.empty(len(chips), dtype=object)
    reference = scenes[0].info.crs
    by_scene: dict[int, list[int]] = {}
    for i, (scene, _) in enumerate(chips):
        by_scene.setdefault(scene, []).append(i)
    for scene, indices in by_scene.items():
        info = scenes[scene].info
        boxes = gpd.GeoSeries([_window_box(info, chips[i][1]) for i in indices], crs=info.crs)
        if info.crs != reference:
            side = max(info.pixel_size) * 8  # densify edges so they bend as they reproject
            boxes = boxes.segmentize(side).to_crs(reference)
        out[indices] = boxes.to_numpy()
    return out


def _prepare_scenes(
    infos: Sequence[RasterInfo],
    labels: FieldLabels,
    nodata: float | None,
    chip_size: int,
    overlap: int,
    mode: LabelMode,
    label_extent: str | os.PathLike[str] | None,
    output: Path,
) -> tuple[list[_Scene], TileSummary]:
    """Check that the scenes agree, and find their labels and candidate chips."""
    summary = TileSummary(output=output, chips_by_split={}, instances_by_split={}, fractions={})
    prepared: list[_Scene] = []
    used_ids: set[str] = set()
    for info in infos:
        if prepared:
            _check_same_bands(prepared[0].info, info)
        scene_nodata = info.nodata if info.nodata is not None else nodata
        if info.nodata is not None and nodata is not None and nodata != info.nodata:
            summary.warnings.append(
                f"{info.path.name} declares nodata {info.nodata}; --nodata {nodata} is not used"
            )
        check_nodata_value(
            scene_nodata,
            info.dtype,
            f"declared by {info.path.name}" if info.nodata is not None else "--nodata",
        )
        if prepared and not same_nodata(scene_nodata, prepared[0].nodata):
            raise InputFileError(
                f"{info.path.name} has nodata {scene_nodata} but {prepared[0].info.path.name} has "
                f"{prepared[0].nodata}; give --nodata or make the scenes agree"
            )
        scene_id = _unique_id(info.path.stem, used_ids)

        scene_box = shapely.box(*_bounds(info))
        # cheap cut in the labels' CRS first: a national parcel file may hold millions of fields
        xmin, ymin, xmax, ymax = transform_bounds(
            info.crs, labels.fields.crs, *_bounds(info), densify_pts=21
        )
        # (bounds across the antimeridian come back with xmin > xmax: no cut then)
        nearby = labels.fields.cx[xmin:xmax, ymin:ymax] if xmin <= xmax else labels.fields
        fields = to_crs_valid(nearby, info.crs)
        fields = fields[fields.intersects(scene_box)].reset_index(drop=True)
        geometries = fields.geometry.to_numpy()
        windows = chip_windows(info.width, info.height, chip_size, overlap)
        summary.candidate_chips += len(windows)
        if label_extent is not None:
            aoi = read_area_of_interest(label_extent, info.crs)
            inside = [aoi.covers(_window_box(info, w)) for w in windows]
            summary.skipped_outside_extent += inside.count(False)
            windows = [w for w, ok in zip(windows, inside, strict=True) if ok]
        if mode == "sparse":
            boxes = [_window_box(info, w) for w in windows]
            hits = shapely.STRtree(geometries).query(boxes, predicate="intersects")
            with_field = set(hits[0].tolist())
            summary.skipped_no_drawn_field += len(windows) - len(with_field)
            windows = [w for i, w in enumerate(windows) if i in with_field]
        if len(fields) == 0:
            summary.warnings.append(
                f"no label falls on scene {info.path.name}"
                + (
                    f": its chips (up to {len(windows)}) are written as pure background (the wrong "
                    "scene, or labels in another place?)"
                    if mode == "complete" and windows
                    else ""
                )
            )
        prepared.append(
            _Scene(
                scene_id=scene_id,
                info=info,
                nodata=scene_nodata,
                fields=fields,
                windows=windows,
            )
        )
    if not any(len(s.fields) for s in prepared):
        raise InputFileError(
            f"the labels do not overlap the raster{'s' if len(prepared) > 1 else ''} "
            "(check that they cover the same area and carry the right CRS)"
        )
    if not any(s.windows for s in prepared):
        reason = "lies fully inside the label extent" if label_extent else "holds a drawn field"
        raise InputFileError(f"no chip {reason}")
    return prepared, summary


def _write_chips(
    scenes: list[_Scene],
    out_dir: Path,
    category_ids: dict[str, int],
    sliver_rule: SliverRule,
    max_nodata: float,
    compress: str,
    summary: TileSummary,
    *,
    chip_size: int,
    sparse: bool,
    workers: int,
) -> list[ChipRecord]:
    """Cut, annotate and write every candidate chip, in ``workers`` processes; return those kept.

    Scenes go one at a time: their labels are rasterised into a file beside the output, then
    their chips are cut in batches, in order, so the result does not depend on ``workers``.
    """

    def outcomes(pool: Executor | None) -> Iterator[ChipRecord | str]:
        for index, scene in enumerate(scenes):
            if not scene.windows:
                continue
            info = scene.info
            logger.debug("rasterising %d fields on scene %s", len(scene.fields), scene.scene_id)
            labels = SceneLabels(
                scene.geometries,
                field_ids=scene.field_ids,
                category_ids=np.array([category_ids[c] for c in scene.categories], dtype=int),
                splits=scene.splits,
                transform=info.transform,
                width=info.width,
                height=info.height,
                chip_size=chip_size,
                workdir=out_dir,
                scene_id=scene.scene_id,
            )
            (out_dir / chip_folder(scene.scene_id)).mkdir(parents=True, exist_ok=True)
            try:
                job = SceneJob(
                    scene_index=index,
                    scene_id=scene.scene_id,
                    path=info.path,
                    width=info.width,
                    height=info.height,
                    transform=info.transform,
                    crs=info.crs,
                    band_names=info.band_names,
                    nodata=scene.nodata,
                    labels_path=labels.labels_path,
                    fields_path=labels.fields_path,
                    min_piece_pixels=sliver_rule.min_pixels,
                    min_piece_share=sliver_rule.min_share,
                    sparse=sparse,
                    max_nodata=max_nodata,
                    compress=compress,
                    out_dir=out_dir,
                )
                # a few batches per worker: enough to balance the load
                size = max(1, min(32, math.ceil(len(scene.windows) / (4 * workers))))
                windows = scene.windows
                batches = [windows[i : i + size] for i in range(0, len(windows), size)]
                cut = partial(cut_chips, job)
                if pool is None:
                    for batch in map(cut, batches):
                        yield from batch
                else:  # not pool.map: its results, dropped on an error, cancel what is queued
                    with _interrupts_deferred():  # not while the pool starts a worker
                        futures = [pool.submit(cut, batch) for batch in batches]
                    for future in futures:
                        yield from future.result()
            finally:
                labels.close()

    chips: list[ChipRecord] = []
    total = sum(len(s.windows) for s in scenes)
    with _executor(workers) as pool:
        for outcome in progress(outcomes(pool), total=total, desc="tiling", unit="chip"):
            if outcome == SKIPPED_NODATA:
                summary.skipped_nodata += 1
            elif outcome == SKIPPED_NO_DRAWN_FIELD:
                summary.skipped_no_drawn_field += 1
            else:
                assert isinstance(outcome, ChipRecord)
                summary.slivers_dropped += outcome.slivers
                chips.append(outcome)
    return chips


@contextlib.contextmanager
def _executor(workers: int) -> Iterator[Executor | None]:
    """A process pool for ``workers`` > 1 (None: work in this process).

    On an error the queued batches are cancelled; a worker that dies (killed by the system for
    lack of memory, say) ends the run with one clear message.
    """
    if workers <= 1:
        yield None
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    _start_helpers_deaf_to_interrupts(context)
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_leave_interrupts_to_the_main
    )
    try:
        yield pool
    except BrokenProcessPool as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        raise FieldsegError(
            "a tiling worker process died (out of memory?); try fewer --workers"
        ) from exc
    except BaseException:
        _stop_workers(pool)
        raise
    else:
        pool.shutdown(wait=True)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM in the main thread until the block ends (POSIX only).

    The pool starts its workers while work is queued; interrupted half-way through starting
    one, it would not know that worker, which would then go on writing chips into the
    temporary folder after it was removed.
    """
    if not hasattr(signal, "pthread_sigmask") or (
        threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the workers now and let the pool fail what was queued (an error or Ctrl-C).

    Waiting for them instead could wait forever: after an interrupt, workers were seen blocked
    on the pool's queue while it waited for them. What they were writing lies in the
    temporary dataset folder, which is removed after this. Nothing queued is cancelled first:
    the pool fails its batches itself, and Python < 3.12 raises in its thread (printing a
    traceback) on batches already cancelled.
    """
    # the pool's own record of its processes (Python 3.14 adds terminate_workers() for this)
    for worker in list((getattr(pool, "_processes", None) or {}).values()):
        worker.terminate()
        worker.join(timeout=10)
    pool.shutdown(wait=True)


def _start_helpers_deaf_to_interrupts(context: multiprocessing.context.BaseContext) -> None:
    """Start multiprocessing's helper processes now, with Ctrl-C ignored (which they inherit).

    The terminal sends Ctrl-C to every process of the group: a fork server or resource
    tracker still starting up would print a traceback before it could ignore it itself.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread; the helpers start as they would
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
        if context.get_start_method() == "forkserver":
            forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, before)


def _leave_interrupts_to_the_main() -> None:
    """In a worker: ignore Ctrl-C, which the terminal sends to every process of the group.

    The main process alone stops the run (it ends the workers, :func:`_stop_workers`); a
    worker interrupted on its own printed a traceback, and one interrupted while
    holding the pool's queue lock left the main process waiting for it forever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers(chips: int) -> int:
    """Worker processes for tiling ``chips`` chips: one per usable core, at most 8.

    Small jobs get one: starting a worker costs about a second of imports.
    """
    if chips < 200:
        return 1
    return usable_cores()


def _train_statistics(
    chips: list[ChipRecord], scenes: list[_Scene], out_dir: Path, seed: int
) -> list[BandStatistics]:
    """Band statistics over the valid pixels of the train chips, read back from their files.

    A second, cheap pass once the splits are known, so that memory does not grow with the
    number of chips (see :mod:`fieldseg.band_statistics`).
    """
    first = scenes[0].info
    train = [c for c in chips if c.split == "train"]
    accumulator = BandStatisticsAccumulator(
        first.count,
        first.dtype,
        seed=seed,
        sample_per_chip=max(64, 2_000_000 // max(len(train), 1)),
    )
    for chip in progress(train, total=len(train), desc="statistics", unit="chip"):
        nodata = scenes[chip.scene].nodata
        with open_raster(out_dir / chip.file_name) as src:
            data = src.read()
        inside = chip.valid_window
        valid = chip_valid_mask(data, nodata, int(inside.height), int(inside.width))
        accumulator.add(data, valid)
    return accumulator.result(first.band_names)


def _majority_split(chip: ChipRecord) -> str:
    """With a split column: the split holding most of the chip's field pixels (else train)."""
    area: dict[str, int] = {}
    for piece in chip.pieces:
        area[piece["split"]] = area.get(piece["split"], 0) + piece["area"]
    return max(area, key=lambda k: (area[k], -SPLITS.index(k))) if area else "train"


def _coco_split(
    chips: list[ChipRecord], scenes: list[_Scene], split: str, chip_size: int, first_ids: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO images and annotations of one split.

    Pieces of fields that belong to another split (split column) are not annotated here; they
    join the ignore mask so the chip teaches them neither as field nor as background.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    image_id, annotation_id = first_ids
    for chip in chips:
        if chip.split != split:
            continue
        scene = scenes[chip.scene]
        ignore_parts = [chip.ignore] if chip.ignore is not None else []
        image_id += 1
        for piece in chip.pieces:
            if piece["split"] not in (None, split):
                ignore_parts.append(piece["segmentation"])
                continue
            annotation_id += 1
            annotations.append(
                {
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": piece["category_id"],
                    "segmentation": rle_to_json(piece["segmentation"]),
                    "area": piece["area"],
                    "bbox": piece["bbox"],
                    "iscrowd": 0,
                    "field_id": piece["field_id"],
                    "truncated": piece["truncated"],
                }
            )
        ignore = mask_utils.merge(ignore_parts, intersect=False) if ignore_parts else None
        images.append(
            {
                "id": image_id,
                "file_name": chip.file_name,
                "width": chip_size,
                "height": chip_size,
                "scene_id": scene.scene_id,
                "window": {
                    "col_off": int(chip.window.col_off),
                    "row_off": int(chip.window.row_off),
                    "width": int(chip.valid_window.width),
                    "height": int(chip.valid_window.height),
                },
                "crs": crs_to_json(scene.info.crs),
                "transform": transform_to_json(window_transform(chip.window, scene.info.transform)),
                "nodata_fraction": round(chip.nodata_fraction, 6),
                "ignore_mask": rle_to_json(ignore) if ignore is not None else None,
            }
        )
    first_ids[:] = [image_id, annotation_id]
    return images, annotations


#: At most this many field ids are named in a warning.
NAMED_FIELDS = 10


def _warn_fields_left_out(
    prepared: Sequence[_Scene], in_dataset: set[int], summary: TileSummary, *, sparse: bool
) -> None:
    """Warn about labelled fields on the scenes that no chip of the dataset holds.

    With sparse labels every drawn field is precious: fields whose chips were dropped at split
    borders (or skipped for nodata) are named, with the way to keep them.
    """
    on_scenes = {int(i) for s in prepared for i in s.field_ids}
    missing = sorted(on_scenes - {int(i) for i in in_dataset})
    if not missing:
        return
    named = ", ".join(map(str, missing[:NAMED_FIELDS])) + (", ..." if len(missing) > NAMED_FIELDS
                                                           else "")  # fmt: skip
    reasons = []
    if summary.dropped_split_overlap:
        dropped = counted(summary.dropped_split_overlap, "chip")
        reasons.append(f"{dropped} dropped for overlapping a chip of another split")
    if summary.skipped_nodata:
        reasons.append(f"{counted(summary.skipped_nodata, 'chip')} skipped for too much nodata")
    advice = (
        "; with sparse labels, train on them all (--split 1,0,0) and evaluate on separately "
        "drawn fields, or use larger --block-size"
        if sparse
        else ""
    )
    summary.warnings.append(
        f"{len(missing)} of {len(on_scenes)} labelled fields are in no chip (field_id "
        f"{named}){': ' + ' and '.join(reasons) if reasons else ''}{advice}"
    )


def _warn_small_splits(summary: TileSummary, fractions: dict[str, float] | None) -> None:
    for name in SPLITS:
        wanted = fractions.get(name, 0) if fractions is not None else None
        got = summary.chips_by_split[name]
        if got == 0 and (wanted is None or wanted > 0):
            summary.warnings.append(
                f"the {name} split got no chips"
                + (
                    f" (asked for {wanted:.0%}): too few split blocks; a smaller --block-size "
                    "or --chip-size, or a larger scene, gives more"
                    if wanted
                    else ""
                )
            )
        elif 0 < got < 5 and name != "train":
            chips = "chip" if got == 1 else "chips"
            summary.warnings.append(
                f"the {name} split has only {got} {chips}: figures will be noisy"
            )


def _warn_chips_beyond_labels(
    scenes: Sequence[_Scene], chips: Sequence[ChipRecord], summary: TileSummary
) -> None:
    """Warn per scene when many written chips lie wholly beyond the labels' bounding box.

    In the default label mode such chips are pure background: right where the labels are
    complete, wrong where the fields there were only never drawn. Chips skipped for nodata do
    not count, so a scene with a wide nodata border is not warned about.
    """
    for index, scene in enumerate(scenes):
        written = [c for c in chips if c.scene == index]
        if not written or len(scene.fields) == 0:
            continue
        labelled = shapely.box(*scene.fields.total_bounds)
        beyond = sum(
            not c.pieces and not _window_box(scene.info, c.window).intersects(labelled)
            for c in written
        )
        if beyond > (1 - MIN_LABEL_COVER) * len(written):
            summary.warnings.append(
                f"{beyond} of the {len(written)} chips of scene {scene.info.path.name} lie wholly "
                "beyond the labels' extent and are written as pure background; if fields there "
                "are unlabelled, give --label-extent (or --sparse)"
            )


def _refuse_duplicate_scenes(scenes: Sequence[str | os.PathLike[str]]) -> None:
    """A scene given twice would be tiled twice: every chip doubled, in two splits maybe."""
    seen: set[Path] = set()
    for scene in scenes:
        resolved = Path(scene).resolve()
        if resolved in seen:
            raise ConfigError(f"scene {scene} is given more than once: give each scene once")
        seen.add(resolved)


def _refuse_scenes_smaller_than_a_chip(
    infos: Sequence[RasterInfo], chip_size: int, overlap: int, max_nodata: float
) -> list[str]:
    """Refuse scenes whose chips would all be skipped for their padding alone.

    A scene narrower or shorter than a chip gets chips padded with nodata (see
    :mod:`fieldseg.chip_grid`); when the padding alone is more than ``max_nodata`` of a chip,
    no chip of the scene could ever be written. An error when that is every scene; when only
    some, the warnings naming them (their chips are skipped and counted, as before).
    """
    inside = [min(i.width, chip_size) * min(i.height, chip_size) for i in infos]
    small = [i for i, n in zip(infos, inside, strict=True) if 1 - n / chip_size**2 > max_nodata]
    if not small:
        return []
    sizes = ", ".join(f"{i.path.name} ({i.width} x {i.height} px)" for i in small)
    why = f"a chip there would be more than {max_nodata:.0%} padding"
    if len(small) < len(infos):
        return [f"--chip-size {chip_size} is larger than {sizes}: {why}, so it gives no chip"]
    largest = min(min(i.width, i.height) for i in small)
    fix = (
        f"use a --chip-size of at most {largest}"
        if largest > overlap
        else f"use a --chip-size of at most {largest} and a smaller --overlap"
    )
    raise ConfigError(f"--chip-size {chip_size} is larger than {sizes}: {why}; {fix}")


def _check_same_bands(reference: RasterInfo, info: RasterInfo) -> None:
    """All scenes of a dataset need the same bands in the same order and data type."""
    if info.count != reference.count:
        raise InputFileError(
            f"{info.path.name} has {info.count} bands but {reference.path.name} has "
            f"{reference.count}: every scene of a dataset needs the same bands"
        )
    if info.band_names != reference.band_names:
        raise InputFileError(
            f"{info.path.name} has bands {list(info.band_names)} but {reference.path.name} has "
            f"{list(reference.band_names)}"
        )
    if info.dtype != reference.dtype:
        raise InputFileError(
            f"{info.path.name} is {info.dtype} but {reference.path.name} is {reference.dtype}"
        )


def _unique_id(stem: str, used: set[str]) -> str:
    """A scene id from the file name, made unique (``name``, ``name_2``, ...)."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate


def _bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    return array_bounds(info.height, info.width, info.transform)


def _window_box(info: RasterInfo, window: Window) -> shapely.Polygon:
    """The chip's footprint in scene CRS, clipped to the scene (padding has no labels)."""
    inside = window.intersection(Window(0, 0, info.width, info.height))
    transform = window_transform(inside, info.transform)
    return shapely.box(*array_bounds(int(inside.height), int(inside.width), transform))
