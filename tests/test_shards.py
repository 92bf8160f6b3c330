"""Estimator shards (``workers.shards``): N shards compute exactly what one estimator does.

``scenario_kbh`` (a 600 s slice) is run in process with 1 and with 3 estimator shards: every
publication (full and delta, merged from the shards) holds the same travel times, the live
snapshot the same speeds, the status the same counts. Then the sharded checkpoints: a
restart of a sharded data dir recovers the same state, an unsharded checkpoint is split by
key, a restored shard (checkpoint + fold journal) ends where the run that never stopped
ends, and a checkpoint with another shard count is refused with both counts named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from common import scenario_batches
from conftest import shared_file

from graph.io import load_network
from traffic.traversals import Traversals
from workers.durability import DurabilityConfig
from workers.services import LocalServices, PipelineConfig
from workers.shards import ShardMap, shard_of_keys

KEY = "shards-test-key-0042"

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def net():
    return load_network(shared_file("scenario_kbh/network.osm.pbf"))


@pytest.fixture(scope="module")
def batches():
    return scenario_batches(shared_file("scenario_kbh/probes.parquet"), span_s=600.0,
                            step_s=15.0)


def _config(n_shards: int, data_dir=None, *, every_s: float = 120.0) -> PipelineConfig:
    durable = None if data_dir is None else DurabilityConfig(
        str(data_dir), checkpoint_every_s=every_s, pseudonym_key=KEY)
    return PipelineConfig(clock="event", n_ingest=2, refresh_s=30.0, estimator_shards=n_shards,
                          data_dir=None if data_dir is None else str(data_dir),
                          snapshot_every_s=None, profile_save_every_s=None, durability=durable)


def _run(net, batches, cfg):
    """Ingest every batch; returns (publications, status, snapshot, service) — open."""
    svc = LocalServices(net, cfg)
    pubs = []
    for b in batches:
        svc.ingest(b)
        last = svc.estimator.last
        if not pubs or pubs[-1].key != last.key:
            pubs.append(last)
    return pubs, svc


def _speeds(svc) -> pl.DataFrame:
    return svc.live_snapshot()[1]


@pytest.fixture(scope="module")
def one(net, batches):
    pubs, svc = _run(net, batches, _config(1))
    out = pubs, svc.status()["probes"], _speeds(svc)
    svc.close()
    return out


def test_shard_of_keys_stable_and_spread():
    keys = np.arange(10_000, dtype=np.int64) * 7919
    s = shard_of_keys(keys, 3)
    assert s.dtype == np.int32 and set(np.unique(s).tolist()) == {0, 1, 2}
    assert np.all(np.bincount(s) > 3000)
    np.testing.assert_array_equal(s, shard_of_keys(keys.copy(), 3))
    with pytest.raises(ValueError, match="n_shards"):
        shard_of_keys(keys, 0)


def test_shard_map_split_keeps_order_and_merges_back(net):
    smap = ShardMap(net, 3)
    assert sum(e.size for e in smap.edges) == net.n_edges
    rng = np.random.default_rng(7)
    n = 500
    edge = rng.integers(0, net.n_edges, n).astype(np.int32)
    t = np.sort(rng.uniform(0, 100, n))
    batch = Traversals(edge, t, t + 1.0, rng.uniform(0.05, 0.2, n), np.ones(n))
    parts = smap.split(batch)
    assert sum(len(p) for p in parts) == n
    for s, p in enumerate(parts):
        m = smap.shard[edge] == s
        np.testing.assert_array_equal(smap.edges[s][p.edge], edge[m])  # same order
        np.testing.assert_array_equal(p.t_exit_s, t[m] + 1.0)
    vec = rng.uniform(1, 2, net.n_edges)
    np.testing.assert_array_equal(smap.merge_full([vec[e] for e in smap.edges]), vec)
    empty = smap.split(Traversals.empty())
    assert [len(p) for p in empty] == [0, 0, 0]


def test_three_shards_publish_exactly_what_one_estimator_publishes(net, batches, one):
    pubs1, st1, speeds1 = one
    pubs3, svc = _run(net, batches, _config(3))
    try:
        st3 = svc.status()
        speeds3 = _speeds(svc)
        some = np.sort(np.random.default_rng(1).choice(net.n_edges, 40, replace=False))
        some_speeds3 = svc.live_snapshot(some)[1]
    finally:
        svc.close()
    assert len(pubs1) >= 10
    assert [p.key for p in pubs3] == [p.key for p in pubs1]
    assert [p.full for p in pubs3] == [p.full for p in pubs1]
    assert any(not p.full for p in pubs1)  # deltas were merged too
    for a, b in zip(pubs1, pubs3, strict=True):
        np.testing.assert_array_equal(b.travel_time_s, a.travel_time_s, err_msg=str(a.key))
        if not a.full:
            np.testing.assert_array_equal(b.edges, a.edges)
            assert b.base_key == a.base_key
    assert st3["probes"] == st1
    p = st3["probes"]
    assert p["received"] == p["accepted"] + p["rejected"]
    assert p["accepted"] == p["applied"] + p["pending"] + p["unmatched"]
    assert len(st3["workers"]["estimator"]["shards"]) == 3
    assert speeds3.equals(speeds1)
    # A bbox query asks the shards for some edges only: each answers its own, merged in order.
    some = np.sort(np.random.default_rng(1).choice(net.n_edges, 40, replace=False))
    assert some_speeds3.equals(speeds1[some.tolist()])


def _state(svc) -> dict:
    """Per edge key: the speed state arrays (merged over shards), and the counters."""
    cores = [svc.estimator] if svc.shards is None else svc.shards.handles
    frames, applied = [], 0
    for core in cores:
        sd = core.state_dict()
        applied += sd["counters"]["applied"]
        frames.append(pl.DataFrame({k: np.asarray(sd[f"speed.{k}"]) for k in
                                    ("edge_key", "mu", "c", "var", "last_t_s", "count")}))
    return {"speed": pl.concat(frames).sort("edge_key"), "applied": applied}


def test_sharded_checkpoint_recovers_and_unsharded_one_splits_by_key(net, batches, tmp_path):
    half = len(batches) // 2
    # The run that never stops, 3 shards.
    _, ref = _run(net, batches, _config(3, tmp_path / "ref"))
    want, want_st = _state(ref), ref.status()["probes"]
    ref.close()
    # A 3-shard run stopped (crash: no flush) halfway, then restarted with 3 shards.
    _, a = _run(net, batches[:half], _config(3, tmp_path / "a"))
    assert a.durability.checkpoints_saved >= 2
    a.close()
    a = LocalServices(net, _config(3, tmp_path / "a"))
    for b in batches[half:]:
        a.ingest(b)
    got = _state(a)
    assert a.status()["probes"] == want_st
    a.close()
    assert got["applied"] == want["applied"]
    assert got["speed"].equals(want["speed"])
    # The same data dir with another shard count: refused, both counts named.
    with pytest.raises(ValueError, match="3 estimator shards and this service has 2"):
        LocalServices(net, _config(2, tmp_path / "a"))
    # An unsharded run stopped halfway, restarted with 3 shards: split by key.
    _, u = _run(net, batches[:half], _config(1, tmp_path / "u"))
    u.close()
    u = LocalServices(net, _config(3, tmp_path / "u"))
    for b in batches[half:]:
        u.ingest(b)
    got = _state(u)
    assert u.status()["probes"] == want_st
    u.close()
    assert got["applied"] == want["applied"]
    assert got["speed"].equals(want["speed"])


def test_restarted_shard_restored_alone_from_checkpoint_and_journal(net, batches, tmp_path):
    from workers.checkpointing import restore_if_restarted

    _, ref = _run(net, batches, _config(2, tmp_path / "ref"))
    want, want_st = _state(ref), ref.status()["probes"]
    ref.close()
    half = len(batches) // 2
    _, svc = _run(net, batches[:half], _config(2, tmp_path / "run"))
    try:
        assert svc.shards.journal.base is not None and svc.shards.journal.calls_of(1)
        other = svc.shards.handles[0]
        before = other.state_dict()["speed.mu"].copy()
        # Shard 1 "restarts": a fresh core in its place, without the boot token.
        from workers.estimator import EstimatorCore

        dead = svc.shards.handles[1]
        fresh = EstimatorCore(dead.net, dead.config, prior=None)
        svc.shards.handles[1] = fresh
        assert restore_if_restarted(svc)
        assert svc.shards.restores == [0, 1]
        np.testing.assert_array_equal(other.state_dict()["speed.mu"], before)  # untouched
        assert fresh.boot_token() == svc.boot
        for b in batches[half:]:
            svc.ingest(b)
        got = _state(svc)
        assert svc.status()["probes"] == want_st
    finally:
        svc.close()
    assert got["applied"] == want["applied"]
    assert got["speed"].equals(want["speed"])


def test_pipeline_config_estimator_shards_invalid_value():
    with pytest.raises(ValueError, match="estimator_shards"):
        PipelineConfig(estimator_shards=0)


def test_sharded_profiles_saved_per_shard_and_unsharded_file_split(net, batches, tmp_path):
    from traffic.profiles import TimeOfWeekProfile
    from workers.config import load_profile, profile_path
    from workers.shards import shard_profile_path

    def run(n: int, data_dir) -> list[int]:
        cfg = PipelineConfig(clock="event", n_ingest=1, refresh_s=30.0, estimator_shards=n,
                             data_dir=str(data_dir), snapshot_every_s=None,
                             profile_save_every_s=None)
        svc = LocalServices(net, cfg, prior=load_profile(net, data_dir))
        for b in batches:
            svc.ingest(b)
        svc.begin_shutdown()  # saves the profile(s)
        cores = [svc.estimator] if svc.shards is None else svc.shards.handles
        entries = [c.profile.n_entries for c in cores]
        svc.close()
        return entries

    whole = run(1, tmp_path)
    assert Path(profile_path(tmp_path)).exists() and whole[0] > 0
    # A data dir written unsharded starts sharded: the file split by key.
    cfg = PipelineConfig(clock="event", estimator_shards=2, data_dir=str(tmp_path),
                         snapshot_every_s=None)
    svc = LocalServices(net, cfg, prior=load_profile(net, tmp_path))
    assert sum(c.profile.n_entries for c in svc.shards.handles) == whole[0]
    svc.close()
    run(2, tmp_path)
    for s in range(2):
        p = shard_profile_path(tmp_path, s, 2)
        assert Path(p).exists()
        assert TimeOfWeekProfile.load(p).n_edges == svc.shards.map.edges[s].size


def test_sharded_network_swap_same_as_one_estimator(net, batches):
    def run(n: int):
        svc = LocalServices(net, _config(n))
        try:
            for b in batches[:10]:
                svc.ingest(b)
            carried = svc._swap(net, svc._prepare(net))  # held points flushed, then remapped
            assert svc.estimator.last.full
            after_swap = svc.live_snapshot()[1]
            for b in batches[10:14]:
                svc.ingest(b)
            return carried, after_swap, svc.live_snapshot()[1], svc.status()["probes"]
        finally:
            svc.close()

    one, two = run(1), run(2)
    assert one[0] == two[0] == net.n_edges
    assert two[1].equals(one[1]) and two[2].equals(one[2])
    assert two[3] == one[3]
