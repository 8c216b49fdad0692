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

import numba
import numpy as np
import torch

from fieldseg.models.base import ChipPrediction
from fieldseg.models.boxed_masks import BoxedMasks

#: Probability at which a mask claims a pixel.
MASK_THRESHOLD = 0.5
#: Share of mask rows holding anything above which one dense pass finds the maxima.
DENSE_ROW_SHARE = 0.5
#: Share of its near-tie claims below which an instance counts as swallowed (rule 4).
SWALLOWED_SHARE = 0.25
#: The score's weight in a claim's rank: it only breaks exact ties of probability.
SCORE_TIE_WEIGHT = np.float32(1e-6)


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
    (N, H, W) stack: a chip holds hundreds of small masks, each zero almost everywhere. Only
    pixels claimed by two or more instances need the rule's comparisons; the rest go to their
    one claimant. The rule runs as compiled loops over the claims (numba).

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
    scores = prediction.scores[keep].detach().float().cpu().numpy()
    classes = prediction.labels[keep].detach().cpu().numpy().astype(np.int64)
    flat_valid = valid.ravel()
    kept = None if every else keep.cpu().numpy()
    if isinstance(prediction.masks, BoxedMasks):
        pmax, claims = _boxed_claims(prediction.masks, kept)
    else:
        pmax, claims = _claims(prediction.masks.detach(), kept)
    pmax = pmax * flat_valid
    if not flat_valid.all():
        claims = claims.where(flat_valid[claims.pixel])
    labels, probability, survivors = _resolve(
        claims.pixel, claims.instance, claims.value, pmax, scores, height, width,
        margin, duplicate_share, max_depth, min_pixels,
    )  # fmt: skip
    return ResolvedChip(
        labels=labels.reshape(height, width),
        probability=probability.reshape(height, width),
        scores=scores[survivors].astype(np.float32),
        classes=classes[survivors],
    )


@dataclass
class _Claims:
    """Pixels claimed by instances (probability >= 0.5), one entry per (pixel, instance).

    Ordered by instance, then pixel (the order ties are broken in).
    """

    pixel: np.ndarray
    instance: np.ndarray
    value: np.ndarray

    def where(self, keep: np.ndarray) -> _Claims:
        return _Claims(self.pixel[keep], self.instance[keep], self.value[keep])


def _claims(masks: torch.Tensor, keep: np.ndarray | None) -> tuple[np.ndarray, _Claims]:
    """The highest probability at each pixel, and the claims, of the kept masks.

    Each mask is zero outside a few rows, so one pass (multithreaded, or on the GPU where the
    masks are) finds every mask's rows that hold anything, and the rest works on those rows
    alone: only they are copied to the CPU.

    Args:
        masks: (N, H, W) probabilities, on any device.
        keep: the indices of the kept masks (None: all).

    Returns:
        (H * W,) float32 highest kept probability, and the claims (instances numbered among
        the kept masks).
    """
    masks = masks.float()
    _, height, width = masks.shape
    row_peak = torch.amax(masks, dim=2).cpu().numpy()
    if keep is not None:
        row_peak = row_peak[keep]
    source = np.arange(len(row_peak)) if keep is None else keep
    # probabilities are never negative: a row peaking at 0 is empty (a NaN row is not)
    instance, row = np.nonzero(row_peak != 0)
    if len(instance) > DENSE_ROW_SHARE * row_peak.size:  # busy rows: one dense pass is cheaper
        kept = masks if keep is None else masks[torch.from_numpy(keep).to(masks.device)]
        pmax = torch.amax(kept, dim=0).cpu().numpy().ravel()
        instance, row = np.nonzero(~(row_peak < MASK_THRESHOLD))
        rows = _rows(masks, source[instance], row)
    else:
        rows = _rows(masks, source[instance], row)
        pmax = _row_maxima(rows, row, height).ravel()
    where = np.flatnonzero(rows >= MASK_THRESHOLD)
    entry, column = np.divmod(where, width)
    claims = _Claims(
        row[entry] * width + column,
        instance[entry],
        rows.ravel()[where].astype(np.float64),
    )
    return pmax, claims


