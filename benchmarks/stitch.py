"""Benchmark fieldseg's stitcher against two peers' merge rules on the same chip predictions.

An oracle chip model (:mod:`fieldseg.oracle`) reads a pinned synthetic scene's truth ids, so any
error left is the stitcher's, not a model's. Every method sees the same chip predictions, in
exact mode (perfect masks cut at chip edges) and in noisy mode (masks leak into neighbours,
random scores, edge pieces missing):

* **fieldseg**: ``predict_scene`` (per-chip resolution, seam linking, pixel votes, tracing).
* **sahi GREEDYNMM**: the default merge of sahi's sliced prediction (greedy non-maximum merging
  of boxes, match metric IOS >= 0.5, per category); each kept group's masks are unioned.
* **union rule**: the rule ftw-tools applies to Delineate-Anything's chip polygons: polygons
  with IoU >= 0.2 or containment >= 0.8 are linked; each linked group becomes its union.

All outputs are scored against the truth polygons with ``match_objects`` (fieldseg's one
definition of F1, split and merged fields); overlapping output pairs are counted, and whether
the output is a valid (noded) coverage is checked.
fieldseg's stitching time (resolve + stitch + trace) is also compared with one bare
``rasterio.features.shapes`` pass over the truth id raster (target: at most 2x; the bare pass is
timed three times and the fastest kept). Predict resolves a row's chips on threads while the
row above is stitched and traced, never while the model runs, so ``resolve`` is the time it
waits for them on top of that. The oracle's own time, the truth rasterising and the
file writing are reported apart, and so is a first predict over 2 x 2 chips that loads what a
process loads once (fieldseg's compiled kernels, torch's first calls). ``predict_scene``
runs in a fresh child process, so its peak RSS (``<mode>_fieldseg_process``) is the whole
predict run's own, not the benchmark's, which holds the truth polygons for scoring (target:
within 3 GB on a full Sentinel-2 tile). Prints a table and, last, one JSON line.

    .venv/bin/python benchmarks/stitch.py [--size 10980] [--modes exact,noisy] [--skip-peers]

sahi is optional (``pip install -e .[bench]``); without it that peer is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
import torch
from affine import Affine
from process_memory import hwm_mb, peak_rss_mb
from rasterio import features
from rasterio.windows import Window

from fieldseg.chip_grid import check_chip_geometry, chip_starts
from fieldseg.inference import predict_scene
from fieldseg.models.base import ChipPrediction
from fieldseg.models.boxed_masks import BoxedMasks
from fieldseg.object_matching import match_objects
from fieldseg.oracle import OracleFieldModel, write_truth_raster
from fieldseg.raster_io import nodata_mask
from fieldseg.synthetic import synth
from fieldseg.vector_io import read_vector

#: predict_scene's defaults, used by the peers too so that they see the same instances.
BATCH_SIZE = 4
SCORE_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
#: The oracle's seed in noisy mode (a fresh model per run, so the draws repeat chip by chip).
ORACLE_SEED = 1
#: sahi's get_sliced_prediction defaults: postprocess_type="GREEDYNMM",
#: postprocess_match_metric="IOS", postprocess_match_threshold=0.5, class_agnostic=False.
SAHI_METRIC, SAHI_THRESHOLD = "IOS", 0.5
#: ftw-tools' merge rule for Delineate-Anything chip polygons.
UNION_MIN_IOU, UNION_MIN_CONTAINMENT = 0.2, 0.8
#: The bare shapes pass is timed this many times and the fastest kept (a shared machine).
BARE_REPEATS = 3
#: Rows per strip of the bare shapes pass (bounded memory on a whole Sentinel-2 tile).
STRIP_ROWS = 1024


class FingerprintOracle(OracleFieldModel):
    """The oracle, noting a cheap fingerprint of every chip's prediction in call order.

    Two runs that see the same chips in the same order must have equal fingerprints; this is
    how the benchmark checks that the peers got exactly fieldseg's chip predictions.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fingerprints: list[tuple[int, float, int]] = []

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ChipPrediction]:
        """The oracle's predictions; (instances, score sum, mask pixels) noted per chip."""
        predictions = super().predict(images)
        for p in predictions:
            self.fingerprints.append((len(p), round(float(p.scores.sum()), 5), _claimed_pixels(p)))
        return predictions


