"""Benchmark ``fieldseg evaluate``'s scoring on a Sentinel-2-tile-sized set of fields.

Truth: Voronoi cells of ``--fields`` random points over a ``--size`` pixel square at 10 m (a
full tile is 10980 px, 109.8 km; 300,000 cells of about 4 ha). Predictions are made from the
truth with known errors, so the figures can be checked against the construction:

* the other fields are shifted by up to 15 m in x and y (most still match at IoU > 0.5);
* 5 % are missing, 5 % are cut in two halves (each a split), and 5 % of the fields are merged
  with a neighbour into one polygon (two merged truth fields per merge);
* 5 % more are false predictions: small squares at random places.

Matching and segmentation errors (objects), the pixel and boundary figures and mask AP are timed
apart (target: objects under a minute here). Prints the table, then one JSON line.

    .venv/bin/python benchmarks/evaluate.py [--fields 300000] [--size 10980] [--no-mask-ap]
"""

from __future__ import annotations

import argparse
import json
import time

import geopandas as gpd
import numpy as np
import shapely
from process_memory import peak_rss_mb

from fieldseg.evaluation import EvaluationSettings, evaluate_fields

CRS = "EPSG:32633"
ORIGIN = (400_000.0, 5_300_000.0)
PIXEL = 10.0


def make_truth(n_fields: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Voronoi cells of random points, clipped to the square: a partition of the scene."""
    side = size * PIXEL
    points = rng.uniform(0, side, size=(n_fields, 2)) + ORIGIN
    extent = shapely.box(*ORIGIN, ORIGIN[0] + side, ORIGIN[1] + side)
    cells = shapely.get_parts(
        shapely.voronoi_polygons(shapely.multipoints(points), extend_to=extent)
    )
    cells = shapely.intersection(cells, extent)
    return cells[shapely.area(cells) > 0]


def make_predictions(
    truth: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Predictions with known errors (module docstring) and random scores."""
    n = len(truth)
    fate = rng.choice(4, size=n, p=[0.85, 0.05, 0.05, 0.05])  # keep, drop, split, merge
    keep, split, merge = fate == 0, fate == 2, fate == 3
    halves = _halves(truth[split])
    # merge each chosen field with one neighbour that is itself kept (not dropped or split)
    tree = shapely.STRtree(truth)
    chosen = np.flatnonzero(merge)
    left, right = tree.query(truth[chosen], predicate="touches")
    partner = np.full(len(chosen), -1)
    taken = np.zeros(n, bool)
    taken[chosen] = True
    for i, j in zip(left, right, strict=True):
        if partner[i] < 0 and keep[j] and not taken[j]:
            partner[i] = j
            taken[j] = True
    paired = partner >= 0
    merged = shapely.union(truth[chosen[paired]], truth[partner[paired]])
    # partners are no longer predicted on their own
    keep_mask = keep.copy()
    keep_mask[partner[paired]] = False
    shifted = shapely.transform(
        truth[keep_mask], lambda xy: xy + rng.uniform(-15, 15, size=2), interleaved=True
    )
    n_false = int(0.05 * n)
    corners = rng.uniform(0, size * PIXEL - 100, size=(n_false, 2)) + ORIGIN
    sides = rng.uniform(30, 100, size=n_false)
    false = shapely.box(corners[:, 0], corners[:, 1], corners[:, 0] + sides, corners[:, 1] + sides)
    predicted = np.concatenate([shifted, halves, merged, false])
    built = {
        "n_shifted": len(shifted),
        "n_dropped": int((fate == 1).sum()) + int((~paired).sum()),
        "n_split_built": int(split.sum()),
        "n_merges_built": int(paired.sum()),
        "n_false_built": n_false,
    }
    return predicted, rng.uniform(0.5, 1.0, size=len(predicted)), built


def _halves(cells: np.ndarray) -> np.ndarray:
    """Each cell cut in two along the vertical line through its bounding box centre."""
    bounds = shapely.bounds(cells)
    middle = (bounds[:, 0] + bounds[:, 2]) / 2
    west = shapely.box(bounds[:, 0] - 1, bounds[:, 1] - 1, middle, bounds[:, 3] + 1)
    east = shapely.box(middle, bounds[:, 1] - 1, bounds[:, 2] + 1, bounds[:, 3] + 1)
    parts = np.concatenate([shapely.intersection(cells, west), shapely.intersection(cells, east)])
    return parts[shapely.area(parts) > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=300_000)
    parser.add_argument("--size", type=int, default=10980, help="scene side in 10 m pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mask-ap", action="store_true")
    parser.add_argument("--no-pixel-metrics", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    clock = time.perf_counter()
    truth = make_truth(args.fields, args.size, rng)
    predicted, scores, built = make_predictions(truth, args.size, rng)
    build_seconds = time.perf_counter() - clock
    print(f"built {len(truth)} truth, {len(predicted)} predicted fields in {build_seconds:.1f} s")

    truth_frame = gpd.GeoDataFrame(geometry=truth, crs=CRS)
    predicted_frame = gpd.GeoDataFrame({"score": scores}, geometry=predicted, crs=CRS)
    objects_only = EvaluationSettings(mask_ap=False, pixel_metrics=False)
    clock = time.perf_counter()
    report = evaluate_fields(predicted_frame, truth_frame, settings=objects_only).report
    object_seconds = time.perf_counter() - clock
    seconds = {"objects": round(object_seconds, 2)}
    full = EvaluationSettings(mask_ap=not args.no_mask_ap, pixel_metrics=not args.no_pixel_metrics)
    if full.mask_ap or full.pixel_metrics:
        stages: list[str] = []
        evaluation = evaluate_fields(
            predicted_frame, truth_frame, settings=full, on_stage=stages.append
        )
        report = evaluation.report
        seconds.update({k: v for k, v in report["seconds"].items() if k != "objects"})
    print(evaluation.table() if full.mask_ap or full.pixel_metrics else report["object"])
    obj = report["object"]
    result = {
        "benchmark": "evaluate",
        "n_truth": len(truth),
        "n_predicted": len(predicted),
        "grid_px": args.size,
        **built,
        "tp": obj["tp"],
        "f1": obj["f1"],
        "mean_f1": obj["mean_f1"],
        "n_split_truth": obj["n_split_truth"],
        "n_merged_truth": obj["n_merged_truth"],
        "n_merged_predictions": obj["n_merged_predictions"],
        "pixel_iou": (report["pixel"] or {}).get("pixel_iou"),
        "boundary_f1": (report["pixel"] or {}).get("boundary_f1"),
        "mask_ap": (report["mask_ap"] or {}).get("ap"),
        "seconds": seconds,
        "objects_under_a_minute": object_seconds < 60,
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
