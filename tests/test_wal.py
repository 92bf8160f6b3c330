"""The probe write-ahead log: exact round trips, replay, torn-tail recovery, crashes, compaction."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from traffic.wal import (
    LogPosition,
    ProbeLog,
    WALClosedError,
    WALCorruptionError,
    WALInputError,
)

REPO = Path(__file__).resolve().parents[1]


def make_batch(rng: np.random.Generator, n: int, tag: int) -> pl.DataFrame:
    """A probe batch with every column, nulls in the optional ones, and a tag in vehicle_id."""
    speed = rng.uniform(0, 40, n)
    return pl.DataFrame(
        {
            "vehicle_id": pl.Series([f"b{tag}-v{i % 13}" for i in range(n)], dtype=pl.Utf8),
            "t": 1.7e9 + rng.uniform(0, 3600, n),
            "lat": rng.uniform(55.6, 55.7, n),
            "lon": rng.uniform(12.5, 12.6, n),
            "speed_mps": pl.Series([None if i % 4 == 0 else s for i, s in enumerate(speed)],
                                   dtype=pl.Float64),
            "heading_deg": pl.Series([None] * n, dtype=pl.Float64),
            "accuracy_m": rng.uniform(1, 20, n),
        }
    )


def replay(log: ProbeLog, after: LogPosition | None = None) -> list[tuple[LogPosition, pl.DataFrame]]:
    return list(log.read_from(after))


def test_append_round_trip_exact(tmp_path):
    rng = np.random.default_rng(1)
    batches = [make_batch(rng, n, k) for k, n in enumerate([5, 1, 0, 300, 17])]
    with ProbeLog(tmp_path) as log:
        positions = [log.append(b) for b in batches]
        got = replay(log)
    assert [p for p, _ in got] == positions
    for (_, df), want in zip(got, batches):
        assert df.schema == want.schema
        assert df.equals(want, null_equal=True)


def test_append_positions_monotone_with_rows(tmp_path):
    rng = np.random.default_rng(2)
    sizes = [3, 0, 7, 1]
    with ProbeLog(tmp_path, segment_max_bytes=1) as log:
        positions = [log.append(make_batch(rng, n, k)) for k, n in enumerate(sizes)]
    assert positions == [LogPosition(i + 1, int(np.sum(sizes[: i + 1]))) for i in range(4)]
    assert positions == sorted(positions)


def test_read_from_after_position(tmp_path):
    rng = np.random.default_rng(3)
    batches = [make_batch(rng, 10, k) for k in range(30)]
    with ProbeLog(tmp_path, segment_max_bytes=4000) as log:
        positions = [log.append(b) for b in batches]
        assert len(log.segment_paths()) > 3
        for cut in (0, 1, 9, 10, 29):
            got = replay(log, positions[cut])
            assert [p for p, _ in got] == positions[cut + 1:]
            assert all(df.equals(b, null_equal=True) for (_, df), b in zip(got, batches[cut + 1:]))
        assert replay(log, LogPosition.start())[0][0] == positions[0]
        assert replay(log, positions[-1]) == []


def test_reopen_continues_sequence(tmp_path):
    rng = np.random.default_rng(4)
    with ProbeLog(tmp_path, segment_max_bytes=3000) as log:
        first = [log.append(make_batch(rng, 20, k)) for k in range(10)]
    with ProbeLog(tmp_path, segment_max_bytes=3000) as log:
        assert log.position == first[-1]
        nxt = log.append(make_batch(rng, 5, 99))
        assert nxt == LogPosition(11, first[-1].row + 5)
        assert [p for p, _ in replay(log)] == first + [nxt]


def test_segment_names_encode_first_seq(tmp_path):
    rng = np.random.default_rng(5)
    with ProbeLog(tmp_path, segment_max_bytes=1) as log:
        for k in range(3):
            log.append(make_batch(rng, 2, k))
        names = [p.name for p in log.segment_paths()]
    assert names == [f"wal-{s:020d}.arrow" for s in (1, 2, 3)]


def _build_log(path: Path, rng, n_batches: int, *, segment_max_bytes: int) -> tuple[list, list]:
    """Append batches; return (batches, frame end offsets in the last segment file)."""
    batches = []
    ends = []
    with ProbeLog(path, segment_max_bytes=segment_max_bytes) as log:
        for k in range(n_batches):
            b = make_batch(rng, int(rng.integers(0, 40)), k)
            log.append(b)
            batches.append(b)
            ends.append((log.segment_paths()[-1], log.segment_paths()[-1].stat().st_size))
    return batches, ends


def test_recovery_torn_tail_random_truncations(tmp_path):
    rng = np.random.default_rng(6)
    src = tmp_path / "src"
    batches, ends = _build_log(src, rng, 24, segment_max_bytes=12_000)
    last_seg = ends[-1][0]
    seg_size = last_seg.stat().st_size
    cuts = sorted(set(rng.integers(0, seg_size, 60).tolist()) | {0, 31, 32, seg_size - 1})
    for cut in cuts:
        work = tmp_path / f"cut{cut}"
        shutil.copytree(src, work)
        seg = work / last_seg.name
        os.truncate(seg, cut)
        # Fully written batches: all in earlier segments, plus those in the last segment
        # whose frame ends at or before the cut.
        survivors = [k for k, (p, end) in enumerate(ends) if p.name != last_seg.name or end <= cut]
        if cut < 32:
            # The segment header itself is torn: not a state a crash can leave (segments are
            # created by rename), and reported rather than guessed at.
            with pytest.raises(WALCorruptionError, match="header"):
                ProbeLog(work)
            continue
        with ProbeLog(work) as log:
            got = replay(log)
            assert [p.seq for p, _ in got] == [k + 1 for k in survivors], f"cut at byte {cut}"
            assert all(df.equals(batches[k], null_equal=True) for (_, df), k in zip(got, survivors))
            extra = make_batch(rng, 3, 1000)
            pos = log.append(extra)
            assert pos.seq == len(survivors) + 1
        with ProbeLog(work) as log:
            got = replay(log)
            assert got[-1][1].equals(extra, null_equal=True)
            assert len(got) == len(survivors) + 1


@pytest.mark.parametrize("garbage", [b"\x00" * 100, b"\xff" * 7, b"TRAM" + b"\x01" * 60])
def test_recovery_garbage_tail(tmp_path, garbage):
    rng = np.random.default_rng(7)
    batches, _ = _build_log(tmp_path, rng, 5, segment_max_bytes=10**9)
    seg = sorted(tmp_path.glob("wal-*.arrow"))[-1]
    good_size = seg.stat().st_size
    with open(seg, "ab") as fh:
        fh.write(garbage)
    with ProbeLog(tmp_path) as log:
        got = replay(log)
        assert seg.stat().st_size == good_size
        log.append(batches[0])
    assert [df.equals(b, null_equal=True) for (_, df), b in zip(got, batches)] == [True] * 5


def test_recovery_bit_flip_in_last_frame(tmp_path):
    rng = np.random.default_rng(8)
    batches, ends = _build_log(tmp_path, rng, 6, segment_max_bytes=10**9)
    seg = ends[-1][0]
    raw = bytearray(seg.read_bytes())
    flip_at = ends[-2][1] + 60  # inside the last frame's payload
    raw[flip_at] ^= 0x10
    seg.write_bytes(bytes(raw))
    with ProbeLog(tmp_path) as log:
        got = replay(log)
    assert [p.seq for p, _ in got] == [1, 2, 3, 4, 5]


def test_read_from_corrupt_sealed_segment_raises(tmp_path):
    rng = np.random.default_rng(9)
    _build_log(tmp_path, rng, 10, segment_max_bytes=3000)
    first = sorted(tmp_path.glob("wal-*.arrow"))[0]
    raw = bytearray(first.read_bytes())
    raw[len(raw) - 10] ^= 0xFF
    first.write_bytes(bytes(raw))
    with ProbeLog(tmp_path) as log:
        with pytest.raises(WALCorruptionError, match="sealed segment"):
            replay(log)


def test_compact_keeps_everything_after_position(tmp_path):
    rng = np.random.default_rng(10)
    batches = [make_batch(rng, 15, k) for k in range(40)]
    with ProbeLog(tmp_path, segment_max_bytes=5000) as log:
        positions = [log.append(b) for b in batches]
        n_before = len(log.segment_paths())
        deleted = log.compact(positions[24])
        assert deleted and all(not p.exists() for p in deleted)
        assert len(log.segment_paths()) == n_before - len(deleted)
        got = replay(log, positions[24])
        assert [p for p, _ in got] == positions[25:]
        assert all(df.equals(b, null_equal=True) for (_, df), b in zip(got, batches[25:]))
        with pytest.raises(WALCorruptionError, match="compacted"):
            replay(log, LogPosition.start())
        # Compacting past the end keeps the last segment, so sequence numbers carry on.
        log.compact(positions[-1])
        assert len(log.segment_paths()) == 1
    with ProbeLog(tmp_path, segment_max_bytes=5000) as log:
        assert log.append(make_batch(rng, 1, 77)).seq == 41


def test_enforce_retention_deletes_old_segments(tmp_path):
    rng = np.random.default_rng(11)
    with ProbeLog(tmp_path, segment_max_bytes=3000, retention_s=3600.0) as log:
        positions = [log.append(make_batch(rng, 10, k)) for k in range(12)]
        paths = log.segment_paths()
        now = time.time()
        old, young = paths[:2], paths[2:]
        for p in old:
            os.utime(p, (now - 7200, now - 7200))
        deleted = log.enforce_retention(now_s=now)
        assert deleted == old
        assert log.segment_paths() == young
        # Everything old, including the current segment: all data goes, numbering carries on.
        for p in log.segment_paths():
            os.utime(p, (now - 7200, now - 7200))
        log.enforce_retention(now_s=now)
        assert replay(log, positions[-1]) == []
        assert len(log.segment_paths()) == 1
        assert log.append(make_batch(rng, 1, 99)).seq == 13


def test_append_threads_group_commit(tmp_path):
    rng = np.random.default_rng(12)
    batch = make_batch(rng, 50, 0)
    n_threads, per_thread = 4, 40
    results: list[list[LogPosition]] = [[] for _ in range(n_threads)]
    with ProbeLog(tmp_path, segment_max_bytes=200_000) as log:
        def work(i: int) -> None:
            for _ in range(per_thread):
                results[i].append(log.append(batch.with_columns(pl.lit(f"thr{i}").alias("vehicle_id"))))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        got = replay(log)
        n_fsyncs = log.n_fsyncs
    all_pos = sorted(p for r in results for p in r)
    assert [p.seq for p in all_pos] == list(range(1, n_threads * per_thread + 1))
    assert [p for p, _ in got] == all_pos
    for r in results:
        assert r == sorted(r)
    by_seq = {p.seq: df["vehicle_id"][0] for p, df in got}
    for i, r in enumerate(results):
        assert all(by_seq[p.seq] == f"thr{i}" for p in r)
    assert n_fsyncs <= n_threads * per_thread + len(list(tmp_path.glob("wal-*")))


def test_append_invalid_type(tmp_path):
    with ProbeLog(tmp_path) as log:
        with pytest.raises(WALInputError, match="polars DataFrame"):
            log.append({"vehicle_id": ["a"]})  # type: ignore[arg-type]


def test_append_missing_or_wrong_column(tmp_path):
    rng = np.random.default_rng(13)
    b = make_batch(rng, 3, 0)
    with ProbeLog(tmp_path) as log:
        with pytest.raises(WALInputError, match="'lat'"):
            log.append(b.drop("lat"))
        with pytest.raises(WALInputError, match="column 't' must be Float64"):
            log.append(b.with_columns(pl.col("t").cast(pl.Int64)))
        assert log.position == LogPosition.start()


def test_append_after_close(tmp_path):
    log = ProbeLog(tmp_path)
    log.close()
    with pytest.raises(WALClosedError, match="closed"):
        log.append(make_batch(np.random.default_rng(0), 1, 0))


def test_probelog_invalid_options(tmp_path):
    with pytest.raises(WALInputError, match="segment_max_bytes"):
        ProbeLog(tmp_path, segment_max_bytes=0)
    with pytest.raises(WALInputError, match="retention_s"):
        ProbeLog(tmp_path, retention_s=0)


_CHILD = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    import polars as pl
    from traffic.wal import ProbeLog

    log = ProbeLog(Path(sys.argv[1]), segment_max_bytes=int(sys.argv[2]))
    run = int(sys.argv[3])
    lock = threading.Lock()

    def work(thread):
        k = 0
        while True:
            n = 1 + (k * 37 + thread) % 200
            df = pl.DataFrame({
                "vehicle_id": [f"r{run}-th{thread}-b{k}"] * n,
                "t": [float(i) for i in range(n)],
                "lat": [55.0] * n,
                "lon": [12.0] * n,
            })
            pos = log.append(df)
            with lock:
                print(f"ack r{run}-th{thread}-b{k} {pos.seq} {n}", flush=True)
            k += 1

    for th in range(3):
        threading.Thread(target=work, args=(th,), daemon=True).start()
    threading.Event().wait()
    """
)


