"""Object-level matching of predicted to truth field polygons, and segmentation-error rules.

This module is fieldseg's one definition of how predicted fields are scored against truth
fields, following the Fields of The World conventions. Both inputs are sequences of polygons
(a list, a numpy array of geometries or a GeoSeries) in one CRS with planar areas.

Geometry:
    Invalid geometries are repaired with ``shapely.make_valid`` and only their polygonal parts
    are kept; missing (None), empty and non-polygonal geometries have area 0. A geometry of area
    0 is never matched, never split and never merged, but still counts in ``n_predicted`` or
    ``n_truth``.

Rules, for a prediction ``p`` and a truth field ``t``:
    1. Match: ``p`` matches ``t`` when IoU(p, t) > threshold (0.5 by default; strictly, so an
       IoU of exactly 0.5 does not match). Matching is one to one. At thresholds of 0.5 or more
       a conflict (one object above the threshold with two others) needs objects of one set to
       overlap each other; conflicts are resolved greedily: pairs are taken by IoU descending
       (ties by prediction index, then truth index) and a pair is kept when neither of its
       objects is already matched. Matches are TP; unmatched predictions FP, unmatched truth FN.
    2. Split (over-segmentation): ``t`` is split when two or more predictions each lie more
       than half inside it: area(p ∩ t) / area(p) > 0.5.
    3. Merged (under-segmentation): ``p`` is a merge when it holds more than half of each of two
       or more truth fields: area(p ∩ t) / area(t) > 0.5; those truth fields are merged truth.
    4. Precision = TP / n_predicted, recall = TP / n_truth, F1 their harmonic mean. With both
       sets empty all three are 1 (nothing to find, nothing wrongly found); with one empty they
       are 0. Split and merged rates are counts over n_truth, and 0 without truth fields.
    5. F1 over IoU thresholds (0.5, 0.55, ..., 0.95 by default) comes from one table of pair
       overlaps; the greedy matching at a threshold uses only pairs above it, which are a prefix
       of the IoU-sorted pairs, so a higher threshold never matches more. Thresholds are rounded
       to 10 decimals, so ``np.arange(0.5, 0.96, 0.05)`` means exactly 0.5, 0.55, ..., 0.95.

Speed: candidate pairs come in bulk from an STR tree, and exact intersection areas (the costly
part) are computed, vectorised, only for pairs whose bounding-box bound says they may matter:
pairs that may pass a rule above, then pairs that may be an object's best IoU. Pairs skipped
can change nothing reported: matches, splits and merges are exact, best IoUs exact to rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import shapely

from fieldseg.cpu_cores import usable_cores

#: IoU thresholds of the Fields of The World mean F1: 0.5 to 0.95 in steps of 0.05.
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

#: The share of a field that a prediction must exceed (and vice versa) to split or merge it.
MAJORITY = 0.5

#: Where only some fields are drawn (sparse labels), a prediction counts when its overlap with
#: the drawn fields reaches this share of its own area or of a drawn field's area; others may
#: be right about undrawn fields.
SPARSE_OVERLAP_SHARE = 0.1

#: Bounds are inflated by this relative slack before pruning, so float rounding in GEOS areas
#: can never make a pruned pair pass a rule.
_BOUND_SLACK = 1e-9

_POLYGONAL_TYPES = (3, 6)  # shapely type ids of Polygon and MultiPolygon
_COLLECTION_TYPE = 7

#: A list, a numpy array of geometries or a GeoSeries.
GeometriesLike = Iterable[shapely.Geometry | None]


class DetectionCounts:
    """Precision, recall, F1 and error rates by rule 4, from a match's counts.

    The scores of polygon matches (:class:`ObjectMatches`) and of label-image matches
    (:class:`fieldseg.instance_extraction.LabelMatch`) come from here, so both score alike.
    Subclasses provide ``tp``, ``n_predicted``, ``n_truth``, ``n_split_truth``,
    ``n_merged_truth``, ``n_merged_predictions`` and ``iou_threshold``.
    """

    tp: int
    n_predicted: int
    n_truth: int
    n_split_truth: int
    n_merged_truth: int
    n_merged_predictions: int
    iou_threshold: float

    @property
    def fp(self) -> int:
        """Predictions without a matching truth field."""
        return self.n_predicted - self.tp

    @property
    def fn(self) -> int:
        """Truth fields without a matching prediction."""
        return self.n_truth - self.tp

    @property
    def precision(self) -> float:
        """TP / n_predicted; 1 when both sets are empty, 0 when only predictions are."""
        return _ratio(self.tp, self.n_predicted, both_empty=self.n_truth == 0)

    @property
    def recall(self) -> float:
        """TP / n_truth; 1 when both sets are empty, 0 when only truth is."""
        return _ratio(self.tp, self.n_truth, both_empty=self.n_predicted == 0)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 1 when both sets are empty."""
        return _f1(self.tp, self.n_predicted, self.n_truth)

    @property
    def split_rate(self) -> float:
        """Share of truth fields that are split; 0 without truth fields."""
        return self.n_split_truth / self.n_truth if self.n_truth else 0.0

    @property
    def merged_rate(self) -> float:
        """Share of truth fields held by a merging prediction; 0 without truth fields."""
        return self.n_merged_truth / self.n_truth if self.n_truth else 0.0

    def metrics(self) -> dict[str, float]:
        """The counts and scores, for reports and JSON."""
        return {
            "iou_threshold": self.iou_threshold,
            "n_predicted": self.n_predicted,
            "n_truth": self.n_truth,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "n_split_truth": self.n_split_truth,
            "split_rate": self.split_rate,
            "n_merged_predictions": self.n_merged_predictions,
            "n_merged_truth": self.n_merged_truth,
            "merged_rate": self.merged_rate,
        }