def _boxed_claims(masks: BoxedMasks, keep: np.ndarray | None) -> tuple[np.ndarray, _Claims]:
    """:func:`_claims` of masks stored inside their boxes: the same maxima and claims.

    The kept crops are read as one flat array, so the cost follows the masks' area, not
    N x H x W.
    """
    height, width = masks.height, masks.width
    pmax = np.zeros(height * width, np.float32)
    kept = masks if keep is None else masks.select(keep)
    if len(kept) == 0:
        empty = np.zeros(0, np.int64)
        return pmax, _Claims(empty, empty, np.zeros(0, np.float64))
    boxes = kept.boxes.cpu().numpy().astype(np.int64)
    values = kept.values.detach().float().cpu().numpy()
    pixel, instance, value = _boxed_claim_arrays(values, boxes, width, pmax)
    return pmax, _Claims(pixel, instance, value)


def _rows(masks: torch.Tensor, instance: np.ndarray, row: np.ndarray) -> np.ndarray:
    """(R, W) row ``row[k]`` of mask ``instance[k]``, as a numpy array."""
    if masks.device.type == "cpu":
        return masks.numpy()[instance, row]
    at = torch.from_numpy(instance).to(masks.device), torch.from_numpy(row).to(masks.device)
    return masks[at].cpu().numpy()


def _row_maxima(rows: np.ndarray, row: np.ndarray, height: int) -> np.ndarray:
    """(height, W) element-wise maxima of ``rows`` (R, W) grouped by ``row``, 0 elsewhere.

    The k-th rows of every group are merged at once (no row twice in one step), so the loop
    runs as often as the most masks reaching one row.
    """
    peak = np.zeros((height, rows.shape[1]), rows.dtype)
    if len(row) == 0:
        return peak
    order = np.argsort(row, kind="stable")
    index = np.arange(len(row))
    first = np.r_[True, row[order][1:] != row[order][:-1]]
    level = index - np.maximum.accumulate(np.where(first, index, 0))  # k-th on its row
    by_level = order[np.argsort(level, kind="stable")]
    ends = np.cumsum(np.bincount(level))
    for start, end in zip(np.r_[0, ends[:-1]].tolist(), ends.tolist(), strict=True):
        entries = by_level[start:end]
        at = row[entries]
        peak[at] = np.maximum(peak[at], rows[entries])
    return peak


