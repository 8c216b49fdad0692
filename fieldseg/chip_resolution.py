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
#: Share of its near-tie claims below which an instance counts as swallowed (rule 4).
SWALLOWED_SHARE = 0.25
#: The score's weight in a claim's rank: it only breaks exact ties of probability.
SCORE_TIE_WEIGHT = np.float32(1e-6)
#: The deepest depth told apart (``max_depth`` is clipped to it).
MAX_DEPTH = 255


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

    Works mask by mask inside each mask's box (:class:`BoxedMasks`; a dense (N, H, W) stack
    is boxed first): a chip holds hundreds of small masks, each zero almost everywhere. Only
    pixels claimed by two or more instances need the rule's comparisons; the rest go to their
    one claimant. The whole rule is one compiled call (numba, a few passes over the crops) that
    lets go of the GIL, so chips resolve in parallel on threads.

    Args:
        prediction: the model's instances for the chip.
        valid: (H, W) bool, False on nodata and padding.
        score_threshold: instances scoring less are dropped.
        min_pixels: instances left smaller are dropped.
        margin: probabilities within this of the highest at a pixel are near-ties.
        duplicate_share: an instance whose mask has an IoU above this with a higher-scoring
            instance's mask is a duplicate and dropped.
        max_depth: depths inside a mask are told apart up to this many pixels (1 to
            ``MAX_DEPTH``; values outside are clipped).
    """
    height, width = valid.shape
    # few torch calls: each may hand the GIL to another chip's thread and wait for it back
    scores = _array(prediction.scores).astype(np.float32, copy=False)
    keep = np.flatnonzero(scores >= score_threshold)
    if len(keep) == 0:
        return empty_chip(height, width)
    scores = scores[keep]
    classes = _array(prediction.labels)[keep].astype(np.int64)
    masks = prediction.masks
    if not isinstance(masks, BoxedMasks):  # only the kept masks are boxed
        masks = BoxedMasks.from_dense(masks.detach()[torch.from_numpy(keep).to(masks.device)])
        keep = np.arange(len(keep))
    labels, probability, survivors = _resolve(
        _array(masks.values).astype(np.float32, copy=False),
        _array(masks.boxes).astype(np.int64, copy=False),
        keep,
        np.ascontiguousarray(valid, dtype=np.bool_).ravel(),
        scores, height, width, margin, duplicate_share, min(max(int(max_depth), 1), MAX_DEPTH),
        min_pixels,
    )  # fmt: skip
    return ResolvedChip(
        labels=labels.reshape(height, width),
        probability=probability.reshape(height, width),
        scores=scores[survivors],
        classes=classes[survivors],
    )


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array (a view where it lies on the CPU as float32 or int)."""
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.float()  # half and bfloat16 have no numpy type of their own
    return tensor.cpu().numpy()


# -- compiled kernels ---------------------------------------------------------------------
#
# The passes of _resolve walk the kept masks' crops in order (instance by instance, each crop
# row by row), so a mask's claims come in the order the rule breaks ties in: by instance, then
# pixel. A claim is a crop value of at least MASK_THRESHOLD on a valid pixel (never NaN).