@dataclass(frozen=True, eq=False)
class ObjectMatches(DetectionCounts):
    """The one-to-one matches at one IoU threshold, plus split and merged fields.

    Index arrays refer to positions in the predicted and truth inputs. ``eq`` is off because
    the fields are numpy arrays.
    """

    n_predicted: int
    n_truth: int
    pairs: np.ndarray  # (k, 2) int64 (prediction index, truth index), sorted by prediction
    pair_iou: np.ndarray  # (k,) float64 IoU of each matched pair
    split_truth: np.ndarray  # int64 truth indices, ascending
    merged_predictions: np.ndarray  # int64 prediction indices, ascending
    merged_truth: np.ndarray  # int64 truth indices, ascending
    iou_threshold: float
    best_iou_predicted: np.ndarray  # (n_predicted,) best IoU with any truth field, 0 if none
    best_iou_truth: np.ndarray  # (n_truth,) best IoU with any prediction, 0 if none

    @property
    def tp(self) -> int:
        """Matched pairs."""
        return len(self.pairs)

    @property
    def n_split_truth(self) -> int:
        """Truth fields split between predictions."""
        return len(self.split_truth)

    @property
    def n_merged_truth(self) -> int:
        """Truth fields held by a merging prediction."""
        return len(self.merged_truth)

    @property
    def n_merged_predictions(self) -> int:
        """Predictions that hold two or more truth fields."""
        return len(self.merged_predictions)

    @property
    def matched_truth_of(self) -> np.ndarray:
        """For each prediction the index of its matched truth field, or -1."""
        out = np.full(self.n_predicted, -1, dtype=np.int64)
        out[self.pairs[:, 0]] = self.pairs[:, 1]
        return out


