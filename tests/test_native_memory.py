"""glibc malloc settings (traffic.native_memory): freed array memory leaves the process.

Each case runs in a fresh interpreter, as a server does: free one 16 MiB array (glibc then
raises its mmap threshold to 16 MiB unless tuned), allocate and free 40 arrays of 4 MiB, each
with a small array kept right after it, and measure resident memory against the start.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import platform
import subprocess
import sys

import pytest

from traffic.native_memory import MallocConfig, malloc_env, release_free_heap, tune_malloc

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or "glibc" not in " ".join(platform.libc_ver()) or
    ctypes.util.find_library("c") is None, reason="glibc malloc settings (Linux with glibc only)")

CHURN = r"""
import json, sys
from pathlib import Path
import numpy as np
if sys.argv[1] == "tuned":
    from traffic.native_memory import tune_malloc
    tune_malloc()

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

start = rss_mib()
big = np.ones(2 * 2**20)   # 16 MiB, served by mmap
del big                    # untuned glibc now serves blocks up to 16 MiB from its arenas
blocks, keep = [], []
for _ in range(40):
    blocks.append(np.ones(2**19))  # 4 MiB
    keep.append(np.ones(8192))     # 64 KiB kept right after it: no freed block is at the top
del blocks
print(json.dumps({"grown_mib": rss_mib() - start}))
"""


def _churn(mode: str, extra_env: dict[str, str] | None = None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    return json.loads(out.stdout)["grown_mib"]


def test_tuned_process_gives_freed_arrays_back():
    assert _churn("tuned") < 24.0  # 160 MiB allocated and freed; only the small ones stay


def test_untuned_process_keeps_them_the_check_can_fail():
    # The control: without the settings the same churn leaves the 4 MiB blocks resident,
    # which is what the soak saw. If glibc ever stops doing this, this test says so.
    assert _churn("untuned") > 100.0


def test_environment_variables_win_and_are_passed_on(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    applied = tune_malloc(MallocConfig())
    assert "MALLOC_MMAP_THRESHOLD_" not in applied
    assert applied["MALLOC_TRIM_THRESHOLD_"] == 4 * 2**20
    env = malloc_env(MallocConfig(trim_threshold_bytes=2**20))
    assert env == {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "1048576"}
    assert release_free_heap() is True


@pytest.mark.parametrize("bad", [0, -1, 2**31, 1.5, True, "256"])
def test_config_rejects_bad_thresholds(bad):
    with pytest.raises(ValueError, match="mmap_threshold_bytes"):
        MallocConfig(mmap_threshold_bytes=bad)



def test_jemalloc_default_is_set_only_when_unset(monkeypatch):
    """polars reads its allocator options at import: the command line puts ours in the
    environment first (the measured effect is in traffic/native_memory.py's docstring)."""
    from traffic.native_memory import set_jemalloc_default

    monkeypatch.delenv("_RJEM_MALLOC_CONF", raising=False)
    set_jemalloc_default()
    assert os.environ["_RJEM_MALLOC_CONF"] == MallocConfig().jemalloc_conf
    monkeypatch.setenv("_RJEM_MALLOC_CONF", "dirty_decay_ms:0")
    set_jemalloc_default()
    assert os.environ["_RJEM_MALLOC_CONF"] == "dirty_decay_ms:0"