def _claimed_pixels(prediction: ChipPrediction) -> int:
    """Mask pixels at or above the claim level, summed over a chip's instances."""
    if isinstance(prediction.masks, BoxedMasks):
        return sum(int((crop >= MASK_THRESHOLD).sum()) for crop in prediction.masks.crops)
    return int((prediction.masks >= MASK_THRESHOLD).sum())


def oracle(mode: str) -> FingerprintOracle:
    """A fresh oracle for ``mode`` (``exact`` or ``noisy``)."""
    return FingerprintOracle(noisy=mode == "noisy", seed=ORACLE_SEED)


# -- scene --------------------------------------------------------------------------------


def scene_files(workdir: Path, size: int, seed: int) -> tuple[Path, Path]:
    """The pinned synthetic scene and its truth fields (made once, then cached)."""
    scene = workdir / f"stitch_scene_{size}_s{seed}.tif"
    fields = workdir / f"stitch_fields_{size}_s{seed}.gpkg"
    if not (scene.exists() and fields.exists()):
        synth(scene, fields, size=size, seed=seed, overwrite=True)
    return scene, fields


def bare_shapes(ids_tif: Path, strip_rows: int = STRIP_ROWS) -> tuple[float, int]:
    """Seconds of one bare ``features.shapes`` pass over the id raster, and polygons found.

    Read strip by strip (reading is not timed), so memory stays bounded on a whole tile.
    """
    seconds, count = 0.0, 0
    with rasterio.open(ids_tif) as src:
        for top in range(0, src.height, strip_rows):
            window = Window(0, top, src.width, min(strip_rows, src.height - top))
            strip = src.read(1, window=window)
            tick = time.perf_counter()
            for _ in features.shapes(
                strip, mask=strip > 0, connectivity=4, transform=src.window_transform(window)
            ):
                count += 1
            seconds += time.perf_counter() - tick
    return seconds, count


# -- the peers' input: the same chip predictions, polygonised per mask ----------------------


@dataclass
class ChipPieces:
    """Every chip instance as a polygon in scene pixel coordinates (x: column, y: row).

    Pixel coordinates are whole numbers, so the pieces of one field from two chips share their
    edges exactly and overlays between them are exact.
    """

    polygons: np.ndarray
    scores: np.ndarray
    fingerprints: list[tuple[int, float, int]]
    seconds: dict[str, float] = field(default_factory=dict)


def chip_pieces(ids_tif: Path, mode: str, chip_size: int, overlap: int) -> ChipPieces:
    """Run a fresh oracle over predict_scene's chip grid, in its order, and polygonise masks.

    predict_scene's order: chip rows top to bottom, in each row the chips with valid data left
    to right, in batches of ``BATCH_SIZE`` that do not cross rows. The noisy oracle draws from
    one generator in call order, so the same order gives the same draws chip by chip.
    """
    model = oracle(mode)
    seconds = dict.fromkeys(("read", "model", "vectorise"), 0.0)
    polygons: list[shapely.Polygon] = []
    scores: list[float] = []
    stride = check_chip_geometry(chip_size, overlap)
    with rasterio.open(ids_tif) as src:
        height, width, nodata = src.height, src.width, src.nodata
        cols = chip_starts(width, chip_size, stride)
        for row in chip_starts(height, chip_size, stride):
            tick = time.perf_counter()
            chips = [_read_chip(src, row, col, chip_size, nodata) for col in cols]
            with_data = [chip for chip in chips if chip[2].any()]
            seconds["read"] += time.perf_counter() - tick
            for start in range(0, len(with_data), BATCH_SIZE):
                batch = with_data[start : start + BATCH_SIZE]
                tick = time.perf_counter()
                predictions = model.predict([torch.from_numpy(image) for _, image, _ in batch])
                seconds["model"] += time.perf_counter() - tick
                tick = time.perf_counter()
                for (col, _, valid), prediction in zip(batch, predictions, strict=True):
                    for polygon, score in _mask_polygons(prediction, valid, row, col):
                        polygons.append(polygon)
                        scores.append(score)
                seconds["vectorise"] += time.perf_counter() - tick
    return ChipPieces(
        polygons=np.array(polygons, dtype=object),
        scores=np.array(scores, dtype=np.float64),
        fingerprints=model.fingerprints,
        seconds=seconds,
    )


