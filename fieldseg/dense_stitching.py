"""Seams for dense models: blend overlapping chip maps, extract fields on the blend as it streams.

A model with per-pixel outputs (the boundary-aware U-Net) allows what chip-instance models do
not: its chips' probability maps are averaged where chips overlap, with weights falling off
towards each chip's edge (where a chip has the least context), and fields are extracted on the
blended map. No field is then ever cut by a chip seam, because there are no chip instances to
join.

Streaming, so that memory stays flat however large the scene: the blend is kept for a band of
rows only. When the chips of a row are done, the rows above the next chip row are final; fields
are extracted on the final rows (:func:`fieldseg.instance_extraction.extract_fields`), and
those that end before the last final row are handed over. Fields touching it may go on below:
their rows stay in the band and are extracted again with the next rows, the handed-over fields'
pixels left out. A field taller than ``max_carry_rows`` is handed over cut (the limit keeps
memory bounded; it is several chips tall, so only fields kilometres long are cut).

The blended maps themselves can be handed on as well (``row_sink``, e.g.
:class:`fieldseg.probability_rasters.ProbabilityRasterWriter` for ``--write-rasters``): each row
once, in order, as soon as it is final, so they too stream without the scene ever being held.

The output is the same :class:`~fieldseg.stitching.FieldBatch` as the chip-instance stitcher's,
traced by the same :class:`~fieldseg.field_polygons.FieldTracer`. Attributes: ``score`` from
the extraction; ``n_chips`` is the number of chips whose footprint meets the field's bounding
box; ``seam_merged`` is True when no single chip holds the whole field (the blend joined it
across a seam); ``touches_edge_or_nodata`` when the field touches the predicted area's edge or
an invalid pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fieldseg.instance_extraction import ExtractionParams, extract_fields
from fieldseg.stitching import FieldBatch

#: Receives final blended rows: (first area row, extent, boundary, valid), each (rows, width);
#: extent and boundary are meaningless where valid is False (no chip saw a valid pixel).
RowSink = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]


def edge_weights(size: int, ramp: int) -> np.ndarray:
    """(size,) blending weight along one chip axis: rising from the edges over ``ramp`` pixels.

    Never zero, so a pixel seen by one chip only keeps that chip's value.
    """
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    return np.clip((distance + 1.0) / max(ramp, 1), 1e-3, 1.0)


class DenseBlender:
    """Blends chips' extent and boundary maps and hands over finished fields row band by band.

    Args:
        height, width: the predicted area in pixels.
        chip_size, overlap: the chip grid (chips start at multiples of ``chip_size - overlap``).
        params: the extraction thresholds (the model's, tuned on val).
        chip_rows, chip_cols: the chips' first rows and columns (for ``n_chips``).
        score_threshold: fields scoring less are dropped.
        max_carry_rows: at most this many rows of unfinished fields wait for the next rows.
        row_sink: called with the blended maps of rows once they are final (each row once, in
            order), e.g. to write them as rasters.
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        chip_size: int,
        overlap: int,
        params: ExtractionParams,
        chip_rows: Sequence[int],
        chip_cols: Sequence[int],
        score_threshold: float = 0.0,
        max_carry_rows: int | None = None,
        row_sink: RowSink | None = None,
    ) -> None:
        self.height, self.width = height, width
        self.chip_size, self.overlap = chip_size, overlap
        self.params = params
        self.score_threshold = score_threshold
        self.chip_rows = np.asarray(chip_rows)
        self.chip_cols = np.asarray(chip_cols)
        self.max_carry_rows = max_carry_rows or 4 * chip_size
        self.row_sink = row_sink
        self.rows_sunk = 0  # area rows handed to row_sink (always >= self.top)
        ramp = edge_weights(chip_size, max(overlap // 2, 1))
        self._weights = np.outer(ramp, ramp)
        self.top = 0  # scene row of the band's first row
        self._extent = np.zeros((0, width), np.float32)
        self._boundary = np.zeros((0, width), np.float32)
        self._weight = np.zeros((0, width), np.float32)
        self._valid = np.zeros((0, width), bool)
        self._done = np.zeros((0, width), bool)  # pixels of fields already handed over

    def add_chip(
        self, row: int, col: int, extent: np.ndarray, boundary: np.ndarray, valid: np.ndarray
    ) -> None:
        """Add a chip's maps at scene pixel (row, col); maps are (h, w), cut at the area edge."""
        rows = min(extent.shape[0], self.height - row)
        cols = min(extent.shape[1], self.width - col)
        self._grow(row + rows)
        top = row - self.top
        if top < 0:
            raise ValueError(f"chip row {row} lies above rows already handed over ({self.top})")
        weight = self._weights[:rows, :cols] * valid[:rows, :cols]
        window = (slice(top, top + rows), slice(col, col + cols))
        self._extent[window] += weight * extent[:rows, :cols]
        self._boundary[window] += weight * boundary[:rows, :cols]
        self._weight[window] += weight
        self._valid[window] |= valid[:rows, :cols]

    def close_rows(self, below: int) -> FieldBatch | None:
        """Rows above ``below`` are final: hand over the fields that end within them."""
        return self._extract(min(below, self.height), final=below >= self.height)

    def finish(self) -> FieldBatch | None:
        """Every row is final: hand over the remaining fields."""
        return self._extract(self.height, final=True)

    # ---------------------------------------------------------------------------------------

    def _grow(self, bottom: int) -> None:
        missing = bottom - (self.top + self._extent.shape[0])
        if missing <= 0:
            return
        self._extent = np.vstack([self._extent, np.zeros((missing, self.width), np.float32)])
        self._boundary = np.vstack([self._boundary, np.zeros((missing, self.width), np.float32)])
        self._weight = np.vstack([self._weight, np.zeros((missing, self.width), np.float32)])
        self._valid = np.vstack([self._valid, np.zeros((missing, self.width), bool)])
        self._done = np.vstack([self._done, np.zeros((missing, self.width), bool)])

    def _extract(self, below: int, *, final: bool) -> FieldBatch | None:
        rows = below - self.top
        if rows <= 0:
            return None
        self._grow(below)
        weight = np.maximum(self._weight[:rows], 1e-12)
        extent = np.where(self._weight[:rows] > 0, self._extent[:rows] / weight, 0.0)
        boundary = np.where(self._weight[:rows] > 0, self._boundary[:rows] / weight, 0.0)
        if self.row_sink is not None and below > self.rows_sunk:
            first = self.rows_sunk - self.top  # rows before it were sunk with earlier bands
            self.row_sink(self.rows_sunk, extent[first:], boundary[first:], self._valid[first:rows])
            self.rows_sunk = below
        valid = self._valid[:rows] & ~self._done[:rows]
        fields = extract_fields(
            extent.astype(np.float32), boundary.astype(np.float32), valid, self.params
        )
        labels = fields.labels.astype(np.int64)
        count = len(fields.scores)
        bottom_ids = np.unique(labels[-1][labels[-1] > 0])
        open_fields = np.zeros(count + 1, bool)
        carry_from = rows  # first band row kept for the next extraction
        if not final and len(bottom_ids):
            open_fields[bottom_ids] = True
            first_row = np.full(count + 1, rows, np.int64)
            ys = np.nonzero(labels)[0]
            np.minimum.at(first_row, labels[labels > 0], ys)
            carry_from = int(first_row[bottom_ids].min())
            if rows - carry_from > self.max_carry_rows:  # too tall to wait: cut it here
                open_fields[:] = False
                carry_from = rows
        closed = (labels > 0) & ~open_fields[labels]
        weak = closed & np.r_[False, np.asarray(fields.scores) < self.score_threshold][labels]
        closed &= ~weak
        batch = self._batch(labels, closed, fields.scores, open_fields)
        if batch is not None and not final:
            batch.later_from = self.top + carry_from
        # keep the rows from carry_from on; mark handed-over pixels done
        self._done[:rows] |= closed | weak  # weak fields are dropped for good
        keep = slice(carry_from, None)
        self._extent = self._extent[keep]
        self._boundary = self._boundary[keep]
        self._weight = self._weight[keep]
        self._valid = self._valid[keep]
        self._done = self._done[keep]
        self.top += carry_from
        return batch

    def _batch(
        self,
        labels: np.ndarray,
        closed: np.ndarray,
        scores: np.ndarray,
        open_fields: np.ndarray,
    ) -> FieldBatch | None:
        """The closed fields as a batch (others -1), with their attributes."""
        count = len(scores)
        handed = np.flatnonzero(~open_fields[1:]) + 1  # extraction ids handed over
        handed = handed[np.isin(handed, np.unique(labels[closed]))]
        if len(handed) == 0:
            return None
        renumber = np.zeros(count + 1, np.int32)
        renumber[handed] = np.arange(1, len(handed) + 1, dtype=np.int32)
        out = np.where(closed, renumber[labels], 0).astype(np.int32)
        out[(labels > 0) & ~closed] = -1  # still open: another batch's
        out[self._done[: labels.shape[0]]] = -1  # handed over earlier
        rows, cols = np.nonzero(out > 0)
        ids = out[rows, cols]
        k = len(handed)
        min_r, max_r = np.full(k + 1, labels.shape[0]), np.full(k + 1, -1)
        min_c, max_c = np.full(k + 1, self.width), np.full(k + 1, -1)
        np.minimum.at(min_r, ids, rows)
        np.maximum.at(max_r, ids, rows)
        np.minimum.at(min_c, ids, cols)
        np.maximum.at(max_c, ids, cols)
        min_r, max_r = min_r[1:] + self.top, max_r[1:] + self.top
        min_c, max_c = min_c[1:], max_c[1:]
        n_chips, single = self._chips_meeting(min_r, max_r, min_c, max_c)
        return FieldBatch(
            row_offset=self.top,
            labels=out,
            score=np.asarray(scores, np.float32)[handed - 1],
            class_id=np.ones(k, np.int64),
            n_chips=n_chips.astype(np.int32),
            seam_merged=~single & (n_chips >= 2),
            touches_edge_or_nodata=self._touches(out, min_r, max_r, min_c, max_c),
        )

    def _chips_meeting(
        self, min_r: np.ndarray, max_r: np.ndarray, min_c: np.ndarray, max_c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Chips whose footprint meets each box, and whether one chip holds the whole box."""
        size = self.chip_size
        r0, c0 = self.chip_rows, self.chip_cols
        rows_meeting = (r0[None, :] <= max_r[:, None]) & (r0[None, :] + size > min_r[:, None])
        cols_meeting = (c0[None, :] <= max_c[:, None]) & (c0[None, :] + size > min_c[:, None])
        rows_holding = (r0[None, :] <= min_r[:, None]) & (r0[None, :] + size > max_r[:, None])
        cols_holding = (c0[None, :] <= min_c[:, None]) & (c0[None, :] + size > max_c[:, None])
        n_chips = rows_meeting.sum(axis=1) * cols_meeting.sum(axis=1)
        single = rows_holding.any(axis=1) & cols_holding.any(axis=1)
        return n_chips, single

    def _touches(
        self,
        out: np.ndarray,
        min_r: np.ndarray,
        max_r: np.ndarray,
        min_c: np.ndarray,
        max_c: np.ndarray,
    ) -> np.ndarray:
        """Fields at the area's edge or beside an invalid pixel (4-neighbours)."""
        touches = (min_r == 0) | (max_r == self.height - 1)
        touches |= (min_c == 0) | (max_c == self.width - 1)
        invalid = ~self._valid[: out.shape[0]]
        near = np.zeros_like(invalid)
        near[1:] |= invalid[:-1]
        near[:-1] |= invalid[1:]
        near[:, 1:] |= invalid[:, :-1]
        near[:, :-1] |= invalid[:, 1:]
        hit = np.unique(out[near & (out > 0)])
        touches[hit - 1] = True
        return touches
