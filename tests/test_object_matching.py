"""Object matching: match, split and merge rules on hand-made cases, and against brute force."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry.base import BaseGeometry

from fieldseg.object_matching import (
    IOU_THRESHOLDS,
    ObjectMatches,
    f1_over_thresholds,
    match_objects,
    mean_f1,
    object_overlaps,
)

PROPERTY = settings(max_examples=50, deadline=None)


def _grid(n: int, side: float = 10.0, shift: float = 0.0) -> list[BaseGeometry]:
    """An ``n`` x ``n`` grid of adjacent squares, moved by ``shift`` in x and y."""
    return [
        shapely.box(
            i * side + shift, j * side + shift, (i + 1) * side + shift, (j + 1) * side + shift
        )
        for j in range(n)
        for i in range(n)
    ]


def _ids(values: np.ndarray) -> list[int]:
    return [int(v) for v in values]


# --------------------------------------------------------------------------------------------
# hand-made cases
# --------------------------------------------------------------------------------------------
def test_identical_sets_match_perfectly() -> None:
    fields = _grid(3)
    m = match_objects(fields, fields)
    assert (m.tp, m.fp, m.fn) == (9, 0, 0)
    assert m.precision == m.recall == m.f1 == 1.0
    assert len(m.split_truth) == len(m.merged_predictions) == len(m.merged_truth) == 0
    assert m.split_rate == m.merged_rate == 0.0
    assert _ids(m.matched_truth_of) == list(range(9))
    np.testing.assert_array_equal(m.pair_iou, 1.0)
    np.testing.assert_array_equal(m.best_iou_truth, 1.0)
    assert mean_f1(fields, fields) == 1.0
    assert set(f1_over_thresholds(fields, fields).values()) == {1.0}


def test_one_prediction_over_two_fields_is_a_merge() -> None:
    truth = [shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)]
    m = match_objects([shapely.box(0, 0, 2, 1)], truth)
    assert _ids(m.merged_predictions) == [0]
    assert _ids(m.merged_truth) == [0, 1]
    assert m.merged_rate == 1.0
    assert m.tp == 0  # IoU with each field is exactly 0.5
    assert len(m.split_truth) == 0  # the prediction is exactly half inside each field


def test_field_cut_in_two_is_split() -> None:
    predicted = [shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)]
    m = match_objects(predicted, [shapely.box(0, 0, 2, 1)])
    assert _ids(m.split_truth) == [0]
    assert m.split_rate == 1.0
    assert m.tp == 0
    assert len(m.merged_predictions) == len(m.merged_truth) == 0


def test_field_cut_in_three_unequal_pieces_is_split_once() -> None:
    truth = [shapely.box(0, 0, 10, 10), shapely.box(10, 0, 20, 10)]
    predicted = [shapely.box(0, 0, 6, 10), shapely.box(6, 0, 9, 10), shapely.box(9, 0, 20, 10)]
    m = match_objects(predicted, truth)
    assert _ids(m.split_truth) == [0]  # the third piece lies mostly in the second field
    # the rules are independent: a split field still matches its largest piece (IoU 0.6)
    assert _ids(m.matched_truth_of) == [0, -1, 1]
    assert m.split_rate == 0.5


def test_iou_of_exactly_one_half_does_not_match() -> None:
    truth = [shapely.box(0, 0, 2, 1)]
    at_half = match_objects([shapely.box(0, 0, 1, 1)], truth)
    assert at_half.tp == 0
    assert at_half.best_iou_truth[0] == 0.5
    above = match_objects([shapely.box(0, 0, 1.001, 1)], truth)
    assert above.tp == 1
    assert above.pair_iou[0] == pytest.approx(0.5005)


def test_threshold_is_strict_at_any_level() -> None:
    truth = [shapely.box(0, 0, 10, 1)]
    predicted = [shapely.box(0, 0, 7, 1)]  # IoU 0.7
    assert match_objects(predicted, truth, iou_threshold=0.69).tp == 1
    assert match_objects(predicted, truth, iou_threshold=0.7).tp == 0
    scores = f1_over_thresholds(predicted, truth, [0.5, 0.65, 0.7, 0.9])
    assert scores == {0.5: 1.0, 0.65: 1.0, 0.7: 0.0, 0.9: 0.0}


def test_matching_is_one_to_one_best_iou_first() -> None:
    truth = [shapely.box(0, 0, 10, 10)]
    predicted = [shapely.box(0, 0, 10, 8), shapely.box(0, 0, 10, 9)]  # IoU 0.8 and 0.9
    m = match_objects(predicted, truth)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.pairs.tolist() == [[1, 0]]
    assert m.pair_iou.tolist() == [pytest.approx(0.9)]
    assert _ids(m.matched_truth_of) == [-1, 0]
    assert m.precision == 0.5 and m.recall == 1.0 and m.f1 == pytest.approx(2 / 3)
    assert _ids(m.split_truth) == [0]  # both predictions lie wholly inside the field


def test_equal_iou_conflicts_go_to_the_lower_prediction_index() -> None:
    truth = [shapely.box(0, 0, 10, 10)]
    predicted = [shapely.box(0, 0, 10, 9), shapely.box(0, 1, 10, 10)]
    assert match_objects(predicted, truth).pairs.tolist() == [[0, 0]]


def test_best_iou_counts_overlaps_too_small_to_match() -> None:
    truth = _grid(4)
    predicted = _grid(4, shift=5.0)  # each prediction covers a quarter of four fields
    m = match_objects(predicted, truth)
    assert m.tp == 0
    np.testing.assert_allclose(m.best_iou_predicted, 25 / 175)
    corner = 25 / 175  # the field at the grid origin overlaps one prediction only
    assert m.best_iou_truth[0] == pytest.approx(corner)
    assert np.all(m.best_iou_truth > 0)


def test_best_iou_is_exact_where_bounding_boxes_mislead() -> None:
    """An L-shaped prediction hugging a field's corner has a large box overlap but a small
    real one; the pair ranked below it by box overlap holds the field's best IoU."""
    corner = shapely.union(shapely.box(-10, -10, 5, 0.2), shapely.box(-10, -10, 0.2, 5))
    predicted = [corner, shapely.box(9, 0, 19, 10)]
    truth = [shapely.box(0, 0, 10, 10), shapely.box(15, 0, 25, 10)]
    m = _check_against_reference(predicted, truth, 0.5)
    np.testing.assert_allclose(m.best_iou_truth, [10 / 190, 40 / 160])
    np.testing.assert_allclose(m.best_iou_predicted, [1.96 / 300, 40 / 160])
    assert m.tp == 0


