"""Instance extraction: hand-made maps whose fields are known by construction, a dense noisy
oracle, label matching against fieldseg.object_matching, and parameter tuning."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import shapely
from conftest import rectangle_tiling
from rasterio import features
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from fieldseg.instance_extraction import (
    DEFAULT_GRID,
    ExtractionParams,
    LabelMatch,
    _flood,
    _markers,
    extract_fields,
    label_f1,
    tune_params,
)
from fieldseg.object_matching import match_objects

# --------------------------------------------------------------------------------------------
# Map builders


def _boundary_band(truth: np.ndarray, width: int = 1) -> np.ndarray:
    """Field pixels within ``width`` 4-connected steps of a pixel outside their own field.

    The training rule of fieldseg.boundary_targets: the image edge is not outside (the field
    goes on beyond the chip), as in the extraction's field core.
    """
    inner = truth > 0
    h, w = truth.shape
    for _ in range(width):
        labels = np.pad(truth, 1, mode="edge")
        still = np.pad(inner, 1, mode="edge")
        keep = inner.copy()
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            keep &= (labels[dy : dy + h, dx : dx + w] == truth) & still[dy : dy + h, dx : dx + w]
        inner = keep
    return (truth > 0) & ~inner


def _ideal_maps(truth: np.ndarray, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Perfect extent and boundary maps of a truth label image (band ``width`` px)."""
    extent = (truth > 0).astype(np.float32)
    boundary = _boundary_band(truth, width).astype(np.float32)
    return extent, boundary


