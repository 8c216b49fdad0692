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

import numpy as np

from fieldseg.chip_resolution import ResolvedChip


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
    labels: np.ndarray  # global instance ids, 0 none
    local: np.ndarray  # the chip's own instance numbers (1..size), 0 none
    first: int  # the global id of the chip's instance 1
    size: int  # the chip's instances

    @property
    def bottom(self) -> int:
        return self.row + self.labels.shape[0]


@dataclass
class _Instances:
    """Growable per-instance arrays (id 0 is the 'no instance' sentinel)."""

    size: int = 1
    parent: np.ndarray = field(default_factory=lambda: np.zeros(1024, np.int64))
    score: np.ndarray = field(default_factory=lambda: np.zeros(1024, np.float32))
    class_id: np.ndarray = field(default_factory=lambda: np.zeros(1024, np.int64))
    chip: np.ndarray = field(default_factory=lambda: np.full(1024, -1, np.int64))
    min_row: np.ndarray = field(default_factory=lambda: np.zeros(1024, np.int64))
    max_row: np.ndarray = field(default_factory=lambda: np.zeros(1024, np.int64))
    cut: np.ndarray = field(default_factory=lambda: np.zeros(1024, bool))

    def add(self, n: int) -> int:
        """Room for ``n`` new instances; returns the first new id."""
        first = self.size
        self.size += n
        if self.size > len(self.parent):
            capacity = max(self.size, 2 * len(self.parent))
            for name in ("parent", "score", "class_id", "chip", "min_row", "max_row", "cut"):
                old = getattr(self, name)
                new = np.zeros(capacity, old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
        self.parent[first : self.size] = np.arange(first, self.size)
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
        self._chip_sets: dict[int, set[int]] = {}
        self._live: list[_Chip] = []
        self._n_chips = 0
        self._top = 0  # scene row of the buffers' first row
        self._owner = np.zeros((0, width), np.int32)
        self._vote = np.zeros((0, width), np.float32)
        self._valid = np.ones((0, width), bool)
        self._emitted = np.zeros(1024, bool)
        self._weights: dict[tuple[int, int, bool, bool, bool, bool], np.ndarray] = {}

    # -- chips in -------------------------------------------------------------------------

    def add_chip(self, row: int, col: int, chip: ResolvedChip, valid: np.ndarray) -> None:
        """Add one chip whose top-left pixel is (``row``, ``col``) of the area.

        ``chip`` and ``valid`` may extend beyond the area (a padded chip); that part is ignored.
        """
        rows = min(chip.labels.shape[0], self.height - row)
        cols = min(chip.labels.shape[1], self.width - col)
        local = chip.labels[:rows, :cols].astype(np.int32)  # kept while the chip is live
        valid = valid[:rows, :cols]
        index = self._n_chips
        self._n_chips += 1
        first = self._instances.add(len(chip))
        ids = np.where(local > 0, local + (first - 1), 0).astype(np.int32)
        self._register(index, first, chip, local, row)
        placed = _Chip(index, row, col, ids, local, first, len(chip))
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
        if local.size == 0:
            return
        # instances x rows: which instance shows in which row
        rows = local.shape[0]
        present = np.zeros((len(chip) + 1, rows), bool)
        present.ravel()[(local * rows + np.arange(rows)[:, None]).ravel()] = True
        present = present[1:]
        seen = np.flatnonzero(present.any(axis=1))
        top = present.argmax(axis=1)
        bottom = rows - 1 - present[:, ::-1].argmax(axis=1)
        inst.min_row[first + seen] = row + top[seen]
        inst.max_row[first + seen] = row + bottom[seen]

    def _link(self, a: _Chip, b: _Chip) -> None:
        """Join the instances of two chips whose masks agree where the chips overlap."""
        top, bottom = max(a.row, b.row), min(a.bottom, b.bottom)
        left = max(a.col, b.col)
        right = min(a.col + a.labels.shape[1], b.col + b.labels.shape[1])
        if top >= bottom or left >= right:
            return
        la = a.local[top - a.row : bottom - a.row, left - a.col : right - a.col].ravel()
        lb = b.local[top - b.row : bottom - b.row, left - b.col : right - b.col].ravel()
        # the instances of each chip seen in the overlap, numbered 1.. (0: none)
        area_a = np.bincount(la, minlength=a.size + 1)
        area_b = np.bincount(lb, minlength=b.size + 1)
        ids_a = np.flatnonzero(area_a[1:]) + 1
        ids_b = np.flatnonzero(area_b[1:]) + 1
        if len(ids_a) == 0 or len(ids_b) == 0:
            return
        seen_a = np.zeros(a.size + 1, np.int64)
        seen_a[ids_a] = np.arange(1, len(ids_a) + 1)
        seen_b = np.zeros(b.size + 1, np.int64)
        seen_b[ids_b] = np.arange(1, len(ids_b) + 1)
        columns = len(ids_b) + 1
        pairs = np.bincount(seen_a[la] * columns + seen_b[lb], minlength=(len(ids_a) + 1) * columns)
        common = pairs.reshape(len(ids_a) + 1, columns)[1:, 1:]
        pa, pb = np.nonzero(common)  # by instance of a, then of b
        common = common[pa, pb]
        union = area_a[ids_a[pa]] + area_b[ids_b[pb]] - common
        agree = common > self.link_iou * union
        self._join(ids_a[pa[agree]] + (a.first - 1), ids_b[pb[agree]] + (b.first - 1))

    def _join(self, xs: np.ndarray, ys: np.ndarray) -> None:
        """Join instances ``xs[k]`` and ``ys[k]`` pair after pair, never two of one chip.

        Roots are found for all pairs at once; a root that an earlier pair of this call joined
        to another is followed to its new root.
        """
        if len(xs) == 0:
            return
        inst = self._instances
        roots_x, roots_y = self._roots_of(xs), self._roots_of(ys)
        moved: dict[int, int] = {}  # root -> the root it was joined to, in this call
        for rx, ry, chip_x, chip_y in zip(
            roots_x.tolist(),
            roots_y.tolist(),
            inst.chip[roots_x].tolist(),
            inst.chip[roots_y].tolist(),
            strict=True,
        ):
            while rx in moved:
                rx = moved[rx]
            while ry in moved:
                ry = moved[ry]
            if rx == ry:
                continue
            # a root without a set is a lone instance (a moved root always has one)
            chips_x = self._chip_sets.get(rx) or {chip_x}
            chips_y = self._chip_sets.get(ry) or {chip_y}
            if not chips_x.isdisjoint(chips_y):
                continue  # two instances of one chip are two fields, whatever links them
            root, child = (rx, ry) if rx < ry else (ry, rx)
            inst.parent[child] = root
            self._chip_sets[root] = chips_x | chips_y
            self._chip_sets.pop(child, None)
            moved[child] = root

    def _roots_of(self, ids: np.ndarray) -> np.ndarray:
        """The roots of instance ``ids`` (halving the paths walked)."""
        parent = self._instances.parent
        while True:
            up = parent[ids]
            if np.array_equal(up, ids):
                return ids
            grand = parent[up]
            parent[ids] = grand
            ids = grand

    def _paint(
        self, row: int, col: int, chip: ResolvedChip, placed: _Chip, valid: np.ndarray
    ) -> None:
        """Let the chip's votes take the pixels where they are stronger than earlier ones."""
        ids = placed.labels
        rows, cols = ids.shape
        self._grow_buffers(row + rows)
        weight = self._edge_weight(row, col, rows, cols)
        cut = self._cut_instances(row, col, ids)
        self._instances.cut[cut] = True
        # the vote's factor by the chip's own instance number (0: background)
        factor = np.ones(placed.size + 1, np.float32)
        factor[cut - (placed.first - 1)] = self.cut_penalty
        factor[0] = self.background_weight
        vote = chip.probability[:rows, :cols] * weight * factor[placed.local]
        r0 = row - self._top
        owner = self._owner[r0 : r0 + rows, col : col + cols]
        votes = self._vote[r0 : r0 + rows, col : col + cols]
        stronger = vote > votes
        np.copyto(owner, ids, where=stronger)
        np.copyto(votes, vote, where=stronger)
        self._valid[r0 : r0 + rows, col : col + cols] &= valid

    def _edge_weight(self, row: int, col: int, rows: int, cols: int) -> np.ndarray:
        """Vote weight by distance to the chip's edges that lie inside the area."""
        inner = (row > 0, row + rows < self.height, col > 0, col + cols < self.width)
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

    def _cut_instances(self, row: int, col: int, ids: np.ndarray) -> np.ndarray:
        """Instance ids that reach a chip edge lying inside the area."""
        edges = []
        if row > 0:
            edges.append(ids[0])
        if row + ids.shape[0] < self.height:
            edges.append(ids[-1])
        if col > 0:
            edges.append(ids[:, 0])
        if col + ids.shape[1] < self.width:
            edges.append(ids[:, -1])
        if not edges:
            return np.zeros(0, np.int32)
        found = np.unique(np.concatenate(edges))
        return found[found > 0]

    def _grow_buffers(self, bottom: int) -> None:
        missing = bottom - (self._top + self._owner.shape[0])
        if missing > 0:
            width = self.width
            self._owner = np.vstack([self._owner, np.zeros((missing, width), np.int32)])
            self._vote = np.vstack([self._vote, np.full((missing, width), -1.0, np.float32)])
            self._valid = np.vstack([self._valid, np.ones((missing, width), bool)])

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
        root_of = roots[owner]
        # the fields to hand over: roots seen here, finished and not handed over before (the
        # root of no instance, 0, stays open)
        is_field = np.zeros(inst.size, bool)
        is_field[root_of] = True
        is_field &= ~is_open & ~self._emitted[: inst.size]
        field_roots = np.flatnonzero(is_field)
        if len(field_roots) == 0:
            return None
        n = len(field_roots)
        # by root: its field number (1..n), -1 a field of another batch, 0 no field
        number = np.where(is_field, np.cumsum(is_field, dtype=np.int32), np.int32(-1))
        number[0] = 0
        labels = number[root_of]
        # pixels each instance gave its field
        pixels = np.bincount(owner.ravel(), minlength=inst.size)
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
        touching = labels[self._near_invalid(end)]
        touches = np.zeros(n + 1, bool)
        touches[touching[touching > 0]] = True
        touches = touches[1:]
        self._emitted[field_roots] = True
        return FieldBatch(
            row_offset=self._top,
            labels=labels,
            score=score,
            class_id=class_id,
            n_chips=n_chips,
            seam_merged=seam_merged,
            touches_edge_or_nodata=touches,
        )

    def _near_invalid(self, end: int) -> np.ndarray:
        """Pixels of buffer rows [0, end) on the area's edge or beside nodata."""
        rows = min(end + 1, self._valid.shape[0])
        invalid = ~self._valid[:rows]
        near = invalid.copy()
        near[1:] |= invalid[:-1]
        near[:-1] |= invalid[1:]
        near[:, 1:] |= invalid[:, :-1]
        near[:, :-1] |= invalid[:, 1:]
        near[:, 0] = near[:, -1] = True
        if self._top == 0:
            near[0] = True
        if self._top + rows == self.height:
            near[-1] = True
        return near[:end]

    def _trim(self, new_top: int) -> None:
        drop = new_top - self._top
        if drop <= 0:
            return
        self._owner = self._owner[drop:].copy()
        self._vote = self._vote[drop:].copy()
        self._valid = self._valid[drop:].copy()
        self._top = new_top
