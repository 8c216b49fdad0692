"""How counts read in messages: "1 chip", "2 chips", never "1 chips"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number that fits it (``plural`` defaults to noun + "s")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
