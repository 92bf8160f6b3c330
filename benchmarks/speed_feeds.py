"""Speed feeds in and out (issue 12 items 3-4): CSV round trip figures and import cost.

Usage: ``python benchmarks/speed_feeds.py [NETWORK ...]`` (default: the Liechtenstein and
Copenhagen OSM extracts in ../shared/data/osm). For each network: bytes per edge of
``geom_osm_node``; a feed at random speeds on every segment posted over HTTP to a fresh
server, exported, imported into a second fresh server; the round trip's largest edge speed
difference; and the cost of each step (lines/s). Prints a Markdown table row per network.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.app import create_app
from api.settings import Settings
from graph.io import load_network
from traffic.speed_feeds import FeedStore, SegmentLookup, parse_speed_csv
from workers.services import LocalServices, PipelineConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "osm"


def _feed(net, rng) -> tuple[bytes, int]:  # type: ignore[no-untyped-def]
    osm, off = net.geom_osm_node, net.geom_offsets
    start = np.ones(osm.size, dtype=bool)
    start[off[1:] - 1] = False
    seg = np.flatnonzero(start)
    v = rng.uniform(5, 120, seg.size)
    text = "".join(f"{a},{b},{s:.3f}\n" for a, b, s in zip(osm[seg].tolist(),
                                                           osm[seg + 1].tolist(), v.tolist()))
    return text.encode(), int(seg.size)


def run(path: Path) -> dict[str, float]:
    net = load_network(path)
    rng = np.random.default_rng(1)
    feed, lines = _feed(net, rng)
    out: dict[str, float] = {"edges": net.n_edges, "lines": lines,
                             "osm_node_b_per_edge": net.geom_osm_node.nbytes / net.n_edges}
    t = time.perf_counter()
    parse_speed_csv(feed)
    out["parse_lines_s"] = lines / (time.perf_counter() - t)
    t = time.perf_counter()
    lk = SegmentLookup(net)
    out["lookup_build_s"] = time.perf_counter() - t
    out["lookup_b_per_edge"] = (lk.pairs.nbytes + lk.seg.nbytes) / net.n_edges
    store = FeedStore(net)
    store._lookup = lk
    f, to, v, _ = parse_speed_csv(feed)
    t = time.perf_counter()
    store.apply(f, to, v, 0.0)
    out["map_lines_s"] = lines / (time.perf_counter() - t)
    t = time.perf_counter()
    store.blend(1.0)
    out["blend_s"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"clock": "wall", "snapshot_every_s": None}
        a = LocalServices(net, PipelineConfig(data_dir=f"{tmp}/a", **cfg))
        b = LocalServices(net, PipelineConfig(data_dir=f"{tmp}/b", **cfg))
        try:
            hdr = {"Content-Type": "text/csv"}
            with TestClient(create_app(a, Settings())) as c:
                t = time.perf_counter()
                r = c.post("/v1/speeds", content=feed, headers=hdr)
                out["post_lines_s"] = lines / (time.perf_counter() - t)
                assert r.status_code == 202, r.text
                t = time.perf_counter()
                exported = c.get("/v1/speeds.csv").content
                out["export_lines_s"] = exported.count(b"\n") / (time.perf_counter() - t)
            with TestClient(create_app(b, Settings())) as c:
                t = time.perf_counter()
                r = c.post("/v1/speeds", content=exported, headers=hdr)
                out["reimport_lines_s"] = lines / (time.perf_counter() - t)
                assert r.status_code == 202 and not r.json()["rejected"]
            ka = net.edge_length_m / a.router.live_travel_times() * 3.6
            kb = net.edge_length_m / b.router.live_travel_times() * 3.6
            out["max_kmh_diff"] = float(np.abs(ka - kb).max())
            out["p99_kmh_diff"] = float(np.quantile(np.abs(ka - kb), 0.99))
            tt_a, tt_b = a.router.live_travel_times(), b.router.live_travel_times()
            out["max_rel_tt_diff"] = float(np.abs(tt_b / tt_a - 1).max())
        finally:
            a.close()
            b.close()
    return out


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv] or [SHARED / "liechtenstein-latest.osm.pbf",
                                        SHARED / "kbh.osm.pbf"]
    for p in paths:
        r = run(p)
        print(f"| {p.name} | {r['edges']:.0f} | {r['lines']:.0f} | "
              f"{r['osm_node_b_per_edge']:.1f} | {r['lookup_b_per_edge']:.1f} "
              f"({r['lookup_build_s'] * 1e3:.0f} ms) | {r['parse_lines_s'] / 1e3:.0f}k | "
              f"{r['map_lines_s'] / 1e3:.0f}k | {r['blend_s'] * 1e3:.1f} ms | "
              f"{r['post_lines_s'] / 1e3:.0f}k | {r['export_lines_s'] / 1e3:.0f}k | "
              f"{r['reimport_lines_s'] / 1e3:.0f}k | {r['max_kmh_diff']:.2f} / "
              f"{r['p99_kmh_diff']:.2f} | {r['max_rel_tt_diff'] * 100:.2f}% |")


if __name__ == "__main__":
    main(sys.argv[1:])
