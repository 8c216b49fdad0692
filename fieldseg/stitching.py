"""Chips -> fields: join pieces across chip seams and give every pixel to at most one field.

Chips arrive row by row (each already made disjoint by :mod:`fieldseg.chip_resolution`) and are
stitched in a strip of the scene that moves down with them:

* **Linking.** Where two chips overlap, an instance of one and an instance of the other are the
  same field when their masks agree there: inside the overlap, their intersection over union is
  above ``link_iou`` (0.5). Such a pair is one to one, so a blob in one chip can never chain two
  fields that another chip keeps apart; pieces of a field larger than a chip are chained from
  chip to chip. Two instances of one chip are never joined, even indirectly.
* **Contested pixels.** Every chip votes for each pixel it covers: for the instance it gives the
  pixel to, or for background. The vote weighs the probability there, how far the pixel lies
  from the chip's edges inside the scene (full weight ``overlap / 2`` pixels in, falling to
  nearly nothing at the edge), and whether the chip edge cuts the instance (``cut_penalty``).
  The strongest vote wins the pixel; on a tie the earlier chip keeps it.
* **Fields.** A field is a set of linked instances, with the pixels they won. Once no later chip
  can reach it, it is handed over as a :class:`FieldBatch` and its pixels are forgotten, so the
  pixel buffers stay the size of a strip however tall the scene (a few dozen bytes of
  bookkeeping per instance remain).

The rule is also written down in docs/formats.md ("Stitching").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from fieldseg.chip_resolution import ResolvedChip
from fieldseg.outline_tracing import find_root


@dataclass
class FieldBatch:
    """Finished fields in a band of scene rows, ready to be traced into polygons.

    Attributes:
        row_offset: the scene row of ``labels``' first row.
        labels: (rows, width) int32: 0 no field, k > 0 the k-th field of this batch, -1 a field
            of another batch (handed over earlier, or not finished yet).
        score: (K,) float32: the instances' scores weighted by the pixels each gave the field.
        class_id: (K,) int64: the category of the instance that gave the most pixels.
        n_chips: (K,) int32: chips that saw the field (all linked instances).
        seam_merged: (K,) bool: pieces cut by chip edges were joined: the field's pixels come
            from two or more chips, and at least one chip's edge cut its piece of the field.
        touches_edge_or_nodata: (K,) bool: the field touches nodata or the predicted area's edge.
        later_from: later batches hold fields only in rows from this scene row on (None: no
            later batch does). A field ending two rows above it can have no later neighbour.
    """

    row_offset: int
    labels: np.ndarray
    score: np.ndarray
    class_id: np.ndarray
    n_chips: np.ndarray
    seam_merged: np.ndarray
    touches_edge_or_nodata: np.ndarray
    later_from: int | None = None

    def __len__(self) -> int:
        return int(self.score.shape[0])


@dataclass
class _Chip:
    index: int
    row: int
    col: int
    local: np.ndarray  # the chip's own instance numbers (1..size), 0 none
    first: int  # the global id of the chip's instance 1
    size: int  # the chip's instances

    @property
    def bottom(self) -> int:
        return self.row + self.local.shape[0]


def _zeros(dtype: type) -> np.ndarray:
    return np.zeros(1024, dtype)


@dataclass
class _Instances:
    """Growable per-instance arrays (id 0 is the 'no instance' sentinel).

    Linked instances form a tree (``parent``) whose root is the smallest id; each root also
    keeps its members as a list (``next_member`` from the root, ``last_member`` its end), so
    that joining two fields can check that no chip gives both an instance.
    """

    size: int = 1
    parent: np.ndarray = field(default_factory=lambda: _zeros(np.int64))
    score: np.ndarray = field(default_factory=lambda: _zeros(np.float32))
    class_id: np.ndarray = field(default_factory=lambda: _zeros(np.int64))
    chip: np.ndarray = field(default_factory=lambda: np.full(1024, -1, np.int64))
    min_row: np.ndarray = field(default_factory=lambda: _zeros(np.int64))
    max_row: np.ndarray = field(default_factory=lambda: _zeros(np.int64))
    cut: np.ndarray = field(default_factory=lambda: _zeros(bool))
    next_member: np.ndarray = field(default_factory=lambda: np.full(1024, -1, np.int64))
    last_member: np.ndarray = field(default_factory=lambda: _zeros(np.int64))

    _NAMES = ("parent", "score", "class_id", "chip", "min_row", "max_row", "cut",
              "next_member", "last_member")  # fmt: skip

    def add(self, n: int) -> int:
        """Room for ``n`` new instances; returns the first new id."""
        first = self.size
        self.size += n
        if self.size > len(self.parent):
            capacity = max(self.size, 2 * len(self.parent))
            for name in self._NAMES:
                old = getattr(self, name)
                new = np.zeros(capacity, old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
        new_ids = np.arange(first, self.size)
        self.parent[first : self.size] = new_ids
        self.next_member[first : self.size] = -1
        self.last_member[first : self.size] = new_ids
        return first

    def roots(self) -> np.ndarray:
        """The root of every instance id (path halving, vectorised)."""
        parent = self.parent[: self.size]
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent[:] = grand


class SceneStitcher:
    """Stitch resolved chips of a ``height`` x ``width`` area into fields (module docstring).

    Call :meth:`add_chip` for every chip in row-major order (rows of chips by their top row),
    :meth:`close_rows` when no later chip starts above a row, and :meth:`finish` at the end.

    Args:
        height: rows of the predicted area.
        width: columns of the predicted area.
        overlap: the chips' overlap in pixels (at least 1: seams are joined in the overlap).
        cut_penalty: vote factor of an instance that the chip edge cuts.
        link_iou: how well two pieces must agree where their chips overlap to be joined.
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        overlap: int,
        cut_penalty: float = 0.5,
        background_weight: float = 0.5,
        link_iou: float = 0.5,
    ) -> None:
        self.height, self.width = height, width
        self.ramp = max(1.0, overlap / 2)
        self.cut_penalty = cut_penalty
        self.background_weight = background_weight
        self.link_iou = link_iou
        self._instances = _Instances()
        self._live: list[_Chip] = []
        self._n_chips = 0
        self._top = 0  # scene row of the buffers' first row
        self._owner_store = np.zeros((0, width), np.int32)
        self._vote_store = np.zeros((0, width), np.float32)
        self._valid_store = np.ones((0, width), bool)
        self._views(0)
        self._emitted = np.zeros(1024, bool)
        self._weights: dict[tuple[int, int, bool, bool, bool, bool], np.ndarray] = {}

    # -- chips in -------------------------------------------------------------------------

    def add_chip(self, row: int, col: int, chip: ResolvedChip, valid: np.ndarray) -> None:
        """Add one chip whose top-left pixel is (``row``, ``col``) of the area.

        ``chip`` and ``valid`` may extend beyond the area (a padded chip); that part is ignored.
        """
        rows = min(chip.labels.shape[0], self.height - row)
        cols = min(chip.labels.shape[1], self.width - col)
        local = chip.labels[:rows, :cols].astype(np.int32, copy=False)  # kept while live
        valid = valid[:rows, :cols]
        index = self._n_chips
        self._n_chips += 1
        first = self._instances.add(len(chip))
        self._register(index, first, chip, local, row)
        placed = _Chip(index, row, col, local, first, len(chip))
        self._live = [c for c in self._live if c.bottom > row]
        for other in self._live:
            self._link(other, placed)
        self._live.append(placed)
        self._paint(row, col, chip, placed, valid)

    def _register(
        self, index: int, first: int, chip: ResolvedChip, local: np.ndarray, row: int
    ) -> None:
        inst = self._instances
        last = first + len(chip)
        inst.score[first:last] = chip.scores
        inst.class_id[first:last] = chip.classes
        inst.chip[first:last] = index
        inst.min_row[first:last] = row
        inst.max_row[first:last] = row - 1  # an instance cut away entirely is never open
        if local.size:
            _row_span(local, row, inst.min_row[first - 1 : last], inst.max_row[first - 1 : last])

    def _link(self, a: _Chip, b: _Chip) -> None:
        """Join the instances of two chips whose masks agree where the chips overlap."""
        top, bottom = max(a.row, b.row), min(a.bottom, b.bottom)
        left = max(a.col, b.col)
        right = min(a.col + a.local.shape[1], b.col + b.local.shape[1])
        if top >= bottom or left >= right:
            return
        la = a.local[top - a.row : bottom - a.row, left - a.col : right - a.col]
        lb = b.local[top - b.row : bottom - b.row, left - b.col : right - b.col]
        xs, ys = _agreeing_pairs(la, lb, a.size, b.size, self.link_iou)
        self._join(xs + (a.first - 1), ys + (b.first - 1))

    def _join(self, xs: np.ndarray, ys: np.ndarray) -> None:
        """Join instances ``xs[k]`` and ``ys[k]`` pair after pair, never two of one chip."""
        if len(xs) == 0:
            return
        inst = self._instances
        _join_pairs(
            inst.parent, inst.chip, inst.next_member, inst.last_member,
            np.asarray(xs, np.int64), np.asarray(ys, np.int64),
        )  # fmt: skip

    def _paint(
        self, row: int, col: int, chip: ResolvedChip, placed: _Chip, valid: np.ndarray
    ) -> None:
        """Let the chip's votes take the pixels where they are stronger than earlier ones."""
        rows, cols = placed.local.shape
        self._grow_buffers(row + rows)
        # the chip's top, bottom, left and right edges that lie inside the area
        inner = (row > 0, row + rows < self.height, col > 0, col + cols < self.width)
        weight = self._edge_weight(rows, cols, inner)
        cut = _on_edges(placed.local, placed.size, *inner)  # instance numbers the edges cut
        self._instances.cut[cut + (placed.first - 1)] = True
        # the vote's factor by the chip's own instance number (0: background)
        factor = np.ones(placed.size + 1, np.float32)
        factor[cut] = self.cut_penalty
        factor[0] = self.background_weight
        r0 = row - self._top
        window = np.s_[r0 : r0 + rows, col : col + cols]
        _paint_votes(
            self._owner[window], self._vote[window], self._valid[window],
            chip.probability[:rows, :cols], weight, factor, placed.local, placed.first, valid,
        )  # fmt: skip

    def _edge_weight(
        self, rows: int, cols: int, inner: tuple[bool, bool, bool, bool]
    ) -> np.ndarray:
        """Vote weight by distance to the chip's edges that lie inside the area (``inner``)."""
        key = (rows, cols, *inner)
        if key not in self._weights:
            far = float(max(rows, cols))
            y = np.arange(rows, dtype=np.float32)
            x = np.arange(cols, dtype=np.float32)
            dy = np.minimum(y if inner[0] else far, (rows - 1 - y) if inner[1] else far)
            dx = np.minimum(x if inner[2] else far, (cols - 1 - x) if inner[3] else far)
            distance = np.minimum(dy[:, None], dx[None, :])
            self._weights[key] = np.minimum(1.0, (distance + 0.5) / self.ramp).astype(np.float32)
        return self._weights[key]

    def _grow_buffers(self, bottom: int) -> None:
        """Rows down to scene row ``bottom`` in the pixel buffers (room doubles as needed)."""
        rows = self._owner.shape[0]
        missing = bottom - (self._top + rows)
        if missing <= 0:
            return
        if rows + missing > self._owner_store.shape[0]:
            capacity = max(rows + missing, 2 * self._owner_store.shape[0])
            for name in ("_owner_store", "_vote_store", "_valid_store"):
                old = getattr(self, name)
                new = np.empty((capacity, self.width), old.dtype)
                new[:rows] = old[:rows]
                setattr(self, name, new)
        self._owner_store[rows : rows + missing] = 0
        self._vote_store[rows : rows + missing] = -1.0
        self._valid_store[rows : rows + missing] = True
        self._views(rows + missing)

    def _views(self, rows: int) -> None:
        self._owner = self._owner_store[:rows]
        self._vote = self._vote_store[:rows]
        self._valid = self._valid_store[:rows]

    # -- fields out -----------------------------------------------------------------------

    def close_rows(self, below: int) -> FieldBatch | None:
        """Hand over the fields no chip starting at row ``below`` or later can change."""
        inst = self._instances
        roots = inst.roots()
        if len(self._emitted) < inst.size:
            grown = np.zeros(max(inst.size, 2 * len(self._emitted)), bool)
            grown[: len(self._emitted)] = self._emitted
            self._emitted = grown
        open_roots = np.unique(roots[inst.max_row[: inst.size] >= below])
        is_open = np.zeros(inst.size, bool)
        is_open[open_roots] = True
        is_open[0] = True
        end = min(below, self._top + self._owner.shape[0]) - self._top
        batch = self._emit(roots, is_open, end) if end > 0 else None
        # keep the rows that open fields may still use, and one above them for the edge test
        members = np.flatnonzero(is_open[roots])
        members = members[members > 0]
        first_open = int(inst.min_row[members].min()) if members.size else below
        self._trim(max(0, min(first_open, below) - 1))
        if batch is not None:
            batch.later_from = min(first_open, below)
        return batch

    def finish(self) -> FieldBatch | None:
        """Hand over every field left (after the last chip)."""
        return self.close_rows(self.height + 1)

    def _emit(self, roots: np.ndarray, is_open: np.ndarray, end: int) -> FieldBatch | None:
        inst = self._instances
        owner = self._owner[:end]
        pixels = _pixel_counts(owner, inst.size)  # pixels each instance gave its field
        # the fields to hand over: roots seen here, finished and not handed over before (the
        # root of no instance, 0, stays open)
        is_field = np.zeros(inst.size, bool)
        is_field[roots[pixels > 0]] = True
        is_field &= ~is_open & ~self._emitted[: inst.size]
        field_roots = np.flatnonzero(is_field)
        if len(field_roots) == 0:
            return None
        n = len(field_roots)
        # by root: its field number (1..n), -1 a field of another batch, 0 no field
        number = np.where(is_field, np.cumsum(is_field, dtype=np.int32), np.int32(-1))
        number[0] = 0
        labels, touches = _field_labels(
            owner, self._valid, roots, number, n, self._top == 0, self.height - 1 - self._top
        )
        given = np.flatnonzero((pixels > 0) & is_field[roots])
        pixels = pixels[given]
        field_of = np.searchsorted(field_roots, roots[given])
        weighted = np.bincount(field_of, weights=pixels * inst.score[given], minlength=n)
        score = (weighted / np.bincount(field_of, weights=pixels, minlength=n)).astype(np.float32)
        order = np.lexsort((-pixels, field_of))
        first_of_field = order[np.r_[True, field_of[order][1:] != field_of[order][:-1]]]
        class_id = inst.class_id[given[first_of_field]]
        giving_chips = np.unique(field_of.astype(np.int64) << 32 | inst.chip[given])
        members = np.flatnonzero(is_field[roots])
        members = members[members > 0]
        member_field = np.searchsorted(field_roots, roots[members])
        seen = np.unique(member_field.astype(np.int64) << 32 | inst.chip[members])
        n_chips = np.bincount(seen >> 32, minlength=n).astype(np.int32)
        # joined across a seam: pixels from two or more chips, and a chip edge cut a piece
        was_cut = np.bincount(member_field, weights=inst.cut[members], minlength=n) > 0
        seam_merged = (np.bincount(giving_chips >> 32, minlength=n) > 1) & was_cut
        self._emitted[field_roots] = True
        return FieldBatch(
            row_offset=self._top,
            labels=labels,
            score=score,
            class_id=class_id,
            n_chips=n_chips,
            seam_merged=seam_merged,
            touches_edge_or_nodata=touches[1:],
        )

    def _trim(self, new_top: int) -> None:
        """Forget the buffer rows above scene row ``new_top`` (the rest move up in place)."""
        drop = new_top - self._top
        if drop <= 0:
            return
        rows = max(0, self._owner.shape[0] - drop)
        for store in (self._owner_store, self._vote_store, self._valid_store):
            store[:rows] = store[drop : drop + rows]  # numpy copies overlapping rows safely
        self._views(rows)
        self._top = new_top


