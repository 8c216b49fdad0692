"""Progress of long work: a bar on a terminal, a log line a minute in a log file.

On a terminal, a tqdm bar with rate and ETA. When stderr is not a terminal (a batch job's log,
``nohup``, a pipe), bars would fill the log with carriage returns, so the same figures go to
the ``fieldseg`` logger instead, once a minute and not at all for work done within a minute.
``--quiet`` silences both.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable
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


class _LogLines:
    """A file for tqdm that turns its status into a log line a minute, and the last one.

    tqdm refreshes on every ``set_postfix`` too, so the rate is kept here, not by tqdm.
    """

    def __init__(self) -> None:
        self._logged_at = -math.inf
        self._done = False

    def write(self, text: str) -> None:
        line = text.strip("\r\n\x1b[A ").strip()
        if not line or self._done:
            return
        now = time.monotonic()
        self._done = "(100 %)" in line
        if self._done or now - self._logged_at >= LOG_EVERY_S:
            logger.info("%s", line)
            self._logged_at = now

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
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=_LogLines(),  # type: ignore[arg-type]
                    delay=LOG_EVERY_S, mininterval=LOG_EVERY_S, maxinterval=LOG_EVERY_S,
                    bar_format=LOG_FORMAT)  # fmt: skip
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)


def _is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())
