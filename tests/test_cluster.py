"""The same pipeline on a two-node local Ray cluster: actors spread, results unchanged."""

from __future__ import annotations

import polars as pl
import pytest

from conftest import shared_file
from graph.io import load_network
from traffic.native_memory import malloc_env
from workers.services import LocalServices, PipelineConfig

pytestmark = pytest.mark.slow


def test_cluster_two_nodes_spread_and_same_results():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from workers.pipeline import RayPipeline

    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    df = df.filter(pl.col("t") < df["t"].min() + 300)
    cfg = PipelineConfig(clock="event", n_ingest=2, router_replicas=2)

    local = LocalServices(net, cfg)
    local.ingest(df)
    local.flush()
    want_st = local.status()["probes"]
    want = local.route((55.68176, 12.55832), (55.67970, 12.56335))

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes(timeout=120)  # a second raylet on a busy 2-core machine
        pipe = RayPipeline(net, cfg)
        try:
            pipe.ingest(df)
            pipe.flush()
            st = pipe.drain()["probes"]
            got = pipe.route((55.68176, 12.55832), (55.67970, 12.56335))
            nodes = pipe.placement()
            actors = [pipe.estimator, *pipe.ingest_actors, *pipe.router_actors]
            # A lambda travels by value (this test module is not importable on the workers).
            envs = ray.get([a.__ray_call__.remote(lambda _core: {
                k: __import__("os").environ.get(k) for k in malloc_env()}) for a in actors])
        finally:
            pipe.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    all_nodes = set(nodes["ingest"]) | set(nodes["router"]) | set(nodes["estimator"])
    assert len(all_nodes) == 2, nodes
    assert len(set(nodes["ingest"])) == 2 and len(set(nodes["router"])) == 2
    for k in ("accepted", "applied", "pending", "unmatched"):
        assert st[k] == want_st[k]
    # The forecast is the same; the routers' learned optimism (eta_correction) depends on
    # which publications carried which probe trips, and the in-process service publishes
    # after every ingest call, the Ray one on its ticks: compared before that correction.
    assert got["duration_s"] / got.get("eta_correction", 1.0) == pytest.approx(
        want["duration_s"] / want.get("eta_correction", 1.0), rel=1e-9)
    assert got["edges"] == want["edges"]
    # Every actor process started with the allocator settings (traffic.native_memory).
    assert envs == [malloc_env()] * len(actors), envs