@dataclass(frozen=True, eq=False)
class ObjectOverlaps:
    """Overlaps of predicted and truth fields, computed once and matched at any threshold.

    The table holds every pair with positive intersection area that can pass a rule at an IoU
    threshold of ``min_iou`` or more (and maybe more pairs); build it with
    :func:`object_overlaps`.
    """

    n_predicted: int
    n_truth: int
    min_iou: float
    predicted: np.ndarray  # (k,) int64 prediction index of each pair
    truth: np.ndarray  # (k,) int64 truth index of each pair
    intersection: np.ndarray  # (k,) float64 area of p ∩ t, > 0
    iou: np.ndarray  # (k,) float64
    predicted_area: np.ndarray  # (n_predicted,) float64
    truth_area: np.ndarray  # (n_truth,) float64
    best_iou_predicted: np.ndarray  # (n_predicted,) float64
    best_iou_truth: np.ndarray  # (n_truth,) float64

    def match(self, iou_threshold: float = 0.5) -> ObjectMatches:
        """Match one to one at IoU > ``iou_threshold`` and find split and merged fields."""
        threshold = self._check_threshold(iou_threshold)
        order = self._greedy_order(threshold)
        kept = order[_greedy_keep(self.predicted[order], self.truth[order])]
        kept = kept[np.argsort(self.predicted[kept], kind="stable")]
        pairs = np.column_stack([self.predicted[kept], self.truth[kept]]).astype(np.int64)

        inside_truth = self.intersection > MAJORITY * self.predicted_area[self.predicted]
        pieces = np.bincount(self.truth[inside_truth], minlength=self.n_truth)
        holds_truth = self.intersection > MAJORITY * self.truth_area[self.truth]
        held = np.bincount(self.predicted[holds_truth], minlength=self.n_predicted)
        merging = held >= 2
        merged_truth = np.unique(self.truth[holds_truth & merging[self.predicted]])
        return ObjectMatches(
            n_predicted=self.n_predicted,
            n_truth=self.n_truth,
            pairs=_frozen(pairs.reshape(-1, 2)),
            pair_iou=_frozen(self.iou[kept]),
            split_truth=_frozen(np.flatnonzero(pieces >= 2)),
            merged_predictions=_frozen(np.flatnonzero(merging)),
            merged_truth=_frozen(merged_truth.astype(np.int64)),
            iou_threshold=threshold,
            best_iou_predicted=self.best_iou_predicted,
            best_iou_truth=self.best_iou_truth,
        )

    def f1_over_thresholds(
        self, thresholds: Iterable[float] = IOU_THRESHOLDS
    ) -> dict[float, float]:
        """F1 at each IoU threshold (keys rounded to 10 decimals), from one greedy matching.

        Pairs above a threshold are a prefix of the pairs sorted by IoU, and greedy matching of
        a prefix keeps exactly the pairs it kept within that prefix of the whole list; so one
        matching at the lowest threshold gives the matches at every threshold.
        """
        levels = [self._check_threshold(t) for t in thresholds]
        if not levels:
            return {}
        order = self._greedy_order(min(levels))
        kept_iou = self.iou[order[_greedy_keep(self.predicted[order], self.truth[order])]]
        return {
            t: _f1(int(np.count_nonzero(kept_iou > t)), self.n_predicted, self.n_truth)
            for t in levels
        }

    def mean_f1(self, thresholds: Iterable[float] = IOU_THRESHOLDS) -> float:
        """Mean of the F1 scores over the IoU thresholds."""
        scores = self.f1_over_thresholds(thresholds)
        if not scores:
            raise ValueError("mean_f1 needs at least one IoU threshold")
        return float(np.mean(list(scores.values())))

    def _check_threshold(self, threshold: float) -> float:
        value = round(float(threshold), 10)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"IoU thresholds must lie in [0, 1], got {threshold!r}")
        if value < self.min_iou:
            raise ValueError(
                f"IoU threshold {value} is below min_iou={self.min_iou} this overlap table was "
                "built for; build it with a lower min_iou"
            )
        return value

    def _greedy_order(self, threshold: float) -> np.ndarray:
        """Pairs with IoU > threshold: IoU descending, then prediction, then truth index."""
        above = np.flatnonzero(self.iou > threshold)
        order = np.lexsort((self.truth[above], self.predicted[above], -self.iou[above]))
        return above[order]


