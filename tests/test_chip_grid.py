"""Chip placement: full-size chips, edge chips shifted inward, one padded chip for tiny scenes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldseg.chip_grid import check_chip_geometry, chip_starts, chip_windows
from fieldseg.errors import ConfigError


def test_chip_starts_examples() -> None:
    assert chip_starts(300, 128, 96) == [0, 96, 172]
    assert chip_starts(260, 128, 96) == [0, 96, 132]
    assert chip_starts(256, 128, 128) == [0, 128]  # exact fit: no extra chip
    assert chip_starts(257, 128, 128) == [0, 128, 129]
    assert chip_starts(128, 128, 96) == [0]
    assert chip_starts(50, 128, 96) == [0]  # smaller than a chip: one (padded) chip


def test_chip_windows_row_by_row() -> None:
    windows = chip_windows(300, 260, 128, 32)
    offsets = [(int(w.row_off), int(w.col_off)) for w in windows]
    assert offsets == [(r, c) for r in (0, 96, 132) for c in (0, 96, 172)]
    assert all((w.width, w.height) == (128, 128) for w in windows)


@pytest.mark.parametrize(
    ("chip", "overlap", "message"),
    [
        (15, 0, "chip size must be at least 16 pixels, got 15"),
        (64, -1, "overlap must be >= 0, got -1"),
        (64, 64, r"overlap \(64\) must be smaller than the chip size \(64\)"),
        (64, 65, r"overlap \(65\) must be smaller than the chip size \(64\)"),
    ],
)
def test_check_chip_geometry_errors(chip: int, overlap: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_chip_geometry(chip, overlap)
    with pytest.raises(ConfigError, match=message):
        chip_windows(500, 500, chip, overlap)


def test_check_chip_geometry_returns_the_stride() -> None:
    assert check_chip_geometry(256, 64) == 192
    assert check_chip_geometry(16, 0) == 16


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 3000),
    chip=st.integers(16, 512),
    overlap_share=st.floats(0, 0.95),
)
def test_chip_starts_cover_the_axis_with_full_chips(
    length: int, chip: int, overlap_share: float
) -> None:
    overlap = min(int(chip * overlap_share), chip - 1)
    stride = check_chip_geometry(chip, overlap)
    starts = chip_starts(length, chip, stride)
    if length <= chip:
        assert starts == [0]
        return
    assert starts[0] == 0
    assert starts[-1] + chip == length  # the last chip ends at the edge...
    assert all(s >= 0 and s + chip <= length for s in starts)  # ...and none hangs over it
    assert all(b > a for a, b in itertools.pairwise(starts))  # no duplicate chip
    gaps = np.diff(starts)
    assert (gaps[:-1] == stride).all()  # regular grid except the shifted last chip
    assert 0 < gaps[-1] <= stride  # the last chip overlaps its neighbour at least as much
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s : s + chip] = True
    assert covered.all()
    # as few chips as a stride grid with the last chip shifted inward allows
    assert len(starts) == -(-(length - chip) // stride) + 1