def _read_chip(
    src: rasterio.io.DatasetReader, row: int, col: int, chip_size: int, nodata: float | None
) -> tuple[int, np.ndarray, np.ndarray]:
    """A chip window as float32 (1, chip, chip), padded as predict_scene pads; its valid mask."""
    rows, cols = min(chip_size, src.height - row), min(chip_size, src.width - col)
    data = src.read(window=Window(col, row, cols, rows))
    image = np.full(
        (src.count, chip_size, chip_size), 0 if nodata is None else nodata, dtype=np.float32
    )
    image[:, :rows, :cols] = data
    valid = np.zeros((chip_size, chip_size), bool)
    valid[:rows, :cols] = ~nodata_mask(data, nodata)
    return col, image, valid


def _mask_polygons(
    prediction: ChipPrediction, valid: np.ndarray, row: int, col: int
) -> list[tuple[shapely.Polygon, float]]:
    """Each instance's mask (at 0.5, on valid pixels) as its largest 4-connected polygon.

    Tracing each mask on its own costs one ``features.shapes`` call per instance (hundreds per
    chip), so masks are first dealt into layers where no two share a pixel (a chip of leaky
    masks needs a handful), and each layer is traced once as a label image. The polygons are
    placed in scene pixel coordinates through the chip's offset.
    """
    scores = prediction.scores.detach().cpu().numpy().astype(np.float64)
    keep = np.flatnonzero(scores >= SCORE_THRESHOLD)
    if len(keep) == 0:
        return []
    scores = scores[keep]
    layers: list[np.ndarray] = []
    for k, box, crop in _binary_crops(prediction, keep, valid):
        for layer in layers:
            if not layer[box][crop].any():
                layer[box][crop] = k + 1
                break
        else:
            layers.append(np.zeros(valid.shape, np.int32))
            layers[-1][box][crop] = k + 1
    best: dict[int, shapely.Polygon] = {}
    offset = Affine.translation(col, row)
    for layer in layers:
        for geometry, value in features.shapes(
            layer, mask=layer > 0, connectivity=4, transform=offset
        ):
            polygon = shapely.geometry.shape(geometry)
            k = int(value) - 1
            if k not in best or polygon.area > best[k].area:
                best[k] = polygon
    return [(best[k], float(scores[k])) for k in sorted(best)]


def _binary_crops(
    prediction: ChipPrediction, keep: np.ndarray, valid: np.ndarray
) -> list[tuple[int, tuple[slice, slice], np.ndarray]]:
    """(k, box, mask at 0.5 on valid pixels inside the box) of each kept mask with a pixel.

    ``k`` numbers the kept masks; a dense stack is boxed first.
    """
    masks = prediction.masks
    if not isinstance(masks, BoxedMasks):
        masks = BoxedMasks.from_dense(masks.detach().cpu())
    boxes = masks.boxes.cpu().numpy()
    out = []
    for k, i in enumerate(keep.tolist()):
        x0, y0, x1, y1 = boxes[i].tolist()
        box = np.s_[y0:y1, x0:x1]
        crop = (masks.crops[i].cpu().numpy() >= MASK_THRESHOLD) & valid[box]
        if crop.any():
            out.append((k, box, crop))
    return out


# -- peer 1: sahi's default merge for sliced prediction -------------------------------------


def sahi_available() -> str | None:
    """sahi's version if it can be imported, else None."""
    try:
        import sahi
        from sahi.postprocess.combine import batched_greedy_nmm  # noqa: F401
    except ImportError:
        return None
    return str(getattr(sahi, "__version__", "unknown"))


