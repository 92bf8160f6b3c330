"""`traffic network import/info/export` through the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_file
from test_io import square_network

from graph.geojson import load_geojson
from graph.io import load_compiled, save_network

_SCRIPT = Path(sys.executable).with_name("traffic")


def traffic(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``traffic`` script (or ``python -m cli`` when it is absent)."""
    cmd = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cli"]
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def test_network_import_and_info_liechtenstein(tmp_path):
    src = shared_file("osm/liechtenstein-latest.osm.pbf")
    out = tmp_path / "x.net"
    imp = traffic("network", "import", str(src), "-o", str(out), cwd=tmp_path)
    assert imp.returncode == 0, imp.stderr
    assert imp.stdout.count("\n") == 1 and "nodes" in imp.stdout and str(out) in imp.stdout
    info = traffic("network", "info", str(out), "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    net = load_compiled(out)
    assert summary["nodes"] == net.n_nodes and summary["edges"] == net.n_edges
    assert isinstance(summary["nodes"], int) and isinstance(summary["edges"], int)
    assert summary["version"] == net.version
    assert summary["turn_restrictions"] == len(net.turn_kind)
    assert 0.9 < summary["largest_scc_share"] < 1.0
    assert summary["road_km_by_class"]["residential"] > 0


def test_network_import_largest_scc(tmp_path):
    src = shared_file("osm/liechtenstein-latest.osm.pbf")
    out = tmp_path / "core.net"
    imp = traffic("network", "import", str(src), "-o", str(out), "--largest-scc", cwd=tmp_path)
    assert imp.returncode == 0, imp.stderr
    assert "100.0% in the largest SCC" in imp.stdout


def test_network_info_text(tmp_path):
    path = save_network(square_network(), tmp_path / "sq.net")
    info = traffic("network", "info", str(path), cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "nodes              4" in info.stdout
    assert "turn restrictions  2" in info.stdout


def test_network_export_geojson(tmp_path):
    net = square_network()
    path = save_network(net, tmp_path / "sq.net")
    out = tmp_path / "sq.geojson"
    exp = traffic("network", "export", str(path), "--geojson", str(out), cwd=tmp_path)
    assert exp.returncode == 0, exp.stderr
    assert load_geojson(out).version == net.version
    assert len(json.loads(out.read_text())["features"]) == net.n_edges


def test_network_info_dimacs(tmp_path):
    (tmp_path / "toy-t.gr").write_text("p sp 2 2\na 1 2 10\na 2 1 10\n")
    (tmp_path / "toy-t.co").write_text(
        "p aux sp co 2\nv 1 -73000000 40000000\nv 2 -73001000 40000000\n"
    )
    info = traffic("network", "info", "toy-t.gr", "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["edges"] == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "missing.osm.pbf: no such file"),
        (b"hello\n", "not a road network file"),
        (b'{"type": "Feature"}', "not a GeoJSON FeatureCollection"),
        (b"PK\x03\x04garbage", "not a readable compiled network"),
    ],
    ids=["missing", "unknown", "not_collection", "corrupt_compiled"],
)
def test_network_info_bad_input(tmp_path, content, message):
    path = tmp_path / "missing.osm.pbf"
    if content is not None:
        path.write_bytes(content)
    res = traffic("network", "info", str(path), cwd=tmp_path)
    assert res.returncode != 0
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1


def test_network_import_bad_input_writes_nothing(tmp_path):
    src = tmp_path / "roads.geojson"
    src.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", '
        '"geometry": {"type": "LineString", "coordinates": [[0, 0], [0, 99]]}}]}'
    )
    out = tmp_path / "out.net"
    res = traffic("network", "import", str(src), "-o", str(out), cwd=tmp_path)
    assert res.returncode != 0 and "feature 0 has coordinates out of range" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roads.geojson"]