@numba.njit(cache=True, nogil=True)
def _resolve(
    values: np.ndarray,
    boxes: np.ndarray,
    kept: np.ndarray,
    valid: np.ndarray,
    scores: np.ndarray,
    height: int,
    width: int,
    margin: float,
    duplicate_share: float,
    max_depth: int,
    min_pixels: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The module docstring's rule over the crops of masks ``kept`` (instances 0.. in order).

    Args:
        values: every mask's crop, end to end, row by row (float32).
        boxes: (N, 4) ``x0, y0, x1, y1`` of every mask's crop.
        kept: the masks taking part, in instance order.
        valid: (H * W,) False on nodata.
        scores: (K,) the kept instances' scores.
        height: the chip's height H.
        width: the chip's width W.
        margin: probabilities within this of the highest at a pixel are near ties.
        duplicate_share: the IoU above which the weaker of two masks is a duplicate.
        max_depth: the depth cap (at least 1).
        min_pixels: instances left smaller are dropped.

    Returns:
        The (H * W,) labels (the survivors numbered 1..), the (H * W,) probability of each
        pixel's instance (background: 1 - the highest kept probability there) and the
        survivors' instance numbers.
    """
    n = len(kept)
    n_pixels = height * width
    start = np.zeros(len(boxes) + 1, np.int64)
    for i in range(len(boxes)):
        start[i + 1] = start[i] + (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
    # claims per pixel, the highest probability and the strongest claim there, each instance's
    # claims, and its claims as bits over its crop with a one-pixel ring (see _instance_depths)
    count = np.zeros(n_pixels, np.int32)
    pmax = np.zeros(n_pixels, np.float32)
    strongest = np.full(n_pixels, -np.inf, np.float64)  # the strongest claim's rank
    own = np.zeros(n, np.int64)
    bits_at = np.zeros(n + 1, np.int64)
    for k in range(n):
        i = kept[k]
        words = _ring_words(boxes[i, 2] - boxes[i, 0])
        bits_at[k + 1] = bits_at[k] + (boxes[i, 3] - boxes[i, 1] + 2) * words
    claim_bits = np.zeros(bits_at[n], np.uint64)
    for k in range(n):
        i = kept[k]
        x0, y0 = boxes[i, 0], boxes[i, 1]
        words = _ring_words(boxes[i, 2] - x0)
        own_here = 0  # counted here, not in the array: no store to wait on
        at = start[i]
        for y in range(y0, boxes[i, 3]):
            word = bits_at[k] + (y - y0 + 1) * words
            bits = np.uint64(0)  # the claims of the word being filled (column 0 is the ring)
            for x in range(x0, boxes[i, 2]):
                column = x - x0 + 1
                if column & 63 == 0:
                    claim_bits[word] = bits
                    word += 1
                    bits = np.uint64(0)
                v = values[at]
                at += 1
                p = y * width + x
                if valid[p]:
                    if v > pmax[p]:
                        pmax[p] = v
                    if v >= MASK_THRESHOLD:
                        count[p] += 1
                        own_here += 1
                        strongest[p] = max(strongest[p], _rank(v, scores[k]))
                        bits |= np.uint64(1) << np.uint64(column & 63)
            claim_bits[word] = bits
        own[k] = own_here
    alive = np.ones(n, np.bool_)
    contested = _any_contested(count)
    if contested:
        duplicate = _duplicates(values, boxes, start, kept, valid, own, scores, width,
                                duplicate_share)  # fmt: skip
        if duplicate.any():
            alive = ~duplicate
            _recount(values, boxes, start, kept, alive, valid, scores, width, count, strongest)
            contested = _any_contested(count)
    # each pixel to its claimant: on contested pixels the deepest near tie, then the most
    # probable, then the first instance
    planes = _depth_planes(bits_at, max_depth)
    claimed = _claimed_bitmap(count, height, width)
    labels = np.zeros(n_pixels, np.int32)
    chosen = np.zeros(n_pixels, np.float32)  # the probability of the pixel's instance
    best_depth = np.full(n_pixels, -1, np.int32)
    best_rank = np.full(n_pixels, -np.inf, np.float64)
    near = np.zeros(n, np.int64)  # claims within margin of the strongest on their pixel
    area = np.zeros(n + 1, np.int64)  # pixels held, by label
    for k in range(n):
        if not alive[k]:
            continue
        i = kept[k]
        levels = -1  # the mask's depths are found at its first contested claim
        words = _ring_words(boxes[i, 2] - boxes[i, 0])
        near_here = held_here = 0  # counted here, not in the arrays: no store to wait on
        at = start[i]
        for y in range(boxes[i, 1], boxes[i, 3]):
            for x in range(boxes[i, 0], boxes[i, 2]):
                v = values[at]
                at += 1
                p = y * width + x
                if not v >= MASK_THRESHOLD or not valid[p]:  # (NaN claims nothing)
                    continue
                if count[p] == 1:
                    labels[p] = k + 1
                    chosen[p] = v
                    near_here += 1
                    held_here += 1
                    continue
                rank = _rank(v, scores[k])
                if rank < strongest[p] - margin:
                    continue
                near_here += 1
                if levels < 0:
                    levels = _instance_depths(claim_bits, bits_at[k], claimed, boxes[i], height,
                                              width, max_depth, planes)  # fmt: skip
                depth = _depth_at(
                    planes, levels, max_depth, words, x - boxes[i, 0], y - boxes[i, 1]
                )
                if depth > best_depth[p] or (depth == best_depth[p] and rank > best_rank[p]):
                    best_depth[p] = depth
                    best_rank[p] = rank
                    area[labels[p]] -= 1
                    labels[p] = k + 1
                    chosen[p] = v
                    held_here += 1
        near[k] = near_here
        area[k + 1] += held_here
    if contested:  # uncontested, every instance keeps all its claims: none is swallowed
        _protect_swallowed(values, boxes, start, kept, alive, valid, count, strongest,
                           scores, near, labels, chosen, area, height, width, margin, max_depth,
                           planes, claim_bits, bits_at, claimed)  # fmt: skip
    # instances left too small are dropped; the rest are numbered 1.. in order
    number = np.zeros(n + 1, np.int32)
    survivors = np.empty(n, np.int64)
    n_kept = 0
    for k in range(1, n + 1):
        if area[k] >= min_pixels and area[k] > 0:
            n_kept += 1
            number[k] = n_kept
            survivors[n_kept - 1] = k - 1
    for p in range(n_pixels):  # the probabilities of the pixels' instances become the output
        label = number[labels[p]]
        labels[p] = label
        if label == 0:
            chosen[p] = np.float32(1.0) - pmax[p]
    return labels, chosen, survivors[:n_kept]


@numba.njit(cache=True, nogil=True, inline="always")
def _rank(value: float, score: float) -> float:
    """A claim's strength: its probability, the score breaking exact ties."""
    return np.float64(value) + SCORE_TIE_WEIGHT * score


@numba.njit(cache=True, nogil=True)
def _any_contested(count: np.ndarray) -> bool:
    """Whether any pixel is claimed more than once."""
    for c in count:  # noqa: SIM110 (a plain loop compiles; it stops at the first)
        if c > 1:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _recount(
    values: np.ndarray,
    boxes: np.ndarray,
    start: np.ndarray,
    kept: np.ndarray,
    alive: np.ndarray,
    valid: np.ndarray,
    scores: np.ndarray,
    width: int,
    count: np.ndarray,
    strongest: np.ndarray,
) -> None:
    """``count`` and ``strongest`` again, of the live instances' claims (duplicates gone)."""
    count[:] = 0
    strongest[:] = -np.inf
    for k in range(len(kept)):
        if not alive[k]:
            continue
        i = kept[k]
        at = start[i]
        for y in range(boxes[i, 1], boxes[i, 3]):
            for x in range(boxes[i, 0], boxes[i, 2]):
                p = y * width + x
                if values[at] >= MASK_THRESHOLD and valid[p]:
                    count[p] += 1
                    strongest[p] = max(strongest[p], _rank(values[at], scores[k]))
                at += 1


@numba.njit(cache=True, nogil=True)
def _duplicates(
    values: np.ndarray,
    boxes: np.ndarray,
    start: np.ndarray,
    kept: np.ndarray,
    valid: np.ndarray,
    own: np.ndarray,
    scores: np.ndarray,
    width: int,
    share: float,
) -> np.ndarray:
    """(N,) True for instances whose mask is nearly (IoU > ``share``) a higher-scoring one's.

    Two masks can only be that alike where their boxes overlap by more than ``share`` of
    the union their claims would then make, so the boxes are swept from left to right and
    only such pairs have their shared claims counted, over the boxes' overlap.
    """
    n = len(kept)
    duplicate = np.zeros(n, np.bool_)
    lefts = np.empty(n, np.int64)
    for k in range(n):
        lefts[k] = boxes[kept[k], 0]
    order = np.argsort(lefts)
    for oa in range(n):
        a = order[oa]
        ia = kept[a]
        for ob in range(oa + 1, n):
            b = order[ob]
            ib = kept[b]
            if boxes[ib, 0] >= boxes[ia, 2]:
                break  # this box and all after it start right of box a
            x0, x1 = max(boxes[ia, 0], boxes[ib, 0]), min(boxes[ia, 2], boxes[ib, 2])
            y0, y1 = max(boxes[ia, 1], boxes[ib, 1]), min(boxes[ia, 3], boxes[ib, 3])
            if x1 <= x0 or y1 <= y0 or own[a] == 0 or own[b] == 0:
                continue
            most = min((x1 - x0) * (y1 - y0), own[a], own[b])
            if most <= share * (own[a] + own[b] - most):
                continue
            width_a, width_b = boxes[ia, 2] - boxes[ia, 0], boxes[ib, 2] - boxes[ib, 0]
            common = 0
            for y in range(y0, y1):
                at_a = start[ia] + (y - boxes[ia, 1]) * width_a - boxes[ia, 0]
                at_b = start[ib] + (y - boxes[ib, 1]) * width_b - boxes[ib, 0]
                for x in range(x0, x1):
                    if (
                        values[at_a + x] >= MASK_THRESHOLD
                        and values[at_b + x] >= MASK_THRESHOLD
                        and valid[y * width + x]
                    ):
                        common += 1
            if common > share * (own[a] + own[b] - common):
                first, later = min(a, b), max(a, b)
                # on equal scores, the later instance is the weaker
                duplicate[later if scores[first] >= scores[later] else first] = True
    return duplicate


@numba.njit(cache=True, nogil=True)
def _depth_planes(bits_at: np.ndarray, cap: int) -> np.ndarray:
    """Bit planes for :func:`_instance_depths`, as large as the largest crop's claim bits.

    Crop k's claim bits lie at ``bits_at[k]:bits_at[k + 1]``.
    """
    size = 0
    for k in range(len(bits_at) - 1):
        size = max(size, bits_at[k + 1] - bits_at[k])
    return np.zeros((cap + 1, size), np.uint64)


@numba.njit(cache=True, nogil=True)
def _instance_depths(
    claim_bits: np.ndarray,
    bits_at: int,
    claimed: np.ndarray,
    box: np.ndarray,
    height: int,
    width: int,
    cap: int,
    planes: np.ndarray,
) -> int:
    """The levels of one mask's claims inside it, counted from where another claim takes over.

    A claim's depth is the number of 8-connected steps, inside the mask, to the nearest pixel
    outside it that another instance claims, capped (a pixel beside such a pixel has depth 1).
    Background and the chip edge do not end a mask here: a mask leaks into its neighbours,
    never into background, so only edges against other claims tell how far a pixel lies from
    the place where one field turns into the next.

    The crop (``box``) with a one-pixel ring is held as bit planes, one bit a pixel (row by
    row, each row in whole 64-bit words, as the mask's claims lie in ``claim_bits`` from
    ``bits_at``): ``planes[0]`` the mask, ``planes[1]`` the other instances' claims (the
    chip's ``claimed`` bitmap, ``_claimed_bitmap``, less the mask), ``planes[1 + level]`` the
    claims at that depth, found level by level as the mask's own pixels beside the level
    before (a breadth-first search, 64 pixels a step). A claim's depth is the first level
    whose plane holds it, else the cap.

    Returns:
        How many levels were found (the deeper planes are stale).
    """
    x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
    words = _ring_words(x1 - x0)
    rows = y1 - y0 + 2
    chip_words = (width + 63) // 64
    for row in range(rows):
        y = y0 - 1 + row
        for w in range(words):
            word = row * words + w
            mask = claim_bits[bits_at + word]
            planes[0, word] = mask
            other = np.uint64(0)
            if 0 <= y < height:  # the chip's claims from x0 - 1 + 64 w on, 64 of them
                first = x0 - 1 + 64 * w
                at, shift = first >> 6, np.uint64(first & 63)
                if 0 <= at < chip_words:
                    other = claimed[y * chip_words + at] >> shift
                if shift and 0 <= at + 1 < chip_words:
                    other |= claimed[y * chip_words + at + 1] << (np.uint64(64) - shift)
            planes[1, word] = other & ~mask
    if cap < 2:
        return 0
    level = 1
    _grow(planes, 1, 2, rows, words, True)
    while level + 1 < cap and _grow(planes, level + 1, level + 2, rows, words, False):
        level += 1
    return level


@numba.njit(cache=True, nogil=True)
def _claimed_bitmap(count: np.ndarray, height: int, width: int) -> np.ndarray:
    """The pixels anyone claims, one bit each, row by row in whole 64-bit words."""
    chip_words = (width + 63) // 64
    claimed = np.zeros(height * chip_words, np.uint64)
    for y in range(height):
        for x in range(width):
            if count[y * width + x] > 0:
                claimed[y * chip_words + (x >> 6)] |= np.uint64(1) << np.uint64(x & 63)
    return claimed


@numba.njit(cache=True, nogil=True, inline="always")
def _ring_words(crop_width: int) -> int:
    """64-bit words a row of a crop of ``crop_width`` with its one-pixel ring takes."""
    return (crop_width + 2 + 63) // 64


@numba.njit(cache=True, nogil=True, inline="always")
def _depth_at(planes: np.ndarray, levels: int, cap: int, words: int, dx: int, dy: int) -> int:
    """The depth of a mask's claim ``dx, dy`` into its crop.

    That is the first level whose plane holds it (:func:`_instance_depths` found ``levels``),
    else ``cap``.
    """
    column = dx + 1
    word = (dy + 1) * words + (column >> 6)
    bit = np.uint64(column & 63)
    for level in range(1, levels + 1):
        if (planes[level + 1, word] >> bit) & np.uint64(1):
            return level
    return cap


@numba.njit(cache=True, nogil=True)
def _grow(planes: np.ndarray, source: int, target: int, rows: int, words: int, first: bool) -> bool:
    """``planes[target]``: the mask's pixels beside ``planes[source]``, none reached before.

    The first level (``first``) lies beside the other claims and needs no check of the levels
    before. Returns whether any pixel was reached. (The planes are indexed in place, not
    through views or helpers: each array handed on in a loop costs reference counting.)
    """
    one, top = np.uint64(1), np.uint64(63)
    for w in range(words):  # the ring rows reach nothing
        planes[target, w] = 0
        planes[target, (rows - 1) * words + w] = 0
    grew = np.uint64(0)
    for row in range(1, rows - 1):
        for w in range(words):
            word = row * words + w
            beside = np.uint64(0)
            for at in (word - words, word, word + words):  # each bit and its 8 neighbours
                here = planes[source, at]
                beside |= here | (here << one) | (here >> one)
                if w > 0:
                    beside |= planes[source, at - 1] >> top
                if w < words - 1:
                    beside |= planes[source, at + 1] << top
            reached = planes[0, word] & beside
            if not first:
                for level in range(2, target):
                    reached &= ~planes[level, word]
            planes[target, word] = reached
            grew |= reached
    return grew != 0


@numba.njit(cache=True, nogil=True)
def _protect_swallowed(
    values: np.ndarray,
    boxes: np.ndarray,
    start: np.ndarray,
    kept: np.ndarray,
    alive: np.ndarray,
    valid: np.ndarray,
    count: np.ndarray,
    strongest: np.ndarray,
    scores: np.ndarray,
    near: np.ndarray,
    labels: np.ndarray,
    chosen: np.ndarray,
    area: np.ndarray,
    height: int,
    width: int,
    margin: float,
    cap: int,
    planes: np.ndarray,
    claim_bits: np.ndarray,
    bits_at: np.ndarray,
    claimed: np.ndarray,
) -> None:
    """Give an instance left with almost none of its mask its innermost pixels back.

    A field thinner than its neighbours' leakage (a narrow strip along a road, say) is claimed
    by a neighbour everywhere, and the neighbour lies as deep there as the strip does. The
    strip's own detection is evidence that it exists, and its innermost pixels (its deepest
    level and the one above, not shallower than 3) are where it lies: an instance keeping less
    than ``SWALLOWED_SHARE`` of its near-tie claims (``near``) takes those back. Only near-tie
    claims count: a clearly beaten claim is no sign of being swallowed.
    """
    n = len(kept)
    held = area.copy()  # before any is given back
    for k in range(n):
        if not alive[k] or near[k] == 0 or held[k + 1] >= SWALLOWED_SHARE * near[k]:
            continue
        i = kept[k]
        words = _ring_words(boxes[i, 2] - boxes[i, 0])
        # (a swallowed instance has contested claims: one without keeps all its pixels)
        levels = _instance_depths(claim_bits, bits_at[k], claimed, boxes[i], height, width, cap,
                                  planes)  # fmt: skip
        # the deepest level and the one above it, but never shallower than 3 pixels: a 1 px
        # strip lies at depth 3 between two neighbours' 2 px leaks, and takes only that
        deepest = 0
        for step in range(2):
            at = start[i]
            for y in range(boxes[i, 1], boxes[i, 3]):
                for x in range(boxes[i, 0], boxes[i, 2]):
                    v = values[at]
                    at += 1
                    p = y * width + x
                    if not v >= MASK_THRESHOLD or not valid[p]:  # (NaN claims nothing)
                        continue
                    if count[p] > 1 and _rank(v, scores[k]) < strongest[p] - margin:
                        continue  # not a near tie
                    depth = _depth_at(planes, levels, cap, words, x - boxes[i, 0], y - boxes[i, 1])
                    if step == 0:
                        deepest = max(deepest, depth)
                    elif depth >= max(deepest - 1, min(deepest, 3)):
                        area[labels[p]] -= 1
                        area[k + 1] += 1
                        labels[p] = k + 1
                        chosen[p] = v
