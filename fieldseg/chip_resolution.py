"""One chip's instances -> one label image: every pixel to at most one instance, by evidence.

Instance models return overlapping soft masks: a mask leaks into its neighbour, a field is
detected twice. Before chips are stitched, each chip's instances are made disjoint:

1. Instances scoring below the threshold are dropped; nothing is predicted on nodata pixels.
2. A pixel is claimed by every instance whose probability there is at least 0.5 and within
   ``margin`` of the highest probability there (near-ties are claims; a clear winner decides).
3. A contested pixel goes to the claimant it lies deepest inside: the farthest (8-connected)
   from where another instance's claim begins, up to ``max_depth`` pixels; then to the more
   probable one, then the higher score. This undoes leakage: a mask that spills two pixels into
   its neighbour holds those pixels only at depth 1 or 2, while the neighbour holds them deeper.
4. An instance left with almost none of its near-tie claims (a strip thinner than its
   neighbour's leakage) takes back its innermost ones: its detection says it exists, its
   depth where. A detection clearly beaten everywhere (a weak one nested in a sure one) is not.
5. Before all this, an instance whose mask nearly repeats a higher-scoring one's (IoU above
   ``duplicate_share``) is a duplicate detection and dropped; at the end, instances left with
   fewer than ``min_pixels`` pixels are dropped.

See docs/formats.md ("Stitching") for how the chips are then joined into fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fieldseg.models.base import ChipPrediction

#: Probability at which a mask claims a pixel.
MASK_THRESHOLD = 0.5


@dataclass
class ResolvedChip:
    """A chip's instances made disjoint.

    Attributes:
        labels: (H, W) int32: 0 background, k > 0 the k-th kept instance.
        probability: (H, W) float32: the probability of the pixel's instance there, or for
            background one minus the highest instance probability (the evidence for "no field").
        scores: (K,) float32 instance confidences.
        classes: (K,) int64 category ids.
    """

    labels: np.ndarray
    probability: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def empty_chip(height: int, width: int) -> ResolvedChip:
    """A chip without instances (all background, certain)."""
    return ResolvedChip(
        labels=np.zeros((height, width), np.int32),
        probability=np.ones((height, width), np.float32),
        scores=np.zeros(0, np.float32),
        classes=np.zeros(0, np.int64),
    )


def resolve_chip(
    prediction: ChipPrediction,
    valid: np.ndarray,
    *,
    score_threshold: float = 0.5,
    min_pixels: int = 4,
    margin: float = 0.1,
    duplicate_share: float = 0.8,
    max_depth: int = 6,
) -> ResolvedChip:
    """Make one chip's instances disjoint (see the module docstring for the rule).

    Works on the list of (pixel, instance, probability) claims rather than on the dense
    (N, H, W) stack: a chip holds hundreds of small masks, each zero almost everywhere.

    Args:
        prediction: the model's instances for the chip.
        valid: (H, W) bool, False on nodata and padding.
        score_threshold: instances scoring less are dropped.
        min_pixels: instances left smaller are dropped.
        margin: probabilities within this of the highest at a pixel are near-ties.
        duplicate_share: an instance whose mask has an IoU above this with a higher-scoring
            instance's mask is a duplicate and dropped.
        max_depth: depths inside a mask are told apart up to this many pixels.
    """
    height, width = valid.shape
    keep = (prediction.scores >= score_threshold).nonzero().flatten()
    if keep.numel() == 0:
        return empty_chip(height, width)
    every = keep.numel() == len(prediction.scores)
    masks = prediction.masks.detach().float().cpu()
    masks = (masks if every else masks[keep]).numpy().reshape(keep.numel(), -1)
    scores = prediction.scores[keep].detach().float().cpu().numpy()
    classes = prediction.labels[keep].detach().cpu().numpy().astype(np.int64)
    flat_valid = valid.ravel()
    pmax = masks.max(axis=0) * flat_valid
    where = np.flatnonzero(masks >= MASK_THRESHOLD)  # 1-D: far faster than a 2-D nonzero
    inst, pixel = np.divmod(where, height * width)
    claims = _Claims(pixel, inst, masks[inst, pixel].astype(np.float64))
    if not flat_valid.all():
        claims = claims.where(flat_valid[pixel])
    n = len(scores)
    claims = claims.where(~_duplicates(claims, scores, duplicate_share)[claims.instance])
    depth = _depths(claims, n, height, width, max_depth)
    labels, near = _assign(claims, depth, scores, height * width, margin)
    # a clearly beaten claim is no sign of being swallowed: only near ties count there
    _protect_swallowed(labels, claims.where(near), depth[near], n)
    kept_area = np.bincount(labels[labels > 0] - 1, minlength=n)
    labels[(labels > 0) & (kept_area < min_pixels)[np.maximum(labels - 1, 0)]] = 0
    kept_area = np.bincount(labels[labels > 0] - 1, minlength=n)
    survivors = np.flatnonzero(kept_area > 0)
    renumber = np.zeros(n + 1, np.int32)
    renumber[survivors + 1] = np.arange(1, len(survivors) + 1, dtype=np.int32)
    probability = (1.0 - pmax).astype(np.float32)
    chosen = labels[claims.pixel] == claims.instance + 1
    probability[claims.pixel[chosen]] = claims.value[chosen]
    return ResolvedChip(
        labels=renumber[labels].reshape(height, width),
        probability=probability.reshape(height, width),
        scores=scores[survivors].astype(np.float32),
        classes=classes[survivors],
    )


@dataclass
class _Claims:
    """Pixels claimed by instances (probability >= 0.5), one entry per (pixel, instance)."""

    pixel: np.ndarray
    instance: np.ndarray
    value: np.ndarray

    def where(self, keep: np.ndarray) -> _Claims:
        return _Claims(self.pixel[keep], self.instance[keep], self.value[keep])


def _duplicates(claims: _Claims, scores: np.ndarray, share: float) -> np.ndarray:
    """(N,) True for instances whose mask is nearly (IoU > ``share``) a higher-scoring one's."""
    n = len(scores)
    duplicate = np.zeros(n, bool)
    if len(claims.pixel) == 0:
        return duplicate
    own = np.bincount(claims.instance, minlength=n)
    order = np.argsort(claims.pixel, kind="stable")
    pixel, instance = claims.pixel[order], claims.instance[order]
    pairs = []
    for offset in (1, 2, 3):  # up to four claimants of one pixel are compared
        same = pixel[offset:] == pixel[:-offset]
        a, b = instance[:-offset][same], instance[offset:][same]
        pairs.append(np.stack([a, b]))
        pairs.append(np.stack([b, a]))
    a, b = np.concatenate(pairs, axis=1)
    if a.size == 0:
        return duplicate
    keys, common = np.unique(a.astype(np.int64) * n + b, return_counts=True)
    a, b = keys // n, keys % n
    stronger = (scores[a] > scores[b]) | ((scores[a] == scores[b]) & (a < b))
    union = own[a] + own[b] - common
    inside = stronger & (common > share * union)
    duplicate[b[inside]] = True
    return duplicate


