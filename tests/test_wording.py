"""Counts in messages agree with their nouns."""

from __future__ import annotations

from fieldseg.wording import counted


def test_one_is_singular_and_every_other_count_plural() -> None:
    assert counted(1, "chip") == "1 chip"
    assert [counted(n, "epoch") for n in (0, 2, 11)] == ["0 epochs", "2 epochs", "11 epochs"]
    assert counted(1, "train chip") == "1 train chip"