def sahi_greedy_nmm(polygons: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sahi's default sliced-prediction merge applied to the chip pieces.

    As ``GreedyNMMPostprocess(match_threshold=0.5, match_metric="IOS", class_agnostic=False)``
    does: sahi's ``batched_greedy_nmm`` groups boxes (x1, y1, x2, y2, score, category) by score
    order; then, per kept box, each member of its group is merged when sahi's ``has_match``
    still finds the grown box matching it (``merge_object_prediction_pair``: box union, score
    max); a member that no longer matches is dropped, as in sahi. The merged mask is the union
    of the merged members' polygons (sahi unions mask polygons with shapely too).
    """
    from sahi.postprocess.combine import batched_greedy_nmm
    from sahi.postprocess.utils import has_match, merge_object_prediction_pair
    from sahi.prediction import ObjectPrediction

    if len(polygons) == 0:
        return polygons, scores
    boxes = shapely.bounds(polygons)
    table = np.column_stack([boxes, scores, np.ones(len(scores))]).astype(np.float32)
    keep_to_merge = batched_greedy_nmm(
        table, match_metric=SAHI_METRIC, match_threshold=SAHI_THRESHOLD
    )

    def box_prediction(i: int) -> ObjectPrediction:
        return ObjectPrediction(
            bbox=boxes[i].tolist(), score=float(scores[i]), category_id=1, category_name="field"
        )

    out_polygons, out_scores = [], []
    for keep, members in keep_to_merge.items():
        if not members:
            out_polygons.append(polygons[keep])
            out_scores.append(float(scores[keep]))
            continue
        merged, group = box_prediction(keep), [keep]
        for member in members:
            candidate = box_prediction(member)
            if has_match(merged, candidate, SAHI_METRIC, SAHI_THRESHOLD):
                merged = merge_object_prediction_pair(merged, candidate)
                group.append(member)
        out_polygons.append(shapely.union_all(polygons[group]))
        out_scores.append(float(merged.score.value))
    return np.array(out_polygons, dtype=object), np.array(out_scores)


# -- peer 2: the union rule of ftw-tools for Delineate-Anything -----------------------------


def union_rule(polygons: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Link pieces with IoU >= 0.2 or containment >= 0.8; each linked group becomes its union.

    Candidate pairs come from one bulk STR-tree query; exact intersections are computed,
    vectorised, only for pairs whose bound (bounding-box overlap, at most the smaller area) may
    pass a rule, which skips most pairs of neighbours that merely touch. Groups are the
    connected components of the links (score: the group's maximum).
    """
    n = len(polygons)
    if n == 0:
        return polygons, scores
    tree = shapely.STRtree(polygons)
    a, b = tree.query(polygons, predicate="intersects")
    a, b = a[a < b], b[a < b]
    area = shapely.area(polygons)
    box = shapely.bounds(polygons)
    width = np.minimum(box[a, 2], box[b, 2]) - np.maximum(box[a, 0], box[b, 0])
    height = np.minimum(box[a, 3], box[b, 3]) - np.maximum(box[a, 1], box[b, 1])
    smaller = np.minimum(area[a], area[b])
    bound = np.minimum(np.clip(width, 0, None) * np.clip(height, 0, None), smaller)
    bound *= 1 + 1e-9  # slack: rounding can never prune a pair that passes
    may_link = (bound / (area[a] + area[b] - bound) >= UNION_MIN_IOU) | (
        bound / smaller >= UNION_MIN_CONTAINMENT
    )
    a, b = a[may_link], b[may_link]
    common = shapely.area(shapely.intersection(polygons[a], polygons[b]))
    iou = common / (area[a] + area[b] - common)
    containment = common / np.minimum(area[a], area[b])
    linked = (iou >= UNION_MIN_IOU) | (containment >= UNION_MIN_CONTAINMENT)
    label = connected_components(n, a[linked], b[linked])
    order = np.argsort(label, kind="stable")
    starts = np.flatnonzero(np.r_[True, label[order][1:] != label[order][:-1]])
    out_polygons, out_scores = [], []
    for group in np.split(order, starts[1:]):
        out_polygons.append(
            polygons[group[0]] if len(group) == 1 else shapely.union_all(polygons[group])
        )
        out_scores.append(float(scores[group].max()))
    return np.array(out_polygons, dtype=object), np.array(out_scores)


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) component label of each node given edges (a[k], b[k]): the smallest node id in it.

    Vectorised min-label propagation with pointer jumping; a node's label never grows and
    always names a node of its component, so the loop stops when every edge's ends agree.
    """
    label = np.arange(n)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


# -- scoring ------------------------------------------------------------------------------


def count_overlaps(polygons: np.ndarray, min_area: float) -> int:
    """Pairs of output polygons whose interiors overlap by more than ``min_area``."""
    if len(polygons) < 2:
        return 0
    a, b = shapely.STRtree(polygons).query(polygons, predicate="intersects")
    a, b = a[a < b], b[a < b]
    common = shapely.area(shapely.intersection(polygons[a], polygons[b]))
    return int(np.count_nonzero(common > min_area))


def score(polygons: np.ndarray, truth: np.ndarray, min_overlap: float) -> dict[str, Any]:
    """Object scores of an output against the truth, and its overlapping pairs."""
    m = match_objects(polygons, truth)
    return {
        "n_output": len(polygons),
        "f1": round(m.f1, 4),
        "precision": round(m.precision, 4),
        "recall": round(m.recall, 4),
        "n_split": len(m.split_truth),
        "split_rate": round(m.split_rate, 4),
        "n_merged": len(m.merged_truth),
        "merged_rate": round(m.merged_rate, 4),
        "overlaps": count_overlaps(polygons, min_overlap),
        # a noded coverage: neighbours share their vertices too, so reprojecting opens nothing
        "coverage_valid": bool(shapely.coverage_is_valid(polygons)),
    }


def to_scene(polygons: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel-coordinate polygons mapped through the scene's affine transform."""
    a, b, c, d, e, f = transform[:6]
    matrix = np.array([[a, d], [b, e]])
    offset = np.array([c, f])
    return shapely.transform(polygons, lambda xy: xy @ matrix + offset)


