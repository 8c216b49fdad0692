"""Progress of long work: a bar on a terminal, a log line a minute in a log file.

On a terminal, a tqdm bar with rate and ETA. When stderr is not a terminal (a batch job's log,
``nohup``, a pipe), bars would fill the log with carriage returns, so the same figures go to
the ``fieldseg`` logger instead, once a minute and not at all for work done within a minute.
``--quiet`` silences both.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

logger = logging.getLogger("fieldseg")

#: Seconds between progress lines in a log (and before the first one).
LOG_EVERY_S = 60.0
#: The figures of a progress line in a log: no bar, just counts, rate and times.
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f} %), {elapsed} so far, {remaining} to go, {rate_fmt}{postfix}"  # noqa: E501

_enabled: bool | None = None  # None: a bar on a terminal, log lines elsewhere


def set_progress_enabled(enabled: bool | None) -> None:
    """Force progress bars on (True), off (False), or leave it to the terminal (None)."""
    global _enabled
    _enabled = enabled


@contextlib.contextmanager
def progress_shown(show: bool | None) -> Iterator[None]:
    """For the duration of one call: bars on (True), off (False), or as set globally (None).

    The ``show_progress`` argument of the library functions; ``set_progress_enabled`` (the
    CLI's ``--quiet``) stays the default for calls that leave it at None.
    """
    global _enabled
    if show is None:
        yield
        return
    before, _enabled = _enabled, show
    try:
        yield
    finally:
        _enabled = before


class _LogLines:
    """A file for tqdm that turns its status into a log line a minute, and a last one.

    tqdm redraws on every ``set_postfix`` too, whatever its ``delay``, so the pace is kept
    here: the first line comes a minute after the start, and the last (the bar complete) only
    after an earlier one, so work done within a minute logs nothing.
    """

    def __init__(self) -> None:
        self.bar: tqdm[object] | None = None
        self._logged_at = time.monotonic()  # as if a line was logged at the start
        self._any = False
        self._done = False

    def write(self, text: str) -> None:
        line = text.strip("\r\n\x1b[A ").strip()
        if not line or self._done:
            return
        bar = self.bar
        self._done = bar is not None and bar.total is not None and bar.n >= bar.total
        now = time.monotonic()
        if (self._done and self._any) or now - self._logged_at >= LOG_EVERY_S:
            logger.info("%s", line)
            self._logged_at, self._any = now, True

    def flush(self) -> None:
        """Nothing is buffered."""


def progress(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    show: bool = True,
) -> tqdm[T]:
    """Wrap ``iterable`` in a progress bar on stderr with rate and ETA (log lines in a log).

    The bar is returned (not a generator over it) so that callers can show figures beside it
    with ``set_postfix``. ``show=False`` hides it (e.g. in all but the main process of a
    distributed run).
    """
    if not show or _enabled is False:
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
    if _enabled is None and not _is_terminal():
        lines = _LogLines()
        every = LOG_EVERY_S
        bar = tqdm(iterable, total=total, desc=desc, unit=unit, file=lines,  # type: ignore[arg-type]
                   mininterval=every, maxinterval=every, bar_format=LOG_FORMAT)  # fmt: skip
        lines.bar = bar
        return bar
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)


def _is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())
