"""Progress bars for long work, silenced by ``--quiet`` and absent when stderr is not a terminal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

_enabled: bool | None = None  # None: let tqdm decide (shown only on a terminal)


def set_progress_enabled(enabled: bool | None) -> None:
    """Force progress bars on (True), off (False), or leave it to the terminal (None)."""
    global _enabled
    _enabled = enabled


def progress(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    show: bool = True,
) -> tqdm[T]:
    """Wrap ``iterable`` in a progress bar on stderr with rate and ETA.

    The bar is returned (not a generator over it) so that callers can show figures beside it
    with ``set_postfix``. ``show=False`` hides it (e.g. in all but the main process of a
    distributed run).
    """
    disable = (None if _enabled is None else not _enabled) if show else True
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
