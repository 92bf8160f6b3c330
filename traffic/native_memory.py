"""Keep the long-running processes' resident memory flat: glibc malloc settings.

A service that allocates and frees NumPy arrays of a few hundred KB to tens of MB all day
(match batches, fold buffers, travel-time vectors, checkpoint state) meets a glibc
heuristic: when a block served by ``mmap`` is freed, glibc raises its mmap threshold to that
block's size (up to 32 MiB) and its trim threshold to twice that. From then on blocks of
that size come from the arenas instead, and memory freed there stays resident until the
top of an arena is free for more than 64 MiB. In the soak (``benchmarks/soak.py``) that
showed as resident memory climbing by 12-28% within minutes after warm-up while the live
heap (memray's native tracking, tracemalloc) stayed flat. Fixing both thresholds turns the
heuristic off: large blocks always come from ``mmap`` and go back to the OS when freed, and
free arena tops are trimmed above a few MiB. With the defaults below the 4-minute soak at
8,000 probes/s went from +17% to +0.2% with the same throughput and latencies
(BENCHMARKS.md, soak).

The price: every block of 256 KiB or more now gets fresh pages from ``mmap``. Matching
allocates many such arrays, so at saturation the ingest actor spends about 30% more CPU per
probe (BENCHMARKS.md, ingest: 17.6 -> 23.0 CPU-ms per 1,000 probes); a 4 MiB threshold costs
less but let the soak grow again (+8.8% in 4 minutes, still climbing). The glibc environment
variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) win over these settings
when set, for operators who prefer throughput. Elsewhere than glibc (musl, macOS) the calls do nothing.

polars brings its own allocator (jemalloc, configured by ``_RJEM_MALLOC_CONF``), which keeps
freed pages for reuse until they decay, and decays only while it is called. A 26M-edge
network's congestion snapshot is a 1.6 GB frame built and written every minute by the
estimator actor: measured on New York (``benchmarks/scale.py``), 125 B per edge stayed
resident after the write with jemalloc's defaults, 6 B per edge with a background purging
thread and a 1 s decay (:attr:`MallocConfig.jemalloc_conf`), at the same write time. The
variable must be in the environment before polars is first imported (polars sets its own
default there on import): :func:`set_jemalloc_default` sets it for this process, first
thing in the command line, and the Ray processes it starts inherit it. It is not passed in
a runtime environment: Ray merged it with a worker's own value (seen doubled).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass

__all__ = ["MallocConfig", "malloc_env", "release_free_heap", "set_jemalloc_default",
           "tune_malloc"]

# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ENV_TRIM = "MALLOC_TRIM_THRESHOLD_"
_ENV_MMAP = "MALLOC_MMAP_THRESHOLD_"
#: polars' jemalloc (built with the ``_rjem_`` prefix) reads its options from this variable.
_ENV_JEMALLOC = "_RJEM_MALLOC_CONF"


@dataclass(frozen=True, slots=True)
class MallocConfig:
    """glibc malloc thresholds for a long-running process.

    Attributes
    ----------
    mmap_threshold_bytes
        Blocks at least this big are served by ``mmap`` and unmapped when freed (glibc's
        default starts at 128 KiB and then adapts, which is what this turns off).
    trim_threshold_bytes
        Free memory at the top of an arena beyond this is given back to the OS.
    """

    mmap_threshold_bytes: int = 256 * 1024
    trim_threshold_bytes: int = 4 * 2**20
    #: polars' jemalloc: purge freed pages in a background thread after 1 s unused.
    jemalloc_conf: str = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"

    def __post_init__(self) -> None:
        for name in ("mmap_threshold_bytes", "trim_threshold_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 2**31 - 1:
                raise ValueError(f"`{name}` must be an int in (0, 2**31); got {value!r}")
        if not isinstance(self.jemalloc_conf, str):
            raise ValueError(f"`jemalloc_conf` must be a string; got {self.jemalloc_conf!r}")


@functools.cache  # find_library runs `ldconfig -p` in a subprocess: look it up once
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.mallopt  # noqa: B018 - glibc only; AttributeError elsewhere
        lib.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return lib


def tune_malloc(config: MallocConfig | None = None) -> dict[str, int]:
    """Apply ``config`` to this process's glibc allocator (idempotent, cheap).

    A threshold whose glibc environment variable is set is left to it. Returns the
    settings applied, by variable name (empty when not on glibc or nothing was applied).
    """
    config = config or MallocConfig()
    lib = _libc()
    if lib is None:
        return {}
    applied = {}
    for env, param, value in ((_ENV_MMAP, _M_MMAP_THRESHOLD, config.mmap_threshold_bytes),
                              (_ENV_TRIM, _M_TRIM_THRESHOLD, config.trim_threshold_bytes)):
        if env in os.environ:
            continue
        if lib.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            applied[env] = value
    return applied


def malloc_env(config: MallocConfig | None = None) -> dict[str, str]:
    """The same settings as environment variables, for child processes (Ray workers read
    them at start); variables already set in this environment are passed on unchanged."""
    config = config or MallocConfig()
    return {_ENV_MMAP: os.environ.get(_ENV_MMAP, str(config.mmap_threshold_bytes)),
            _ENV_TRIM: os.environ.get(_ENV_TRIM, str(config.trim_threshold_bytes))}


def set_jemalloc_default(config: MallocConfig | None = None) -> bool:
    """Put :attr:`MallocConfig.jemalloc_conf` in this process's environment unless the
    variable is set; whether polars could still read it (not imported yet)."""
    import sys

    os.environ.setdefault(_ENV_JEMALLOC, (config or MallocConfig()).jemalloc_conf)
    return "polars" not in sys.modules


def release_free_heap() -> bool:
    """Hand free arena pages back to the OS now (glibc ``malloc_trim``); whether it ran.

    Worth calling after a burst of temporary allocations (a checkpoint) in a process that
    then goes on for hours.
    """
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(ctypes.c_size_t(0))
    return True