@pytest.mark.parametrize(("n_pred", "n_truth"), [(0, 3), (3, 0), (0, 0)])
def test_empty_inputs(n_pred: int, n_truth: int) -> None:
    m = match_objects(_grid(3)[:n_pred], _grid(3)[:n_truth])
    assert (m.tp, m.fp, m.fn) == (0, n_pred, n_truth)
    both_empty = n_pred == n_truth == 0
    expected = 1.0 if both_empty else 0.0
    assert m.precision == m.recall == m.f1 == expected
    assert m.split_rate == m.merged_rate == 0.0
    assert m.pairs.shape == (0, 2) and m.pairs.dtype == np.int64
    assert m.best_iou_predicted.shape == (n_pred,) and m.best_iou_truth.shape == (n_truth,)
    assert _ids(m.matched_truth_of) == [-1] * n_pred
    assert mean_f1(_grid(3)[:n_pred], _grid(3)[:n_truth]) == expected


def test_accepts_list_array_and_geoseries() -> None:
    truth = _grid(2)
    predicted = _grid(2, shift=1.0)
    expected = match_objects(predicted, truth)
    for pred_in, truth_in in [
        (np.array(predicted, dtype=object), np.array(truth, dtype=object)),
        (gpd.GeoSeries(predicted), gpd.GeoSeries(truth, crs="EPSG:32631")),
        (tuple(predicted), iter(truth)),
    ]:
        m = match_objects(pred_in, truth_in)
        assert m.pairs.tolist() == expected.pairs.tolist()
        np.testing.assert_array_equal(m.best_iou_truth, expected.best_iou_truth)


