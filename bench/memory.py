"""This process's resident memory, from /proc (psutil when /proc is not there)."""

from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")


def _status_kib(key: str) -> int | None:
    try:
        text = STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def rss_bytes() -> int:
    """Resident set size now (VmRSS)."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def rss_peak_bytes() -> int:
    """Highest resident set size so far (VmHWM)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
