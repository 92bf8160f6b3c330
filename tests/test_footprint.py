"""Serving footprint estimate and `traffic serve --max-memory-gb` (workers/footprint.py)."""

from __future__ import annotations

import argparse
import re

import pytest
from common import three_edges_with_detour
from test_cli_network import traffic

from cli.serve import check_memory
from graph.io import save_network
from workers.footprint import available_memory_bytes, estimate_footprint, network_sizes


def test_estimate_footprint_grows_with_edges_and_routers():
    small = estimate_footprint(1_000, 3_000, 6_000)
    big = estimate_footprint(1_000_000, 3_000_000, 6_000_000)
    assert big.total_bytes > small.total_bytes + 3_000_000 * 100
    two = estimate_footprint(1_000_000, 3_000_000, 6_000_000, router_processes=2)
    assert two.parts["routers (CCH, metrics)"] == 2 * big.parts["routers (CCH, metrics)"]
    local = estimate_footprint(1_000_000, 3_000_000, 6_000_000, ray=False)
    assert local.total_bytes < big.total_bytes
    assert "network" in big.summary() and "GB" in big.summary()


def test_estimate_footprint_invalid_value():
    with pytest.raises(ValueError, match="`n_edges` must be >= 0"):
        estimate_footprint(1, -1, 0)


def test_available_memory_cgroup_v2_limit(tmp_path):
    (tmp_path / "memory.max").write_text("1073741824\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    assert available_memory_bytes(cgroup_root=tmp_path, meminfo=meminfo) == 2**30


def test_available_memory_cgroup_v1_and_unlimited(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    (tmp_path / "memory.max").write_text("max\n")  # v2 without a limit
    assert available_memory_bytes(cgroup_root=tmp_path, meminfo=meminfo) == 8_000_000 * 1024
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("2147483648\n")
    assert available_memory_bytes(cgroup_root=tmp_path, meminfo=meminfo) == 2**31
    # v1 "no limit" is a huge number: MemAvailable wins.
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert available_memory_bytes(cgroup_root=tmp_path, meminfo=meminfo) == 8_000_000 * 1024


def test_network_sizes_from_header_only(tmp_path):
    net = three_edges_with_detour()
    path = save_network(net, tmp_path / "t.net")
    assert network_sizes(path) == (net.n_nodes, net.n_edges, net.geom_lat.size)


def _args(path, gb):
    return argparse.Namespace(network=str(path), max_memory_gb=gb, router_replicas=0, ingest=1,
                              no_ray=False)


def test_check_memory_big_limit_accepts(tmp_path):
    path = save_network(three_edges_with_detour(), tmp_path / "t.net")
    check_memory(_args(path, 1000.0))
    check_memory(_args(path, 1000.0), three_edges_with_detour())


def test_serve_max_memory_gb_refuses_with_estimate_and_limit(tmp_path):
    path = save_network(three_edges_with_detour(), tmp_path / "t.net")
    out = traffic("serve", "--network", str(path), "--max-memory-gb", "0.01", "--port", "0",
                  "--data-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    found = re.search(r"needs an estimated ([\d.]+) GB .* limit of ([\d.]+) GB \(--max-memory-gb\)",
                      lines[0])
    assert found, lines[0]
    assert float(found.group(1)) > 0.01 and float(found.group(2)) == pytest.approx(0.01)
    assert not (tmp_path / "t.net.prepared").exists()  # refused before preparing anything