# -- one mode -----------------------------------------------------------------------------


def predict_with_oracle(
    mode: str, ids_tif: Path, out: Path, chip_size: int, overlap: int, device: str
) -> dict[str, Any]:
    """``predict_scene`` with a fresh oracle (run in a child process): seconds, memory, chips.

    A first predict over the scene's top-left 2 x 2 chips loads what a process loads once
    (the compiled kernels, torch's first calls); its time is reported apart.
    """
    with rasterio.open(ids_tif) as src:
        left, top, side = src.bounds.left, src.bounds.top, 2 * chip_size * src.res[0]
    tick = time.perf_counter()
    predict_scene(ids_tif, oracle(mode), out.with_name(f"warm_up_{out.name}"),
                  chip_size=chip_size, overlap=overlap, bbox=(left, top - side, left + side, top),
                  device=device, overwrite=True, show_progress=False)  # fmt: skip
    warm_up_seconds = time.perf_counter() - tick
    model = oracle(mode)
    summary = predict_scene(
        ids_tif,
        model,
        out,
        chip_size=chip_size,
        overlap=overlap,
        batch_size=BATCH_SIZE,
        score_threshold=SCORE_THRESHOLD,
        min_area_m2=0,
        device=device,
        overwrite=True,
        show_progress=False,
    )
    return {
        "seconds": dict(summary.seconds),
        "warm_up_seconds": round(warm_up_seconds, 3),
        "n_chips": summary.n_chips,
        "fingerprints": model.fingerprints,
        "peak_rss_mb": hwm_mb() or peak_rss_mb(),  # VmHWM: not inherited at exec
    }


