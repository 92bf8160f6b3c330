"""Snapshot store: atomic round trips, nearest-before lookup, partition pruning, retention,
history and bbox aggregates against hand-computed values, output formats, SUMO truth."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os

import numpy as np
import polars as pl
import pyarrow.ipc
import pytest
from polars.testing import assert_frame_equal

from api.formats import to_arrow_ipc_bytes, to_csv_bytes, to_geojson, to_parquet_bytes
from api.params import ParameterError, parse_bbox, parse_time
from common import three_edges_with_detour
from conftest import shared_file
from graph.network import build_network
from traffic.errors import NoSnapshotError, SnapshotQueryError, SnapshotSchemaError
from traffic.estimator import SpeedEstimator, TraversalBatch
from traffic.snapshots import (
    HISTORY_COLUMNS,
    SNAPSHOT_COLUMNS,
    SNAPSHOT_SCHEMA,
    SnapshotScheduler,
    SnapshotStore,
    edge_bboxes,
    keys_in_bbox,
    validate_snapshot_frame,
)

T0 = 1767225600.0  # 2026-01-01T00:00:00Z


def snapshot_frame(keys, ratio, *, freeflow=10.0, seed=0) -> pl.DataFrame:
    """A canonical snapshot frame with the given keys and ratios (other columns derived)."""
    rng = np.random.default_rng(seed)
    keys = np.asarray(keys, dtype=np.int64)
    ratio = np.broadcast_to(np.asarray(ratio, dtype=np.float64), keys.shape)
    ff = np.broadcast_to(np.asarray(freeflow, dtype=np.float64), keys.shape)
    last = T0 + rng.random(keys.size) * 60
    return pl.DataFrame({
        "key": keys,
        "speed_mps": ratio * ff,
        "freeflow_mps": ff,
        "ratio": ratio,
        "confidence": rng.random(keys.size),
        "observations": rng.integers(0, 20, keys.size).astype(np.int64),
        "last_update_t": pl.Series(last).scatter([0], [None]) if keys.size else pl.Series([], dtype=pl.Float64),
    })


@pytest.fixture
def store(tmp_path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snaps")


# ---------------------------------------------------------------------- write / read
def test_write_round_trip_exact(store):
    rng = np.random.default_rng(1)
    keys = rng.permutation(np.arange(500, dtype=np.int64) * 7919 + 3)
    df = snapshot_frame(keys, rng.random(500), freeflow=rng.uniform(5, 30, 500))
    df = df.with_columns(df["ratio"].clone().scatter(5, float("nan")))
    store.write(df, t_s=T0 + 0.25, network_version="v1")
    t, back = store.at(T0 + 10)
    assert t == T0 + 0.25
    assert back.schema == pl.Schema(SNAPSHOT_SCHEMA)
    assert_frame_equal(back, df.sort("key"), check_exact=True)


def test_write_round_trip_estimator_names_and_widths(store):
    # The estimator's frame: dense `edge` ids, `edge_key`, float32 confidence, int32 counts.
    df = pl.DataFrame({
        "edge": np.arange(3, dtype=np.int32), "edge_key": [30, 10, 20],
        "speed_mps": [1.0, 2.0, 3.0], "freeflow_mps": [4.0, 4.0, 4.0], "ratio": [0.25, 0.5, 0.75],
        "confidence": np.array([0.5, 0.25, 1.0], dtype=np.float32),
        "observations": np.array([1, 0, 2], dtype=np.int32), "last_update_t": [T0, None, T0],
    })
    store.write(df, t_s=T0, network_version="v1")
    _, back = store.at(T0)
    assert back.columns == list(SNAPSHOT_COLUMNS)
    assert back["key"].to_list() == [10, 20, 30]
    assert back["observations"].dtype == pl.Int64 and back["observations"].to_list() == [0, 2, 1]
    assert back["confidence"].to_list() == [0.25, 1.0, 0.5]


def test_write_empty_frame(store):
    store.write(snapshot_frame([], []), t_s=T0, network_version="v1")
    t, back = store.at(T0)
    assert t == T0 and back.height == 0 and back.schema == pl.Schema(SNAPSHOT_SCHEMA)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop("ratio"), "missing \\['ratio'\\]"),
        (lambda df: df.with_columns(pl.lit(1).alias("colour")), "unknown \\['colour'\\]"),
        (lambda df: df.with_columns(pl.col("key").cast(pl.Float64)), "`key` must be Int64"),
        (lambda df: df.with_columns(pl.col("speed_mps").cast(pl.String)), "`speed_mps` must be Float64"),
        (lambda df: df.with_columns(pl.lit(5, dtype=pl.Int64).alias("key")), "`key` has duplicates"),
        (lambda df: df.with_columns(df["key"].clone().scatter(0, None)), "`key` has 1 null"),
    ],
)
def test_write_invalid_frame(store, change, message):
    with pytest.raises(SnapshotSchemaError, match=message):
        store.write(change(snapshot_frame([1, 2, 3], 0.5)), t_s=T0, network_version="v1")
    assert store.times().size == 0


def test_write_invalid_type(store):
    with pytest.raises(SnapshotSchemaError, match="must be a polars DataFrame; got dict"):
        store.write({"key": [1]}, t_s=T0, network_version="v1")


@pytest.mark.parametrize("t_s", [float("nan"), float("inf"), -1.0, "noon"])
def test_write_invalid_time(store, t_s):
    with pytest.raises(SnapshotQueryError, match="`t_s` must be"):
        store.write(snapshot_frame([1], 0.5), t_s=t_s, network_version="v1")


@pytest.mark.parametrize("version", ["", "a/b", "a-b", "x" * 65])
def test_write_invalid_network_version(store, version):
    with pytest.raises(SnapshotQueryError, match="`network_version`"):
        store.write(snapshot_frame([1], 0.5), t_s=T0, network_version=version)


def test_write_same_time_replaces(store):
    store.write(snapshot_frame([1], 0.5), t_s=T0, network_version="old")
    store.write(snapshot_frame([1], 0.25), t_s=T0, network_version="new")
    [ref] = store.snapshots()
    assert ref.network_version == "new"
    assert store.at(T0)[1]["ratio"].to_list() == [0.25]


def test_write_layout_hive_partitions(store):
    path = store.write(snapshot_frame([1], 0.5), t_s=T0 + 8 * 3600 + 15 * 60, network_version="ab12")
    rel = path.relative_to(store.root).as_posix()
    assert rel == f"date=2026-01-01/hour=08/snap-{int((T0 + 8 * 3600 + 900) * 1000)}-ab12.parquet"
    lf = store.scan()
    row = lf.select("date", "hour", "t", "network_version").collect().row(0)
    assert (str(row[0]), row[1], row[2], row[3]) == ("2026-01-01", 8, T0 + 29700, "ab12")


# ---------------------------------------------------------------------- atomicity
def test_times_ignores_temp_file_of_crashed_writer(store):
    path = store.write(snapshot_frame([1, 2], 0.5), t_s=T0, network_version="v1")
    # A crashed writer: half a Parquet file under the temp name, in the same partition and
    # in a partition of its own (a later hour), as write() names them.
    half = path.read_bytes()[: path.stat().st_size // 2]
    later = store.root / "date=2026-01-01" / "hour=02"
    later.mkdir()
    for d, t_ms in ((path.parent, int(T0 * 1000) + 30_000), (later, int(T0 * 1000) + 7_300_000)):
        (d / f".snap-{t_ms}-v1.parquet.123.abcd.tmp").write_bytes(half)
    assert store.times().tolist() == [T0]
    assert store.at(T0 + 7400)[0] == T0
    assert store.edge_history(1, T0 - 10, T0 + 9000)["t"].to_list() == [T0]
    assert store.aggregate_ratio([1, 2], T0, T0 + 9000, interval_s=60)["n"].to_list() == [2]


def test_write_leaves_no_temp_file(store):
    path = store.write(snapshot_frame([1], 0.5), t_s=T0, network_version="v1")
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_write_failure_leaves_nothing(store, monkeypatch):
    # A writer that dies mid-file (here: the disk "fills up") must not leave a readable file.
    def boom(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", boom)
    with pytest.raises(OSError, match="No space left"):
        store.write(snapshot_frame([1], 0.5), t_s=T0, network_version="v1")
    monkeypatch.undo()
    assert store.times().size == 0
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------------- at / find
def test_at_nearest_at_or_before(store):
    for i, t in enumerate((T0, T0 + 60, T0 + 3600 + 5)):
        store.write(snapshot_frame([1], 0.1 * (i + 1)), t_s=t, network_version="v1")
    assert store.at(T0)[0] == T0
    assert store.at(T0 + 59.999)[0] == T0
    assert store.at(T0 + 60)[0] == T0 + 60
    assert store.at(T0 + 3600 + 4)[0] == T0 + 60  # walks back into the previous hour
    assert store.at(T0 + 86400 * 3)[0] == T0 + 3605  # and into earlier days
    assert store.at(T0 + 61)[1]["ratio"].to_list() == [pytest.approx(0.2)]


def test_at_before_first_raises(store):
    store.write(snapshot_frame([1], 0.5), t_s=T0 + 60, network_version="v1")
    with pytest.raises(NoSnapshotError, match=r"no snapshot at or before 2026-01-01T00:00:59Z .*"
                                              r"first snapshot is at 2026-01-01T00:01:00Z"):
        store.at(T0 + 59)
    assert issubclass(NoSnapshotError, LookupError)


def test_at_empty_store_raises(store):
    with pytest.raises(NoSnapshotError, match="the store is empty"):
        store.at(T0)


def test_at_max_age(store):
    store.write(snapshot_frame([1], 0.5), t_s=T0, network_version="v1")
    assert store.at(T0 + 100, max_age_s=100)[0] == T0
    with pytest.raises(NoSnapshotError, match="no snapshot within 100 s"):
        store.at(T0 + 101, max_age_s=100)


def test_at_keys(store):
    store.write(snapshot_frame([5, 1, 9, 3], [0.5, 0.1, 0.9, 0.3]), t_s=T0, network_version="v1")
    _, df = store.at(T0, keys=np.array([9, 3, 42]))
    assert df["key"].to_list() == [3, 9] and df["ratio"].to_list() == [0.3, 0.9]
    assert store.at(T0, keys=[])[1].height == 0


@pytest.mark.parametrize("keys", [[1.5], [[1, 2]], ["a"]])
def test_at_invalid_keys(store, keys):
    store.write(snapshot_frame([1], 0.5), t_s=T0, network_version="v1")
    with pytest.raises(SnapshotQueryError, match="`keys` must be a 1-D array of integer"):
        store.at(T0, keys=keys)


@pytest.mark.parametrize("t", [float("nan"), "x"])
def test_at_invalid_time(store, t):
    with pytest.raises(SnapshotQueryError, match="`at` must be"):
        store.at(t)


# ---------------------------------------------------------------------- planning / pruning
def test_files_partition_pruning(store):
    # Snapshots every 20 minutes over two days; a query for 08:00-08:59 of day 2.
    times = T0 + np.arange(0, 2 * 86400, 1200.0)
    for t in times:
        store.write(snapshot_frame([1, 2], 0.5), t_s=float(t), network_version="v1")
    lo, hi = T0 + 86400 + 8 * 3600, T0 + 86400 + 9 * 3600 - 1
    files = store.files(lo, hi)
    assert [f.parent.relative_to(store.root).as_posix() for f in files] == ["date=2026-01-02/hour=08"] * 3
    assert store.times(lo, hi).tolist() == times[(times >= lo) & (times <= hi)].tolist()
    # Bounds are inclusive and cut inside an hour.
    assert store.times(T0 + 1200, T0 + 2400).tolist() == [T0 + 1200, T0 + 2400]
    assert store.edge_history(1, lo, hi)["t"].to_list() == times[(times >= lo) & (times <= hi)].tolist()


def test_files_other_days_not_listed(store):
    store.write(snapshot_frame([1], 0.5), t_s=T0, network_version="v1")
    store.write(snapshot_frame([1], 0.5), t_s=T0 + 86400, network_version="v1")
    # Plant, in day 1's partition, a broken file whose name claims a day-2 time: a planner
    # that listed day 1 while answering for day 2 would pick it up and fail to read it.
    planted = store.root / "date=2026-01-01" / "hour=00" / f"snap-{int((T0 + 86400 + 10) * 1000)}-v1.parquet"
    planted.write_bytes(b"not parquet")
    assert store.times(T0 + 86400, T0 + 86400 + 5).tolist() == [T0 + 86400]
    assert store.at(T0 + 86400 + 30)[0] == T0 + 86400
    assert store.edge_history(1, T0 + 86400, T0 + 86400 + 5)["t"].to_list() == [T0 + 86400]
    assert store.at(T0 + 3600)[0] == T0


def test_times_empty(store):
    assert store.times().shape == (0,) and store.times().dtype == np.float64
    assert store.scan(T0, T0 + 1).collect().height == 0


def test_times_invalid_range(store):
    with pytest.raises(SnapshotQueryError, match="is after `t_to`"):
        store.times(T0 + 1, T0)


# ---------------------------------------------------------------------- retention
def test_prune_retention(tmp_path):
    store = SnapshotStore(tmp_path, retention_s=3 * 3600)
    times = T0 + np.arange(0, 6 * 3600, 1800.0)
    for t in times:
        store.write(snapshot_frame([1], 0.5), t_s=float(t), network_version="v1")
    now = T0 + 6 * 3600
    assert store.prune(now) == int(np.sum(times < now - 3 * 3600))
    assert store.times().tolist() == times[times >= now - 3 * 3600].tolist()
    hours = sorted(p.name for p in (tmp_path / "date=2026-01-01").iterdir())
    assert hours == ["hour=03", "hour=04", "hour=05"]
    # Everything expires: the date directory goes too.
    store.prune(now + 86400)
    assert list(tmp_path.iterdir()) == []


def test_prune_none_keeps_everything(tmp_path):
    store = SnapshotStore(tmp_path, retention_s=None)
    store.write(snapshot_frame([1], 0.5), t_s=T0, network_version="v1")
    assert store.prune(T0 + 1e9) == 0 and store.times().tolist() == [T0]


def test_prune_stale_temp_files(store):
    path = store.write(snapshot_frame([1], 0.5), t_s=T0, network_version="v1")
    stale, fresh = path.parent / ".snap-1-v1.parquet.1.a.tmp", path.parent / ".snap-2-v1.parquet.1.b.tmp"
    stale.write_bytes(b"PAR1")
    fresh.write_bytes(b"PAR1")
    os.utime(stale, (0, 0))
    store.prune(T0)
    assert not stale.exists() and fresh.exists() and path.exists()


def test_store_invalid_retention(tmp_path):
    with pytest.raises(SnapshotQueryError, match="`retention_s` must be > 0"):
        SnapshotStore(tmp_path, retention_s=0)


# ---------------------------------------------------------------------- scheduler
def test_scheduler_due_on_event_time():
    s = SnapshotScheduler(every_s=60)
    got = [s.due(t) for t in (T0 + 3, T0 + 58, T0 + 61, T0 + 62, T0 + 50, T0 + 300.5, T0 + 301)]
    assert got == [None, None, T0 + 60, None, None, T0 + 300, None]


@pytest.mark.parametrize("every", [0, -1, float("nan")])
def test_scheduler_invalid_every(every):
    with pytest.raises(SnapshotQueryError, match="`every_s` must be"):
        SnapshotScheduler(every_s=every)


# ---------------------------------------------------------------------- history / aggregate
def _three_snapshots(store):
    # key:      1     2     3
    ratios = [[0.2, 0.4, 0.9],    # T0
              [0.6, float("nan"), 1.0],  # T0 + 300
              [0.8, 0.2, 0.5]]    # T0 + 900
    for t, r in zip((T0, T0 + 300, T0 + 900), ratios):
        store.write(snapshot_frame([1, 2, 3], r, freeflow=[10.0, 20.0, 30.0]), t_s=t, network_version="v1")


def test_edge_history_hand_computed(store):
    _three_snapshots(store)
    h = store.edge_history(2, T0, T0 + 900)
    assert h.columns == list(HISTORY_COLUMNS)
    assert h["t"].to_list() == [T0, T0 + 300, T0 + 900]
    assert h["speed_mps"].to_list()[0] == pytest.approx(8.0)
    assert np.isnan(h["ratio"][1]) and h["ratio"][2] == 0.2
    assert store.edge_history(2, T0 + 1, T0 + 899)["t"].to_list() == [T0 + 300]
    assert store.edge_history(99, T0, T0 + 900).height == 0


def test_edge_history_invalid(store):
    with pytest.raises(SnapshotQueryError, match="`key` must be an integer"):
        store.edge_history("7", T0, T0 + 1)
    with pytest.raises(SnapshotQueryError, match="is after"):
        store.edge_history(1, T0 + 1, T0)


def test_aggregate_ratio_hand_computed(store):
    _three_snapshots(store)
    agg = store.aggregate_ratio([1, 2], T0, T0 + 900, interval_s=600)
    # Bucket T0: (0.2 + 0.4 + 0.6) / 3 (the NaN is left out); bucket T0+600: (0.8 + 0.2) / 2.
    assert agg["t_bucket"].to_list() == [T0, T0 + 600]
    assert agg["mean_ratio"].to_list() == pytest.approx([0.4, 0.5])
    assert agg["n"].to_list() == [3, 2]
    assert agg.schema == pl.Schema({"t_bucket": pl.Float64, "mean_ratio": pl.Float64, "n": pl.Int64})


def test_aggregate_ratio_empty(store):
    _three_snapshots(store)
    assert store.aggregate_ratio([], T0, T0 + 900, interval_s=60).height == 0
    assert store.aggregate_ratio([1], T0 + 1000, T0 + 2000, interval_s=60).height == 0


@pytest.mark.parametrize("interval", [0, -60, float("nan")])
def test_aggregate_ratio_invalid_interval(store, interval):
    with pytest.raises(SnapshotQueryError, match="`interval_s` must be"):
        store.aggregate_ratio([1], T0, T0 + 1, interval_s=interval)


# ---------------------------------------------------------------------- bbox
def test_keys_in_bbox_hand_made():
    net = three_edges_with_detour()
    assert keys_in_bbox(net, 12.05, 54.9, 12.15, 55.1).tolist() == [100, 300]
    assert keys_in_bbox(net, 12.2, 55.0, 12.2, 55.0).tolist() == [100, 200, 300]  # touching
    assert keys_in_bbox(net, 12.45, 55.2, 12.6, 55.6).tolist() == [300]  # the detour's bend
    assert keys_in_bbox(net, 13.0, 55.0, 13.1, 55.1).tolist() == []
    assert keys_in_bbox(net, 11, 54, 13, 56, road_class="primary").tolist() == [100, 300]
    assert keys_in_bbox(net, 11, 54, 13, 56, road_class=["residential"]).tolist() == [200]


def test_keys_in_bbox_matches_bruteforce():
    rng = np.random.default_rng(7)
    n, m = 200, 600
    lat, lon = rng.uniform(55.6, 55.7, n), rng.uniform(12.5, 12.6, n)
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    net = build_network(node_lat=lat, node_lon=lon, edge_src=src, edge_dst=dst,
                        edge_speed_kph=np.full(m, 50.0), edge_key=np.arange(m) * 11)
    bb = edge_bboxes(net)
    for _ in range(20):
        x0, x1 = np.sort(rng.uniform(12.5, 12.6, 2))
        y0, y1 = np.sort(rng.uniform(55.6, 55.7, 2))
        want = [int(net.edge_key[e]) for e in range(m)
                if min(lon[src[e]], lon[dst[e]]) <= x1 and max(lon[src[e]], lon[dst[e]]) >= x0
                and min(lat[src[e]], lat[dst[e]]) <= y1 and max(lat[src[e]], lat[dst[e]]) >= y0]
        assert keys_in_bbox(net, x0, y0, x1, y1, bboxes=bb).tolist() == want


def test_keys_in_bbox_invalid():
    net = three_edges_with_detour()
    with pytest.raises(SnapshotQueryError, match="unknown road class \\['highway'\\]"):
        keys_in_bbox(net, 11, 54, 13, 56, road_class="highway")
    with pytest.raises(SnapshotQueryError, match="minlon must be <= maxlon"):
        keys_in_bbox(net, 13, 54, 11, 56)


@pytest.mark.parametrize(
    ("text", "message"),
    [("1,2,3", "four finite numbers"), ("a,b,c,d", "four numbers"), ("0,0,nan,1", "four finite"),
     ("0,-91,1,1", "lat within"), ("0,1,1,0", "minlat <= maxlat"), ("190,0,191,1", "lon must be")],
)
def test_parse_bbox_invalid(text, message):
    with pytest.raises(ParameterError, match=message):
        parse_bbox(text)


def test_parse_bbox_ok():
    assert parse_bbox(" 12.5,55.6, 12.6,55.7") == (12.5, 55.6, 12.6, 55.7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1767227400", 1767227400.0), ("1767227400.5", 1767227400.5), (1767227400, 1767227400.0),
     ("2026-01-01T00:30:00Z", T0 + 1800), ("2026-01-01T00:30", T0 + 1800),
     ("2026-01-01T01:30:00+01:00", T0 + 1800), ("2026-01-01", T0)],
)
def test_parse_time_ok(text, expected):
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "nan", "2026-13-01T00:00"])
def test_parse_time_invalid(text):
    with pytest.raises(ParameterError, match="neither unix seconds nor ISO 8601"):
        parse_time(text)


# ---------------------------------------------------------------------- output formats
def test_to_geojson_features():
    net = three_edges_with_detour()
    df = snapshot_frame([300, 100, 999], [0.5, float("nan"), 1.0], freeflow=[10.0, 20.0, 30.0])
    fc = to_geojson(net, df, as_of_t_s=T0, network_version=net.version)
    assert fc["type"] == "FeatureCollection" and fc["missing_keys"] == 1
    assert fc["as_of"] == T0 and fc["network_version"] == net.version
    f300, f100 = fc["features"]
    assert f300["geometry"] == {"type": "LineString",
                                "coordinates": [[12.0, 55.0], [12.5, 55.5], [12.4, 55.0]]}
    assert f100["geometry"]["coordinates"] == [[12.0, 55.0], [12.2, 55.0]]
    assert f300["properties"]["key"] == 300 and f300["properties"]["ratio"] == 0.5
    assert f300["properties"]["speed_mps"] == 5.0 and f300["properties"]["as_of"] == T0
    assert f100["properties"]["ratio"] is None  # NaN is not JSON
    assert set(f100["properties"]) == {"key", "speed_mps", "freeflow_mps", "ratio", "confidence",
                                       "observations", "as_of"}
    json.dumps(fc, allow_nan=False)


def test_to_geojson_empty():
    fc = to_geojson(three_edges_with_detour(), snapshot_frame([], []))
    assert fc["features"] == [] and fc["missing_keys"] == 0


def test_to_geojson_missing_column():
    with pytest.raises(SnapshotSchemaError, match="missing \\['ratio'\\]"):
        to_geojson(three_edges_with_detour(), snapshot_frame([100], 0.5).drop("ratio"))


def test_byte_formats_round_trip():
    df = validate_snapshot_frame(snapshot_frame([3, 1, 2], [0.1, 0.2, 0.3]))
    assert_frame_equal(pl.read_parquet(io.BytesIO(to_parquet_bytes(df))), df)
    table = pyarrow.ipc.open_stream(to_arrow_ipc_bytes(df)).read_all()
    assert_frame_equal(pl.from_arrow(table), df)
    assert_frame_equal(pl.read_ipc(io.BytesIO(to_arrow_ipc_bytes(df, stream=False))), df)
    csv = to_csv_bytes(df).decode()
    assert csv.splitlines()[0] == ",".join(SNAPSHOT_COLUMNS)
    assert_frame_equal(pl.read_csv(io.BytesIO(csv.encode()), schema=df.schema), df)


# ---------------------------------------------------------------------- SUMO scenario truth
def _sumo_key(edge_ids: pl.Series) -> np.ndarray:
    """A stable int64 key per SUMO edge id (first 8 bytes of its blake2b, top bit cleared)."""
    return np.array([int.from_bytes(hashlib.blake2b(e.encode(), digest_size=8).digest(), "little") >> 1
                     for e in edge_ids.to_list()], dtype=np.int64)


def test_edge_history_sumo_peak(tmp_path):
    truth_path = shared_file("scenario_kbh/edge_speeds_truth.csv.gz")
    manifest = json.loads(shared_file("scenario_kbh/manifest.json").read_text())
    with gzip.open(truth_path) as fh:
        truth = pl.read_csv(fh.read())
    edges = truth.select("edge_id", "speed_limit_mps").unique("edge_id").sort("edge_id")
    edges = edges.with_columns(key=pl.Series(_sumo_key(edges["edge_id"])))
    assert edges["key"].n_unique() == edges.height
    truth = truth.join(edges.select("edge_id", "key"), on="edge_id")
    t_start = float(manifest["time_range"]["epoch"])

    # One snapshot per 5-minute interval, taken at its end: every edge, its true mean speed
    # where cars drove, free flow (ratio 1, no observations) where none did.
    store = SnapshotStore(tmp_path / "snaps", retention_s=None)
    for (t_end,), part in truth.group_by(["interval_end_t"], maintain_order=True):
        frame = (
            edges.join(part.select("key", "mean_speed_mps", "vehicles_entered"), on="key", how="left")
            .select(
                "key",
                speed_mps=pl.col("mean_speed_mps").fill_null(pl.col("speed_limit_mps")),
                freeflow_mps="speed_limit_mps",
                ratio=pl.col("mean_speed_mps").fill_null(pl.col("speed_limit_mps")) / pl.col("speed_limit_mps"),
                confidence=pl.when(pl.col("mean_speed_mps").is_null()).then(0.0).otherwise(1.0),
                observations=pl.col("vehicles_entered").fill_null(0).cast(pl.Int64),
                last_update_t=pl.when(pl.col("mean_speed_mps").is_null()).then(None)
                .otherwise(pl.lit(float(t_end))),
            )
        )
        store.write(frame, t_s=float(t_end), network_version="sumo")
    times = store.times()
    assert times.size == truth["interval_end_t"].n_unique()

    lo, hi = (t_start + s for s in manifest["summary"]["trip_windows"]["peak"]["depart_window_sim_s"])
    # Snapshots whose 5-minute interval lies inside the peak window.
    in_peak = pl.col("interval_begin_t").is_between(lo, hi - 300)
    congested = (truth.filter(in_peak).group_by("key")
                 .agg((pl.col("mean_speed_mps") / pl.col("speed_limit_mps")).mean().alias("r"), pl.len())
                 .filter((pl.col("r") < 0.3) & (pl.col("len") >= 2))["key"].to_numpy())
    assert congested.size >= 20

    # The congested edges' own histories show the peak: lower mean ratio in it than outside it.
    lower = 0
    sample = congested[:: max(1, congested.size // 30)]
    for key in sample:
        h = store.edge_history(int(key), times[0], times[-1])
        assert h.height == times.size
        peak = h.filter(pl.col("t").is_between(lo + 300, hi))["ratio"].mean()
        rest = h.filter(~pl.col("t").is_between(lo + 300, hi))["ratio"].mean()
        lower += peak < rest
    assert lower == sample.size

    # The bbox aggregate over the congested edges dips in the peak against the first minutes.
    agg = store.aggregate_ratio(congested, times[0], times[-1], interval_s=900)
    peak_mean = agg.filter(pl.col("t_bucket").is_between(lo, hi))["mean_ratio"].mean()
    first = agg["mean_ratio"][0]
    assert peak_mean < 0.6 * first


# ---------------------------------------------------------------------- the estimator's frame
def test_write_round_trip_speed_estimator(store):
    net = three_edges_with_detour()
    est = SpeedEstimator(net)
    batch = TraversalBatch(
        edge=np.array([0, 2], dtype=np.int32), t_enter_s=np.array([T0, T0 + 5]),
        t_exit_s=np.array([T0 + 20, T0 + 50]), pace_s_per_m=np.array([0.2, 0.5]),
        weight=np.array([1.0, 1.0]),
    )
    est.apply(batch, t_s=T0 + 60)
    live = est.snapshot(at_t_s=T0 + 60)
    store.write(live, t_s=T0 + 60, network_version=net.version)
    _, back = store.at(T0 + 60)
    assert_frame_equal(back, validate_snapshot_frame(live).sort("key"), check_exact=True)
    # The live frame also renders as GeoJSON as it is (``edge_key``).
    fc = to_geojson(net, live, as_of_t_s=T0 + 60)
    assert [f["properties"]["key"] for f in fc["features"]] == [100, 200, 300]


def test_stored_snapshot_holds_touched_edges_and_reads_back_whole(store):
    """A stored snapshot keeps only the edges with state; filled with the free-flow rows of
    the others it equals the estimator's whole table, and the aggregate over every key
    counts the absent edges at ratio 1."""
    from traffic.snapshots import fill_absent

    net = three_edges_with_detour()
    est = SpeedEstimator(net)
    batch = TraversalBatch(
        edge=np.array([2], dtype=np.int32), t_enter_s=np.array([T0]),
        t_exit_s=np.array([T0 + 50]), pace_s_per_m=np.array([0.5]), weight=np.array([1.0]))
    est.apply(batch, t_s=T0 + 60)
    assert est.stored_edges().tolist() == [2]
    whole = validate_snapshot_frame(est.snapshot(at_t_s=T0 + 60)).sort("key")
    store.write(est.snapshot(T0 + 60, edges=est.stored_edges()), t_s=T0 + 60,
                network_version=net.version)
    _, back = store.at(T0 + 60)
    assert back.height == 1
    keys = np.asarray(net.edge_key)
    filled = fill_absent(back, keys, net.freeflow_mps_at(np.arange(net.n_edges)))
    assert_frame_equal(filled, whole, check_exact=True)
    agg = store.aggregate_ratio(keys, T0, T0 + 120, interval_s=600,
                                network_version=net.version)
    assert agg["n"].to_list() == [3]
    assert agg["mean_ratio"][0] == pytest.approx(whole["ratio"].mean())
    plain = store.aggregate_ratio(keys, T0, T0 + 120, interval_s=600)
    assert plain["n"].to_list() == [1]  # without the version: the stored rows only