def _depths(claims: _Claims, n: int, height: int, width: int, cap: int) -> np.ndarray:
    """Each claim's depth inside its own mask, counted from where another mask takes over.

    Depth is the 8-connected (chessboard) distance to the nearest pixel outside the mask that
    another instance claims, capped. Background and the chip edge do not end a mask here: a
    mask leaks into its neighbours, never into background, so only edges against other claims
    tell how far a pixel lies from the place where one field turns into the next.
    """
    depth = np.full(len(claims.pixel), cap, np.int64)
    shared = np.bincount(claims.pixel, minlength=height * width) > 1
    involved = np.zeros(n, bool)
    involved[claims.instance[shared[claims.pixel]]] = True
    if not involved.any():
        return depth  # no pixel is contested: depths are never compared
    subset = involved[claims.instance]
    depth[subset] = _depths_of(
        _Claims(claims.pixel[subset], claims.instance[subset], claims.value[subset]),
        claims.pixel,
        height,
        width,
        cap,
    )
    return depth


def _depths_of(
    claims: _Claims, all_pixels: np.ndarray, height: int, width: int, cap: int
) -> np.ndarray:
    keys = claims.instance.astype(np.int64) * (height * width) + claims.pixel
    order = np.argsort(keys)
    sorted_keys = keys[order]
    claimed = np.zeros(height * width, bool)
    claimed[all_pixels] = True
    ys, xs = claims.pixel // width, claims.pixel % width
    neighbours = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
            wanted = keys + dy * width + dx
            at = np.minimum(np.searchsorted(sorted_keys, wanted), len(keys) - 1)
            own = (sorted_keys[at] == wanted) & inside
            other = inside & ~own & claimed[np.where(inside, ny * width + nx, 0)]
            neighbours.append((np.where(own, order[at], -1), other))
    depth = np.full(len(keys), cap, np.int64)
    for _ in range(cap):
        nearest = np.full(len(keys), cap, np.int64)
        for index, other in neighbours:
            value = np.where(index >= 0, depth[np.maximum(index, 0)], cap)
            nearest = np.minimum(nearest, np.where(other, 0, value))
        updated = np.minimum(nearest + 1, cap)
        if np.array_equal(updated, depth):
            break
        depth = updated
    return depth