def run_mode(
    mode: str,
    ids_tif: Path,
    truth: np.ndarray,
    args: argparse.Namespace,
    rss: dict[str, float],
    peers: list[tuple[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]],
) -> dict[str, Any]:
    """fieldseg and the peers on one oracle mode: scores, seconds and the consistency check."""
    with rasterio.open(ids_tif) as src:
        transform = src.transform
        pixel_area = abs(transform.a * transform.e)
    min_overlap = 1e-6 * pixel_area  # float noise on shared edges is not an overlap
    out_gpkg = args.workdir / f"stitch_fields_out_{args.size}_{mode}.gpkg"

    # in a fresh process, so that its peak memory is predict's alone (not the truth's)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        run = pool.submit(
            predict_with_oracle, mode, ids_tif, out_gpkg, args.chip_size, args.overlap,
            args.device,
        ).result()  # fmt: skip
    rss[f"{mode}_fieldseg_process"] = run["peak_rss_mb"]
    s = run["seconds"]
    fieldseg_polygons = read_vector(out_gpkg, layer="fields").geometry.to_numpy()
    result: dict[str, Any] = {
        "n_chips": run["n_chips"],
        "fieldseg": {
            **score(fieldseg_polygons, truth, min_overlap),
            "seconds": round(s["resolve"] + s["stitch"] + s["trace"], 3),
            "seconds_parts": {k: s[k] for k in ("resolve", "stitch", "trace")},
            "oracle_seconds": s["model"],
            "read_seconds": s["read"],
            "write_seconds": s["write"],
            "total_seconds": s["total"],
            "warm_up_seconds": run["warm_up_seconds"],
        },
    }
    if not peers:
        return result

    pieces = chip_pieces(ids_tif, mode, args.chip_size, args.overlap)
    rss[f"{mode}_chip_pieces"] = peak_rss_mb()
    result["peer_input"] = {
        "n_pieces": len(pieces.polygons),
        "same_chip_predictions_as_fieldseg": pieces.fingerprints == run["fingerprints"],
        "oracle_seconds": round(pieces.seconds["model"], 3),
        "read_seconds": round(pieces.seconds["read"], 3),
        "vectorise_seconds": round(pieces.seconds["vectorise"], 3),
    }
    for name, merge in peers:
        tick = time.perf_counter()
        merged, _ = merge(pieces.polygons, pieces.scores)
        merge_seconds = time.perf_counter() - tick
        result[name] = {
            **score(to_scene(merged, transform), truth, min_overlap),
            "seconds": round(pieces.seconds["vectorise"] + merge_seconds, 3),
            "merge_seconds": round(merge_seconds, 3),
        }
        rss[f"{mode}_{name}"] = peak_rss_mb()
    return result


