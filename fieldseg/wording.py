"""How counts read in messages: "1 chip", "2 chips", never "1 chips"."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``n`` and the noun in the number that fits it: the noun, or the noun + "s"."""
    return f"{n} {noun if n == 1 else noun + 's'}"