# -- compiled kernels ---------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _row_span(local: np.ndarray, row: int, min_row: np.ndarray, max_row: np.ndarray) -> None:
    """First and last scene row of each instance of a chip (``min_row[k]`` for number k).

    ``min_row`` and ``max_row`` are views from the chip's instance 0, so only entries
    1.. change, and only for instances the chip shows.
    """
    for r in range(local.shape[0]):
        for c in range(local.shape[1]):
            k = local[r, c]
            if k == 0:
                continue
            if max_row[k] < min_row[k] or row + r < min_row[k]:
                min_row[k] = row + r
            if row + r > max_row[k]:
                max_row[k] = row + r


@numba.njit(cache=True, nogil=True)
def _agreeing_pairs(
    la: np.ndarray, lb: np.ndarray, size_a: int, size_b: int, link_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Instance pairs of two chips whose masks agree where the chips overlap.

    ``la`` and ``lb`` are the chips' own instance numbers over the overlap. Returns the
    pairs (numbers of a, numbers of b) whose intersection over union there exceeds
    ``link_iou``, by instance of a, then of b.
    """
    area_a = np.zeros(size_a + 1, np.int64)
    area_b = np.zeros(size_b + 1, np.int64)
    for r in range(la.shape[0]):
        for c in range(la.shape[1]):
            area_a[la[r, c]] += 1
            area_b[lb[r, c]] += 1
    # the instances seen in the overlap, numbered 1.. (0: none)
    seen_a = np.zeros(size_a + 1, np.int64)
    seen_b = np.zeros(size_b + 1, np.int64)
    ids_a = np.zeros(size_a + 1, np.int64)
    ids_b = np.zeros(size_b + 1, np.int64)
    n_a = n_b = 0
    for k in range(1, size_a + 1):
        if area_a[k]:
            n_a += 1
            seen_a[k] = n_a
            ids_a[n_a] = k
    for k in range(1, size_b + 1):
        if area_b[k]:
            n_b += 1
            seen_b[k] = n_b
            ids_b[n_b] = k
    columns = n_b + 1
    common = np.zeros((n_a + 1) * columns, np.int64)
    for r in range(la.shape[0]):
        for c in range(la.shape[1]):
            common[seen_a[la[r, c]] * columns + seen_b[lb[r, c]]] += 1
    agree = np.zeros((n_a + 1) * columns, np.bool_)
    found = 0
    for i in range(1, n_a + 1):
        for j in range(1, n_b + 1):
            both = common[i * columns + j]
            if both and both > link_iou * (area_a[ids_a[i]] + area_b[ids_b[j]] - both):
                agree[i * columns + j] = True
                found += 1
    xs = np.empty(found, np.int64)
    ys = np.empty(found, np.int64)
    found = 0
    for i in range(1, n_a + 1):
        for j in range(1, n_b + 1):
            if agree[i * columns + j]:
                xs[found] = ids_a[i]
                ys[found] = ids_b[j]
                found += 1
    return xs, ys


@numba.njit(cache=True, nogil=True)
def _join_pairs(
    parent: np.ndarray,
    chip: np.ndarray,
    next_member: np.ndarray,
    last_member: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
) -> None:
    """Join ``xs[k]`` and ``ys[k]`` in turn, unless a chip has an instance in both fields.

    The smaller root stays the root; the other field's member list is appended to its own.
    """
    for k in range(len(xs)):
        rx, ry = find_root(parent, xs[k]), find_root(parent, ys[k])
        if rx == ry:
            continue
        shared = False
        a = rx
        while a >= 0 and not shared:
            b = ry
            while b >= 0:
                if chip[a] == chip[b]:
                    shared = True  # two instances of one chip are two fields
                    break
                b = next_member[b]
            a = next_member[a]
        if shared:
            continue
        root, child = (rx, ry) if rx < ry else (ry, rx)
        parent[child] = root
        next_member[last_member[root]] = child
        last_member[root] = last_member[child]


@numba.njit(cache=True, nogil=True)
def _paint_votes(
    owner: np.ndarray,
    votes: np.ndarray,
    area_valid: np.ndarray,
    probability: np.ndarray,
    weight: np.ndarray,
    factor: np.ndarray,
    local: np.ndarray,
    first: int,
    valid: np.ndarray,
) -> None:
    """Give each pixel to the chip's vote where it beats the votes cast before (in place).

    The vote is probability x edge weight x the instance's factor (``factor[0]``: background);
    the pixel's owner becomes the instance's id (``first`` + number - 1) or 0.
    """
    for r in range(local.shape[0]):
        for c in range(local.shape[1]):
            k = local[r, c]
            vote = probability[r, c] * weight[r, c] * factor[k]
            if vote > votes[r, c]:
                votes[r, c] = vote
                owner[r, c] = k + first - 1 if k > 0 else 0
            if not valid[r, c]:
                area_valid[r, c] = False


@numba.njit(cache=True, nogil=True)
def _pixel_counts(owner: np.ndarray, size: int) -> np.ndarray:
    """(size,) pixels owned by each instance id."""
    counts = np.zeros(size, np.int64)
    for r in range(owner.shape[0]):
        for c in range(owner.shape[1]):
            counts[owner[r, c]] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def _field_labels(
    owner: np.ndarray,
    valid: np.ndarray,
    roots: np.ndarray,
    number: np.ndarray,
    n: int,
    at_area_top: bool,
    last_row: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The batch's label image and which of its fields touch nodata or the area's edge.

    Labels are ``number`` of the pixel's root. A pixel is on the edge in the area's first
    (``at_area_top``: buffer row 0) and last (buffer row ``last_row``) rows and its first and
    last columns; it is beside nodata where it or a 4-neighbour in the buffer is invalid.
    """
    rows, width = owner.shape
    valid_rows = min(rows + 1, valid.shape[0])
    labels = np.empty((rows, width), np.int32)
    touches = np.zeros(n + 1, np.bool_)
    for r in range(rows):
        for c in range(width):
            label = number[roots[owner[r, c]]]
            labels[r, c] = label
            if label <= 0 or touches[label]:
                continue
            if (
                c == 0
                or c == width - 1
                or (at_area_top and r == 0)
                or r == last_row
                or not valid[r, c]
                or (r > 0 and not valid[r - 1, c])
                or (r + 1 < valid_rows and not valid[r + 1, c])
                or not valid[r, c - 1]
                or not valid[r, c + 1]
            ):
                touches[label] = True
    return labels, touches


@numba.njit(cache=True, nogil=True)
def _on_edges(
    local: np.ndarray, size: int, top: bool, bottom: bool, left: bool, right: bool
) -> np.ndarray:
    """The instance numbers (1..size) found on the chosen edges of a chip, ascending."""
    found = np.zeros(size + 1, np.bool_)
    rows, cols = local.shape
    for c in range(cols):
        if top:
            found[local[0, c]] = True
        if bottom:
            found[local[rows - 1, c]] = True
    for r in range(rows):
        if left:
            found[local[r, 0]] = True
        if right:
            found[local[r, cols - 1]] = True
    found[0] = False
    return np.flatnonzero(found)