def test_append_survives_sigkill_during_sustained_appends(tmp_path):
    """Every batch acknowledged before a SIGKILL is in the log after reopening, once."""
    rng = np.random.default_rng(14)
    acked: dict[str, tuple[int, int]] = {}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for run in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path), "20000", str(run)],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        target = int(rng.integers(20, 120))
        n_run = 0
        assert child.stdout is not None
        for line in child.stdout:
            _, tag, seq, n = line.split()
            acked[tag] = (int(seq), int(n))
            n_run += 1
            if n_run >= target:
                break
        child.send_signal(signal.SIGKILL)
        # Lines already printed after the kill decision were acknowledged too.
        for line in child.stdout:
            _, tag, seq, n = line.split()
            acked[tag] = (int(seq), int(n))
        child.wait()
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        with ProbeLog(tmp_path, segment_max_bytes=20000) as log:
            got = replay(log)
        tags = [df["vehicle_id"][0] if df.height else None for _, df in got]
        assert len(tags) == len(set(tags)), "a batch appears twice"
        found = {tag: (p.seq, df.height) for (p, df), tag in zip(got, tags)}
        missing = [t for t in acked if t not in found]
        assert not missing, f"acknowledged batches lost after kill {run}: {missing[:5]}"
        for tag, (seq, n) in acked.items():
            assert found[tag] == (seq, n), tag
        assert [p.seq for p, _ in got] == list(range(1, len(got) + 1))
        rows = np.cumsum([df.height for _, df in got])
        assert [p.row for p, _ in got] == rows.tolist()
