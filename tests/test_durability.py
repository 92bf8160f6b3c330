"""Durable ingest in process: log before ack, checkpoints at quiet points, exact replay.

A "crash" here is dropping a LocalServices without close (nothing flushed, nothing saved
beyond what the log and checkpoints already hold); a new one on the same data dir recovers.
The reference is a run without the crash on the same batches in the same order.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from common import scenario_batches
from conftest import shared_file
from graph.io import load_network
from traffic.checkpoints import CheckpointStore
from traffic.wal import ProbeLog
from workers.durability import DurabilityConfig
from workers.services import LocalServices, Overloaded, PipelineConfig

KEY = "test-pseudonym-key-0123456789"


@pytest.fixture(scope="module")
def net():
    return load_network(shared_file("scenario_kbh/network.osm.pbf"))


@pytest.fixture(scope="module")
def batches():
    return scenario_batches(shared_file("scenario_kbh/probes.parquet"), span_s=600, step_s=15.0)


def _services(net, data_dir, *, every_s=120.0, n_ingest=1):
    cfg = PipelineConfig(clock="event", n_ingest=n_ingest, refresh_s=30.0, data_dir=str(data_dir),
                         cache_dir=str(data_dir / "cache"), snapshot_every_s=None,
                         durability=DurabilityConfig(str(data_dir), checkpoint_every_s=every_s,
                                                     pseudonym_key=KEY))
    return LocalServices(net, cfg)


def _observations(svc):
    return np.asarray(svc.estimator.estimator.state_dict()["count"]).copy()


def _finish(svc):
    svc.flush()
    st = svc.status()["probes"]
    return st, _observations(svc)


@pytest.fixture(scope="module")
def reference(net, batches, tmp_path_factory):
    svc = _services(net, tmp_path_factory.mktemp("ref"))
    acks = [svc.ingest(b)[0] for b in batches]
    st, obs = _finish(svc)
    svc.close()
    return acks, st, obs


def test_durability_crash_replay_matches_reference(net, batches, reference, tmp_path):
    ref_acks, ref_st, ref_obs = reference
    svc = _services(net, tmp_path)
    acks = [svc.ingest(b)[0] for b in batches[:27]]
    assert svc.durability.checkpoints_saved >= 2
    del svc  # crash: no close, no flush, no final checkpoint
    svc = _services(net, tmp_path)
    assert svc.durability.replayed_batches > 0
    # Re-posting what was acknowledged changes nothing; the rest goes on as before.
    again = [svc.ingest(b)[0] for b in batches[:27]]
    assert sum(again) == 0
    acks += [svc.ingest(b)[0] for b in batches[27:]]
    assert acks == ref_acks
    st, obs = _finish(svc)
    assert st["accepted"] == sum(ref_acks) == ref_st["accepted"]
    assert st["accepted"] == st["applied"] + st["pending"] + st["unmatched"]
    assert st["applied"] == ref_st["applied"]
    assert st["unmatched"] == ref_st["unmatched"]
    np.testing.assert_array_equal(obs, ref_obs)
    svc.close()


def test_durability_corrupt_newest_checkpoint_falls_back(net, batches, reference, tmp_path):
    ref_acks, ref_st, ref_obs = reference
    svc = _services(net, tmp_path, every_s=60.0)
    for b in batches[:30]:
        svc.ingest(b)
    del svc
    store = CheckpointStore(tmp_path / "checkpoints")
    paths = store.paths()
    assert len(paths) >= 2
    raw = bytearray(paths[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    paths[0].write_bytes(bytes(raw))
    older = store.read_header(paths[1]).log_position
    newest = store.read_header(paths[0]).log_position
    # The log still holds everything after the older checkpoint (compacted to the oldest kept).
    first = next(iter(ProbeLog(tmp_path / "wal").read_from(older)))[0]
    assert first.seq == older.seq + 1
    ref = _services(net, tmp_path / "ref60", every_s=60.0)
    for b in batches:
        ref.ingest(b)
    ref_st60, ref_obs60 = _finish(ref)
    ref.close()
    svc = _services(net, tmp_path, every_s=60.0)
    assert svc.durability.replayed_batches >= 30 - newest.seq + (newest.seq - older.seq)
    for b in batches[30:]:
        svc.ingest(b)
    st, obs = _finish(svc)
    assert st["accepted"] == ref_st60["accepted"] == sum(ref_acks)
    assert st["applied"] == ref_st60["applied"]
    np.testing.assert_array_equal(obs, ref_obs60)
    svc.close()


def test_durability_log_holds_pseudonyms_only(net, batches, tmp_path):
    svc = _services(net, tmp_path)
    svc.ingest(batches[0])
    svc.checkpoint_now()
    svc.close()
    raw_ids = set(batches[0]["vehicle_id"].cast(pl.Utf8).to_list())
    logged = pl.concat([df for _, df in ProbeLog(tmp_path / "wal").read_from(None)])
    assert logged.height == batches[0].height
    assert not raw_ids & set(logged["vehicle_id"].to_list())
    assert logged["vehicle_id"].str.len_chars().unique().to_list() == [16]
    blob = b"".join(p.read_bytes() for p in (tmp_path / "checkpoints").glob("ckpt-*"))
    assert not any(v.encode() in blob for v in list(raw_ids)[:50])


def test_durability_shutdown_refuses_writes(net, batches, tmp_path):
    svc = _services(net, tmp_path)
    svc.ingest(batches[0])
    svc.begin_shutdown()
    with pytest.raises(Overloaded, match="shutting down"):
        svc.ingest(batches[1])
    st = svc.status()["probes"]
    assert st["accepted"] == st["applied"] + st["unmatched"] + st["pending"]
    svc.close()
    assert CheckpointStore(tmp_path / "checkpoints").load_latest() is not None
    # The final checkpoint keeps the matchers' held points (no flush cuts the traces): a
    # restart holds exactly them, replays nothing, and decides them on its first flush.
    again = _services(net, tmp_path)
    assert again.durability.replayed_batches == 0
    assert again.status()["probes"] == st
    again.flush()
    after = again.status()["probes"]
    assert after["pending"] == 0
    assert after["accepted"] == after["applied"] + after["unmatched"] == st["accepted"]
    again.close()
