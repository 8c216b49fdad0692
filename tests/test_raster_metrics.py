"""Pixel, boundary and tiled COCO mask metrics of polygons, on cases whose answers are known.

Geometry is written in pixels of a small grid (row, col) and converted to metres; rectangle edges
lie on pixel edges, so no pixel centre is ever on a polygon's edge. A brute-force reference
(every polygon rasterised on its own over the whole grid) checks the strip, overlap and region
machinery on random scenes.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from shapely.geometry import Polygon

from fieldseg.coco_format import encode_rle
from fieldseg.raster_metrics import (
    SIZE_BINS_HA,
    EvaluationGrid,
    _SparseCOCOeval,
    mask_average_precision,
    pixel_metrics,
    size_bin_index,
)
from fieldseg.rasterization import rasterize_mask

PX = 10.0
X0, Y0 = 500_000.0, 5_800_000.0
GRID = EvaluationGrid(Affine(PX, 0.0, X0, 0.0, -PX, Y0), height=40, width=50)
FIGURES = (
    "pixel_iou",
    "pixel_precision",
    "pixel_recall",
    "pixel_f1",
    "boundary_precision",
    "boundary_recall",
    "boundary_f1",
)


def rect(row: int, col: int, height: int, width: int) -> Polygon:
    """The pixels rows ``row:row + height``, columns ``col:col + width`` of GRID."""
    left, top = X0 + col * PX, Y0 - row * PX
    return shapely.box(left, top - height * PX, left + width * PX, top)


def pixel_polygon(points: Sequence[tuple[float, float]]) -> Polygon:
    """A polygon from (row, col) vertices in pixel units of GRID."""
    return Polygon([(X0 + c * PX, Y0 - r * PX) for r, c in points])


def objects(geometries: Sequence[Polygon]) -> np.ndarray:
    array = np.empty(len(geometries), dtype=object)
    array[:] = list(geometries)
    return array


# --------------------------------------------------------------------------------------------
# A brute-force reference: each polygon alone over the whole grid, dilation by explicit shifts


def masks_of(geometries: Sequence[Polygon], grid: EvaluationGrid = GRID) -> list[np.ndarray]:
    return [rasterize_mask(g, transform=grid.transform, shape=grid.shape) for g in geometries]


def own_boundary(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def near(mask: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(mask, radius)
    height, width = mask.shape
    out = np.zeros_like(mask)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            out |= padded[radius + dr : radius + dr + height, radius + dc : radius + dc + width]
    return out


def union(masks: Sequence[np.ndarray], shape: tuple[int, int] = GRID.shape) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for mask in masks:
        out |= mask
    return out


def reference(
    predicted: Sequence[Polygon],
    truth: Sequence[Polygon],
    *,
    region: Polygon | None,
    tolerance: int,
    truth_bins: np.ndarray,
    predicted_bins: np.ndarray,
) -> dict[str, Any]:
    counted = (
        np.ones(GRID.shape, dtype=bool)
        if region is None
        else rasterize_mask(region, transform=GRID.transform, shape=GRID.shape)
    )
    t_masks, p_masks = masks_of(truth), masks_of(predicted)
    t_edges, p_edges = [own_boundary(m) for m in t_masks], [own_boundary(m) for m in p_masks]
    t_all, p_all = union(t_masks), union(p_masks)
    near_t, near_p = near(union(t_edges), tolerance), near(union(p_edges), tolerance)
    counts = {
        "region_pixels": int(counted.sum()),
        "truth_pixels": int((t_all & counted).sum()),
        "predicted_pixels": int((p_all & counted).sum()),
        "tp_pixels": int((t_all & p_all & counted).sum()),
        "truth_boundary_pixels": int((union(t_edges) & counted).sum()),
        "predicted_boundary_pixels": int((union(p_edges) & counted).sum()),
        "matched_truth_boundary_pixels": int((union(t_edges) & counted & near_p).sum()),
        "matched_predicted_boundary_pixels": int((union(p_edges) & counted & near_t).sum()),
    }
    by_size = {}
    for b, (_, _, label) in enumerate(SIZE_BINS_HA):
        tb = [i for i in range(len(truth)) if truth_bins[i] == b]
        pb = [i for i in range(len(predicted)) if predicted_bins[i] == b]
        t_ext = union([t_masks[i] for i in tb]) & counted
        t_edge = union([t_edges[i] for i in tb]) & counted
        p_ext = union([p_masks[i] for i in pb]) & counted
        p_edge = union([p_edges[i] for i in pb]) & counted
        by_size[label] = {
            "truth_pixels": int(t_ext.sum()),
            "covered_truth_pixels": int((t_ext & p_all).sum()),
            "truth_boundary_pixels": int(t_edge.sum()),
            "matched_truth_boundary_pixels": int((t_edge & near_p).sum()),
            "predicted_pixels": int(p_ext.sum()),
            "correct_predicted_pixels": int((p_ext & t_all).sum()),
            "predicted_boundary_pixels": int(p_edge.sum()),
            "matched_predicted_boundary_pixels": int((p_edge & near_t).sum()),
        }
    return {"counts": counts, "by_size": by_size}


def random_scene(rng: np.random.Generator, n: int, *, overlapping: bool) -> list[Polygon]:
    """Rectangles and off-grid triangles; without ``overlapping`` each is cut free of the rest."""
    shapes: list[Polygon] = []
    for _ in range(n):
        r, c = rng.integers(-3, GRID.height), rng.integers(-3, GRID.width)
        if rng.random() < 0.6:
            shape = rect(int(r), int(c), int(rng.integers(1, 12)), int(rng.integers(1, 12)))
        else:
            points = [(r + rng.random() * 12, c + rng.random() * 12) for _ in range(3)]
            shape = pixel_polygon(points)
        if not overlapping and shapes:
            shape = shape.difference(shapely.union_all(shapes))
            parts = [p for p in shapely.get_parts(shape) if isinstance(p, Polygon)]
            shape = shapely.MultiPolygon(parts) if len(parts) > 1 else (parts or [Polygon()])[0]
        if not shape.is_empty:
            shapes.append(shape)
    return shapes


# --------------------------------------------------------------------------------------------
# The grid


def test_covering_grid_snaps_to_pixel_multiples_and_covers_the_bounds() -> None:
    grid = EvaluationGrid.covering((500_003.0, 5_799_871.0, 500_052.0, 5_800_000.0), 10.0)
    assert grid.transform == Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_800_000.0)
    assert grid.shape == (13, 6)  # rows 5_799_870 .. 5_800_000, columns 500_000 .. 500_060
    assert grid.pixel_area == 100.0
    point = EvaluationGrid.covering((5.0, 5.0, 5.0, 5.0), 10.0)
    assert point.shape == (1, 1)
    # bounds a reprojection round trip left 1e-10 m off the grid lines are on them
    noisy = EvaluationGrid.covering(
        (516149.9999999999, 5_799_870.0000000001, 516_200.0000000001, 5_799_999.9999999999), 10.0
    )
    assert noisy.transform.c == 516_150.0 and noisy.shape == (13, 5)
    with pytest.raises(ValueError, match="finite"):
        EvaluationGrid.covering(shapely.Polygon().bounds, 10.0)
    with pytest.raises(ValueError, match="pixel_size"):
        EvaluationGrid.covering((0, 0, 1, 1), 0.0)
    with pytest.raises(ValueError, match="north-up"):
        EvaluationGrid(Affine(10.0, 0.0, 0.0, 0.0, 10.0, 0.0), height=2, width=2)


def test_size_bin_index_is_half_open() -> None:
    areas = np.array([0.0, 9_999.0, 10_000.0, 49_999.9, 50_000.0, 1e9, np.nan])
    assert size_bin_index(areas).tolist() == [0, 0, 1, 1, 2, 2, -1]


# --------------------------------------------------------------------------------------------
# Pixel and boundary metrics: known answers


def test_identical_sets_score_one_everywhere() -> None:
    fields = [rect(5, 5, 10, 10), rect(5, 15, 10, 10), pixel_polygon([(20, 3), (33, 9), (25, 30)])]
    result = pixel_metrics(fields, fields, GRID)
    assert all(result[name] == 1.0 for name in FIGURES)
    counts = result["counts"]
    assert counts["fp_pixels"] == counts["fn_pixels"] == 0
    assert counts["tp_pixels"] == counts["truth_pixels"] == counts["predicted_pixels"] > 200


def test_shift_by_one_pixel_matches_boundaries_only_with_a_tolerance() -> None:
    truth, predicted = [rect(5, 5, 10, 10)], [rect(5, 6, 10, 10)]
    loose = pixel_metrics(predicted, truth, GRID, boundary_tolerance_px=1)
    assert loose["boundary_f1"] == loose["boundary_precision"] == loose["boundary_recall"] == 1.0
    exact = pixel_metrics(predicted, truth, GRID, boundary_tolerance_px=0)
    # A 10 x 10 square has 36 boundary pixels; shifted by one column, it shares 9 + 9 of them
    # (top and bottom rows), not the sides.
    assert exact["counts"]["truth_boundary_pixels"] == 36
    assert exact["counts"]["matched_truth_boundary_pixels"] == 18
    assert exact["boundary_precision"] == exact["boundary_recall"] == exact["boundary_f1"] == 0.5
    assert exact["pixel_iou"] == loose["pixel_iou"] == 90 / 110


def test_merging_two_touching_fields_keeps_the_extent_but_misses_their_shared_edge() -> None:
    truth = [rect(5, 5, 10, 10), rect(5, 15, 10, 10)]
    predicted = [rect(5, 5, 10, 20)]
    exact = pixel_metrics(predicted, truth, GRID, boundary_tolerance_px=0)
    assert exact["pixel_iou"] == 1.0
    assert exact["counts"]["truth_boundary_pixels"] == 72  # both squares keep the shared edge
    assert exact["counts"]["predicted_boundary_pixels"] == 56
    # the shared edge: 2 columns x 10 rows, of which the 4 in the top and bottom rows are on the
    # rectangle's edge too
    assert exact["boundary_recall"] == 56 / 72
    assert exact["boundary_precision"] == 1.0
    loose = pixel_metrics(predicted, truth, GRID, boundary_tolerance_px=1)
    # within one pixel of the rectangle's top or bottom row: rows 6 and 13 of the shared edge
    assert loose["boundary_recall"] == (72 - 2 * 6) / 72
    assert loose["boundary_precision"] == 1.0


def test_half_covered_square_has_known_pixel_counts() -> None:
    truth, predicted = [rect(5, 5, 10, 10)], [rect(5, 5, 10, 5)]
    result = pixel_metrics(predicted, truth, GRID, boundary_tolerance_px=0)
    counts = result["counts"]
    assert (counts["tp_pixels"], counts["fp_pixels"], counts["fn_pixels"]) == (50, 0, 50)
    assert result["pixel_iou"] == 0.5
    assert result["pixel_precision"] == 1.0
    assert result["pixel_recall"] == 0.5
    assert result["pixel_f1"] == pytest.approx(2 / 3)
    # the half's 26 boundary pixels: 18 on the square's edge (top, bottom, left), 8 inside
    assert counts["predicted_boundary_pixels"] == 26
    assert counts["matched_predicted_boundary_pixels"] == 18
    assert counts["matched_truth_boundary_pixels"] == 18
    assert result["boundary_precision"] == 18 / 26
    assert result["boundary_recall"] == 18 / 36


def test_region_restricts_the_counted_pixels_not_the_fields() -> None:
    truth, predicted = [rect(5, 5, 10, 10)], [rect(5, 10, 10, 10)]
    everywhere = pixel_metrics(predicted, truth, GRID, boundary_tolerance_px=0)
    assert everywhere["pixel_iou"] == 50 / 150
    left_half = rect(0, 0, GRID.height, 15)  # columns 0..14: all of the truth, half the prediction
    result = pixel_metrics(predicted, truth, GRID, region=left_half, boundary_tolerance_px=0)
    counts = result["counts"]
    assert counts["region_pixels"] == GRID.height * 15
    assert (counts["tp_pixels"], counts["fp_pixels"], counts["fn_pixels"]) == (50, 0, 50)
    assert result["pixel_precision"] == 1.0
    assert result["pixel_recall"] == 0.5
    # The prediction is not cut at the region's edge: its boundary pixels in the region are its
    # top and bottom rows (columns 10..14) and its left column, 18; column 14 is no boundary.
    assert counts["predicted_boundary_pixels"] == 18


def test_a_field_on_the_grid_edge_has_boundary_pixels_there() -> None:
    field = [rect(0, 0, 5, 5)]
    grid = EvaluationGrid(GRID.transform, height=5, width=5)
    result = pixel_metrics(field, field, grid, boundary_tolerance_px=0)
    assert result["counts"]["truth_boundary_pixels"] == 16  # the 5 x 5 square's outer ring


def test_strips_give_the_figures_of_the_whole_grid() -> None:
    rng = np.random.default_rng(1)
    truth = random_scene(rng, 25, overlapping=False)
    predicted = random_scene(rng, 25, overlapping=True)
    region = pixel_polygon([(2, 2), (38, 6), (30, 47), (4, 40)])
    for tolerance in (0, 2):
        whole = pixel_metrics(
            predicted, truth, GRID, region=region, boundary_tolerance_px=tolerance, strip_rows=100
        )
        for strip_rows in (1, 3, 7):
            strips = pixel_metrics(
                predicted,
                truth,
                GRID,
                region=region,
                boundary_tolerance_px=tolerance,
                strip_rows=strip_rows,
            )
            assert strips == whole


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_scenes_agree_with_a_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = random_scene(rng, 20, overlapping=bool(seed % 2))
    predicted = random_scene(rng, 20, overlapping=True)
    region = None if seed < 2 else pixel_polygon([(-1, 3), (41, 10), (20, 45)])
    tolerance = seed % 3
    t_bins = size_bin_index(shapely.area(objects(truth)) * 20)  # spread over the three bins
    p_bins = size_bin_index(shapely.area(objects(predicted)) * 20)
    result = pixel_metrics(
        predicted,
        truth,
        GRID,
        region=region,
        boundary_tolerance_px=tolerance,
        truth_size_bins=t_bins,
        predicted_size_bins=p_bins,
        strip_rows=9,
    )
    expected = reference(
        predicted,
        truth,
        region=region,
        tolerance=tolerance,
        truth_bins=t_bins,
        predicted_bins=p_bins,
    )
    counts = {k: v for k, v in result["counts"].items() if k not in ("fp_pixels", "fn_pixels")}
    assert counts == expected["counts"]
    for label, entry in result["by_size"].items():
        assert {k: entry[k] for k in expected["by_size"][label]} == expected["by_size"][label]


def test_overlapping_predictions_keep_their_own_boundaries() -> None:
    a, b = rect(5, 5, 10, 10), rect(10, 10, 10, 10)
    result = pixel_metrics([a, b], [a, b], GRID, boundary_tolerance_px=0)
    assert all(result[name] == 1.0 for name in FIGURES)
    # 36 + 36 boundary pixels, two of them shared: (row 14, col 10) and (row 10, col 14)
    assert result["counts"]["predicted_boundary_pixels"] == 70
    assert result["counts"]["predicted_pixels"] == 175
    # Against the same fields made disjoint (B drawn over A, as one label image would hold
    # them): A's boundary pixels inside B (7, off B's own boundary) are unmatched, and so are the
    # 8 pixels of A - B along B (of its 35 boundary pixels; B has 36).
    flat = pixel_metrics([a, b], [a.difference(b), b], GRID, boundary_tolerance_px=0)
    assert flat["pixel_iou"] == 1.0
    assert flat["boundary_precision"] == 63 / 70
    assert flat["boundary_recall"] == 63 / 71


def test_size_bins_put_each_figure_in_its_bin() -> None:
    small, large = rect(2, 2, 5, 5), rect(10, 10, 20, 20)  # 0.25 ha and 4 ha at 10 m
    truth = [small, large]
    predicted = [small, rect(32, 40, 5, 5)]  # the small field, and a small false field
    result = pixel_metrics(
        predicted,
        truth,
        GRID,
        truth_size_bins=size_bin_index(shapely.area(objects(truth))),
        predicted_size_bins=size_bin_index(shapely.area(objects(predicted))),
    )
    small_bin, middle, large_bin = (result["by_size"][label] for _, _, label in SIZE_BINS_HA)
    assert small_bin["pixel_recall"] == small_bin["boundary_recall"] == 1.0
    assert small_bin["pixel_precision"] == small_bin["boundary_precision"] == 0.5
    assert small_bin["truth_pixels"] == 25 and small_bin["predicted_pixels"] == 50
    assert middle["pixel_recall"] == middle["boundary_recall"] == 0.0
    assert middle["truth_pixels"] == 400
    assert middle["pixel_precision"] is None and middle["boundary_precision"] is None
    assert all(large_bin[k] is None for k in ("pixel_recall", "pixel_precision"))
    only_truth = pixel_metrics(predicted, truth, GRID, truth_size_bins=[0, 1])
    assert only_truth["by_size"]["<1 ha"]["pixel_recall"] == 1.0
    assert only_truth["by_size"]["<1 ha"]["pixel_precision"] is None
    assert only_truth["by_size"]["<1 ha"]["predicted_pixels"] is None
    assert pixel_metrics(predicted, truth, GRID)["by_size"] == {}


def test_empty_sets_follow_the_convention() -> None:
    field = [rect(5, 5, 10, 10)]
    nothing = pixel_metrics([], [], GRID, truth_size_bins=[], predicted_size_bins=[])
    assert all(nothing[name] == 1.0 for name in FIGURES)
    assert all(entry["pixel_recall"] is None for entry in nothing["by_size"].values())
    for predicted, truth in ((field, []), ([], field), ([None, Polygon()], field)):
        result = pixel_metrics(predicted, truth, GRID)
        assert all(result[name] == 0.0 for name in FIGURES)
    outside = pixel_metrics(field, field, GRID, region=rect(30, 30, 5, 5))
    assert all(outside[name] == 1.0 for name in FIGURES)
    assert outside["counts"]["truth_pixels"] == 0


def test_bad_inputs_are_refused() -> None:
    field = [rect(5, 5, 10, 10)]
    with pytest.raises(ValueError, match="truth_size_bins"):
        pixel_metrics(field, field, GRID, truth_size_bins=[0, 1])
    with pytest.raises(ValueError, match="predicted_size_bins"):
        pixel_metrics(field, field, GRID, predicted_size_bins=[3])
    with pytest.raises(ValueError, match="polygons"):
        pixel_metrics([shapely.LineString([(X0, Y0), (X0 + 50, Y0 - 50)])], field, GRID)
    with pytest.raises(ValueError, match="boundary_tolerance_px"):
        pixel_metrics(field, field, GRID, boundary_tolerance_px=-1)
    with pytest.raises(ValueError, match="scores"):
        mask_average_precision(field, [0.5, 0.5], field, GRID)


rectangles = st.lists(
    st.tuples(st.integers(0, 19), st.integers(0, 19), st.integers(1, 8), st.integers(1, 8)).map(
        lambda r: rect(*r)
    ),
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(predicted=rectangles, truth=rectangles, tolerance=st.integers(0, 2))
def test_swapping_the_sets_swaps_precision_and_recall(
    predicted: list[Polygon], truth: list[Polygon], tolerance: int
) -> None:
    grid = EvaluationGrid(GRID.transform, height=28, width=28)
    forward = pixel_metrics(predicted, truth, grid, boundary_tolerance_px=tolerance)
    backward = pixel_metrics(truth, predicted, grid, boundary_tolerance_px=tolerance)
    for kind in ("pixel", "boundary"):
        assert forward[f"{kind}_precision"] == backward[f"{kind}_recall"]
        assert forward[f"{kind}_recall"] == backward[f"{kind}_precision"]
        assert forward[f"{kind}_f1"] == pytest.approx(backward[f"{kind}_f1"])
    assert forward["pixel_iou"] == backward["pixel_iou"]


# --------------------------------------------------------------------------------------------
# Mask AP over tiles


def direct_cocoeval(
    predicted: Sequence[Polygon],
    scores: Sequence[float],
    truth: Sequence[Polygon],
    *,
    tile_px: int,
    region: Polygon | None = None,
    max_detections: int = 1000,
) -> dict[str, Any]:
    """pycocotools' own COCOeval on tiles cut by hand from each polygon's whole-grid mask."""
    counted = (
        np.ones(GRID.shape, dtype=bool)
        if region is None
        else rasterize_mask(region, transform=GRID.transform, shape=GRID.shape)
    )
    images, gts, dts = [], [], []
    t_masks, p_masks = masks_of(truth), masks_of(predicted)
    for top in range(0, GRID.height, tile_px):
        for left in range(0, GRID.width, tile_px):
            window = (slice(top, top + tile_px), slice(left, left + tile_px))
            if not counted[window].any():
                continue
            image = {"id": len(images) + 1, "height": counted[window].shape[0]}
            image["width"] = counted[window].shape[1]
            images.append(image)
            for masks, entries in ((t_masks, gts), (p_masks, dts)):
                for i, mask in enumerate(masks):
                    piece = mask[window] & counted[window]
                    if not piece.any():
                        continue
                    entry = {
                        "id": len(entries) + 1,
                        "image_id": image["id"],
                        "category_id": 1,
                        "segmentation": encode_rle(piece),
                        "area": int(piece.sum()),
                        "iscrowd": 0,
                    }
                    if entries is dts:
                        entry["score"] = float(scores[i])
                    entries.append(entry)
    per_ha = 10_000.0 / GRID.pixel_area
    ranges = [[0.0, 1e10]] + [
        [lo * per_ha, float(np.nextafter(hi * per_ha, -np.inf))] for lo, hi, _ in SIZE_BINS_HA
    ]
    labels = ["all"] + [label for _, _, label in SIZE_BINS_HA]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        for coco, anns in ((coco_gt, gts), (coco_dt, dts)):
            coco.dataset = {
                "images": images,
                "categories": [{"id": 1, "name": "field"}],
                "annotations": anns,
            }
            coco.createIndex()
        evaluation = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluation.params.maxDets = [max_detections]
        evaluation.params.areaRng = ranges
        evaluation.params.areaRngLbl = labels
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"]

    def ap(iou: float | None, area: int) -> float | None:
        values = precision if iou is None else precision[np.isclose(evaluation.params.iouThrs, iou)]
        values = values[:, :, :, area, -1]
        values = values[values > -1]
        return float(values.mean()) if values.size else None

    result = {"ap": ap(None, 0), "ap50": ap(0.5, 0), "ap75": ap(0.75, 0), "n_tiles": len(images)}
    result["by_size"] = {
        label: {"ap": ap(None, a), "ap50": ap(0.5, a), "ap75": ap(0.75, a)}
        for a, label in enumerate(labels[1:], start=1)
    }
    return result


def assert_same_ap(result: dict[str, Any], expected: dict[str, Any]) -> None:
    assert result["n_tiles"] == expected["n_tiles"]
    for key in ("ap", "ap50", "ap75"):
        assert result[key] == pytest.approx(expected[key])
        for label, entry in expected["by_size"].items():
            assert result["by_size"][label][key] == pytest.approx(entry[key])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiled_ap_equals_pycocotools_on_hand_cut_tiles(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = random_scene(rng, 20, overlapping=False)
    # predictions: the truth moved a little, some dropped, plus overlapping extras
    moved = [
        shapely.affinity.translate(t, *(rng.integers(-1, 2, 2) * PX))
        for t in truth
        if rng.random() < 0.8
    ]
    predicted = moved + random_scene(rng, 8, overlapping=True)
    scores = rng.random(len(predicted))
    region = None if seed == 0 else pixel_polygon([(-1, 3), (41, 10), (20, 45)])
    result = mask_average_precision(predicted, scores, truth, GRID, region=region, tile_px=16)
    assert_same_ap(result, direct_cocoeval(predicted, scores, truth, tile_px=16, region=region))
    assert result["ap"] is not None and 0.0 < result["ap"] < 1.0


def test_ap_is_one_for_identical_sets_and_drops_when_a_false_field_outranks_true_ones() -> None:
    truth = [rect(2, 2, 6, 6), rect(2, 12, 8, 5), rect(20, 20, 15, 25)]
    same = mask_average_precision(truth, [0.9, 0.8, 0.7], truth, GRID, tile_px=64)
    assert (same["ap"], same["ap50"], same["ap75"]) == (1.0, 1.0, 1.0)
    false_field = rect(30, 2, 5, 5)
    last = mask_average_precision([*truth, false_field], [0.9, 0.8, 0.7, 0.1], truth, GRID)
    assert last["ap"] == 1.0  # ranked after every true field: full precision up to full recall
    first = mask_average_precision([*truth, false_field], [0.9, 0.8, 0.7, 0.95], truth, GRID)
    assert first["ap"] < 1.0
    assert first["n_predicted_pieces"] == 4 and first["n_truth_pieces"] == 3


def test_a_field_cut_by_a_tile_edge_is_one_piece_per_tile() -> None:
    field = [rect(5, 5, 10, 20)]  # columns 5..24 cross the tile edge at column 16
    result = mask_average_precision(field, [1.0], field, GRID, tile_px=16)
    assert result["n_truth_pieces"] == result["n_predicted_pieces"] == 2
    assert result["ap"] == 1.0
    assert result["n_tiles"] == 3 * 4 and result["tile_px"] == 16
    half = mask_average_precision([rect(5, 5, 10, 11)], [1.0], field, GRID, tile_px=16)
    # the left piece is found, the right one missed: precision 1 up to recall 0.5, at 51 of
    # COCO's 101 recall points
    assert half["ap50"] == pytest.approx(51 / 101)


def test_ap_ignores_detections_outside_the_region() -> None:
    truth = [rect(2, 2, 6, 6)]
    predicted = [rect(2, 2, 6, 6), rect(30, 40, 5, 5)]
    scores = [0.5, 0.9]
    assert mask_average_precision(predicted, scores, truth, GRID)["ap"] < 1.0
    region = rect(0, 0, 20, 20)
    result = mask_average_precision(predicted, scores, truth, GRID, region=region, tile_px=8)
    assert result["ap"] == pytest.approx(1.0)
    assert result["n_tiles"] == 9  # the tiles with a pixel in rows and columns 0..19


def test_ap_by_size_uses_the_pieces_area_in_pixels() -> None:
    small, large = rect(2, 2, 5, 5), rect(10, 10, 20, 20)  # 25 px (0.25 ha), 400 px (4 ha)
    result = mask_average_precision([small], [0.9], [small, large], GRID, tile_px=64)
    assert result["by_size"]["<1 ha"]["ap"] == pytest.approx(1.0)
    assert result["by_size"]["1-5 ha"]["ap"] == 0.0
    assert result["by_size"][">5 ha"]["ap"] is None
    # cut into 8 x 8 tiles, the large field is pieces of at most 64 px, all "<1 ha"
    cut = mask_average_precision([small], [0.9], [small, large], GRID, tile_px=8)
    assert cut["by_size"]["1-5 ha"]["ap"] is None
    assert 0.0 < cut["by_size"]["<1 ha"]["ap"] < 1.0


def test_max_detections_caps_the_detections_per_tile() -> None:
    truth = [rect(r, c, 3, 3) for r in range(0, 12, 4) for c in range(0, 12, 4)]
    scores = np.linspace(1.0, 0.5, len(truth))
    full = mask_average_precision(truth, scores, truth, GRID, tile_px=64, max_detections=9)
    capped = mask_average_precision(truth, scores, truth, GRID, tile_px=64, max_detections=3)
    assert full["ap"] == 1.0
    assert capped["ap"] == pytest.approx(
        direct_cocoeval(truth, scores, truth, tile_px=64, max_detections=3)["ap"]
    )
    assert capped["ap"] < 0.5 and capped["max_detections"] == 3


def test_ap_without_truth_is_undefined_and_without_predictions_zero() -> None:
    field = [rect(5, 5, 10, 10)]
    no_truth = mask_average_precision(field, [0.5], [], GRID)
    assert no_truth["ap"] is no_truth["ap50"] is no_truth["ap75"] is None
    assert all(v["ap"] is None for v in no_truth["by_size"].values())
    no_predictions = mask_average_precision([], [], field, GRID)
    assert (no_predictions["ap"], no_predictions["ap50"]) == (0.0, 0.0)
    empty_region = mask_average_precision(field, [0.5], field, GRID, region=Polygon())
    assert empty_region["ap"] is None and empty_region["n_tiles"] == 0


def test_sparse_matching_gives_pycocotools_results_with_crowds_and_overlaps() -> None:
    rng = np.random.default_rng(7)
    size = 16
    images, gts, dts = [], [], []
    for image_id in range(1, 9):
        images.append({"id": image_id, "height": size, "width": size})
        for kind, entries, n in (("gt", gts, 12), ("dt", dts, 15)):
            for _ in range(n):
                mask = np.zeros((size, size), dtype=bool)
                r, c = rng.integers(0, size - 4, 2)
                mask[r : r + rng.integers(3, 9), c : c + rng.integers(3, 9)] = True
                entry = {
                    "id": len(entries) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": encode_rle(mask),
                    "area": int(mask.sum()),
                    "iscrowd": int(kind == "gt" and rng.random() < 0.15),
                }
                if kind == "dt":
                    entry["score"] = float(rng.choice([0.2, 0.5, 0.9]))  # ties too
                entries.append(entry)
    evaluations = []
    for evaluator in (COCOeval, _SparseCOCOeval):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt, coco_dt = COCO(), COCO()
            for coco, anns in ((coco_gt, gts), (coco_dt, dts)):
                coco.dataset = {
                    "images": images,
                    "categories": [{"id": 1, "name": "field"}],
                    "annotations": [dict(a) for a in anns],
                }
                coco.createIndex()
            evaluation = evaluator(coco_gt, coco_dt, iouType="segm")
            evaluation.params.maxDets = [10]
            evaluation.params.areaRng = [[0, 1e10], [0, 20], [20, 1e10]]
            evaluation.params.areaRngLbl = ["all", "small", "large"]
            evaluation.evaluate()
            evaluation.accumulate()
        evaluations.append(evaluation)
    plain, sparse = evaluations
    assert len(plain.evalImgs) == len(sparse.evalImgs)
    for a, b in zip(plain.evalImgs, sparse.evalImgs, strict=True):
        assert (a is None) == (b is None)
        if a is None:
            continue
        for key in ("dtIds", "gtIds", "dtScores"):
            assert a[key] == b[key]
        for key in ("dtMatches", "gtMatches", "gtIgnore", "dtIgnore"):
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(plain.eval["precision"], sparse.eval["precision"])
    assert math.isfinite(float(sparse.eval["precision"].max()))
