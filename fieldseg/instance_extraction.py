"""Per-pixel field probabilities -> separate field instances, and their object-level score.

A boundary-aware semantic model gives, for every pixel, the softmaxed probabilities of three
classes: field *interior*, field *boundary* (a band of 1-2 px on each field's own inner edge, so
two touching fields are parted by a band twice that wide) and *background*. This module turns
the *extent* map ``P(extent) = P(interior) + P(boundary)`` and the *boundary* map into a label
image of disjoint fields, tunes the few thresholds of that rule on validation chips, and scores
label images against truth label images by object F1.

Extraction rule (:func:`extract_fields`):
    1. **Field mask.** A pixel may belong to a field when it is valid, both probabilities are
       finite and ``P(extent) >= extent_threshold``. Nothing is ever labelled off this mask.
    2. **Markers.** The *interior share* of a pixel is ``P(interior) / P(extent)``, the
       probability that a field pixel lies inside its field rather than on its edge band. The
       markers are the 4-connected components of mask pixels with an interior share of at
       least ``marker_threshold``; two *thin* components (no pixel with all four neighbours
       in it) that touch at a corner are one, the line-shaped interior of a rotated strip
       3-4 px across. A component of at least ``min_marker_pixels`` pixels is a
       marker. A smaller one is kept only when one of its pixels lies more than
       :data:`MARKER_REACH` px (chessboard distance) from every larger marker: near a larger
       marker it is a speck of that field's edge band, farther away it is the whole interior
       of a small field (a 3 x 3 px field has a one-pixel interior).
       With ``marker_depth`` > 0 the markers are instead the peaks of the confident interior's
       depth: the Euclidean distance of each confident-interior pixel to the nearest pixel
       outside it, whose regional maxima at least ``marker_depth`` px high
       (``skimage.morphology.h_maxima``) are the markers, one per 8-connected peak. Two fields
       whose interiors touch through a neck (the model saw only part of the boundary between
       them) then get a marker each, where the interior-component rule gives them one.
    3. **Unclaimed seeds** (with ``unclaimed_seeds``, the default). Mask pixels more than
       :data:`MARKER_REACH` px from every marker (with depth peaks: from every confident
       interior that holds one) cannot be the edge band of any marked field, so they belong to
       a field whose interior the model missed (small fields at 10 m, where the band on each
       side eats the interior).
       Those with at least half the marker threshold's interior share (``>= marker_threshold
       / 2``) are seeds: their 4-connected components are markers too, whatever their size.
       The half-threshold keeps out the band between two such fields that touch end to end,
       which would otherwise chain them into one seed.
    4. **Watershed.** The boundary probability is flooded from the markers inside the mask
       (``skimage.segmentation.watershed``, 4-connected), so every mask pixel reachable from a
       marker joins one field, and touching fields meet along the ridge of their boundary band.
    5. **Leftovers.** Mask pixels no marker reaches (a field apart from all others with no
       marker) form fields of their own, one per 4-connected component.
    6. **Size and score.** Fields of fewer than ``min_field_pixels`` pixels, or scoring less
       than ``min_score``, are dropped (their pixels are left to no field). Fields are
       numbered 1..K: marker fields in raster order of their marker, then unclaimed seeds,
       then leftovers. Every field is 4-connected, so it traces
       to one polygon.

Score of a field (:attr:`ExtractedFields.scores`, in [0, 1]):
    ``mean P(extent) over the field x (1 - mean P(boundary) over its core)``, where the core is
    the field's pixels whose four neighbours all lie in the same field (the image edge does not
    count as outside: chip edges cut fields). A field too thin to have a core (a strip 1-2 px
    across, all edge by nature) scores its mean extent. A clean field scores near its extent
    confidence; a blob that straddles a boundary between two fields holds the band in its core
    and scores lower.

Parameters (:class:`ExtractionParams`) are tuned per model on validation chips
(:func:`tune_params`) and stored with the checkpoint as plain floats. The best marker
threshold depends on how sharp the model is: on the blurred, noisy oracle of the tests it is
0.4 to 0.6 with the blur and the field sizes, while perfect maps work with any threshold.

Object matching (:func:`label_f1`) follows :mod:`fieldseg.object_matching` exactly, on pixel
areas instead of polygon areas, and scores unknown land (sparse labels) as ``fieldseg evaluate``
does; see :func:`label_f1`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from types import MappingProxyType

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from fieldseg.object_matching import (
    MAJORITY,
    SPARSE_OVERLAP_SHARE,
    DetectionCounts,
    _greedy_keep,
)

#: How far (px, chessboard distance) a marker's field may reach past the marker: the width of
#: the boundary band the model is trained on (1-2 px on each field's inner edge).
MARKER_REACH = 2

#: The default grid of :func:`tune_params`: parameter name -> values tried.
DEFAULT_GRID: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "extent_threshold": (0.3, 0.4, 0.5, 0.6),
        "marker_threshold": (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8),
    }
)

_FOUR_CONNECTED = ndi.generate_binary_structure(2, 1)
_EIGHT_CONNECTED = ndi.generate_binary_structure(2, 2)


@dataclass(frozen=True)
class ExtractionParams:
    """The thresholds of the extraction rule (module docstring), stored with a checkpoint.

    Attributes:
        extent_threshold: a pixel may be field when ``P(extent) >= extent_threshold``.
        marker_threshold: a mask pixel is a marker pixel when its interior share
            ``P(interior) / P(extent) >= marker_threshold``.
        min_marker_pixels: smaller components of confident interior are markers only where
            they reach beyond the band of every larger one.
        min_field_pixels: smaller fields are dropped.
        marker_depth: 0, markers are the components of confident interior; > 0, they are the
            peaks of its depth at least this high, in pixels (module docstring, step 2).
        unclaimed_seeds: seed fields where no marker reaches (step 3). It finds the small
            fields of sharp maps; on a real model's softer maps it mostly adds false fields,
            so calibration decides.
        min_score: fields scoring less are dropped (step 6).
    """

    extent_threshold: float = 0.5
    marker_threshold: float = 0.5
    min_marker_pixels: int = 2
    min_field_pixels: int = 4
    marker_depth: float = 0.0
    unclaimed_seeds: bool = True
    min_score: float = 0.0

    def __post_init__(self) -> None:
        for name in ("extent_threshold", "marker_threshold", "min_score"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        for name in ("min_marker_pixels", "min_field_pixels"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "extent_threshold", float(self.extent_threshold))
        object.__setattr__(self, "marker_threshold", float(self.marker_threshold))
        if not self.marker_depth >= 0.0:
            raise ValueError(f"marker_depth must be >= 0, got {self.marker_depth!r}")
        object.__setattr__(self, "marker_depth", float(self.marker_depth))
        object.__setattr__(self, "unclaimed_seeds", bool(self.unclaimed_seeds))
        object.__setattr__(self, "min_score", float(self.min_score))

    def to_dict(self) -> dict[str, float]:
        """The parameters as plain floats (for checkpoints and JSON)."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> ExtractionParams:
        """Parameters from :meth:`to_dict`'s output; missing names take their defaults.

        Raises:
            ValueError: on an unknown name or a value out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown extraction parameters: {', '.join(unknown)}")
        return cls(**{name: values[name] for name in known if name in values})


#: The default parameters (the default argument of :func:`extract_fields`).
DEFAULT_PARAMS = ExtractionParams()


@dataclass(frozen=True, eq=False)
class ExtractedFields:
    """The fields found in one chip. Per-field arrays are indexed by label - 1.

    Attributes:
        labels: (H, W) int32; 0 no field, k > 0 the k-th field. Fields are disjoint and
            4-connected.
        scores: (K,) float32 in [0, 1]: mean extent x (1 - mean core boundary), module doc.
        pixel_counts: (K,) int64 pixels of each field.
        mean_extent: (K,) float32 mean ``P(extent)`` over each field.
        core_boundary: (K,) float32 mean ``P(boundary)`` over each field's core.
    """

    labels: np.ndarray
    scores: np.ndarray
    pixel_counts: np.ndarray
    mean_extent: np.ndarray
    core_boundary: np.ndarray

    @property
    def n_fields(self) -> int:
        """The number of fields K."""
        return len(self.scores)


@dataclass(frozen=True)
class LabelMatch(DetectionCounts):
    """Object-level agreement of a predicted with a truth label image at one IoU threshold.

    Counts only; :meth:`pooled` adds the counts of several chips, so precision, recall and F1
    of a data set are pooled over its chips rather than averaged.
    """

    tp: int
    n_predicted: int
    n_truth: int
    n_merged_truth: int
    n_merged_predictions: int
    n_split_truth: int
    iou_threshold: float = 0.5

    @classmethod
    def pooled(cls, matches: Iterable[LabelMatch]) -> LabelMatch:
        """The sum of the counts of several matches at one threshold (chips of a data set).

        No match at all pools to empty sets at IoU threshold 0.5 (F1 1).

        Raises:
            ValueError: when the matches were made at different IoU thresholds.
        """
        items = list(matches)
        thresholds = {m.iou_threshold for m in items}
        if len(thresholds) > 1:
            raise ValueError(f"matches made at different IoU thresholds: {sorted(thresholds)}")
        iou_threshold = thresholds.pop() if thresholds else 0.5
        return cls(
            tp=sum(m.tp for m in items),
            n_predicted=sum(m.n_predicted for m in items),
            n_truth=sum(m.n_truth for m in items),
            n_merged_truth=sum(m.n_merged_truth for m in items),
            n_merged_predictions=sum(m.n_merged_predictions for m in items),
            n_split_truth=sum(m.n_split_truth for m in items),
            iou_threshold=iou_threshold,
        )


# --------------------------------------------------------------------------------------------
# Extraction


@dataclass(frozen=True, eq=False)
class _Maps:
    """One chip's maps, checked and converted once (reused across a tuning grid)."""

    extent: np.ndarray  # float32, 0 where not usable
    boundary: np.ndarray  # float32, 0 where not usable
    usable: np.ndarray  # bool: valid and both probabilities finite
    share: np.ndarray  # float32 P(interior) / P(extent), 0 where P(extent) is 0 or not usable


