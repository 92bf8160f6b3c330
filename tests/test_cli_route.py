"""`traffic route` through the installed console script, on a real OSM extract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import shared_file

TRAFFIC = str(Path(sys.executable).with_name("traffic"))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TRAFFIC, "route", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_cli_route_json_prints_the_http_fields(tmp_path):
    pbf = shared_file("osm/kbh.osm.pbf")
    out = _run(str(pbf), "--from", "55.676,12.568", "--to", "55.66,12.59", "--json",
               "--cache-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert set(answer) == {"duration_s", "distance_m", "freeflow_duration_s", "geometry", "edges",
                           "network_version", "weights_version"}
    assert answer["geometry"]["type"] == "LineString"
    lon, lat = answer["geometry"]["coordinates"][0]
    assert abs(lat - 55.676) < 0.002 and abs(lon - 12.568) < 0.002  # [lon, lat] order
    assert 100 < answer["duration_s"] < 1000 and 1000 < answer["distance_m"] < 10000
    assert answer["weights_version"] == "freeflow" and all(isinstance(e, int) for e in answer["edges"])
    assert list(tmp_path.glob("cch-order-*.npy"))


def test_cli_route_text_summary():
    out = _run(str(shared_file("osm/kbh.osm.pbf")), "--from", "55.676,12.568", "--to", "55.66,12.59")
    assert out.returncode == 0, out.stderr
    assert " s (" in out.stdout and "km" in out.stdout


def test_cli_route_far_point_is_a_one_line_error():
    out = _run(str(shared_file("osm/kbh.osm.pbf")), "--from", "55.676,12.568", "--to", "56.66,12.59")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no drivable road within 200 m of the destination" in lines[0]


def test_cli_route_bad_coordinates_are_rejected():
    out = _run(str(shared_file("osm/kbh.osm.pbf")), "--from", "north", "--to", "55.66,12.59")
    assert out.returncode != 0 and "LAT,LON" in out.stderr and "Traceback" not in out.stderr
