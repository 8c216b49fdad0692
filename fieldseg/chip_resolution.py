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
import torch

from fieldseg.models.base import ChipPrediction
from fieldseg.models.boxed_masks import BoxedMasks

#: Probability at which a mask claims a pixel.
MASK_THRESHOLD = 0.5
#: Share of mask rows holding anything above which one dense pass finds the maxima.
DENSE_ROW_SHARE = 0.5
#: Width of the canvas that masks are laid out on to find depths (plus the widest mask).
CANVAS_WIDTH = 1024


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
    one claimant.

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
    n = len(scores)
    n_pixels = height * width
    contested = _contested(claims, n_pixels)
    duplicate = _duplicates(claims, contested, scores, duplicate_share)
    if duplicate.any():
        claims = claims.where(~duplicate[claims.instance])
        contested = _contested(claims, n_pixels)
    depth = _depths(claims, contested, n, height, width, max_depth)
    labels, near = _assign(claims, contested, depth, scores, n_pixels, margin)
    _protect_swallowed(labels, claims, near, depth, n)
    kept_area = np.bincount(labels, minlength=n + 1)[1:]
    labels[np.r_[False, kept_area < min_pixels][labels]] = 0
    kept_area = np.bincount(labels, minlength=n + 1)[1:]
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
    N x H x W, and no step loops over instances.
    """
    height, width = masks.height, masks.width
    pmax = np.zeros(height * width, np.float32)
    kept = masks if keep is None else masks.select(keep)
    if len(kept) == 0:
        empty = np.zeros(0, np.int64)
        return pmax, _Claims(empty, empty, np.zeros(0, np.float64))
    boxes = kept.boxes.cpu().numpy()
    x0, y0 = boxes[:, 0], boxes[:, 1]
    crop_width = boxes[:, 2] - x0
    sizes = crop_width * (boxes[:, 3] - y0)
    values = torch.cat([c.detach().reshape(-1) for c in kept.crops]).float().cpu().numpy()
    instance = np.repeat(np.arange(len(kept)), sizes)
    offset = np.arange(len(values)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    row, column = np.divmod(offset, np.repeat(np.maximum(crop_width, 1), sizes))
    pixel = (row + y0[instance]) * width + column + x0[instance]  # ascending within a mask
    np.maximum.at(pmax, pixel, values)
    claimed = np.flatnonzero(values >= MASK_THRESHOLD)
    claims = _Claims(pixel[claimed], instance[claimed], values[claimed].astype(np.float64))
    return pmax, claims


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


def _contested(claims: _Claims, n_pixels: int) -> np.ndarray:
    """Indices of the claims on pixels claimed more than once, by pixel (then instance)."""
    on_pixel = np.bincount(claims.pixel, minlength=n_pixels)
    contested = np.flatnonzero(on_pixel[claims.pixel] > 1)
    return contested[_stable_argsort(claims.pixel[contested], n_pixels)]


def _stable_argsort(keys: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for integers 0 <= keys < ``bound``.

    Done as 16-bit radix sorts, far faster than the comparison sort numpy uses for wider keys.
    """
    if bound > 1 << 32:
        return np.argsort(keys, kind="stable")
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    if bound > 1 << 16:
        order = order[np.argsort((keys[order] >> 16).astype(np.uint16), kind="stable")]
    return order


def _duplicates(
    claims: _Claims, contested: np.ndarray, scores: np.ndarray, share: float
) -> np.ndarray:
    """(N,) True for instances whose mask is nearly (IoU > ``share``) a higher-scoring one's.

    Masks meet only on pixels claimed more than once (``contested``, see :func:`_contested`).
    """
    n = len(scores)
    duplicate = np.zeros(n, bool)
    if len(contested) == 0:
        return duplicate
    own = np.bincount(claims.instance, minlength=n)
    pixel, instance = claims.pixel[contested], claims.instance[contested]
    firsts, seconds = [], []
    for offset in (1, 2, 3):  # up to four claimants of one pixel are compared
        same = pixel[offset:] == pixel[:-offset]
        firsts.append(instance[:-offset][same])
        seconds.append(instance[offset:][same])
    # a < b (a pixel's claimants come by instance); on equal scores, b is the weaker
    keys, common = np.unique(
        np.concatenate(firsts) * n + np.concatenate(seconds), return_counts=True
    )
    a, b = keys // n, keys % n
    weaker = np.where(scores[a] >= scores[b], b, a)
    union = own[a] + own[b] - common
    duplicate[weaker[common > share * union]] = True
    return duplicate