def _prepare_maps(extent: np.ndarray, boundary: np.ndarray, valid: np.ndarray | None) -> _Maps:
    extent = np.asarray(extent)
    boundary = np.asarray(boundary)
    if extent.ndim != 2 or extent.shape != boundary.shape:
        raise ValueError(
            f"extent and boundary must be 2-D maps of one shape, got {extent.shape} and "
            f"{boundary.shape}"
        )
    usable = np.isfinite(extent) & np.isfinite(boundary)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != extent.shape:
            raise ValueError(f"valid has shape {valid.shape}, the maps {extent.shape}")
        usable &= valid.astype(bool, copy=False)
    extent = np.where(usable, extent, 0).astype(np.float32, copy=False)
    boundary = np.where(usable, boundary, 0).astype(np.float32, copy=False)
    interior = np.clip(extent - boundary, 0.0, None)
    share = np.divide(interior, extent, out=np.zeros_like(extent), where=extent > 0)
    return _Maps(extent=extent, boundary=boundary, usable=usable, share=share)


def extract_fields(
    extent: np.ndarray,
    boundary: np.ndarray,
    valid: np.ndarray | None = None,
    params: ExtractionParams = DEFAULT_PARAMS,
) -> ExtractedFields:
    """Separate field instances from a chip's extent and boundary probability maps.

    The rule and the score are in the module docstring.

    Args:
        extent: (H, W) ``P(interior) + P(boundary)`` per pixel.
        boundary: (H, W) ``P(boundary)`` per pixel.
        valid: (H, W) bool, False where the image has no data; nothing is labelled there.
            Pixels where either map is not finite are treated as invalid too.
        params: the thresholds of the rule.

    Returns:
        The label image and per-field scores and statistics.
    """
    return _extract(_prepare_maps(extent, boundary, valid), params)