def test_invalid_missing_empty_and_non_polygonal_geometries() -> None:
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # self-intersecting
    assert not bowtie.is_valid
    truth = [bowtie, shapely.box(5, 0, 6, 1), shapely.box(8, 0, 9, 1)]
    predicted = [
        shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)]),  # repaired to two triangles
        None,
        shapely.Polygon(),
        shapely.Polygon([(5, 0), (6, 1), (5.5, 0.5)]),  # collapses to a line: area 0
        shapely.GeometryCollection([shapely.box(8, 0, 9, 1), shapely.LineString([(8, 0), (9, 9)])]),
        shapely.Point(5.5, 0.5),
    ]
    m = match_objects(predicted, truth)
    assert (m.n_predicted, m.n_truth) == (6, 3)
    assert m.pairs.tolist() == [[0, 0], [4, 2]]
    assert m.pair_iou.tolist() == [1.0, 1.0]
    assert m.best_iou_predicted.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert m.fn == 1 and m.fp == 4


def test_rejects_bad_inputs_and_thresholds() -> None:
    with pytest.raises(TypeError, match="one geometry"):
        match_objects(shapely.box(0, 0, 1, 1), [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shapely geometries"):
        match_objects(["not a geometry"], [])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        match_objects([], [], iou_threshold=1.5)
    with pytest.raises(ValueError, match="min_iou"):
        object_overlaps([], [], min_iou=0.5).match(0.3)
    with pytest.raises(ValueError, match="at least one"):
        mean_f1([], [], [])


def test_arange_thresholds_are_read_as_round_numbers() -> None:
    fields = _grid(2)
    scores = f1_over_thresholds(fields, fields, np.arange(0.5, 0.96, 0.05))
    assert list(scores) == list(IOU_THRESHOLDS)
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_results_are_read_only_and_report_metrics() -> None:
    m = match_objects(_grid(2), _grid(2, shift=1.0))
    with pytest.raises(ValueError, match="read-only"):
        m.pairs[0, 0] = 5
    metrics = m.metrics()
    assert metrics["tp"] == 4 and metrics["f1"] == 1.0 and metrics["iou_threshold"] == 0.5


# --------------------------------------------------------------------------------------------
# brute force reference and properties
# --------------------------------------------------------------------------------------------
def _reference(
    predicted: list[BaseGeometry], truth: list[BaseGeometry], threshold: float
) -> dict[str, object]:
    """The rules applied to every pair, without tree, bounds or vectorisation."""
    ap = np.array([p.area for p in predicted])
    at = np.array([t.area for t in truth])
    inter = np.zeros((len(predicted), len(truth)))
    iou = np.zeros_like(inter)
    for i, p in enumerate(predicted):
        for j, t in enumerate(truth):
            inter[i, j] = shapely.intersection(p, t).area
            if inter[i, j] > 0:
                iou[i, j] = inter[i, j] / (ap[i] + at[j] - inter[i, j])
    ranked = sorted(
        (-iou[i, j], i, j)
        for i in range(len(predicted))
        for j in range(len(truth))
        if iou[i, j] > threshold
    )
    pairs, used_p, used_t = [], set(), set()
    for _, i, j in ranked:
        if i not in used_p and j not in used_t:
            pairs.append([i, j])
            used_p.add(i)
            used_t.add(j)
    inside = inter > 0.5 * ap[:, None]
    holds = inter > 0.5 * at[None, :]
    merging = holds.sum(axis=1) >= 2
    return {
        "pairs": sorted(pairs),
        "split_truth": np.flatnonzero(inside.sum(axis=0) >= 2).tolist(),
        "merged_predictions": np.flatnonzero(merging).tolist(),
        "merged_truth": np.flatnonzero(holds[merging].any(axis=0)).tolist(),
        "best_iou_predicted": iou.max(axis=1, initial=0.0),
        "best_iou_truth": iou.max(axis=0, initial=0.0),
    }


def _box(x: int, y: int, w: int, h: int) -> BaseGeometry:
    return shapely.box(x, y, x + w, y + h)


rectangles = st.lists(
    st.builds(_box, st.integers(0, 8), st.integers(0, 8), st.integers(1, 5), st.integers(1, 5)),
    max_size=8,
)
triangles = st.lists(
    st.lists(st.tuples(st.integers(0, 10), st.integers(0, 10)), min_size=3, max_size=3)
    .map(shapely.Polygon)
    .filter(lambda g: g.area > 0),
    max_size=7,
)


def _disjoint(geoms: list[BaseGeometry]) -> list[BaseGeometry]:
    """Drop each geometry that overlaps one kept before it: a partition-like set."""
    kept: list[BaseGeometry] = []
    for g in geoms:
        if all(shapely.intersection(g, k).area == 0 for k in kept):
            kept.append(g)
    return kept


def _check_against_reference(
    predicted: list[BaseGeometry], truth: list[BaseGeometry], threshold: float
) -> ObjectMatches:
    m = match_objects(predicted, truth, iou_threshold=threshold)
    ref = _reference(predicted, truth, threshold)
    assert m.pairs.tolist() == ref["pairs"]
    assert _ids(m.split_truth) == ref["split_truth"]
    assert _ids(m.merged_predictions) == ref["merged_predictions"]
    assert _ids(m.merged_truth) == ref["merged_truth"]
    np.testing.assert_allclose(m.best_iou_predicted, ref["best_iou_predicted"], rtol=1e-12)
    np.testing.assert_allclose(m.best_iou_truth, ref["best_iou_truth"], rtol=1e-12)
    return m


@PROPERTY
@given(rectangles, rectangles, st.sampled_from([0.0, 0.3, 0.5, 0.75]))
def test_rectangles_agree_with_brute_force(
    predicted: list[BaseGeometry], truth: list[BaseGeometry], threshold: float
) -> None:
    _check_against_reference(predicted, truth, threshold)


@PROPERTY
@given(triangles, triangles, st.sampled_from([0.2, 0.5]))
def test_triangles_agree_with_brute_force(
    predicted: list[BaseGeometry], truth: list[BaseGeometry], threshold: float
) -> None:
    """Triangles make the bounding-box bounds loose, so pruning is really exercised."""
    _check_against_reference(predicted, truth, threshold)


@PROPERTY
@given(rectangles, rectangles)
def test_invariants(predicted: list[BaseGeometry], truth: list[BaseGeometry]) -> None:
    m = match_objects(predicted, truth)
    assert m.tp <= min(m.n_predicted, m.n_truth)
    for score in (m.precision, m.recall, m.f1, m.split_rate, m.merged_rate):
        assert 0.0 <= score <= 1.0
    assert len(set(m.pairs[:, 0].tolist())) == len(set(m.pairs[:, 1].tolist())) == m.tp
    assert np.all(m.pair_iou > 0.5)
    assert np.all(m.best_iou_truth[m.pairs[:, 1]] >= m.pair_iou)
    assert set(_ids(m.merged_truth)) <= set(range(m.n_truth))
    if len(m.merged_predictions):
        assert len(m.merged_truth) >= 2
    # greedy leaves no pair above the threshold with both ends unmatched
    overlaps = object_overlaps(predicted, truth)
    matched_p = m.matched_truth_of >= 0
    matched_t = np.isin(np.arange(m.n_truth), m.pairs[:, 1])
    above = overlaps.iou > 0.5
    assert np.all(matched_p[overlaps.predicted[above]] | matched_t[overlaps.truth[above]])


@PROPERTY
@given(rectangles)
def test_a_set_matches_itself(fields: list[BaseGeometry]) -> None:
    m = match_objects(fields, fields)
    assert m.f1 == 1.0
    assert _ids(m.matched_truth_of) == list(range(len(fields)))
    assert mean_f1(fields, fields) == 1.0


@PROPERTY
@given(rectangles, rectangles)
def test_higher_thresholds_never_raise_f1(
    predicted: list[BaseGeometry], truth: list[BaseGeometry]
) -> None:
    overlaps = object_overlaps(predicted, truth, min_iou=0.0)
    levels = [0.0, 0.25, *IOU_THRESHOLDS]
    scores = overlaps.f1_over_thresholds(levels)
    values = [scores[t] for t in levels]
    assert values == sorted(values, reverse=True)
    for t in levels:  # the one-pass scores equal a matching at each threshold
        assert scores[t] == overlaps.match(t).f1
    assert overlaps.mean_f1() == pytest.approx(np.mean(values[2:]))


@PROPERTY
@given(rectangles, rectangles)
def test_swapping_roles_turns_splits_into_merges(
    predicted: list[BaseGeometry], truth: list[BaseGeometry]
) -> None:
    """A split truth field is, with roles swapped, a prediction holding two fields; exact here
    because integer rectangles have exact areas."""
    m = match_objects(predicted, truth)
    swapped = match_objects(truth, predicted)
    assert _ids(swapped.merged_predictions) == _ids(m.split_truth)
    assert _ids(m.merged_predictions) == _ids(swapped.split_truth)
    np.testing.assert_array_equal(swapped.best_iou_truth, m.best_iou_predicted)
    np.testing.assert_array_equal(swapped.best_iou_predicted, m.best_iou_truth)
    # merged truth after the swap: the predictions lying mostly inside a split truth field
    overlaps = object_overlaps(predicted, truth)
    inside = overlaps.intersection > 0.5 * overlaps.predicted_area[overlaps.predicted]
    in_split = inside & np.isin(overlaps.truth, m.split_truth)
    assert _ids(swapped.merged_truth) == sorted(set(_ids(overlaps.predicted[in_split])))


@PROPERTY
@given(rectangles.map(_disjoint), rectangles)
def test_swapping_roles_swaps_precision_and_recall(
    predicted: list[BaseGeometry], truth: list[BaseGeometry]
) -> None:
    """With one set free of overlaps no greedy conflict can depend on tie order, so the
    matching is the same either way round (not so when both sets overlap themselves)."""
    for a, b in [(predicted, truth), (truth, predicted)]:
        m = match_objects(a, b)
        swapped = match_objects(b, a)
        assert sorted(swapped.pairs[:, ::-1].tolist()) == m.pairs.tolist()
        assert (swapped.precision, swapped.recall) == (m.recall, m.precision)
        assert swapped.f1 == m.f1


def test_disjoint_sets_match_every_pair_above_one_half() -> None:
    """With no overlaps within either set, no conflicts arise: the matches are all pairs with
    IoU > 0.5, on a shifted grid large enough to exercise the bulk path."""
    truth = _grid(30)
    predicted = _grid(30, shift=2.0)  # IoU 64/136 < 0.5 with the field it mostly covers
    assert match_objects(predicted, truth).tp == 0
    predicted = _grid(30, shift=1.0)  # IoU 81/119
    m = match_objects(predicted, truth)
    assert m.tp == 900
    assert _ids(m.matched_truth_of) == list(range(900))
    np.testing.assert_allclose(m.pair_iou, 81 / 119)