# -- compiled kernels ---------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _boxed_claim_arrays(
    values: np.ndarray, boxes: np.ndarray, width: int, pmax: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The claims of masks stored as the crops of ``boxes``, laid end to end in ``values``.

    Fills ``pmax`` (the highest value at each pixel, in place) and returns the claims' pixels,
    instances and values, by instance then pixel.
    """
    n_claims = 0
    for v in values:
        if v >= MASK_THRESHOLD:
            n_claims += 1
    pixel = np.empty(n_claims, np.int64)
    instance = np.empty(n_claims, np.int64)
    value = np.empty(n_claims, np.float64)
    at = 0
    found = 0
    for i in range(boxes.shape[0]):
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        for y in range(y0, y1):
            for x in range(x0, x1):
                v = values[at]
                at += 1
                p = y * width + x
                if v > pmax[p]:
                    pmax[p] = v
                if v >= MASK_THRESHOLD:
                    pixel[found] = p
                    instance[found] = i
                    value[found] = v
                    found += 1
    return pixel, instance, value


@numba.njit(cache=True, nogil=True)
def _resolve(
    pixel: np.ndarray,
    instance: np.ndarray,
    value: np.ndarray,
    pmax: np.ndarray,
    scores: np.ndarray,
    height: int,
    width: int,
    margin: float,
    duplicate_share: float,
    max_depth: int,
    min_pixels: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The module docstring's rule over the claims (ordered by instance, then pixel).

    Returns the (H * W,) labels (the survivors numbered 1..), the (H * W,) probability of
    each pixel's instance (background: 1 - ``pmax``) and the kept instances' indices.
    """
    n = len(scores)
    n_pixels = height * width
    on_pixel = _claims_per_pixel(pixel, n_pixels)
    order = _contested_order(pixel, on_pixel)
    duplicate = _duplicates(pixel, instance, order, scores, n, duplicate_share)
    if duplicate.any():
        alive = np.empty(len(pixel), np.bool_)
        for j in range(len(pixel)):
            alive[j] = not duplicate[instance[j]]
        pixel, instance, value = pixel[alive], instance[alive], value[alive]
        on_pixel = _claims_per_pixel(pixel, n_pixels)
        order = _contested_order(pixel, on_pixel)
    depth = _depths(pixel, instance, order, on_pixel, n, height, width, max_depth)
    labels, near = _assign(pixel, instance, value, order, depth, scores, n_pixels, margin)
    if len(order):  # uncontested, every instance keeps all its claims: none is swallowed
        _protect_swallowed(labels, pixel, instance, near, depth, n)
    # instances left too small are dropped; the rest are numbered 1.. in order
    area = np.zeros(n + 1, np.int64)
    for p in range(n_pixels):
        area[labels[p]] += 1
    number = np.zeros(n + 1, np.int32)
    survivors = np.empty(n, np.int64)
    kept = 0
    for i in range(1, n + 1):
        if area[i] >= min_pixels and area[i] > 0:
            kept += 1
            number[i] = kept
            survivors[kept - 1] = i - 1
    probability = np.empty(n_pixels, np.float32)
    out = np.empty(n_pixels, np.int32)
    for p in range(n_pixels):
        probability[p] = np.float32(1.0) - pmax[p]
        out[p] = number[labels[p]]
    for j in range(len(pixel)):
        p = pixel[j]
        if labels[p] == instance[j] + 1 and out[p] > 0:
            probability[p] = value[j]
    return out, probability, survivors[:kept]


@numba.njit(cache=True, nogil=True)
def _claims_per_pixel(pixel: np.ndarray, n_pixels: int) -> np.ndarray:
    counts = np.zeros(n_pixels, np.int32)
    for p in pixel:
        counts[p] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def _contested_order(pixel: np.ndarray, on_pixel: np.ndarray) -> np.ndarray:
    """The claims on pixels claimed more than once, by pixel, then instance (a counting sort)."""
    n_pixels = len(on_pixel)
    start = np.zeros(n_pixels + 1, np.int64)
    for p in range(n_pixels):
        start[p + 1] = start[p] + (on_pixel[p] if on_pixel[p] > 1 else 0)
    order = np.empty(start[n_pixels], np.int64)
    for j in range(len(pixel)):
        p = pixel[j]
        if on_pixel[p] > 1:
            order[start[p]] = j
            start[p] += 1
    return order


@numba.njit(cache=True, nogil=True)
def _duplicates(
    pixel: np.ndarray,
    instance: np.ndarray,
    order: np.ndarray,
    scores: np.ndarray,
    n: int,
    share: float,
) -> np.ndarray:
    """(N,) True for instances whose mask is nearly (IoU > ``share``) a higher-scoring one's.

    Masks meet only on contested pixels; up to four claimants of one pixel are compared.
    The pixels two masks share are counted in a hash table keyed by the pair.
    """
    duplicate = np.zeros(n, np.bool_)
    if len(order) == 0:
        return duplicate
    own = np.zeros(n, np.int64)
    for i in instance:
        own[i] += 1
    # pair -> pixels shared: open addressing with Fibonacci hashing, grown when half full
    bits = 10
    keys = np.full(1 << bits, -1, np.int64)
    counts = np.zeros(1 << bits, np.int64)
    n_keys = 0
    for k in range(len(order)):
        for offset in range(1, 4):
            if k + offset >= len(order) or pixel[order[k + offset]] != pixel[order[k]]:
                break
            if 2 * (n_keys + 1) > len(keys):
                keys, counts = _rehashed(keys, counts, bits + 1)
                bits += 1
            key = instance[order[k]] * n + instance[order[k + offset]]  # a < b
            slot = _slot(keys, key, bits)
            if keys[slot] == -1:
                keys[slot] = key
                n_keys += 1
            counts[slot] += 1
    for slot in range(len(keys)):
        if keys[slot] < 0:
            continue
        a, b = keys[slot] // n, keys[slot] % n
        common = counts[slot]
        weaker = b if scores[a] >= scores[b] else a  # on equal scores, b is the weaker
        if common > share * (own[a] + own[b] - common):
            duplicate[weaker] = True
    return duplicate


