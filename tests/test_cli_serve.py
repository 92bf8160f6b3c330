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


def test_max_upload_gb_reaches_settings():
    from api.settings import Settings
    from cli import build_parser
    from cli.serve import http_settings

    parse = build_parser().parse_args
    args = parse(["serve", "--network", "x.net", "--max-upload-gb", "2.5"])
    settings = http_settings(args, "wall")
    assert settings.max_upload_bytes == 2_500_000_000
    assert settings.limits().body_limit("PUT", "/v1/network") == 2_500_000_000
    default = http_settings(parse(["serve", "--network", "x.net"]), "wall")
    assert default.max_upload_bytes == Settings().max_upload_bytes == 512 * 1024 * 1024


def test_bad_max_upload_gb_is_one_line(tmp_path):
    for bad, why in (("0", "must be > 0 and at most 1000 GB; got '0'"),
                     ("nan", "must be > 0 and at most 1000 GB; got 'nan'"),
                     ("two", "must be a number of GB (e.g. 2); got 'two'")):
        out = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "--network", str(TEST_DATA / "osm_split.osm"),
             "--no-ray", "--max-upload-gb", bad, "--data-dir", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines()[-1] == (
            f"traffic serve: error: argument --max-upload-gb: {why}")
        assert "Traceback" not in out.stderr
