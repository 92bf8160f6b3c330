"""Estimator checkpoints: exact round trip, newest good one chosen, damage skipped, atomic saves."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from traffic.checkpoints import CheckpointCorruptError, CheckpointStore
from graph.network import build_network
from traffic.errors import EstimatorStateError
from traffic.estimator import SpeedEstimator, TraversalBatch
from traffic.wal import LogPosition

REPO = Path(__file__).resolve().parents[1]


def make_state(seed: int, n_edges: int = 500) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "pace_s_per_m": rng.uniform(0.02, 0.2, n_edges).astype(np.float32),
        "weight": rng.uniform(0, 5, n_edges),
        "edge_idx": np.arange(n_edges, dtype=np.int32),
        "empty": np.zeros(0, dtype=np.float64),
        "matrix": rng.normal(size=(3, 4)),
        "version": seed,
        "event_time_s": 1.7e9 + seed + 0.125,
        "network_version": "abc123",
        "decay": np.float32(0.5),
        "flag": True,
        "nothing": None,
        "config": {"decay_tau_s": 600.0, "names": ["a", "b"], "nested": {"k": 1}},
    }


def assert_state_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        else:
            assert type(got[key]) is type(value) and got[key] == value, key


def save(store: CheckpointStore, seed: int, seq: int) -> Path:
    state = make_state(seed)
    return store.save(state, log_position=LogPosition(seq, seq * 10),
                      event_time_s=state["event_time_s"], estimator_version=seed)


def test_save_load_round_trip_exact(tmp_path):
    store = CheckpointStore(tmp_path)
    state = make_state(1)
    path = store.save(state, log_position=LogPosition(7, 70), event_time_s=1.5, estimator_version=4)
    got_state, pos = store.load_latest()
    assert pos == LogPosition(7, 70)
    assert_state_equal(got_state, state)
    header = store.read_header(path)
    assert (header.event_time_s, header.estimator_version, header.format_version) == (1.5, 4, 1)


def test_load_latest_empty(tmp_path):
    assert CheckpointStore(tmp_path).load_latest() is None
    assert CheckpointStore(tmp_path).compaction_position() is None


def test_load_latest_chooses_newest(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=5)
    for seed, seq in [(1, 3), (2, 12), (3, 9)]:
        save(store, seed, seq)
    state, pos = store.load_latest()
    assert pos.seq == 12
    assert_state_equal(state, make_state(2))


def _truncate(path: Path, rng) -> None:
    os.truncate(path, int(rng.integers(0, path.stat().st_size)))


def _flip_payload(path: Path, rng) -> None:
    raw = bytearray(path.read_bytes())
    at = int(rng.integers(len(raw) - 2000, len(raw)))
    raw[at] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(raw))


def _flip_header(path: Path, rng) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(rng.integers(16, 60))] ^= 0x04
    path.write_bytes(bytes(raw))


def _garbage(path: Path, rng) -> None:
    path.write_bytes(rng.bytes(300))


def _empty(path: Path, rng) -> None:
    path.write_bytes(b"")


def _trailing(path: Path, rng) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\x00")


@pytest.mark.parametrize("damage", [_truncate, _flip_payload, _flip_header, _garbage, _empty, _trailing])
def test_load_latest_skips_corrupt_newest(tmp_path, caplog, damage):
    rng = np.random.default_rng(5)
    store = CheckpointStore(tmp_path)
    save(store, 1, 10)
    save(store, 2, 20)
    newest = save(store, 3, 30)
    damage(newest, rng)
    with pytest.raises(CheckpointCorruptError):
        store.load(newest)
    with caplog.at_level(logging.WARNING, logger="traffic.checkpoints"):
        state, pos = store.load_latest()
    assert pos == LogPosition(20, 200)
    assert_state_equal(state, make_state(2))
    assert any(newest.name in r.getMessage() for r in caplog.records)


def test_load_latest_all_corrupt(tmp_path):
    rng = np.random.default_rng(6)
    store = CheckpointStore(tmp_path)
    for seq in (1, 2):
        _flip_payload(save(store, seq, seq), rng)
    assert store.load_latest() is None


def test_save_keeps_last_n(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    for seq in range(1, 8):
        save(store, seq, seq)
    assert [p.name for p in store.paths()] == [f"ckpt-{s:020d}.trck" for s in (7, 6, 5)]
    assert store.compaction_position() == LogPosition(5, 50)


def test_compaction_position_skips_unreadable_header(tmp_path):
    rng = np.random.default_rng(7)
    store = CheckpointStore(tmp_path)
    oldest = save(store, 1, 4)
    save(store, 2, 8)
    _garbage(oldest, rng)
    assert store.compaction_position() == LogPosition(8, 80)


def test_save_same_position_replaces(tmp_path):
    store = CheckpointStore(tmp_path)
    save(store, 1, 5)
    save(store, 2, 5)
    assert len(store.paths()) == 1
    state, _ = store.load_latest()
    assert state["version"] == 2


def test_save_invalid_value(tmp_path):
    store = CheckpointStore(tmp_path)
    pos = LogPosition(1, 1)
    with pytest.raises(EstimatorStateError, match="state\\['bad'\\]"):
        store.save({"bad": [1, np.int64(2)]}, log_position=pos)
    with pytest.raises(EstimatorStateError, match="state\\['set'\\]"):
        store.save({"set": {1, 2}}, log_position=pos)
    with pytest.raises(EstimatorStateError, match="object dtype"):
        store.save({"obj": np.array([None, 1], dtype=object)}, log_position=pos)
    with pytest.raises(EstimatorStateError, match="log_position"):
        store.save({}, log_position=(1, 1))  # type: ignore[arg-type]
    with pytest.raises(EstimatorStateError, match="keep_last"):
        CheckpointStore(tmp_path, keep_last=0)
    assert store.paths() == []


def test_save_empty_state(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save({}, log_position=LogPosition.start())
    assert store.load_latest() == ({}, LogPosition.start())


def test_save_load_speed_estimator_state(tmp_path):
    """A real estimator's state_dict survives a checkpoint and restores the same estimates."""
    n_edges = 6
    lat = 55.0 + 0.001 * np.arange(n_edges + 1)
    net = build_network(node_lat=lat, node_lon=np.full(n_edges + 1, 12.0),
                        edge_src=np.arange(n_edges), edge_dst=np.arange(1, n_edges + 1),
                        edge_speed_kph=np.full(n_edges, 36.0))
    rng = np.random.default_rng(9)
    edge = rng.integers(0, n_edges, 100).astype(np.int32)
    t_exit = 1.7e9 + np.sort(rng.uniform(0, 300, 100))
    batch = TraversalBatch(edge, t_exit - 10.0, t_exit, rng.uniform(0.05, 0.3, 100), np.ones(100))
    est = SpeedEstimator(net)
    est.apply(batch)
    sd = est.state_dict()
    store = CheckpointStore(tmp_path)
    store.save(sd, log_position=LogPosition(3, 100), event_time_s=float(sd["t_s"]),
               estimator_version=int(sd["version"]))
    state, pos = store.load_latest()
    assert pos == LogPosition(3, 100)
    other = SpeedEstimator(net)
    other.load_state_dict(state)
    assert other.version == est.version and other.t_s == est.t_s
    assert other.snapshot().equals(est.snapshot())


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from traffic.checkpoints import CheckpointStore
    from traffic.wal import LogPosition

    store = CheckpointStore(Path(sys.argv[1]), keep_last=2)
    big = np.arange(2_000_000, dtype=np.float64)
    seq = 0
    while True:
        seq += 1
        store.save({"x": big + seq, "seq": seq}, log_position=LogPosition(seq, seq))
        print(seq, flush=True)
    """
)


def _read_acks(child, at_least: int) -> int:
    acked = 0
    for line in child.stdout:
        acked = int(line)
        if acked >= at_least:
            break
    return acked


def test_save_atomic_no_partial_file_visible(tmp_path):
    """A reader polling during saves only ever sees complete checkpoints; same after SIGKILL."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    store = CheckpointStore(tmp_path, keep_last=2)  # opened before the writer: no tmp cleanup race
    for run in range(2):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)],
                                 stdout=subprocess.PIPE, text=True, env=env)
        acked = first = _read_acks(child, 1)
        n_checked = 0
        deadline = time.monotonic() + 60.0  # a count, not a time window: slow machines too
        while n_checked < 20 and time.monotonic() < deadline:
            for path in store.paths():
                try:
                    state, pos = store.load(path)
                except FileNotFoundError:  # pruned between listing and opening
                    continue
                assert state["seq"] == pos.seq
                n_checked += 1
        child.send_signal(signal.SIGKILL)
        for line in child.stdout:
            acked = int(line)
        child.wait()
        child.stdout.close()
        assert n_checked >= 20
        assert acked > first, "the writer saved while the reader was loading"
        reopened = CheckpointStore(tmp_path, keep_last=2)
        assert not list(tmp_path.glob(".tmp-*")), "stale temporary files are removed on open"
        for path in reopened.paths():
            reopened.load(path)
        state, pos = reopened.load_latest()
        assert pos.seq >= acked
        np.testing.assert_array_equal(state["x"], np.arange(2_000_000, dtype=np.float64) + pos.seq)