def _extract(maps: _Maps, params: ExtractionParams) -> ExtractedFields:
    mask = maps.usable & (maps.extent >= params.extent_threshold)
    markers = _markers(mask, maps.share, params)
    labels = _flood(maps.boundary, markers, mask)
    leftover = mask & (labels == 0)
    if leftover.any():
        pieces, _ = ndi.label(leftover, structure=_FOUR_CONNECTED)
        labels = np.where(pieces > 0, pieces + labels.max(), labels)
    return scoring_at_least(_finish(labels, maps, params.min_field_pixels), params.min_score)


def scoring_at_least(found: ExtractedFields, min_score: float) -> ExtractedFields:
    """The fields scoring at least ``min_score``, renumbered 1..K in their order."""
    keep = found.scores >= min_score
    if keep.all():
        return found
    new_id = np.r_[0, np.cumsum(keep) * keep].astype(np.int32)
    return ExtractedFields(
        labels=new_id[found.labels],
        scores=found.scores[keep],
        pixel_counts=found.pixel_counts[keep],
        mean_extent=found.mean_extent[keep],
        core_boundary=found.core_boundary[keep],
    )


def _markers(mask: np.ndarray, share: np.ndarray, params: ExtractionParams) -> np.ndarray:
    """Marker image (0: none): confident interior (components or depth peaks), then seeds."""
    threshold = params.marker_threshold
    interior = mask & (share >= threshold)
    if params.marker_depth > 0:
        markers, n = _depth_peaks(interior, params.marker_depth)
        # the band of a marked field lies along its confident interior, not its peak
        components, _ = ndi.label(interior, structure=_FOUR_CONNECTED)
        marked = np.zeros(components.max() + 1, bool)
        marked[components[markers > 0]] = True
        marked[0] = False
        far = _beyond_reach(marked[components])
    else:
        markers, n, far = _interior_components(interior, params.min_marker_pixels)
    if not params.unclaimed_seeds:
        return markers
    unclaimed = mask & far & (share >= threshold / 2)
    unclaimed, n_unclaimed = ndi.label(unclaimed, structure=_FOUR_CONNECTED)
    if n_unclaimed:
        markers = np.where(unclaimed > 0, unclaimed + n, markers)
    return markers


