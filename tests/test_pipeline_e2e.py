"""End to end: the real Ray pipeline behind uvicorn, fed the SUMO scenario over HTTP."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import polars as pl
import pytest

from common import served
from conftest import shared_file
from graph.io import load_network, save_network
from graph.network import build_network

pytestmark = pytest.mark.slow

A = (55.68176, 12.55832)  # the incident on Gyldenløvesgade
B = (55.67970, 12.56335)


@pytest.fixture()
def server(ray_local, tmp_path):
    from api.app import create_app
    from api.settings import Settings
    from workers.ingest import IngestConfig
    from workers.pipeline import RayPipeline
    from workers.services import PipelineConfig

    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    cfg = PipelineConfig(clock="event", n_ingest=2, refresh_s=10.0, data_dir=str(tmp_path),
                         ingest=IngestConfig(idle_flush_s=60.0))
    pipe = RayPipeline(net, cfg)
    try:
        with served(create_app(pipe, Settings(clock="event"))) as url:
            yield pipe, url, net
    finally:
        pipe.close()


def _post_window(c, df, lo, hi, step=10.0):
    acc = 0
    for t in np.arange(lo, hi, step):
        b = df.filter((pl.col("t") >= t) & (pl.col("t") < t + step))
        body = b'{"probes":' + b.write_json().encode() + b"}"
        r = c.post("/v1/probes", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 202, r.text
        acc += r.json()["accepted"]
    return acc


def _eta(c):
    r = c.get("/v1/route", params={"from": f"{A[0]},{A[1]}", "to": f"{B[0]},{B[1]}"})
    assert r.status_code == 200, r.text
    return r.json()


def _drop_edges(net, drop):
    keep = np.setdiff1d(np.arange(net.n_edges), drop)
    off = net.geom_offsets
    idx = np.concatenate([np.arange(off[e], off[e + 1]) for e in keep])
    new_off = np.zeros(keep.size + 1, dtype=np.int64)
    np.cumsum(np.diff(off)[keep], out=new_off[1:])
    return build_network(
        node_lat=net.node_lat, node_lon=net.node_lon, node_osm_id=net.node_osm_id,
        edge_src=net.edge_src[keep], edge_dst=net.edge_dst[keep],
        edge_speed_kph=net.edge_speed_kph[keep], edge_length_m=net.edge_length_m[keep],
        geom_offsets=new_off, geom_lat=net.geom_lat[idx], geom_lon=net.geom_lon[idx],
        edge_road_class=net.edge_road_class[keep], edge_oneway=net.edge_oneway[keep],
        edge_osm_way=net.edge_osm_way[keep], edge_reversed=net.edge_reversed[keep],
        edge_key=net.edge_key[keep], name="kbh-minus")


def test_pipeline_e2e_eta_accounting_repost_swap(server, tmp_path):
    pipe, url, net = server
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    epoch = 1767225600.0
    with httpx.Client(base_url=url, timeout=60) as c:
        # Free flow: the first 5 minutes.
        _post_window(c, df, epoch, epoch + 300)
        pipe.drain()
        pipe.tick()
        free = _eta(c)
        # The incident (from sim 1800 s): speeds on Gyldenløvesgade fall to ~1.8 m/s.
        _post_window(c, df, epoch + 1800, epoch + 2100)
        pipe.drain()
        pipe.tick()
        jam = _eta(c)
        assert jam["weights_t"] > free["weights_t"]
        assert jam["weights_version"] != free["weights_version"]
        assert jam["duration_s"] > 1.5 * free["duration_s"], (free["duration_s"], jam["duration_s"])

        # Accounting: every accepted probe is applied, pending or unmatched; queues are empty.
        st = c.get("/v1/status").json()
        p = st["probes"]
        assert st["queues"] == {"ingest_inflight": 0, "fold_inflight": 0}
        assert p["received"] == p["accepted"] + p["rejected"]
        assert p["accepted"] == p["applied"] + p["pending"] + p["unmatched"]
        assert p["applied"] > 0.9 * p["accepted"]

        # Re-posting a batch changes nothing.
        b = df.filter((pl.col("t") >= epoch + 2000) & (pl.col("t") < epoch + 2010))
        r = c.post("/v1/probes", content=b'{"probes":' + b.write_json().encode() + b"}",
                   headers={"content-type": "application/json"})
        assert r.status_code == 202 and r.json()["accepted"] == 0
        pipe.drain()
        st2 = c.get("/v1/status").json()
        for k in ("accepted", "applied", "pending", "unmatched"):
            assert st2["probes"][k] == p[k]
        assert st2["probes"]["rejected"] == p["rejected"] + b.height

        # A network swap under route load loses no request, and speed state carries over.
        path = save_network(_drop_edges(net, np.arange(net.n_edges - 20, net.n_edges)),
                            tmp_path / "kbh-minus.tnet")
        stop, codes = threading.Event(), []

        def load():
            with httpx.Client(base_url=url, timeout=60) as lc:
                while not stop.is_set():
                    codes.append(lc.get("/v1/route", params={
                        "from": f"{A[0]},{A[1]}", "to": f"{B[0]},{B[1]}"}).status_code)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        job = c.put("/v1/network", content=path.read_bytes()).json()
        deadline = time.time() + 120
        while job["state"] not in ("done", "failed") and time.time() < deadline:
            time.sleep(0.1)
            job = c.get(f"/v1/network/jobs/{job['id']}").json()
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert job["state"] == "done", job
        assert job["edges_carried"] == net.n_edges - 20
        assert len(codes) > 10 and set(codes) == {200}
        after = _eta(c)
        assert after["network_version"] == job["network_version"] != net.version
        assert after["duration_s"] > 1.5 * free["duration_s"]  # the jam survived the swap
