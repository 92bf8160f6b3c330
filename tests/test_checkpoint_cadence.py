"""Checkpoint cadence: event-time boundaries with a wall-time floor, decided from the log.

``Durability.checkpoint_due`` must give the same answers when a crash-replay feeds it the
logged ``(_now_s, _wall_s)`` stamps as it gave live, or the replay flushes matchers at other
batches than the live run did and its state differs.
"""

from __future__ import annotations


import numpy as np
import polars as pl
import pytest

from common import scenario_batches
from conftest import shared_file
from graph.io import load_network
from workers.durability import Durability, DurabilityConfig

KEY = "cadence-test-pseudonym-key-7"


def _decisions(d: Durability, stamps, *, replay: bool) -> list[bool]:
    out = []
    for now_s, wall_s in stamps:
        due = d.checkpoint_due(now_s, wall_s, replay=replay)
        if due:
            d.note_checkpoint(now_s)
        out.append(due)
    return out


def test_checkpoint_due_gap_defers_boundaries_and_replay_agrees(tmp_path):
    # Event time runs 10x wall time: a 60-s boundary every 6 wall s; the floor is 20 wall s.
    stamps = [(1000.0 + 10.0 * k, 5000.0 + 1.0 * k) for k in range(200)]
    cfg = DurabilityConfig(str(tmp_path / "a"), checkpoint_every_s=60.0, min_gap_wall_s=20.0,
                           pseudonym_key=KEY)
    live = _decisions(Durability(cfg), stamps, replay=False)
    taken = [stamps[i] for i, due in enumerate(live) if due]
    walls = np.array([w for _, w in taken])
    assert len(taken) >= 5
    assert walls[0] - stamps[0][1] >= 20.0 and np.all(np.diff(walls) >= 20.0)
    assert np.all(np.diff(walls) < 20.0 + 6.0 + 1e-9)  # the first boundary past the floor
    replayed = _decisions(Durability(cfg), stamps, replay=True)
    assert replayed == live


def test_checkpoint_due_no_gap_is_event_time_only(tmp_path):
    stamps = [(1000.0 + 10.0 * k, 5000.0 + 0.01 * k) for k in range(100)]
    d = Durability(DurabilityConfig(str(tmp_path), checkpoint_every_s=60.0, pseudonym_key=KEY))
    due = _decisions(d, stamps, replay=False)
    buckets = [int(t // 60.0) for t, _ in stamps]
    assert due == [False] + [b > a for a, b in zip(buckets, buckets[1:])]


def test_checkpoint_due_rejects_negative_gap(tmp_path):
    with pytest.raises(ValueError, match="min_gap_wall_s"):
        DurabilityConfig(str(tmp_path), min_gap_wall_s=-1.0)


def test_checkpoint_due_prepare_stamps_decision_wall(tmp_path):
    d = Durability(DurabilityConfig(str(tmp_path), pseudonym_key=KEY))
    d.checkpoint_due(1000.0, 4242.5)
    probes = pl.DataFrame({"vehicle_id": ["a"], "t": [1000.0], "lat": [55.6], "lon": [12.5]})
    logged = d.prepare(probes, 1000.0)
    assert d.logged_wall_s(logged) == 4242.5
    assert d.logged_wall_s(logged.drop("_wall_s")) is None


def test_checkpoint_due_crash_replay_with_gap_restores_live_state(tmp_path, monkeypatch):
    """Live run with a wall floor (checkpoints at some boundaries only), crash, recover: the
    recovered pipeline equals the one that crashed (same flushes replayed)."""
    import types

    import workers.durability
    from workers.services import LocalServices, PipelineConfig

    # The durability layer's wall clock advances 0.1 s per batch whatever the machine's speed
    # (with real sleeps, a slow machine spaced every boundary past the floor).
    wall = [5000.0]
    monkeypatch.setattr(workers.durability, "time", types.SimpleNamespace(time=lambda: wall[0]))

    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    batches = scenario_batches(shared_file("scenario_kbh/probes.parquet"), span_s=600, step_s=15.0)

    def services():
        cfg = PipelineConfig(clock="event", refresh_s=30.0, data_dir=str(tmp_path),
                             cache_dir=str(tmp_path / "cache"), snapshot_every_s=None,
                             durability=DurabilityConfig(str(tmp_path), checkpoint_every_s=30.0,
                                                         min_gap_wall_s=0.25, pseudonym_key=KEY))
        return LocalServices(net, cfg)

    svc = services()
    for b in batches[:27]:
        svc.ingest(b)
        wall[0] += 0.1  # a 30-s boundary every other batch (0.2 s); the 0.25-s floor skips half
    saved = svc.durability.checkpoints_saved
    assert 1 <= saved < 13, saved
    before = svc.status()["probes"]
    obs = np.asarray(svc.estimator.estimator.state_dict()["count"]).copy()
    del svc  # crash
    svc = services()
    assert svc.durability.replayed_batches > 0
    after = svc.status()["probes"]
    assert {k: after[k] for k in ("accepted", "applied", "pending", "unmatched")} == \
        {k: before[k] for k in ("accepted", "applied", "pending", "unmatched")}
    np.testing.assert_array_equal(np.asarray(svc.estimator.estimator.state_dict()["count"]), obs)
    svc.close()