def _protect_swallowed(
    labels: np.ndarray, claims: _Claims, depth: np.ndarray, n: int, share: float = 0.25
) -> None:
    """Give an instance left with almost none of its mask its innermost pixels back.

    A field thinner than its neighbours' leakage (a narrow strip along a road, say) is claimed
    by a neighbour everywhere, and the neighbour lies as deep there as the strip does. The
    strip's own detection is evidence that it exists, and its innermost pixels (its deepest
    level and the one above, not shallower than 3) are where it lies: an instance keeping less
    than ``share`` of its mask takes those back.
    """
    if len(claims.pixel) == 0:
        return
    own = np.bincount(claims.instance, minlength=n)
    kept = np.bincount(labels[labels > 0] - 1, minlength=n)
    swallowed = (kept < share * own) & (own > 0)
    if not swallowed.any():
        return
    deepest = np.zeros(n, np.int64)
    np.maximum.at(deepest, claims.instance, depth)
    # the deepest level and the one above it, but never shallower than 3 pixels: a 1 px strip
    # lies at depth 3 between two neighbours' 2 px leaks, and takes only that
    level = np.maximum(deepest - 1, np.minimum(deepest, 3))
    inner = swallowed[claims.instance] & (depth >= level[claims.instance])
    labels[claims.pixel[inner]] = claims.instance[inner] + 1


def _assign(
    claims: _Claims, depth: np.ndarray, scores: np.ndarray, n_pixels: int, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Labels by the claim rule, and which claims are near ties.

    Returns:
        (n_pixels,) int64 labels, instance + 1 (0 background); and per claim (in the order
        given) whether it lies within ``margin`` of the strongest claim on its pixel.
    """
    labels = np.zeros(n_pixels, np.int64)
    if len(claims.pixel) == 0:
        return labels, np.zeros(0, bool)
    rank = claims.value + 1e-6 * scores[claims.instance]  # the score breaks exact ties
    order = np.lexsort((-rank, claims.pixel))  # by pixel, strongest claim first
    pixel, rank = claims.pixel[order], rank[order]
    label, depth = claims.instance[order] + 1, depth[order]
    first = np.r_[True, pixel[1:] != pixel[:-1]]
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    near = rank >= rank[starts][group] - margin  # near-ties of the strongest claim
    # among near-ties, the claim deepest inside its own mask wins, then the strongest
    best = np.lexsort((-rank, -np.where(near, depth, -1), group))
    winners = best[np.r_[True, group[best][1:] != group[best][:-1]]]
    labels[pixel[winners]] = label[winners]
    near_in_given_order = np.empty_like(near)
    near_in_given_order[order] = near
    return labels, near_in_given_order
