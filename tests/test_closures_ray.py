"""Closures over HTTP on the Ray server (router replicas): in force within a loose bound.

The measured figures are in BENCHMARKS.md (benchmarks/closures.py); the bound here, 10 s,
only catches breakage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import shared_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


def test_closure_in_force_on_ray_replicas_within_10_s(tmp_path):
    pytest.importorskip("ray")
    from closures import measure, start

    proc, url, log = start(Path(shared_file("scenario_kbh/network.osm.pbf")),
                           tmp_path / "data", replicas=1)
    try:
        close_s, open_s = measure(url, cycles=3, timeout_s=10.0)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert len(close_s) == len(open_s) == 3
    assert max(close_s) < 10.0 and max(open_s) < 10.0