def print_table(results: dict[str, dict[str, Any]], methods: list[str]) -> None:
    """One line per mode and method."""
    header = (
        f"{'mode':6} {'method':16} {'fields':>7} {'F1':>6} {'prec':>6} {'recall':>6} "
        f"{'split':>12} {'merged':>12} {'overlaps':>8} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    for mode, result in results.items():
        for method in methods:
            if method not in result:
                continue
            r = result[method]
            split = f"{r['n_split']} ({r['split_rate']:.1%})"
            merged = f"{r['n_merged']} ({r['merged_rate']:.1%})"
            print(
                f"{mode:6} {method:16} {r['n_output']:7d} {r['f1']:6.3f} {r['precision']:6.3f} "
                f"{r['recall']:6.3f} {split:>12} {merged:>12} {r['overlaps']:8d} "
                f"{r['seconds']:8.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="scene side in pixels")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--modes", default="exact,noisy", help="comma-separated: exact, noisy")
    parser.add_argument("--skip-peers", action="store_true", help="run fieldseg only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-output"))
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("exact", "noisy") for m in modes):
        parser.error(f"--modes takes exact and/or noisy, got {args.modes!r}")
    check_chip_geometry(args.chip_size, args.overlap)
    args.workdir.mkdir(exist_ok=True)
    rss: dict[str, float] = {}

    tick = time.perf_counter()
    scene, fields = scene_files(args.workdir, args.size, args.seed)
    synth_seconds = time.perf_counter() - tick
    ids_tif = args.workdir / f"stitch_ids_{args.size}_s{args.seed}.tif"
    tick = time.perf_counter()
    n_truth = write_truth_raster(fields, scene, ids_tif, overwrite=True)
    rasterise_seconds = time.perf_counter() - tick
    with rasterio.open(ids_tif) as src:
        crs = src.crs
    truth = read_vector(fields).to_crs(crs).geometry.to_numpy()
    rss["scene"] = peak_rss_mb()
    bare = [bare_shapes(ids_tif) for _ in range(BARE_REPEATS)]
    bare_seconds, bare_polygons = min(seconds for seconds, _ in bare), bare[0][1]
    rss["bare_shapes"] = peak_rss_mb()
    print(
        f"scene {args.size} x {args.size} px, seed {args.seed}: {n_truth} truth fields "
        f"(synth {synth_seconds:.1f} s; oracle id raster {rasterise_seconds:.2f} s)"
    )
    print(
        f"bare rasterio.features.shapes over the id raster: {bare_seconds:.3f} s, best of "
        f"{BARE_REPEATS} "
        f"({bare_polygons} polygons, strips of {STRIP_ROWS} rows)"
    )

    peers: list[tuple[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]] = []
    sahi_version = sahi_available()
    if not args.skip_peers:
        if sahi_version is None:
            print("note: sahi is not installed (pip install -e .[bench]); skipping the sahi peer")
        else:
            peers.append(("sahi_greedynmm", sahi_greedy_nmm))
        peers.append(("union_rule", union_rule))

    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        results[mode] = run_mode(mode, ids_tif, truth, args, rss, peers)
        r = results[mode]
        f = r["fieldseg"]
        print(
            f"\n[{mode}] {r['n_chips']} chips; fieldseg stitch+trace {f['seconds']:.2f} s "
            f"(resolve {f['seconds_parts']['resolve']:.2f}, stitch "
            f"{f['seconds_parts']['stitch']:.2f}, trace {f['seconds_parts']['trace']:.2f}); "
            f"oracle {f['oracle_seconds']:.2f} s, read {f['read_seconds']:.2f} s, "
            f"write {f['write_seconds']:.2f} s; warm-up predict of 2 x 2 chips "
            f"{f['warm_up_seconds']:.2f} s"
        )
        if "peer_input" in r:
            p = r["peer_input"]
            same = "yes" if p["same_chip_predictions_as_fieldseg"] else "NO"
            print(
                f"[{mode}] peers: {p['n_pieces']} chip pieces, same chip predictions as "
                f"fieldseg: {same}; oracle {p['oracle_seconds']:.2f} s, "
                f"vectorise {p['vectorise_seconds']:.2f} s; merge "
                + ", ".join(f"{name} {r[name]['merge_seconds']:.2f} s" for name, _ in peers)
            )
        if f["overlaps"]:
            print(f"[{mode}] WARNING: fieldseg's output has {f['overlaps']} overlapping pairs")
        if not f["coverage_valid"]:
            print(f"[{mode}] WARNING: fieldseg's output is not a valid coverage")

    methods = ["fieldseg"] + [name for name, _ in peers]
    print()
    print_table(results, methods)
    ratios = {
        mode: round(r["fieldseg"]["seconds"] / bare_seconds, 2) if bare_seconds > 0 else None
        for mode, r in results.items()
    }
    print(
        "\nfieldseg stitch+trace / bare shapes: "
        + ", ".join(f"{mode} {ratio}x" for mode, ratio in ratios.items())
        + " (target <= 2x)"
    )
    print(
        "peak RSS (MB) after each stage: "
        + ", ".join(f"{stage} {mb:.0f}" for stage, mb in rss.items())
    )
    print(
        json.dumps(
            {
                "benchmark": "stitch",
                "size": args.size,
                "seed": args.seed,
                "chip_size": args.chip_size,
                "overlap": args.overlap,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "n_truth": n_truth,
                "sahi_version": sahi_version,
                "sahi_merge": {
                    "postprocess_type": "GREEDYNMM",
                    "match_metric": SAHI_METRIC,
                    "match_threshold": SAHI_THRESHOLD,
                    "class_agnostic": False,
                },
                "union_rule": {"min_iou": UNION_MIN_IOU, "min_containment": UNION_MIN_CONTAINMENT},
                "rasterise_truth_seconds": round(rasterise_seconds, 3),
                "bare_shapes_seconds": round(bare_seconds, 3),
                "ratio_to_bare_shapes": ratios,
                "modes": results,
                "peak_rss_mb": rss,
            }
        )
    )


if __name__ == "__main__":
    main()
