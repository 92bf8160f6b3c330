"""`traffic serve` start-up errors: one line, non-zero exit, before anything slow starts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from conftest import TEST_DATA


def test_serve_port_in_use_fails_fast_with_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "--network", str(TEST_DATA / "osm_split.osm"),
             "--no-ray", "--port", str(port), "--data-dir", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120)
        elapsed = time.perf_counter() - t0
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"traffic serve: error: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "is another server using it? Choose another --port or --host")
    assert "Traceback" not in out.stderr
    assert "loaded in" not in out.stderr  # refused before the network load and the workers
    assert elapsed < 30


def test_serve_port_out_of_range_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--network", str(TEST_DATA / "osm_split.osm"),
         "--no-ray", "--port", "70000", "--data-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "traffic serve: error: --port must be within 0-65535 (0: any free port); got 70000")
