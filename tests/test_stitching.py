"""Joining chips into fields (fieldseg.stitching) on hand-made chips whose answer is known."""

from __future__ import annotations

import numpy as np

from fieldseg.chip_resolution import ResolvedChip
from fieldseg.stitching import FieldBatch, SceneStitcher

CHIP, OVERLAP = 16, 6
STARTS = [0, 10]  # a 26 x 26 area in 2 x 2 chips


def _chip(truth: np.ndarray, row: int, col: int, drop: tuple[int, ...] = ()) -> ResolvedChip:
    """What a perfect chip model sees of a truth label image in one chip (ids renumbered)."""
    window = truth[row : row + CHIP, col : col + CHIP]
    present = [v for v in np.unique(window) if v > 0 and v not in drop]
    labels = np.zeros(window.shape, np.int32)
    for k, value in enumerate(present, start=1):
        labels[window == value] = k
    return ResolvedChip(
        labels=labels,
        probability=np.ones(window.shape, np.float32),
        scores=np.linspace(0.9, 0.6, len(present)).astype(np.float32),
        classes=np.ones(len(present), np.int64),
    )


def _stitch(truth: np.ndarray, chips: dict[tuple[int, int], ResolvedChip] | None = None,
            valid: np.ndarray | None = None) -> list[FieldBatch]:  # fmt: skip
    height, width = truth.shape
    valid = np.ones(truth.shape, bool) if valid is None else valid
    stitcher = SceneStitcher(height, width, overlap=OVERLAP)
    batches = []
    for i, row in enumerate(STARTS):
        for col in STARTS:
            chip = (chips or {}).get((row, col)) or _chip(truth, row, col)
            stitcher.add_chip(row, col, chip, valid[row : row + CHIP, col : col + CHIP])
        below = STARTS[i + 1] if i + 1 < len(STARTS) else height + 1
        batches.append(stitcher.close_rows(below))
    return [b for b in batches if b is not None]


def _labels(batches: list[FieldBatch], shape: tuple[int, int]) -> np.ndarray:
    """The batches' fields painted into one image, numbered across batches."""
    out = np.zeros(shape, np.int64)
    offset = 0
    for batch in batches:
        rows = slice(batch.row_offset, batch.row_offset + batch.labels.shape[0])
        band = out[rows]
        assert not (band[batch.labels > 0] > 0).any(), "a pixel was given to two fields"
        band[batch.labels > 0] = batch.labels[batch.labels > 0] + offset
        offset += len(batch)
    return out


def _same_partition(result: np.ndarray, truth: np.ndarray) -> bool:
    pairs = {(int(a), int(b)) for a, b in zip(result.ravel(), truth.ravel(), strict=True)}
    return all((a == 0) == (b == 0) for a, b in pairs) and len(pairs) == len(
        {a for a, _ in pairs}
    ) == len({b for _, b in pairs})


def test_a_field_over_four_chips_is_one_field() -> None:
    truth = np.zeros((26, 26), np.int32)
    truth[3:23, 4:22] = 1  # larger than a chip, cut by both seams
    truth[0:2, 0:5] = 2
    batches = _stitch(truth)
    assert _same_partition(_labels(batches, truth.shape), truth)
    big = next(b for b in batches if (b.labels > 0).sum() > 300)
    k = np.bincount(big.labels.ravel()).argmax() - 1 + 1
    assert big.n_chips[k - 1] == 4 and big.seam_merged[k - 1]


def test_touching_neighbours_cut_by_a_seam_stay_apart() -> None:
    truth = np.zeros((26, 26), np.int32)
    for i, col in enumerate(range(1, 25, 3)):  # 3 px strips side by side, all touching
        truth[2:24, col : col + 3] = i + 1
    batches = _stitch(truth)
    assert _same_partition(_labels(batches, truth.shape), truth)
    assert sum(len(b) for b in batches) == 8


def test_a_blob_in_one_chip_never_chains_two_fields() -> None:
    truth = np.zeros((26, 26), np.int32)
    truth[2:24, 2:12] = 1
    truth[2:24, 12:24] = 2
    blob = _chip(truth, 0, 10)
    blob.labels[blob.labels > 0] = 1  # the top-right chip sees both fields as one
    blob.scores, blob.classes = blob.scores[:1], blob.classes[:1]
    labels = _labels(_stitch(truth, {(0, 10): blob}), truth.shape)
    assert len(np.unique(labels[truth == 1])) == 1 and len(np.unique(labels[truth == 2])) == 1
    assert labels[5, 5] != labels[20, 20]  # the other chips keep them apart


def test_a_missing_piece_leaves_the_field_to_the_chip_that_saw_it() -> None:
    truth = np.zeros((26, 26), np.int32)
    truth[2:14, 8:18] = 1  # in all four chips' reach, cut by the column seam
    batches = _stitch(truth, {(0, 10): _chip(truth, 0, 10, drop=(1,))})
    labels = _labels(batches, truth.shape)
    assert len(np.unique(labels[truth == 1])) == 1 and labels[5, 9] > 0
    assert ((labels > 0) & (truth == 0)).sum() == 0


def test_fields_are_handed_over_as_the_window_moves_and_flag_nodata() -> None:
    truth = np.zeros((26, 26), np.int32)
    truth[1:5, 1:8] = 1  # finished after the first row of chips
    truth[18:24, 3:9] = 2
    truth[18:24, 12:20] = 3
    valid = np.ones(truth.shape, bool)
    valid[24:, 12:] = False  # nodata beside field 3
    batches = _stitch(truth, valid=valid)
    assert len(batches) == 2 and len(batches[0]) == 1 and batches[0].row_offset == 0
    assert batches[0].touches_edge_or_nodata.tolist() == [False]
    last = batches[1]
    touching = {int(np.unique(truth[last.row_offset :][last.labels == k + 1])[0]): bool(t)
                for k, t in enumerate(last.touches_edge_or_nodata)}  # fmt: skip
    assert touching == {2: False, 3: True}


def test_pairs_are_joined_in_bulk_as_one_by_one() -> None:
    # instances of 6 chips, joined by random links (chains, cycles, links inside one chip)
    rng = np.random.default_rng(0)
    chip_of = rng.integers(0, 6, 200)
    stitcher = SceneStitcher(10, 10, overlap=2)
    first = stitcher._instances.add(len(chip_of))
    stitcher._instances.chip[first : first + len(chip_of)] = chip_of
    parent = list(range(first + len(chip_of)))  # the reference: one pair after another
    chips = {i: {int(chip_of[i - first])} for i in range(first, first + len(chip_of))}

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for _ in range(30):
        xs = rng.integers(first, first + len(chip_of), 12)
        ys = rng.integers(first, first + len(chip_of), 12)
        stitcher._join(xs, ys)
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            rx, ry = find(x), find(y)
            if rx != ry and not chips[rx] & chips[ry]:
                root, child = min(rx, ry), max(rx, ry)
                parent[child] = root
                chips[root] |= chips.pop(child)
    expected = [find(i) for i in range(len(parent))]
    assert stitcher._instances.roots().tolist() == expected
    assert len(set(expected)) < len(expected) - 100  # many were joined
