"""How many CPU cores a step may spread its work over (threads or worker processes)."""

from __future__ import annotations

import os


def usable_cores(at_most: int = 8) -> int:
    """The CPU cores this process may run on (its affinity), at least 1, at most ``at_most``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(at_most, cores or 1))