def _depths(
    claims: _Claims, contested: np.ndarray, n: int, height: int, width: int, cap: int
) -> np.ndarray:
    """Each claim's depth inside its own mask, counted from where another mask takes over.

    Depth is the number of 8-connected steps, inside the mask, to the nearest pixel outside
    it that another instance claims, capped (a pixel beside such a pixel has depth 1).
    Background and the chip edge do not end a mask here: a mask leaks into its neighbours,
    never into background, so only edges against other claims tell how far a pixel lies from
    the place where one field turns into the next. Depths are compared only on pixels claimed
    more than once: instances without such a pixel are left at the cap.

    Args:
        claims: the claims.
        contested: the claims on pixels claimed more than once (indices).
        n: the number of instances.
        height: chip rows.
        width: chip columns.
        cap: the largest depth told apart.
    """
    depth = np.full(len(claims.pixel), cap, np.int64)
    involved = np.zeros(n, bool)
    involved[claims.instance[contested]] = True
    if cap < 2 or not involved.any():
        return depth  # every depth is the cap, or depths are never compared
    subset = involved[claims.instance]
    claimed = np.zeros(height * width, bool)
    claimed[claims.pixel] = True
    depth[subset] = _depths_in_windows(
        claims.pixel[subset], claims.instance[subset], claimed.reshape(height, width), cap
    )
    return depth


def _depths_in_windows(
    pixel: np.ndarray, instance: np.ndarray, claimed: np.ndarray, cap: int
) -> np.ndarray:
    """The depths (see :func:`_depths`) of claims ordered by instance, capped at ``cap``.

    Every instance's mask is laid into its own window of a shared canvas (its bounding box and
    a one-pixel ring), so that masks never touch and whole-canvas dilations grow all depths at
    once. Level 1 is the mask's pixels beside a pixel another instance claims (more claimed
    pixels around them than own ones); level k the mask's pixels beside level k - 1, not
    reached before.
    """
    ys, xs = np.divmod(pixel, claimed.shape[1])
    starts = np.flatnonzero(np.r_[True, instance[1:] != instance[:-1]])
    y0, y1 = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
    x0, x1 = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
    top, left, shape = _shelf_pack(y1 - y0 + 3, x1 - x0 + 3)  # each box and its ring
    # each claim's place on the (flattened) canvas
    shift = (top - y0 + 1) * shape[1] + (left - x0 + 1)
    at = ys * shape[1] + xs + np.repeat(shift, np.diff(np.r_[starts, len(instance)]))
    own = np.zeros(shape, bool)
    own.ravel()[at] = True
    beside_other = _box_count(claimed).ravel()[pixel] > _box_count(own).ravel()[at]
    frontier = np.zeros(shape, bool)
    frontier.ravel()[at[beside_other]] = True
    reached = frontier.copy()
    # levels 1 .. cap - 1: a pixel reached at level k is counted cap - k times
    counted = reached.astype(np.min_scalar_type(cap))
    for level in range(2, cap):
        frontier = _dilate(frontier) & own & ~reached
        if not frontier.any():
            counted[reached] += cap - level  # the levels left add nothing new
            break
        reached |= frontier
        counted += reached
    return cap - counted.ravel()[at].astype(np.int64)


