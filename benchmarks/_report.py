"""Shared pieces of the benchmark scripts' reports: the machine line, the date, the append.

Every script in benchmarks/ prints a Markdown section and appends it to BENCHMARKS.md under a
heading naming the command, the date (as ``date -u`` prints it) and the machine. These helpers
keep that header consistent; each script still formats its own table.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    """The first ``model name`` in /proc/cpuinfo, or ``"unknown CPU"`` where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_description(*, note: str = "") -> str:
    """One line naming the machine a benchmark ran on.

    Parameters
    ----------
    note
        Extra words placed after the core count (for example ``"benchmark pinned to one"``
        or ``"GPU NVIDIA H100"``); empty for none.

    Returns
    -------
    str
        ``"<uname -m>, <CPU model>, <N> cores[, note], 1-min load <L>"``. The load average
        is read when this is called (call it after the measurements): the machines are
        shared, and the load is what explains noisy figures.
    """
    parts = [platform.machine(), _cpu_model(), f"{os.cpu_count()} cores"]
    if note:
        parts.append(note)
    try:
        parts.append(f"1-min load {os.getloadavg()[0]:.2f}")
    except OSError:  # getloadavg is unavailable on some platforms
        pass
    return ", ".join(parts)


def utc_now() -> str:
    """The current UTC date and time as ``date -u`` prints it (``Tue Jan  7 14:03:21 UTC 2025``)."""
    return time.strftime("%a %b %e %H:%M:%S UTC %Y", time.gmtime())


def append_section(text: str, *, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Append ``text`` to ``path`` (utf-8) after one blank line, in one write.

    Others append to the same file, so the file is opened in append mode and written once,
    rather than read, modified and rewritten.
    """
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n" + text)