def object_overlaps(
    predicted: GeometriesLike, truth: GeometriesLike, *, min_iou: float = 0.5
) -> ObjectOverlaps:
    """Find the overlapping predicted/truth pairs that any rule at IoU > ``min_iou`` needs.

    Candidates come from one bulk STR-tree query. The area of a pair's intersection is at most
    ``bound`` = min(bounding-box overlap, area(p), area(t)); exact areas are computed only for
    pairs whose bound may pass a rule, then for pairs whose bound may beat an object's best IoU
    so far (first each object's most promising pair, then every pair still able to).

    Args:
        predicted: Predicted field polygons.
        truth: Truth field polygons, in the same CRS.
        min_iou: The lowest IoU threshold the table will be matched at.

    Returns:
        The overlap table, to :meth:`~ObjectOverlaps.match` at one or more thresholds.
    """
    min_iou = round(float(min_iou), 10)
    if not 0.0 <= min_iou <= 1.0:
        raise ValueError(f"min_iou must lie in [0, 1], got {min_iou!r}")
    pred_geoms = _clean_geometries(predicted, "predicted")
    truth_geoms = _clean_geometries(truth, "truth")
    pred_area = shapely.area(pred_geoms)
    truth_area = shapely.area(truth_geoms)

    tree = shapely.STRtree(truth_geoms)
    pi, ti = tree.query(pred_geoms, predicate="intersects")
    pi = pi.astype(np.int64)
    ti = ti.astype(np.int64)

    # Upper bound of each pair's intersection area, and hence of its IoU and overlap shares.
    pb = shapely.bounds(pred_geoms)
    tb = shapely.bounds(truth_geoms)
    width = np.minimum(pb[pi, 2], tb[ti, 2]) - np.maximum(pb[pi, 0], tb[ti, 0])
    height = np.minimum(pb[pi, 3], tb[ti, 3]) - np.maximum(pb[pi, 1], tb[ti, 1])
    ap, at = pred_area[pi], truth_area[ti]
    bound = np.minimum(np.clip(width, 0, None) * np.clip(height, 0, None), np.minimum(ap, at))
    live = bound > 0
    pi, ti, ap, at, bound = pi[live], ti[live], ap[live], at[live], bound[live]
    iou_bound = bound / (ap + at - bound)

    inter = np.full(len(pi), np.nan)  # NaN: not computed

    def compute(which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact areas of the ``which`` pairs; the best IoU per object over all known pairs."""
        inter[which] = _intersection_areas(pred_geoms[pi[which]], truth_geoms[ti[which]])
        known = ~np.isnan(inter)
        iou = inter[known] / (ap[known] + at[known] - inter[known])
        best_p = np.zeros(len(pred_geoms))
        best_t = np.zeros(len(truth_geoms))
        np.maximum.at(best_p, pi[known], iou)
        np.maximum.at(best_t, ti[known], iou)
        return best_p, best_t

    # 1. every pair that may pass a match, split or merge rule (slack: no pair lost to rounding)
    slack = bound * (1 + _BOUND_SLACK)
    may_pass = (slack / (ap + at - slack) > min_iou) | (slack > MAJORITY * np.minimum(ap, at))
    best_p, best_t = compute(np.flatnonzero(may_pass))
    # 2. of the pairs that may still beat an object's best IoU, each object's most promising
    may_beat = np.isnan(inter) & ((iou_bound > best_p[pi]) | (iou_bound > best_t[ti]))
    best_p, best_t = compute(_top_per_object(np.flatnonzero(may_beat), pi, ti, iou_bound))
    # 3. every pair still able to beat an object's best IoU
    may_beat = np.isnan(inter) & ((iou_bound > best_p[pi]) | (iou_bound > best_t[ti]))
    best_p, best_t = compute(np.flatnonzero(may_beat))

    known = inter > 0  # NaN (skipped) compares False
    pi, ti, inter = pi[known], ti[known], inter[known]
    iou = inter / (ap[known] + at[known] - inter)
    return ObjectOverlaps(
        n_predicted=len(pred_geoms),
        n_truth=len(truth_geoms),
        min_iou=min_iou,
        predicted=_frozen(pi),
        truth=_frozen(ti),
        intersection=_frozen(inter),
        iou=_frozen(iou),
        predicted_area=_frozen(pred_area),
        truth_area=_frozen(truth_area),
        best_iou_predicted=_frozen(best_p),
        best_iou_truth=_frozen(best_t),
    )


def match_objects(
    predicted: GeometriesLike, truth: GeometriesLike, *, iou_threshold: float = 0.5
) -> ObjectMatches:
    """Match predicted to truth fields one to one at IoU > ``iou_threshold``; see module doc."""
    return object_overlaps(predicted, truth, min_iou=iou_threshold).match(iou_threshold)


def f1_over_thresholds(
    predicted: GeometriesLike,
    truth: GeometriesLike,
    thresholds: Iterable[float] = IOU_THRESHOLDS,
) -> dict[float, float]:
    """F1 at each IoU threshold (keys rounded to 10 decimals), overlaps computed once."""
    levels = [round(float(t), 10) for t in thresholds]
    if not levels:
        return {}
    return object_overlaps(predicted, truth, min_iou=min(levels)).f1_over_thresholds(levels)


def mean_f1(
    predicted: GeometriesLike,
    truth: GeometriesLike,
    thresholds: Iterable[float] = IOU_THRESHOLDS,
) -> float:
    """Mean F1 over IoU thresholds, the Fields of The World headline object score."""
    scores = f1_over_thresholds(predicted, truth, thresholds)
    if not scores:
        raise ValueError("mean_f1 needs at least one IoU threshold")
    return float(np.mean(list(scores.values())))


def _clean_geometries(values: GeometriesLike, name: str) -> np.ndarray:
    """A 1-D object array of valid geometries whose area is their polygonal area.

    None becomes an empty polygon; invalid geometries are made valid and reduced to their
    polygonal parts, so lines left over from a repair cannot upset the overlay.
    """
    if isinstance(values, shapely.Geometry):
        raise TypeError(f"{name} must be a sequence of geometries, not one geometry")
    geoms = np.array(list(values), dtype=object)
    if geoms.ndim != 1:
        raise TypeError(f"{name} must be a flat sequence of geometries")
    missing = shapely.is_missing(geoms)
    if not np.all(shapely.is_geometry(geoms) | missing):
        raise TypeError(f"{name} must hold only shapely geometries (or None)")
    geoms[missing] = shapely.Polygon()
    invalid = np.flatnonzero(~shapely.is_valid(geoms))
    if len(invalid):
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    types = shapely.get_type_id(geoms)
    for i in np.flatnonzero(types == _COLLECTION_TYPE):
        parts = shapely.get_parts(shapely.get_parts(geoms[i]))
        polygons = parts[np.isin(shapely.get_type_id(parts), _POLYGONAL_TYPES)]
        geoms[i] = shapely.union_all(polygons) if len(polygons) else shapely.Polygon()
    geoms[~np.isin(types, (*_POLYGONAL_TYPES, _COLLECTION_TYPE))] = shapely.Polygon()
    return geoms


def _intersection_areas(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Areas of ``a[i] ∩ b[i]``, in chunks on every available core.

    The overlay is the costly step of matching; shapely's vectorised operations release the
    GIL, so threads are enough to use all cores.
    """
    n = len(a)
    workers = usable_cores()
    if workers <= 1 or n <= chunk:
        return shapely.area(shapely.intersection(a, b))
    starts = range(0, n, chunk)
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(
            lambda i: shapely.area(shapely.intersection(a[i : i + chunk], b[i : i + chunk])),
            starts,
        )
        return np.concatenate(list(parts))


def _top_per_object(
    candidates: np.ndarray, pi: np.ndarray, ti: np.ndarray, score: np.ndarray
) -> np.ndarray:
    """Of ``candidates``, those with the highest score for their prediction or their truth."""
    order = candidates[np.argsort(-score[candidates], kind="stable")]
    _, first_p = np.unique(pi[order], return_index=True)
    _, first_t = np.unique(ti[order], return_index=True)
    return np.union1d(order[first_p], order[first_t])


def _greedy_keep(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Greedy one-to-one pass over pairs in priority order: which pairs are kept.

    A pair whose prediction and truth appear in no other pair is kept outright (vectorised);
    only the few pairs in conflicts go through the sequential loop.
    """
    keep = np.zeros(len(pred), dtype=bool)
    if not len(pred):
        return keep
    shared = (np.bincount(pred)[pred] > 1) | (np.bincount(truth)[truth] > 1)
    keep[~shared] = True
    used_pred: set[int] = set()
    used_truth: set[int] = set()
    for i in np.flatnonzero(shared).tolist():
        p, t = int(pred[i]), int(truth[i])
        if p not in used_pred and t not in used_truth:
            keep[i] = True
            used_pred.add(p)
            used_truth.add(t)
    return keep


def _ratio(count: int, total: int, *, both_empty: bool) -> float:
    if total:
        return count / total
    return 1.0 if both_empty else 0.0


def _f1(tp: int, n_predicted: int, n_truth: int) -> float:
    """2 TP / (n_predicted + n_truth), the harmonic mean of precision and recall."""
    total = n_predicted + n_truth
    return 2 * tp / total if total else 1.0


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