def _noisy_maps(
    truth: np.ndarray, rng: np.random.Generator, sigma: float, amplitude: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax-like maps of a blurred, noisy model: the one-hot interior, boundary and
    background channels blurred (gaussian ``sigma``), each perturbed by uniform noise of
    +-``amplitude``, clipped at 0 and renormalised to sum 1."""
    extent, boundary = _ideal_maps(truth)
    channels = [extent - boundary, boundary, 1.0 - extent]
    noisy = [
        np.clip(
            ndi.gaussian_filter(c, sigma) + rng.uniform(-amplitude, amplitude, c.shape), 0, None
        )
        for c in channels
    ]
    total = noisy[0] + noisy[1] + noisy[2]
    interior, boundary = noisy[0] / total, noisy[1] / total
    return (interior + boundary).astype(np.float32), boundary.astype(np.float32)


def _independent_maps(
    truth: np.ndarray, rng: np.random.Generator, sigma: float, amplitude: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Maps perturbed as fieldseg.oracle.DenseOracleFieldModel does: the ideal extent and
    boundary maps each blurred, perturbed by uniform noise of +-``amplitude`` and clipped to
    [0, 1] on their own (so the boundary may exceed the extent)."""
    return tuple(  # type: ignore[return-value]
        np.clip(
            ndi.gaussian_filter(m, sigma, mode="nearest")
            + rng.uniform(-amplitude, amplitude, m.shape),
            0,
            1,
        ).astype(np.float32)
        for m in _ideal_maps(truth)
    )


def _grid(sides: list[int], reps: int = 3) -> np.ndarray:
    """Touching rectangles, no gaps: column widths and row heights cycle through ``sides``."""
    edges = np.cumsum([0, *(sides * reps)])
    truth = np.zeros((edges[-1], edges[-1]), dtype=np.int32)
    n = 0
    for r0, r1 in itertools.pairwise(edges):
        for c0, c1 in itertools.pairwise(edges):
            n += 1
            truth[r0:r1, c0:c1] = n
    return truth


def _same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    """True when the labels are the truth fields up to renumbering (background alike)."""
    if not np.array_equal(labels > 0, truth > 0):
        return False
    pairs = np.unique(np.stack([labels.ravel(), truth.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _polygons(labels: np.ndarray) -> list[shapely.Geometry]:
    """One polygon per label, ascending, traced 4-connected in pixel units."""
    ids = [int(v) for v in np.unique(labels) if v > 0]
    parts: dict[int, list[shapely.Geometry]] = {i: [] for i in ids}
    for geom, value in features.shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4):
        parts[int(value)].append(shapely.geometry.shape(geom))
    return [shapely.union_all(parts[i]) for i in ids]


# --------------------------------------------------------------------------------------------
# Extraction on ideal maps


def test_two_touching_squares_are_two_fields() -> None:
    truth = np.zeros((12, 20), dtype=np.int32)
    truth[2:10, 2:10] = 1
    truth[2:10, 10:18] = 2
    extent, boundary = _ideal_maps(truth)
    found = extract_fields(extent, boundary)
    assert found.n_fields == 2
    assert found.labels.dtype == np.int32
    for k in (1, 2):
        assert np.array_equal(found.labels == k, truth == truth[found.labels == k][0])
    np.testing.assert_allclose(found.scores, 1.0)
    np.testing.assert_array_equal(found.pixel_counts, [64, 64])


@pytest.mark.parametrize(
    ("sides", "width"),
    [([3, 4, 5, 6], 1), ([3, 3, 4, 3, 6, 5], 1), ([5, 6, 7, 8], 2)],
    ids=["3-6px band1", "many-3px band1", "5-8px band2"],
)
def test_grid_of_small_touching_fields_is_exact(sides: list[int], width: int) -> None:
    """Fields 3-6 px wide side by side: the band eats most of each field (a 3 x 3 field has
    a one-pixel interior), yet every field comes out exactly; also with a 2 px band."""
    truth = _grid(sides)
    extent, boundary = _ideal_maps(truth, width)
    found = extract_fields(extent, boundary)
    match = label_f1(found.labels, truth)
    assert match.f1 == 1.0
    assert match.n_merged_truth == 0
    assert _same_partition(found.labels, truth)


def _all_boundary_small_field() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth and maps of a 3 x 3 field (id 2) seen as nearly all boundary, amid 4 neighbours."""
    truth = np.zeros((9, 17), dtype=np.int32)
    truth[:, :7] = 1
    truth[3:6, 7:10] = 2
    truth[:3, 7:10] = 4
    truth[6:, 7:10] = 5
    truth[:, 10:] = 3
    extent, boundary = _ideal_maps(truth)
    boundary[truth == 2] = 1.0  # no confident interior left in field 2
    boundary[4, 8] = 0.7
    return truth, extent, boundary


def test_small_fields_whose_interior_is_all_boundary() -> None:
    """A 3 x 3 field that the model sees as nearly all boundary (interior share 0.3 at its
    centre, below the marker threshold), between touching fields: its centre lies beyond the
    reach of the neighbours' markers, so it seeds a field of its own. (Its corners tie with
    the neighbours' bands on these flat maps, so the match is by IoU.)"""
    truth, extent, boundary = _all_boundary_small_field()
    found = extract_fields(extent, boundary)
    assert found.n_fields == 5
    match = label_f1(found.labels, truth)
    assert (match.f1, match.n_merged_truth) == (1.0, 0)


def test_a_speck_of_interior_in_a_band_does_not_split_a_field() -> None:
    truth = np.zeros((12, 12), dtype=np.int32)
    truth[1:11, 1:11] = 1
    extent, boundary = _ideal_maps(truth)
    boundary[1, 1] = 0.0  # a lone confident pixel at the corner, next to the interior
    found = extract_fields(extent, boundary)
    assert _same_partition(found.labels, truth)
    one_pixel_markers = ExtractionParams(min_marker_pixels=1, min_field_pixels=1)
    assert extract_fields(extent, boundary, params=one_pixel_markers).n_fields == 2


def test_a_rotated_strip_three_pixels_across_is_one_field() -> None:
    """A 3 px strip stepping down one row every 8 columns, between two wide fields: its
    interior is a 1 px line whose pieces touch only at corners, so it is one marker."""
    rows, cols = np.mgrid[0:20, 0:48]
    top = 6 + cols // 8
    truth = np.where(rows < top, 1, np.where(rows < top + 3, 2, 3)).astype(np.int32)
    extent, boundary = _ideal_maps(truth)
    interior = extent - boundary > 0.5
    assert ndi.label(interior & (truth == 2))[1] == 6  # six pieces, 4-connected
    found = extract_fields(extent, boundary)
    assert found.n_fields == 3 and _same_partition(found.labels, truth)


def test_thick_interiors_touching_at_a_corner_stay_apart() -> None:
    """Two confident 4 x 4 interiors touching only at a corner (a noisy map can do that)
    are two markers: only thin pieces are joined across corners."""
    extent = np.zeros((12, 12), np.float32)
    extent[1:11, 1:11] = 1.0
    boundary = extent.copy()
    boundary[1:5, 1:5] = 0.0
    boundary[5:9, 5:9] = 0.0
    found = extract_fields(extent, boundary, params=ExtractionParams(unclaimed_seeds=False))
    assert found.n_fields == 2
    assert len({found.labels[2, 2], found.labels[7, 7]}) == 2


def test_leftover_field_without_marker() -> None:
    """A field apart from all others whose whole area is boundary is still a field."""
    truth = np.zeros((10, 20), dtype=np.int32)
    truth[1:9, 1:9] = 1
    truth[1:4, 12:16] = 2
    extent, boundary = _ideal_maps(truth)
    boundary[truth == 2] = 0.9
    found = extract_fields(extent, boundary)
    assert _same_partition(found.labels, truth)


def test_depth_peaks_part_fields_joined_by_a_neck_of_missed_boundary() -> None:
    """Two 12 x 12 fields side by side whose shared boundary the model saw only at its ends:
    their interiors touch through a 4 px neck. One interior component, so one field by the
    component rule; two depth peaks, so two fields by the depth rule."""
    truth = np.zeros((14, 26), dtype=np.int32)
    truth[1:13, 1:13] = 1
    truth[1:13, 13:25] = 2
    extent, boundary = _ideal_maps(truth)
    boundary[5:9, 12:14] = 0.0  # the middle of the shared boundary is missed
    assert extract_fields(extent, boundary).n_fields == 1
    found = extract_fields(extent, boundary, params=ExtractionParams(marker_depth=1.0))
    assert found.n_fields == 2
    match = label_f1(found.labels, truth)
    assert (match.tp, match.n_merged_truth) == (2, 0)
    # one field with a ridge of equal depth (a long strip) keeps one marker
    strip = np.zeros((6, 40), dtype=np.int32)
    strip[1:5, 1:39] = 1
    depth = ExtractionParams(marker_depth=1.0)
    assert extract_fields(*_ideal_maps(strip), params=depth).n_fields == 1


def test_without_unclaimed_seeds_an_unmarked_area_is_one_field() -> None:
    """The 3 x 3 field seen as all boundary of test_small_fields_whose_interior_is_all_boundary:
    without seeds its centre is not a marker, so the neighbours' flood takes it."""
    _, extent, boundary = _all_boundary_small_field()
    assert extract_fields(extent, boundary).n_fields == 5
    no_seeds = ExtractionParams(unclaimed_seeds=False)
    assert extract_fields(extent, boundary, params=no_seeds).n_fields == 4


def test_min_score_drops_weak_fields_and_renumbers() -> None:
    truth = np.zeros((10, 30), dtype=np.int32)
    truth[1:9, 1:9], truth[1:9, 11:19], truth[1:9, 21:29] = 1, 2, 3
    extent, boundary = _ideal_maps(truth)
    extent[truth == 2] *= 0.4  # a doubtful field in the middle
    every = extract_fields(extent, boundary, params=ExtractionParams(extent_threshold=0.3))
    assert every.n_fields == 3 and every.scores[1] < 0.5 < min(every.scores[0], every.scores[2])
    strong = extract_fields(
        extent, boundary, params=ExtractionParams(extent_threshold=0.3, min_score=0.5)
    )
    assert strong.n_fields == 2 and sorted(np.unique(strong.labels).tolist()) == [0, 1, 2]
    assert (strong.labels[truth == 2] == 0).all() and strong.scores.tolist() == pytest.approx(
        every.scores[[0, 2]].tolist()
    )


def test_fields_are_numbered_consecutively_and_empty_maps_give_nothing() -> None:
    truth = np.pad(_grid([4, 5], reps=2), 2)
    found = extract_fields(*_ideal_maps(truth))
    assert found.n_fields == 16
    assert sorted(np.unique(found.labels)) == list(range(found.n_fields + 1))
    empty = extract_fields(np.zeros((8, 8)), np.zeros((8, 8)))
    assert empty.n_fields == 0
    assert empty.scores.shape == (0,)
    assert empty.scores.dtype == np.float32
    assert not empty.labels.any()


# --------------------------------------------------------------------------------------------
# Valid mask, sizes, scores


def test_nothing_is_extracted_on_invalid_pixels() -> None:
    truth = _grid([6, 8], reps=3)
    extent, boundary = _ideal_maps(truth)
    valid = np.ones(truth.shape, dtype=bool)
    valid[:, 10:13] = False
    valid[20:, :] = False
    found = extract_fields(extent, boundary, valid)
    assert not found.labels[~valid].any()
    assert found.labels[valid].all()
    # not-finite probabilities count as invalid too
    extent_nan = extent.copy()
    extent_nan[0:3, 0:3] = np.nan
    boundary_inf = boundary.copy()
    boundary_inf[5, 5] = np.inf
    found = extract_fields(extent_nan, boundary_inf)
    assert not found.labels[0:3, 0:3].any()
    assert found.labels[5, 5] == 0
    assert np.isfinite(found.scores).all()


def test_valid_mask_cuts_a_field_into_separate_pieces() -> None:
    truth = np.zeros((10, 21), dtype=np.int32)
    truth[1:9, 1:20] = 1
    extent, boundary = _ideal_maps(truth)
    valid = np.ones(truth.shape, dtype=bool)
    valid[:, 10] = False
    found = extract_fields(extent, boundary, valid)
    assert found.n_fields == 2
    assert found.labels[:, 10].max() == 0


def test_min_field_pixels_is_honoured() -> None:
    truth = np.zeros((10, 20), dtype=np.int32)
    truth[1:9, 1:9] = 1
    truth[2:4, 12:14] = 2  # 4 px
    extent, boundary = _ideal_maps(truth)
    assert extract_fields(extent, boundary).n_fields == 2
    found = extract_fields(extent, boundary, params=ExtractionParams(min_field_pixels=5))
    assert found.n_fields == 1
    assert not found.labels[truth == 2].any()
    assert (found.pixel_counts >= 5).all()


def test_scores_lie_in_unit_interval_and_a_straddling_blob_scores_lower() -> None:
    truth = np.zeros((12, 30), dtype=np.int32)
    truth[1:11, 1:11] = 1  # clean field
    truth[1:11, 13:21] = 2  # two touching fields ...
    truth[1:11, 21:29] = 3
    extent, boundary = _ideal_maps(truth)
    # ... whose shared edge the model only half sees, so one blob straddles both
    shared = (truth > 1) & np.isin(np.arange(30), [20, 21])[None, :]
    boundary[shared] = 0.45
    found = extract_fields(extent, boundary)
    assert found.n_fields == 2
    clean = found.labels[5, 5]
    blob = found.labels[5, 20]
    assert found.scores[clean - 1] == pytest.approx(1.0)
    assert found.scores[blob - 1] < found.scores[clean - 1] - 0.05
    assert ((found.scores >= 0) & (found.scores <= 1)).all()
    # noisy maps: still in [0, 1]
    rng = np.random.default_rng(3)
    tiles = rectangle_tiling(rng, (64, 64))
    noisy = extract_fields(*_noisy_maps(tiles, rng, sigma=1.0, amplitude=0.4))
    assert noisy.scores.dtype == np.float32
    assert ((noisy.scores >= 0) & (noisy.scores <= 1)).all()


def test_flood_equals_plain_watershed() -> None:
    """Exactly equal where no two pixels tie in elevation (skimage breaks ties among its
    markers by heap layout, so tied maps may differ in tied pixels)."""
    rng = np.random.default_rng(11)
    truth = rectangle_tiling(rng, (96, 96))
    extent, boundary = _noisy_maps(truth, rng, sigma=1.0, amplitude=0.3)
    elevation = boundary + rng.permutation(boundary.size).reshape(boundary.shape) * 1e-12
    share = np.clip(extent - boundary, 0, None) / np.maximum(extent, 1e-6)
    for extent_threshold, marker_threshold in ((0.5, 0.5), (0.3, 0.8), (0.6, 0.3)):
        mask = extent >= extent_threshold
        markers = _markers(mask, share, ExtractionParams(marker_threshold=marker_threshold))
        expected = watershed(elevation, markers, mask=mask, connectivity=1)
        np.testing.assert_array_equal(_flood(elevation, markers, mask), expected)


# --------------------------------------------------------------------------------------------
# The dense noisy oracle


@pytest.mark.parametrize(
    ("maps", "sigma", "low"),
    [
        (_noisy_maps, 1.0, 4),
        (_noisy_maps, 0.7, 3),
        (_noisy_maps, 1.0, 3),
        (_independent_maps, 1.0, 4),
        (_independent_maps, 0.7, 3),
    ],
    ids=[
        "softmax-sigma1-sides4-20px",
        "softmax-sigma0.7-sides3-20px",
        "softmax-sigma1-sides3-20px",
        "independent-sigma1-sides4-20px",
        "independent-sigma0.7-sides3-20px",
    ],
)
def test_dense_noisy_oracle(maps: Callable[..., tuple], sigma: float, low: int) -> None:
    """Truth maps of a dense random tiling (about 480 fields a chip, sides ``low`` to 20 px,
    so 9 or 16 to 400 px, no gaps), blurred and perturbed; params tuned on one chip, scored
    on two others. Fields 3 px wide under a 1 px blur are the hardest case: their interior
    share never reaches a marker threshold, so they rest on the unclaimed seeds."""
    chips = []
    for seed in (101, 102, 103):
        rng = np.random.default_rng(seed)
        truth = rectangle_tiling(rng, low=low)
        chips.append((*maps(truth, rng, sigma), None, truth))
    params, val_f1 = tune_params(chips[:1])
    assert val_f1 >= 0.95
    matches = [label_f1(extract_fields(e, b, v, params).labels, t) for e, b, v, t in chips[1:]]
    pooled = LabelMatch.pooled(matches)
    assert pooled.n_truth > 600
    assert pooled.f1 >= 0.95, pooled.metrics()
    assert pooled.merged_rate <= 0.01, pooled.metrics()


def test_dense_noisy_oracle_with_default_params() -> None:
    rng = np.random.default_rng(7)
    truth = rectangle_tiling(rng, low=4)
    extent, boundary = _noisy_maps(truth, rng, sigma=1.0)
    match = label_f1(extract_fields(extent, boundary).labels, truth)
    assert match.f1 >= 0.95, match.metrics()
    assert match.merged_rate <= 0.01, match.metrics()


# --------------------------------------------------------------------------------------------
# label_f1


@pytest.mark.parametrize("iou_threshold", [0.5, 0.3, 0.75])
def test_label_f1_agrees_with_object_matching(iou_threshold: float) -> None:
    """Polygons traced from the labels through match_objects give the same counts."""
    rng = np.random.default_rng(5)
    truth = rectangle_tiling(rng, (96, 96))
    extent, boundary = _noisy_maps(truth, rng, sigma=1.0, amplitude=0.25)
    # loose params, so that there are misses, splits and merges to agree on
    predicted = extract_fields(
        extent, boundary, params=ExtractionParams(marker_threshold=0.45)
    ).labels
    ours = label_f1(predicted, truth, iou_threshold=iou_threshold)
    theirs = match_objects(_polygons(predicted), _polygons(truth), iou_threshold=iou_threshold)
    assert ours.n_merged_truth > 0
    assert ours.fp > 0
    assert (ours.tp, ours.n_predicted, ours.n_truth) == (
        theirs.tp,
        theirs.n_predicted,
        theirs.n_truth,
    )
    assert ours.precision == theirs.precision
    assert ours.recall == theirs.recall
    assert ours.f1 == pytest.approx(theirs.f1)
    assert ours.n_merged_truth == len(theirs.merged_truth)
    assert ours.n_merged_predictions == len(theirs.merged_predictions)
    assert ours.n_split_truth == len(theirs.split_truth)


def test_label_f1_hand_made_cases() -> None:
    empty = np.zeros((4, 4), dtype=np.int32)
    both_empty = label_f1(empty, empty)
    assert (both_empty.precision, both_empty.recall, both_empty.f1) == (1.0, 1.0, 1.0)
    one = empty.copy()
    one[:2, :2] = 7
    assert label_f1(one, empty).f1 == 0.0
    assert label_f1(empty, one).recall == 0.0
    # IoU exactly 0.5 does not match (strictly greater)
    half = empty.copy()
    half[:2, :1] = 3
    assert label_f1(half, one).tp == 0
    # one prediction holding two truth fields entirely: both merged; ids need not be dense
    truth = np.zeros((4, 8), dtype=np.int32)
    truth[:, :4] = 10
    truth[:, 4:] = 20
    blob = (truth > 0).astype(np.int64) * 99
    merged = label_f1(blob, truth)
    assert (merged.n_merged_truth, merged.n_merged_predictions, merged.tp) == (2, 1, 0)
    # two predictions each inside one truth field: split
    split = label_f1(np.where(np.arange(8)[None, :] < 2, 1, 2) * (truth == 10), truth)
    assert split.n_split_truth == 1


def test_label_f1_scores_unknown_land_as_evaluate_does() -> None:
    """Sparse labels: the drawn fields are known, the land around them is not (-1)."""
    truth = np.full((20, 20), -1, np.int32)
    truth[2:8, 2:8] = 1
    truth[12:18, 12:18] = 2
    predicted = np.zeros((20, 20), np.int32)
    predicted[2:8, 2:8] = 1  # the drawn field itself
    predicted[11:19, 11:19] = 2  # a drawn field and a ring of land: IoU 36 / 64, all pixels
    predicted[0:2, 12:18] = 3  # wholly on unknown land: maybe an undrawn field, left out
    match = label_f1(predicted, truth)
    assert (match.n_predicted, match.tp, match.n_truth) == (2, 2, 2)
    assert label_f1(predicted, np.where(truth < 0, 0, truth), ignore=truth < 0) == match
    # a blob over a whole chip matches no drawn field (clipped to it, it used to score F1 1)
    blob = label_f1(np.ones((20, 20), np.int32), truth)
    assert (blob.n_predicted, blob.tp, blob.f1, blob.n_merged_truth) == (1, 0, 0.0, 2)
    # a prediction mostly on known land counts (a false positive there), all of its area
    complete = np.zeros((20, 20), np.int32)
    complete[:, 10:] = -1  # e.g. a field of another split
    half = np.zeros((20, 20), np.int32)
    half[0:4, 2:12] = 1  # 32 px known, 8 unknown
    half[10:14, 12:16] = 2  # unknown only
    assert label_f1(half, complete).n_predicted == 1 and label_f1(half, complete).fp == 1
    # with nothing counted, negative predicted values where nothing counts are allowed
    lone = np.zeros((6, 6), dtype=np.int32)
    lone[:2, :2] = 1
    truth_ignored = np.where(lone > 0, -1, 0)
    assert label_f1(np.where(lone > 0, -1, 0), truth_ignored).n_predicted == 0
    assert label_f1(lone, truth_ignored).n_predicted == 0
    assert label_f1(lone, truth_ignored).f1 == 1.0


def test_label_f1_rejects_bad_input() -> None:
    labels = np.zeros((4, 4), dtype=np.int32)
    with pytest.raises(ValueError, match="shape"):
        label_f1(labels, np.zeros((4, 5), dtype=np.int32))
    with pytest.raises(ValueError, match="-1"):
        label_f1(labels, labels - 2)
    with pytest.raises(ValueError, match="iou_threshold"):
        label_f1(labels, labels, iou_threshold=1.5)


def test_pooled_adds_counts() -> None:
    a = LabelMatch(tp=3, n_predicted=4, n_truth=5, n_merged_truth=2, n_merged_predictions=1,
                   n_split_truth=0)  # fmt: skip
    b = LabelMatch(tp=1, n_predicted=1, n_truth=1, n_merged_truth=0, n_merged_predictions=0,
                   n_split_truth=1)  # fmt: skip
    pooled = LabelMatch.pooled([a, b])
    assert pooled.iou_threshold == 0.5
    assert (pooled.tp, pooled.n_predicted, pooled.n_truth) == (4, 5, 6)
    assert pooled.f1 == pytest.approx(8 / 11)
    assert (pooled.n_merged_truth, pooled.n_split_truth) == (2, 1)
    assert LabelMatch.pooled([]).f1 == 1.0
    with pytest.raises(ValueError, match="thresholds"):
        LabelMatch.pooled([a, LabelMatch(0, 0, 0, 0, 0, 0, iou_threshold=0.75)])


# --------------------------------------------------------------------------------------------
# Parameters and tuning


def test_params_round_trip_through_plain_floats() -> None:
    params = ExtractionParams(0.4, 0.65, 3, 6)
    stored = params.to_dict()
    assert all(type(v) is float for v in stored.values())
    assert ExtractionParams.from_dict(stored) == params
    assert isinstance(ExtractionParams.from_dict(stored).min_field_pixels, int)
    assert ExtractionParams.from_dict({"extent_threshold": 0.3}) == ExtractionParams(0.3)
    with pytest.raises(ValueError, match="unknown"):
        ExtractionParams.from_dict({"extent": 0.3})
    with pytest.raises(ValueError, match="extent_threshold"):
        ExtractionParams(extent_threshold=1.2)
    with pytest.raises(ValueError, match="min_marker_pixels"):
        ExtractionParams(min_marker_pixels=1.5)  # type: ignore[arg-type]


def _leaky_pair() -> tuple[np.ndarray, np.ndarray, None, np.ndarray]:
    """Two fields 1 px apart; the model leaks extent 0.45 into the gap and sees no edges."""
    truth = np.zeros((10, 21), dtype=np.int32)
    truth[1:9, 1:10] = 1
    truth[1:9, 11:20] = 2
    extent = (truth > 0).astype(np.float32)
    extent[1:9, 10] = 0.45
    boundary = np.zeros_like(extent)
    return extent, boundary, None, truth


def test_tune_params_finds_the_extent_threshold_a_case_needs() -> None:
    sample = _leaky_pair()
    low = ExtractionParams(extent_threshold=0.4)
    assert label_f1(extract_fields(*sample[:3], params=low).labels, sample[3]).f1 < 1.0
    params, f1 = tune_params([sample])
    assert f1 == 1.0
    # 0.5 and 0.6 separate them; on the tie the value closest to the base params wins
    assert params == ExtractionParams(extent_threshold=0.5)
    params, _ = tune_params([sample], base=ExtractionParams(0.6, 0.75))
    assert params == ExtractionParams(0.6, 0.75)
    assert set(DEFAULT_GRID) == {"extent_threshold", "marker_threshold"}


def test_tune_params_finds_the_marker_threshold_a_case_needs() -> None:
    """Touching 6 x 6 fields whose interior the model calls only 62 % sure, and their bands
    45 %: markers need a threshold of at most 0.6; above it no pixel is a marker, all lie
    beyond reach, and the fields run together into one seed."""
    truth = _grid([6], reps=5)
    extent, boundary = _ideal_maps(truth)
    boundary = np.where(boundary > 0, 0.55, 0.38).astype(np.float32)
    high = ExtractionParams(marker_threshold=0.7)
    assert label_f1(extract_fields(extent, boundary, params=high).labels, truth).f1 < 1.0
    grid = {"marker_threshold": (0.8, 0.7, 0.6, 0.5)}
    samples = [(extent, boundary, None, truth), _leaky_pair()]
    params, f1 = tune_params(samples, grid, base=ExtractionParams(marker_threshold=0.9))
    assert f1 == 1.0
    assert params == ExtractionParams(marker_threshold=0.6)  # of 0.6 and 0.5, nearer 0.9


def test_tune_params_tries_score_floors_as_extraction_with_them_would() -> None:
    """A false field scoring low: the tuned floor drops it, with the F1 that extracting with
    that floor gives."""
    truth = np.zeros((10, 30), dtype=np.int32)
    truth[1:9, 1:9], truth[1:9, 21:29] = 1, 3
    extent, boundary = _ideal_maps(truth)
    extent[1:9, 11:19] = 0.45  # a weak blob where there is no field
    grid = {"extent_threshold": (0.4,), "min_score": (0.0, 0.2, 0.5)}
    params, f1 = tune_params([(extent, boundary, None, truth)], grid)
    assert params.min_score == 0.5 and f1 == 1.0
    direct = label_f1(extract_fields(extent, boundary, params=params).labels, truth)
    assert direct.f1 == f1
    no_floor = {"min_score": (0.0,), "extent_threshold": (0.4,)}
    assert tune_params([(extent, boundary, None, truth)], no_floor)[1] == pytest.approx(0.8)


def test_tune_params_pools_chips_and_scores_only_valid_pixels() -> None:
    truth = _grid([5, 7], reps=2)
    extent, boundary = _ideal_maps(truth)
    valid = np.ones(truth.shape, dtype=bool)
    valid[:, :5] = False  # the model sees nothing there: those truth fields do not count
    _, f1 = tune_params([(extent, boundary, valid, truth)], {"extent_threshold": (0.5,)})
    assert f1 == 1.0
    with pytest.raises(ValueError, match="unknown"):
        tune_params([(extent, boundary, None, truth)], {"threshold": (0.5,)})
    with pytest.raises(ValueError, match="sample"):
        tune_params([])


def test_a_blob_over_a_sparse_chip_is_not_tuned_to_a_perfect_score() -> None:
    """An untrained model's map is field everywhere; on a chip with one drawn field and
    unknown land around it, that blob must not score F1 1 (it chose epoch 1 as the best)."""
    truth = np.full((64, 64), -1, np.int32)
    truth[10:20, 10:20] = 1
    blob = (np.full((64, 64), 0.9, np.float32), np.zeros((64, 64), np.float32), None, truth)
    _, f1 = tune_params([blob])
    assert f1 == 0.0
    extent = np.zeros((64, 64), np.float32)
    extent[10:20, 10:20] = 0.9
    found = (extent, np.zeros((64, 64), np.float32), None, truth)
    assert tune_params([found])[1] == 1.0
