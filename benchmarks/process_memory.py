"""Peak memory of the running process, for the benchmarks' figures (Linux reports KiB)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (ru_maxrss).

    On Linux a child's ru_maxrss starts from its launcher's resident memory at exec (the
    high-water mark is kept across exec): use :func:`hwm_mb` in child processes.
    """
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def hwm_mb() -> float | None:
    """The peak resident memory of this process's own address space (Linux VmHWM), if known.

    Unlike ru_maxrss it is not inherited from the launcher at exec.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None