def _interior_components(
    interior: np.ndarray, min_pixels: int
) -> tuple[np.ndarray, int, np.ndarray]:
    """Markers from confident-interior components; their count and the pixels beyond reach."""
    components, n = _interior_labels(interior)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    large = sizes >= min_pixels
    large[0] = False
    primary = large[components]
    far = _beyond_reach(primary)
    # a small component reaching past every larger marker's band is a small field's interior
    keep = large.copy()
    keep[components[far]] = True
    keep[0] = False
    markers = np.where(keep[components], components, 0)
    if not np.array_equal(keep, large):
        far = _beyond_reach(markers > 0)
    return markers, n, far


def _interior_labels(interior: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of the confident interior, thin ones joined across corners.

    The interior of a strip 3-4 px across is a line 1-2 px wide; where the strip is rotated,
    the line steps diagonally and falls apart into 4-connected pieces that touch only at
    corners. Two *thin* components (no pixel with all four neighbours in the component) that
    touch at a corner are one marker. Interiors of two different fields never touch at a
    corner on exact maps (each field's band lies between them), and joining only thin pieces
    keeps a noisy pixel in the band from chaining two wide fields together.
    """
    components, n = ndi.label(interior, structure=_FOUR_CONNECTED)
    if n < 2:
        return components, n
    core = _core(components)
    thin = np.ones(n + 1, bool)
    thin[components[core]] = False
    thin[0] = False
    pairs = []
    for a, b in ((components[:-1, :-1], components[1:, 1:]),
                 (components[:-1, 1:], components[1:, :-1])):  # fmt: skip
        corner = (a != b) & thin[a] & thin[b]
        pairs.append(np.stack([a[corner], b[corner]]))
    a, b = np.concatenate(pairs, axis=1)
    if not len(a):
        return components, n
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n + 1, n + 1))
    _, group = connected_components(graph, directed=False)
    # number the joined components 1..m in order of their first piece, 0 stays 0
    first = np.full(group.max() + 1, n + 1)
    np.minimum.at(first, group[1:], np.arange(1, n + 1))
    rank = np.argsort(np.argsort(first))
    renumber = np.r_[0, rank[group[1:]] + 1].astype(components.dtype)
    return renumber[components], len(np.unique(group[1:]))


def _depth_peaks(interior: np.ndarray, depth: float) -> tuple[np.ndarray, int]:
    """Markers at the peaks of the interior's depth at least ``depth`` px high; their count."""
    if not interior.any():
        return np.zeros(interior.shape, np.int32), 0
    distance = ndi.distance_transform_edt(interior)
    peaks = h_maxima(distance, depth).astype(bool) & interior
    markers, n = ndi.label(peaks, structure=_EIGHT_CONNECTED)
    return markers, n


def _flood(elevation: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``watershed(elevation, markers, mask=mask, connectivity=1)``, about twice as fast.

    The watershed queues every marker pixel, but a marker pixel whose 4 neighbours are all
    marker or off the mask can never give its label away (marker components never touch one
    another). Leaving those inner pixels out of the markers and the mask, and putting them
    back after, gives the same labels: the queue pops the other pixels in the same order.
    (Where marker pixels tie in elevation, skimage pops them in an order that depends on its
    heap's layout, so with ties either result is one of the watershed's valid answers.)
    """
    has = markers > 0
    open_ = mask & ~has
    inner = has.copy()
    inner[1:] &= ~open_[:-1]
    inner[:-1] &= ~open_[1:]
    inner[:, 1:] &= ~open_[:, :-1]
    inner[:, :-1] &= ~open_[:, 1:]
    flooded = watershed(elevation, np.where(inner, 0, markers), mask=mask & ~inner, connectivity=1)
    return np.where(inner, markers, flooded)


def _beyond_reach(markers: np.ndarray) -> np.ndarray:
    """Pixels more than MARKER_REACH px (chessboard distance) from every marker pixel.

    A square dilation as shifted ORs along each axis: much faster than a maximum filter.
    """
    near = markers.copy()
    for k in range(1, MARKER_REACH + 1):
        near[k:] |= markers[:-k]
        near[:-k] |= markers[k:]
    rows = near.copy()
    for k in range(1, MARKER_REACH + 1):
        near[:, k:] |= rows[:, :-k]
        near[:, :-k] |= rows[:, k:]
    return ~near


def _finish(labels: np.ndarray, maps: _Maps, min_field_pixels: int) -> ExtractedFields:
    """Drop small fields, number the rest 1..K and compute their scores."""
    flat = labels.ravel()
    counts = np.bincount(flat)
    keep = counts >= min_field_pixels
    keep[0] = False
    new_id = np.cumsum(keep) * keep
    labels = new_id[labels].astype(np.int32)
    k = int(keep.sum())
    flat = labels.ravel()

    pixel_counts = np.bincount(flat, minlength=k + 1)[1:].astype(np.int64)
    extent_sum = np.bincount(flat, weights=maps.extent.ravel(), minlength=k + 1)[1:]
    core = _core(labels).ravel()
    core_counts = np.bincount(flat[core], minlength=k + 1)[1:]
    boundary = maps.boundary.ravel()
    core_sum = np.bincount(flat[core], weights=boundary[core], minlength=k + 1)[1:]
    thin = core_counts == 0  # at most 2 px across: all edge by nature, no penalty
    core_counts = np.where(thin, 1, core_counts)

    mean_extent = np.clip(extent_sum / pixel_counts, 0.0, 1.0)  # counts >= 1
    core_boundary = np.clip(core_sum / core_counts, 0.0, 1.0)
    scores = mean_extent * (1.0 - core_boundary)
    return ExtractedFields(
        labels=labels,
        scores=scores.astype(np.float32),
        pixel_counts=pixel_counts,
        mean_extent=mean_extent.astype(np.float32),
        core_boundary=core_boundary.astype(np.float32),
    )


def _core(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels whose 4 neighbours (inside the image) carry the same label."""
    core = labels > 0
    core[1:] &= labels[1:] == labels[:-1]
    core[:-1] &= labels[:-1] == labels[1:]
    core[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    core[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    return core


# --------------------------------------------------------------------------------------------
# Matching


@dataclass(frozen=True, eq=False)
class _Truth:
    """A truth label image reduced to the counted pixels, dense ids 1..n (0 background)."""

    shape: tuple[int, ...]
    counted: np.ndarray | None  # bool (H, W) pixels that count, None: all
    dense: np.ndarray  # (n_counted,) int64
    n: int
    area: np.ndarray  # (n + 1,) int64 pixels per dense id


def _prepare_truth(truth_labels: np.ndarray, ignore: np.ndarray | None) -> _Truth:
    truth = np.asarray(truth_labels)
    if truth.ndim != 2 or not np.issubdtype(truth.dtype, np.integer):
        raise ValueError("truth_labels must be a 2-D integer label image")
    if truth.size and truth.min() < -1:
        raise ValueError("truth_labels must be -1 (ignore), 0 (no field) or a field id > 0")
    counted = truth >= 0
    if ignore is not None:
        ignore = np.asarray(ignore)
        if ignore.shape != truth.shape:
            raise ValueError(f"ignore has shape {ignore.shape}, the labels {truth.shape}")
        counted &= ~ignore.astype(bool, copy=False)
    everything = bool(counted.all())
    values = truth.ravel() if everything else truth[counted]
    dense, n = _dense_ids(values)
    area = np.bincount(dense, minlength=n + 1)
    return _Truth(
        shape=truth.shape,
        counted=None if everything else counted,
        dense=dense,
        n=n,
        area=area,
    )


def _dense_ids(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels >= 0 renumbered 0, 1..n in ascending order of their value (0 stays 0)."""
    values = values.astype(np.int64, copy=False)
    if not values.size:
        return values, 0
    top = int(values.max())
    if top <= max(4 * values.size, 1 << 16):
        present = np.bincount(values, minlength=top + 1) > 0
        present[0] = False
        lookup = np.cumsum(present) * present
        return lookup[values], int(present.sum())
    ids, dense = np.unique(values, return_inverse=True)
    if ids[0] != 0:
        dense = dense + 1
    return dense.astype(np.int64), int(np.count_nonzero(ids))


def label_f1(
    predicted_labels: np.ndarray,
    truth_labels: np.ndarray,
    *,
    ignore: np.ndarray | None = None,
    iou_threshold: float = 0.5,
) -> LabelMatch:
    """Object P/R/F1 and merged fields of a predicted against a truth label image.

    The rules are those of :mod:`fieldseg.object_matching`, with pixel counts as areas: a
    predicted field matches a truth field when their IoU > ``iou_threshold`` (strictly),
    one to one (at thresholds below 0.5, conflicts are resolved greedily by IoU as there);
    a truth field is merged when one predicted field holds more than half of it and more than
    half of another truth field; a truth field is split when two or more predicted fields
    each lie more than half inside it. With both sets empty precision, recall and F1 are 1.

    Areas come from one contingency table of (predicted, truth) pixel pairs, so the cost is
    a few passes over the pixels whatever the number of fields.

    Args:
        predicted_labels: (H, W) integer labels, 0 no field, k > 0 a field.
        truth_labels: (H, W) integer labels, -1 ignore, 0 no field, k > 0 a field.
        ignore: (H, W) bool, True where pixels do not count.
        iou_threshold: the match threshold in [0, 1].

    Returns:
        The counts at ``iou_threshold``. Ignored pixels (``ignore`` True or truth -1) are
        unknown land, scored as ``fieldseg evaluate`` scores land without labels: a predicted
        field counts when more than half of it lies on known pixels, or when its overlap with
        the truth fields reaches :data:`~fieldseg.object_matching.SPARSE_OVERLAP_SHARE` of its
        own area or of a truth field's area (others may be right about undrawn fields); a
        counted field's area is all of its pixels, so a blob over a drawn field and the land
        around it does not match it. Truth fields are their known pixels; one with none left
        is not counted.
    """
    return _match(predicted_labels, _prepare_truth(truth_labels, ignore), iou_threshold)


def _match(predicted_labels: np.ndarray, truth: _Truth, iou_threshold: float) -> LabelMatch:
    threshold = round(float(iou_threshold), 10)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold!r}")
    predicted = np.asarray(predicted_labels)
    if not np.issubdtype(predicted.dtype, np.integer):
        raise ValueError("predicted_labels must be an integer label image")
    if predicted.shape != truth.shape:
        raise ValueError(
            f"predicted_labels has shape {predicted.shape}, truth_labels {truth.shape}"
        )
    values = predicted.ravel()
    if truth.counted is not None:
        counted = truth.counted.ravel()
        values = np.where(counted | (values > 0), values, 0)  # any value where nothing counts
    if values.size and values.min() < 0:
        raise ValueError("predicted_labels must be 0 (no field) or a field id > 0")
    whole, n_pred = _dense_ids(values)
    pred_area = np.bincount(whole, minlength=n_pred + 1)  # unknown pixels too
    pred = whole if truth.counted is None else whole[counted]

    both = (pred > 0) & (truth.dense > 0)
    key = pred[both] * (truth.n + 1) + truth.dense[both]
    if (n_pred + 1) * (truth.n + 1) <= 4 * max(key.size, 1 << 16):
        table = np.bincount(key, minlength=(n_pred + 1) * (truth.n + 1))
        key = np.flatnonzero(table)
        inter = table[key]
    else:
        key, inter = np.unique(key, return_counts=True)
    p, t = np.divmod(key, truth.n + 1)
    if truth.counted is not None:  # predictions mostly on unknown land may be right: left out
        known = np.bincount(pred, minlength=n_pred + 1)
        shared = np.bincount(p, weights=inter, minlength=n_pred + 1)
        scored = (known > MAJORITY * pred_area) | (shared >= SPARSE_OVERLAP_SHARE * pred_area)
        scored[p[inter >= SPARSE_OVERLAP_SHARE * truth.area[t]]] = True
        scored[0] = False
        p, t, inter = p[scored[p]], t[scored[p]], inter[scored[p]]
        n_scored = int(np.count_nonzero(scored))
    else:
        n_scored = n_pred
    iou = inter / (pred_area[p] + truth.area[t] - inter)

    above = iou > threshold
    if threshold >= MAJORITY:
        tp = int(np.count_nonzero(above))  # IoU > 1/2: each field in at most one such pair
    else:
        order = np.flatnonzero(above)
        order = order[np.lexsort((t[order], p[order], -iou[order]))]
        tp = int(np.count_nonzero(_greedy_keep(p[order], t[order])))

    inside_truth = inter > MAJORITY * pred_area[p]
    pieces = np.bincount(t[inside_truth], minlength=truth.n + 1)
    holds = inter > MAJORITY * truth.area[t]
    held = np.bincount(p[holds], minlength=n_pred + 1)
    merging = held >= 2
    return LabelMatch(
        tp=tp,
        n_predicted=n_scored,
        n_truth=truth.n,
        n_merged_truth=int(np.count_nonzero(holds & merging[p])),
        n_merged_predictions=int(np.count_nonzero(merging)),
        n_split_truth=int(np.count_nonzero(pieces >= 2)),
        iou_threshold=threshold,
    )


# --------------------------------------------------------------------------------------------
# Tuning


def tune_params(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]],
    grid: Mapping[str, Sequence[float]] = DEFAULT_GRID,
    *,
    base: ExtractionParams = DEFAULT_PARAMS,
    iou_threshold: float = 0.5,
) -> tuple[ExtractionParams, float]:
    """The extraction parameters of a grid that maximise object F1 pooled over chips.

    Every combination of the grid's values is tried (parameters not in the grid keep their
    value in ``base``); F1 is pooled: ``2 sum(TP) / (sum(n_predicted) + sum(n_truth))`` over
    the chips. Each chip's maps and truth are checked and converted once for the whole grid.
    On a tie the combination closest to ``base`` wins (summed absolute differences of the
    grid's parameters), so values move away from the current ones only for a better F1; then
    the first in grid order (values in the order given, the last parameter varying fastest).

    Args:
        samples: per chip ``(extent, boundary, valid, truth_labels)``; ``valid`` may be None,
            truth labels may carry -1 where they are unknown. Invalid pixels (``valid`` False
            or a map not finite) and truth -1 are unknown land, scored as :func:`label_f1`
            scores ``ignore`` (as ``fieldseg evaluate`` scores land without labels).
        grid: parameter name -> values to try.
        base: the values of the parameters not in ``grid``.
        iou_threshold: the match threshold of the object F1.

    Returns:
        The best parameters and their pooled F1.

    Raises:
        ValueError: on an empty grid or sample list, or an unknown parameter name.
    """
    known = {f.name for f in fields(ExtractionParams)}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ValueError(f"unknown extraction parameters in grid: {', '.join(unknown)}")
    names = list(grid)
    if not samples or any(len(grid[name]) == 0 for name in names):
        raise ValueError("tune_params needs at least one sample and one value per parameter")
    prepared = []
    for extent, boundary, valid, truth_labels in samples:
        maps = _prepare_maps(extent, boundary, valid)
        prepared.append((maps, _prepare_truth(truth_labels, ~maps.usable)))

    # fields are extracted once per combination of the other parameters; each min_score only
    # drops fields from them (the same result as extracting with it, far cheaper)
    min_scores = grid.get("min_score", (base.min_score,))
    others = [name for name in names if name != "min_score"]
    best: tuple[float, float, ExtractionParams] | None = None  # (-F1, distance, params)
    for values in itertools.product(*(grid[name] for name in others)):
        extracted_with = replace(base, **dict(zip(others, values, strict=True)), min_score=0.0)
        found = [_extract(maps, extracted_with) for maps, _ in prepared]
        for min_score in min_scores:
            params = replace(extracted_with, min_score=min_score)
            pooled = LabelMatch.pooled(
                _match(scoring_at_least(f, min_score).labels, truth, iou_threshold)
                for f, (_, truth) in zip(found, prepared, strict=True)
            )
            distance = sum(abs(getattr(params, n) - getattr(base, n)) for n in names)
            if best is None or (-pooled.f1, distance) < best[:2]:
                best = (-pooled.f1, distance, params)
    assert best is not None
    return best[2], -best[0]