def _shelf_pack(
    rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Places for windows of ``rows`` x ``cols`` on one canvas, none overlapping.

    Windows are laid tallest first, left to right, on shelves as tall as their first window;
    a window starting within ``CANVAS_WIDTH`` columns still goes on its shelf.

    Returns:
        Each window's top row and left column, and the canvas shape.
    """
    order = np.argsort(-rows, kind="stable")
    ends = np.cumsum(cols[order])
    starts = ends - cols[order]  # on one endless shelf
    shelf = starts // CANVAS_WIDTH
    first = np.r_[True, shelf[1:] != shelf[:-1]]
    shelf_tops = np.r_[0, np.cumsum(rows[order][first])]
    top = np.empty_like(rows)
    left = np.empty_like(cols)
    top[order] = shelf_tops[np.cumsum(first) - 1]
    left[order] = starts - shelf * CANVAS_WIDTH
    return top, left, (int(shelf_tops[-1]), CANVAS_WIDTH + int(cols.max()))


def _box_count(image: np.ndarray) -> np.ndarray:
    """How many pixels of the 3 x 3 square around each pixel are set (uint8).

    Beyond the image edge, none is.
    """
    count = image.astype(np.uint8)
    rows = count.copy()
    rows[1:] += count[:-1]
    rows[:-1] += count[1:]
    box = rows.copy()
    box[:, 1:] += rows[:, :-1]
    box[:, :-1] += rows[:, 1:]
    return box


def _dilate(image: np.ndarray) -> np.ndarray:
    """A 2-D bool image grown by one pixel in all eight directions (3 x 3 square)."""
    grown = image.copy()
    grown[1:] |= image[:-1]
    grown[:-1] |= image[1:]
    across = grown.copy()
    grown[:, 1:] |= across[:, :-1]
    grown[:, :-1] |= across[:, 1:]
    return grown


def _protect_swallowed(
    labels: np.ndarray,
    claims: _Claims,
    near: np.ndarray,
    depth: np.ndarray,
    n: int,
    share: float = 0.25,
) -> None:
    """Give an instance left with almost none of its mask its innermost pixels back.

    A field thinner than its neighbours' leakage (a narrow strip along a road, say) is claimed
    by a neighbour everywhere, and the neighbour lies as deep there as the strip does. The
    strip's own detection is evidence that it exists, and its innermost pixels (its deepest
    level and the one above, not shallower than 3) are where it lies: an instance keeping less
    than ``share`` of its mask takes those back. Only near-tie claims (``near``) count: a
    clearly beaten claim is no sign of being swallowed.
    """
    own = np.bincount(claims.instance[near], minlength=n)
    kept = np.bincount(labels, minlength=n + 1)[1:]
    swallowed = (kept < share * own) & (own > 0)
    if not swallowed.any():
        return
    chosen = np.flatnonzero(near & swallowed[claims.instance])
    instance, depth = claims.instance[chosen], depth[chosen]
    deepest = np.zeros(n, np.int64)
    np.maximum.at(deepest, instance, depth)
    # the deepest level and the one above it, but never shallower than 3 pixels: a 1 px strip
    # lies at depth 3 between two neighbours' 2 px leaks, and takes only that
    level = np.maximum(deepest - 1, np.minimum(deepest, 3))
    inner = depth >= level[instance]
    labels[claims.pixel[chosen[inner]]] = instance[inner] + 1


def _assign(
    claims: _Claims,
    contested: np.ndarray,
    depth: np.ndarray,
    scores: np.ndarray,
    n_pixels: int,
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels by the claim rule, and which claims are near ties.

    A pixel claimed once goes to its claimant; the rule decides the others (``contested``,
    by pixel, see :func:`_contested`): the deepest near tie, then the most probable, then the
    first instance.

    Returns:
        (n_pixels,) int64 labels, instance + 1 (0 background); and per claim (in the order
        given) whether it lies within ``margin`` of the strongest claim on its pixel.
    """
    labels = np.zeros(n_pixels, np.int64)
    rank = claims.value + 1e-6 * scores[claims.instance]  # the score breaks exact ties
    near = rank >= rank - margin  # a claim alone on its pixel is the strongest there
    labels[claims.pixel] = claims.instance + 1  # contested pixels are decided below
    if len(contested) == 0:
        return labels, near
    pixel, rank, depth = claims.pixel[contested], rank[contested], depth[contested]
    first = np.r_[True, pixel[1:] != pixel[:-1]]
    group = np.cumsum(first) - 1
    n_groups = int(group[-1]) + 1
    tied = rank >= _group_max(rank, group, n_groups)[group] - margin  # near-ties
    # among near-ties, the claim deepest inside its own mask wins, then the strongest
    key = np.where(tied, depth, -1)
    best = key == _group_max(key, group, n_groups)[group]
    best &= rank == _group_max(np.where(best, rank, -np.inf), group, n_groups)[group]
    winners = np.flatnonzero(best)
    winners = winners[np.r_[True, group[winners][1:] != group[winners][:-1]]]
    labels[pixel[winners]] = claims.instance[contested[winners]] + 1
    near[contested] = tied
    return labels, near


def _group_max(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups,) the largest of ``values`` in each group (every group has a member)."""
    if values.dtype.kind == "f":
        peak = np.full(n_groups, -np.inf, values.dtype)
    else:
        peak = np.full(n_groups, np.iinfo(values.dtype).min, values.dtype)
    np.maximum.at(peak, group, values)
    return peak
