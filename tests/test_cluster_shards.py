"""Two estimator shards on a two-node Ray cluster: spread, counted, routed, and a killed
shard restored alone from its checkpoint and the fold journal with nothing lost.

The cluster is two raylets of ``ray.cluster_utils.Cluster`` on this machine (one CPU each),
as in ``tests/test_cluster.py``. The pipeline runs without its housekeeping thread, so the
fold order is the log order only and the run can be compared bit for bit with the same
probes through an in-process service with two shards that is never killed.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest
from common import scenario_batches
from conftest import shared_file

from graph.io import load_network
from workers.durability import DurabilityConfig
from workers.services import LocalServices, Overloaded, PipelineConfig

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

KEY = "cluster-shards-key-0042"
ROUTE = ((55.68176, 12.55832), (55.67970, 12.56335))


def _config(data_dir, *, replicas: int) -> PipelineConfig:
    return PipelineConfig(clock="event", n_ingest=2, refresh_s=30.0, estimator_shards=2,
                          router_replicas=replicas, data_dir=str(data_dir),
                          snapshot_every_s=None, profile_save_every_s=None,
                          durability=DurabilityConfig(str(data_dir), checkpoint_every_s=60.0,
                                                      pseudonym_key=KEY))


def _speed_state(states: list[dict]) -> tuple[pl.DataFrame, int]:
    frames = [pl.DataFrame({k: np.asarray(sd[f"speed.{k}"]) for k in
                            ("edge_key", "mu", "c", "var", "last_t_s", "count")})
              for sd in states]
    return pl.concat(frames).sort("edge_key"), sum(sd["counters"]["applied"] for sd in states)


def _ingest(pipe, batch) -> None:
    """Ingest one batch; a 503 while a shard is down restores it (as the ticker would)."""
    from ray.exceptions import ActorUnavailableError

    from workers.checkpointing import restore_if_restarted

    for _ in range(100):
        try:
            pipe.ingest(batch)
            return
        except Overloaded:
            try:
                restore_if_restarted(pipe)
            except ActorUnavailableError:  # still restarting (slow on a loaded machine)
                pass
            time.sleep(0.1)
    raise AssertionError("the batch was refused 100 times")


def test_cluster_two_shards_killed_shard_restores_from_checkpoint_and_journal(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from workers.checkpointing import restore_if_restarted
    from workers.pipeline import RayPipeline

    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    batches = scenario_batches(shared_file("scenario_kbh/probes.parquet"), span_s=600.0,
                               step_s=15.0)
    kill_at = len(batches) // 2

    ref = LocalServices(net, _config(tmp_path / "ref", replicas=0))
    for b in batches:
        ref.ingest(b)
    ref.flush()
    want_st = ref.status()["probes"]
    want_speed, want_applied = _speed_state([h.state_dict() for h in ref.shards.handles])
    want_route = ref.route(*ROUTE)
    ref.close()

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes(timeout=120)
        pipe = RayPipeline(net, _config(tmp_path / "run", replicas=2))
        try:
            nodes = pipe.placement()
            for b in batches[:kill_at]:
                _ingest(pipe, b)
            saved = pipe.durability.checkpoints_saved
            ray.kill(pipe.shards.handles[1], no_restart=False)
            for b in batches[kill_at:kill_at + 4]:  # folds to the dead shard are lost there
                _ingest(pipe, b)
            restore_if_restarted(pipe)
            for b in batches[kill_at + 4:]:
                _ingest(pipe, b)
            pipe.flush()
            st = pipe.drain()["probes"]
            status = pipe.status()
            states = ray.get([h.__ray_call__.remote(lambda core: core.state_dict())
                              for h in pipe.shards.handles])
            routes = ray.get([r.route.remote(*ROUTE, max_snap_m=200.0, profile=None)
                              for r in pipe.router_actors])
        finally:
            pipe.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(set(nodes["estimator"])) == 2, nodes  # the two shards on different nodes
    assert len(set(nodes["router"])) == 2, nodes
    assert saved >= 1  # the shard had a checkpoint to restore from
    assert pipe.shards.restores == [0, 1]
    assert status["workers"]["estimator"]["shard_restores"] == [0, 1]
    assert st["received"] == st["accepted"] + st["rejected"]
    assert st["accepted"] == st["applied"] + st["pending"] + st["unmatched"]
    for k in ("received", "accepted", "rejected", "applied", "pending", "unmatched"):
        assert st[k] == want_st[k], k
    speed, applied = _speed_state(states)
    assert applied == want_applied == st["applied"]
    assert speed.equals(want_speed)  # bit for bit the run that was never killed
    for got in routes:  # each replica answers, on the merged publications
        assert got["edges"] == want_route["edges"]
        assert got["duration_s"] == pytest.approx(want_route["duration_s"], rel=1e-9)