@numba.njit(cache=True, nogil=True)
def _slot(keys: np.ndarray, key: int, bits: int) -> int:
    """Where ``key`` is, or goes, in a hash table of ``keys`` (-1: free; 2**``bits`` long)."""
    shift = np.uint64(64 - bits)
    slot = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> shift)
    while keys[slot] != -1 and keys[slot] != key:
        slot = (slot + 1) & (len(keys) - 1)
    return slot


@numba.njit(cache=True, nogil=True)
def _rehashed(keys: np.ndarray, counts: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash table twice as large (2**``bits`` long), holding the same entries."""
    new_keys = np.full(2 * len(keys), -1, np.int64)
    new_counts = np.zeros(2 * len(keys), np.int64)
    for slot in range(len(keys)):
        if keys[slot] >= 0:
            at = _slot(new_keys, keys[slot], bits)
            new_keys[at] = keys[slot]
            new_counts[at] = counts[slot]
    return new_keys, new_counts


@numba.njit(cache=True, nogil=True)
def _depths(
    pixel: np.ndarray,
    instance: np.ndarray,
    order: np.ndarray,
    on_pixel: np.ndarray,
    n: int,
    height: int,
    width: int,
    cap: int,
) -> np.ndarray:
    """Each claim's depth inside its own mask, counted from where another mask takes over.

    Depth is the number of 8-connected steps, inside the mask, to the nearest pixel outside
    it that another instance claims, capped (a pixel beside such a pixel has depth 1).
    Background and the chip edge do not end a mask here: a mask leaks into its neighbours,
    never into background, so only edges against other claims tell how far a pixel lies from
    the place where one field turns into the next. Depths are compared only on pixels claimed
    more than once: instances without such a pixel are left at the cap.
    """
    depth = np.full(len(pixel), cap, np.int64)
    involved = np.zeros(n, np.bool_)
    for k in order:
        involved[instance[k]] = True
    if cap < 2 or not involved.any():
        return depth
    # by pixel (with a one-pixel ring around the chip, so that neighbours need no bounds
    # checks): the instance last walked there (a stamp, never cleared), whether anyone
    # claims it, and the walked instance's claim there
    ring_width = width + 2
    owner = np.full((height + 2) * ring_width, -1, np.int32)
    claimed = np.zeros((height + 2) * ring_width, np.bool_)
    claim_at = np.empty((height + 2) * ring_width, np.int32)
    at = np.empty(len(pixel), np.int64)
    for j in range(len(pixel)):
        y, x = divmod(pixel[j], width)
        at[j] = (y + 1) * ring_width + x + 1
        claimed[at[j]] = True
    steps = np.array([-ring_width - 1, -ring_width, -ring_width + 1, -1, 1,
                      ring_width - 1, ring_width, ring_width + 1])  # fmt: skip
    queue = np.empty(len(pixel), np.int32)
    start = 0
    while start < len(pixel):
        i = instance[start]
        end = start
        while end < len(pixel) and instance[end] == i:
            end += 1
        if involved[i]:
            for j in range(start, end):
                owner[at[j]] = i
                claim_at[at[j]] = j
            # level 1: own pixels beside a pixel another instance claims
            size = 0
            for j in range(start, end):
                for step in steps:
                    q = at[j] + step
                    if owner[q] != i and claimed[q]:
                        depth[j] = 1
                        queue[size] = j
                        size += 1
                        break
            # level k: own pixels beside level k - 1, not reached before
            head = 0
            for level in range(2, cap):
                tail = size
                while head < tail:
                    here = at[queue[head]]
                    head += 1
                    for step in steps:
                        q = here + step
                        if owner[q] == i and depth[claim_at[q]] == cap:
                            depth[claim_at[q]] = level
                            queue[size] = claim_at[q]
                            size += 1
                if size == tail:
                    break
        start = end
    return depth


@numba.njit(cache=True, nogil=True)
def _assign(
    pixel: np.ndarray,
    instance: np.ndarray,
    value: np.ndarray,
    order: np.ndarray,
    depth: np.ndarray,
    scores: np.ndarray,
    n_pixels: int,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels by the claim rule, and which claims are near ties.

    A pixel claimed once goes to its claimant; among the claims on a contested pixel, the
    deepest near tie wins, then the most probable, then the first instance.

    Returns:
        (n_pixels,) labels, instance + 1 (0 background); and per claim whether it lies
        within ``margin`` of the strongest claim on its pixel.
    """
    labels = np.zeros(n_pixels, np.int64)
    for j in range(len(pixel)):
        labels[pixel[j]] = instance[j] + 1
    near = np.ones(len(pixel), np.bool_)
    k = 0
    while k < len(order):
        end = k
        while end < len(order) and pixel[order[end]] == pixel[order[k]]:
            end += 1
        strongest = -np.inf
        for g in range(k, end):
            strongest = max(strongest, _rank(value, scores, instance, order[g]))
        deepest = -1
        for g in range(k, end):
            j = order[g]
            tied = _rank(value, scores, instance, j) >= strongest - margin
            near[j] = tied
            if tied:
                deepest = max(deepest, depth[j])
        best_rank = -np.inf
        winner = -1
        for g in range(k, end):
            j = order[g]
            if near[j] and depth[j] == deepest:
                rank = _rank(value, scores, instance, j)
                if rank > best_rank:  # the first of equal ranks stays
                    best_rank = rank
                    winner = j
        labels[pixel[winner]] = instance[winner] + 1
        k = end
    return labels, near


@numba.njit(cache=True, nogil=True, inline="always")
def _rank(value: np.ndarray, scores: np.ndarray, instance: np.ndarray, j: int) -> float:
    """A claim's strength: its probability, the score breaking exact ties."""
    return value[j] + SCORE_TIE_WEIGHT * scores[instance[j]]


@numba.njit(cache=True, nogil=True)
def _protect_swallowed(
    labels: np.ndarray,
    pixel: np.ndarray,
    instance: np.ndarray,
    near: np.ndarray,
    depth: np.ndarray,
    n: int,
) -> None:
    """Give an instance left with almost none of its mask its innermost pixels back.

    A field thinner than its neighbours' leakage (a narrow strip along a road, say) is claimed
    by a neighbour everywhere, and the neighbour lies as deep there as the strip does. The
    strip's own detection is evidence that it exists, and its innermost pixels (its deepest
    level and the one above, not shallower than 3) are where it lies: an instance keeping less
    than ``SWALLOWED_SHARE`` of its near-tie claims takes those back. Only near-tie claims
    count: a clearly beaten claim is no sign of being swallowed.
    """
    own = np.zeros(n, np.int64)
    for j in range(len(pixel)):
        if near[j]:
            own[instance[j]] += 1
    kept = np.zeros(n + 1, np.int64)
    for label in labels:
        kept[label] += 1
    swallowed = np.zeros(n, np.bool_)
    deepest = np.zeros(n, np.int64)
    any_swallowed = False
    for i in range(n):
        swallowed[i] = own[i] > 0 and kept[i + 1] < SWALLOWED_SHARE * own[i]
        any_swallowed |= swallowed[i]
    if not any_swallowed:
        return
    for j in range(len(pixel)):
        if near[j] and swallowed[instance[j]]:
            deepest[instance[j]] = max(deepest[instance[j]], depth[j])
    # the deepest level and the one above it, but never shallower than 3 pixels: a 1 px strip
    # lies at depth 3 between two neighbours' 2 px leaks, and takes only that
    for j in range(len(pixel)):
        i = instance[j]
        if near[j] and swallowed[i] and depth[j] >= max(deepest[i] - 1, min(deepest[i], 3)):
            labels[pixel[j]] = i + 1
