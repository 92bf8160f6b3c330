"""Congestion snapshots: an hourly-partitioned Parquet history of the estimator's state.

A snapshot is the estimator's state at one event time ``t``: one Parquet file per snapshot,
under a Hive-style partition of its UTC date and hour::

    <root>/date=2026-11-23/hour=08/snap-<t_ms>-<network_version>.parquet

Files are written atomically (a hidden ``.tmp`` file in the same directory, fsync,
``os.replace``, fsync of the directory), so a reader sees a whole snapshot or none. Readers
only consider names matching ``snap-<t_ms>-<version>.parquet``; a temp file left by a writer
that crashed is never read. Queries plan the file list from the names (no data scan), keep
only the partitions that overlap the asked time range, then run a polars lazy scan over those
files with projection and predicate push-down. Rows inside a file are sorted by edge key and
carry Parquet statistics, so a one-edge query decodes one row group per file.

A file holds the edges with any state (evidence, a clock, a prior other than free-flow);
the service writes only those (``EstimatorCore.stored_snapshot``), so a snapshot of a
26M-edge network costs what the probes touched. An edge of the file's network that is
absent had none: free-flow speed, ratio 1, confidence 0, no observations and no
``last_update_t``; :func:`fill_absent` puts such rows back for the keys a query asked for.
Files that hold every edge (older ones) read the same.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

from graph.network import ROAD_CLASS_INDEX, ROAD_CLASSES, RoadNetwork
from storage import fsync_directory, write_atomic
from traffic.errors import NoSnapshotError, SnapshotQueryError, SnapshotSchemaError

__all__ = [
    "SNAPSHOT_COLUMNS",
    "SNAPSHOT_SCHEMA",
    "HISTORY_COLUMNS",
    "SnapshotRef",
    "SnapshotScheduler",
    "SnapshotStore",
    "validate_snapshot_frame",
    "check_bbox",
    "edge_bboxes",
    "fill_absent",
    "keys_in_bbox",
    "of_road_class",
]

#: Columns of an estimator snapshot, in stored order (``key`` is the stable edge key).
SNAPSHOT_COLUMNS: tuple[str, ...] = (
    "key",
    "speed_mps",
    "freeflow_mps",
    "ratio",
    "confidence",
    "observations",
    "last_update_t",
)

#: Stored dtype of each snapshot column. Inputs are cast to these only where the cast is
#: lossless (wider ints, ints or float32 to float64); anything else is rejected.
SNAPSHOT_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.Int64(),
    "speed_mps": pl.Float64(),
    "freeflow_mps": pl.Float64(),
    "ratio": pl.Float64(),
    "confidence": pl.Float64(),
    "observations": pl.Int64(),
    "last_update_t": pl.Float64(),  # unix s; null where the edge never had an observation
}

#: Columns of :meth:`SnapshotStore.edge_history` (``t`` is the snapshot time, unix s).
HISTORY_COLUMNS: tuple[str, ...] = ("t",) + SNAPSHOT_COLUMNS[1:]

#: Estimator column names accepted as another name of a snapshot column.
_INPUT_ALIASES = {"edge_key": "key"}
#: Estimator columns that are not stored: dense edge ids are not stable across networks.
_DROPPED_INPUT_COLUMNS = frozenset({"edge"})

_INTEGER_COLUMNS = frozenset({"key", "observations"})
_FILE_RE = re.compile(r"^snap-(\d{1,16})-([A-Za-z0-9_.]{1,64})\.parquet$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.]{1,64}$")
_DATE_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_HOUR_RE = re.compile(r"^hour=(\d{2})$")
_TMP_SUFFIX = ".tmp"
_HOUR_S = 3600.0
_HOUR_MS = 3_600_000
# 64 Ki rows per row group: fastest of 8 Ki/16 Ki/64 Ki/one group for one-edge history and
# whole-file reads on a 733,846-edge snapshot (benchmarks/snapshots.py, BENCHMARKS.md).
_ROW_GROUP_ROWS = 65_536
_STALE_TEMP_WALL_S = 3600.0


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """One stored snapshot: its event time (unix s), network version and file."""

    t_s: float
    network_version: str
    path: Path


@dataclass(slots=True)
class SnapshotScheduler:
    """Say when a snapshot is due, on event time (the probes' clock, never the wall clock).

    Snapshot times are the multiples of ``every_s`` since the epoch (UTC), so a history is
    regular and "8:15" is a snapshot time. Call :meth:`due` with the event time of each batch
    *before* folding it into the estimator: when the batch crosses one or more boundaries it
    returns the latest crossed boundary, and the caller snapshots the estimator at that time.
    Boundaries skipped in one gap are not back-filled (the state did not change in between,
    apart from decay). Out-of-order event times never trigger a snapshot.
    """

    every_s: float = 60.0
    _last_boundary_s: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.every_s) and self.every_s > 0):
            raise SnapshotQueryError(f"`every_s` must be a finite number > 0 s; got {self.every_s!r}")

    def due(self, t_s: float) -> float | None:
        """Return the snapshot time (unix s) due before events at ``t_s``, or ``None``."""
        t_s = _check_time(t_s, "t_s")
        boundary = math.floor(t_s / self.every_s) * self.every_s
        if self._last_boundary_s is None:
            # The first batch starts the clock: there is no state to snapshot before it.
            self._last_boundary_s = boundary
            return None
        if boundary <= self._last_boundary_s:
            return None
        self._last_boundary_s = boundary
        return boundary


class SnapshotStore:
    """A directory of snapshots, partitioned by UTC date and hour, with retention.

    Parameters
    ----------
    root
        The dataset directory (created on first write).
    retention_s
        Snapshots older than this (event time, relative to ``now_s`` given to :meth:`prune`)
        are deleted by :meth:`prune`; ``None`` keeps everything.
    """

    def __init__(self, root: str | os.PathLike[str], *, retention_s: float | None = 7 * 86400.0):
        if retention_s is not None and not (math.isfinite(retention_s) and retention_s > 0):
            raise SnapshotQueryError(f"`retention_s` must be > 0 s or None; got {retention_s!r}")
        self.root = Path(root)
        self.retention_s = retention_s

    # ------------------------------------------------------------------ writing
    def write(self, df: pl.DataFrame, *, t_s: float, network_version: str) -> Path:
        """Store one snapshot taken at event time ``t_s`` (unix s), atomically.

        The frame must hold :data:`SNAPSHOT_COLUMNS` (``edge_key`` is accepted for ``key``,
        an ``edge`` column of dense ids is dropped); rows are stored sorted by key. Writing a
        time that already exists replaces that snapshot (whatever its network version).
        Times are kept to the millisecond.

        Raises
        ------
        SnapshotSchemaError
            Missing, unknown or mistyped columns, null or duplicate keys.
        SnapshotQueryError
            ``t_s`` not finite or negative, or a ``network_version`` unfit for a file name.
        """
        frame = validate_snapshot_frame(df).sort("key")
        t_ms = _to_ms(t_s, "t_s")
        if not isinstance(network_version, str) or not _VERSION_RE.match(network_version):
            raise SnapshotQueryError(
                f"`network_version` must be 1-64 characters of [A-Za-z0-9_.]; got {network_version!r}"
            )
        directory = self.root / _partition(t_ms)
        _make_dirs(directory)
        name = f"snap-{t_ms}-{network_version}.parquet"
        frame = frame.with_columns(
            pl.lit(t_ms / 1000.0, dtype=pl.Float64).alias("t"),
            pl.lit(network_version, dtype=pl.String).alias("network_version"),
        )
        write_atomic(directory / name, lambda fh: frame.write_parquet(
            fh, compression="zstd", statistics=True, row_group_size=_ROW_GROUP_ROWS))
        # One snapshot per event time: drop a same-time file of another network version.
        for other in directory.iterdir():
            m = _FILE_RE.match(other.name)
            if m and int(m.group(1)) == t_ms and other.name != name:
                other.unlink(missing_ok=True)
        fsync_directory(directory)
        return directory / name

    def prune(self, now_s: float) -> int:
        """Delete snapshots older than ``now_s - retention_s`` and the partitions left empty.

        Also deletes temp files a crashed writer left behind (not modified for an hour of wall
        time). Returns the number of snapshot files deleted. No-op with ``retention_s=None``
        (apart from the temp files).
        """
        cutoff_ms = None if self.retention_s is None else _to_ms(
            _check_time(now_s, "now_s") - self.retention_s, "now_s - retention_s", allow_negative=True)
        deleted = 0
        for date_dir, hour_dir, hour_start_ms in self._partitions(None, None):
            for entry in list(os.scandir(hour_dir)):
                m = _FILE_RE.match(entry.name)
                if m and cutoff_ms is not None and int(m.group(1)) < cutoff_ms:
                    os.unlink(entry.path)
                    deleted += 1
                elif entry.name.endswith(_TMP_SUFFIX) and _stale(entry):
                    os.unlink(entry.path)
            _rmdir_if_empty(hour_dir)
            _rmdir_if_empty(date_dir)
        return deleted

    # ------------------------------------------------------------------ planning
    def snapshots(self, t_from: float | None = None, t_to: float | None = None) -> list[SnapshotRef]:
        """Snapshots with ``t_from <= t <= t_to`` (either bound optional), oldest first.

        Read from directory and file names only: only the date and hour partitions that
        overlap the range are listed, and no file is opened.
        """
        lo_ms = None if t_from is None else _to_ms(t_from, "t_from", allow_negative=True)
        hi_ms = None if t_to is None else _to_ms(t_to, "t_to", allow_negative=True)
        if lo_ms is not None and hi_ms is not None and lo_ms > hi_ms:
            raise SnapshotQueryError(f"`t_from` ({t_from}) is after `t_to` ({t_to})")
        refs: list[SnapshotRef] = []
        for _, hour_dir, _ in self._partitions(lo_ms, hi_ms):
            refs.extend(r for r in _refs_in(hour_dir)
                        if (lo_ms is None or r.t_s * 1000 >= lo_ms - 0.5)
                        and (hi_ms is None or r.t_s * 1000 <= hi_ms + 0.5))
        refs.sort(key=lambda r: r.t_s)
        return refs

    def files(self, t_from: float | None = None, t_to: float | None = None) -> list[Path]:
        """The files a query over ``[t_from, t_to]`` reads (the planner's partition pruning)."""
        return [r.path for r in self.snapshots(t_from, t_to)]

    def times(self, t_from: float | None = None, t_to: float | None = None) -> np.ndarray:
        """Snapshot times available (unix s, float64, ascending), from file names only."""
        return np.array([r.t_s for r in self.snapshots(t_from, t_to)], dtype=np.float64)

    def find(self, t_s: float, *, max_age_s: float | None = None) -> SnapshotRef:
        """The latest snapshot at or before ``t_s`` (unix s), from names only.

        Walks partitions backwards from ``t_s``'s hour and stops at the first hour holding a
        snapshot at or before ``t_s``.

        Raises
        ------
        NoSnapshotError
            No snapshot at or before ``t_s``, or the latest is older than ``max_age_s``.
        """
        t_ms = _to_ms(t_s, "at", allow_negative=True)
        for _, hour_dir, _ in self._partitions(None, t_ms, newest_first=True):
            refs = [r for r in _refs_in(hour_dir) if round(r.t_s * 1000) <= t_ms]
            if refs:
                ref = max(refs, key=lambda r: r.t_s)
                if max_age_s is not None and t_s - ref.t_s > max_age_s:
                    raise NoSnapshotError(
                        f"no snapshot within {max_age_s:g} s before {_iso(t_s)} ({t_s:g}); "
                        f"the latest before it is at {_iso(ref.t_s)} ({ref.t_s:g})"
                    )
                return ref
        first = self.times()
        where = ("the store is empty" if first.size == 0
                 else f"the first snapshot is at {_iso(first[0])} ({first[0]:g})")
        raise NoSnapshotError(f"no snapshot at or before {_iso(t_s)} ({t_s:g}) in {self.root}: {where}")

    # ------------------------------------------------------------------ queries
    def scan(self, t_from: float | None = None, t_to: float | None = None) -> pl.LazyFrame:
        """A lazy frame over the snapshots in ``[t_from, t_to]``: the snapshot columns plus
        ``t``, ``network_version`` and the Hive partition columns ``date`` and ``hour``.

        Only files of the overlapping partitions are scanned; chain filters and selects on
        the result and polars pushes them into the Parquet reader.
        """
        files = self.files(t_from, t_to)
        if not files:
            empty = {**SNAPSHOT_SCHEMA, "t": pl.Float64(), "network_version": pl.String(),
                     "date": pl.Date(), "hour": pl.Int32()}
            return pl.LazyFrame(schema=empty)
        return pl.scan_parquet(
            files, hive_partitioning=True,
            hive_schema={"date": pl.Date(), "hour": pl.Int32()},
        )

    def at(self, t_s: float, *, keys: np.ndarray | Sequence[int] | None = None,
           max_age_s: float | None = None) -> tuple[float, pl.DataFrame]:
        """Return ``(snapshot_t, frame)``: the nearest snapshot at or before ``t_s``.

        The frame has :data:`SNAPSHOT_COLUMNS`, sorted by key, restricted to ``keys`` when
        given (keys absent from the snapshot are simply absent). One file is read.

        Raises
        ------
        NoSnapshotError
            See :meth:`find`.
        """
        def run() -> tuple[float, pl.DataFrame]:
            ref = self.find(t_s, max_age_s=max_age_s)
            lf = pl.scan_parquet(ref.path)
            if keys is not None:
                lf = lf.filter(pl.col("key").is_in(_keys_array(keys)))
            return ref.t_s, lf.select(SNAPSHOT_COLUMNS).collect()

        return _retry_once(run)

    def edge_history(self, key: int, t_from: float, t_to: float) -> pl.DataFrame:
        """One edge's snapshots in ``[t_from, t_to]``: :data:`HISTORY_COLUMNS`, by time.

        Row-group statistics on the sorted key column let the reader skip all but one row
        group per file. Times where the edge is absent (another network) have no row.
        """
        key = _check_key(key)
        _check_range(t_from, t_to)
        return _retry_once(lambda: (
            self.scan(t_from, t_to).filter(pl.col("key") == key)
            .select(HISTORY_COLUMNS).collect().sort("t")
        ))

    def aggregate_ratio(self, keys: np.ndarray | Sequence[int], t_from: float, t_to: float, *,
                        interval_s: float, network_version: str | None = None) -> pl.DataFrame:
        """Mean congestion ratio over a set of edges per time interval.

        Buckets are ``floor(t / interval_s) * interval_s`` (aligned to the epoch, UTC), so
        15-minute buckets start on the quarter hours. ``mean_ratio`` is the plain mean over
        every (snapshot, edge) row of the bucket with a non-null, non-NaN ratio; ``n`` counts
        those rows. With ``network_version`` (the network ``keys`` belong to), each
        snapshot of that version also counts every asked key it lacks, at ratio 1 (an edge
        with no state; see the module docstring). Returns columns ``t_bucket`` (unix s),
        ``mean_ratio``, ``n``, by time; buckets without rows are absent.
        """
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise SnapshotQueryError(f"`interval_s` must be a finite number > 0 s; got {interval_s!r}")
        _check_range(t_from, t_to)
        key_arr = _keys_array(keys)
        out_schema = {"t_bucket": pl.Float64(), "mean_ratio": pl.Float64(), "n": pl.Int64()}
        if key_arr.size == 0:
            return pl.DataFrame(schema=out_schema)
        ratio = pl.col("ratio")
        bucket = ((pl.col("t") / interval_s).floor() * interval_s).alias("t_bucket")
        rows = _retry_once(lambda: (
            self.scan(t_from, t_to)
            .filter(pl.col("key").is_in(key_arr) & ratio.is_not_null() & ratio.is_not_nan())
            .select("t", "key", "ratio")
            .collect()
        ))
        per_t = _sums_per_time(rows)
        if network_version is not None:
            # Snapshots of this network without some asked keys: those edges had no state.
            times = pl.DataFrame({"t": [r.t_s for r in self.snapshots(t_from, t_to)
                                        if r.network_version == network_version]},
                                 schema={"t": pl.Float64()})
            per_t = (times.join(per_t, on="t", how="full", coalesce=True)
                     .with_columns(pl.col("s").fill_null(0.0), pl.col("n").fill_null(0))
                     .with_columns(pl.when(pl.col("t").is_in(times["t"].implode()))
                                   .then(pl.lit(key_arr.size, dtype=pl.Int64))
                                   .otherwise(pl.col("n")).alias("n_all"))
                     .with_columns((pl.col("s") + (pl.col("n_all") - pl.col("n"))).alias("s"),
                                   pl.col("n_all").alias("n"))
                     .drop("n_all"))
        per_t = per_t.filter(pl.col("n") > 0).sort("t").with_columns(bucket)
        # Added in time order with NumPy: float sums must not depend on the threads' order.
        b = per_t["t_bucket"].to_numpy()
        if b.size == 0:
            return pl.DataFrame(schema=out_schema)
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        s_sum = np.add.reduceat(per_t["s"].to_numpy().astype(np.float64), starts)
        n_sum = np.add.reduceat(per_t["n"].to_numpy().astype(np.int64), starts)
        return pl.DataFrame({"t_bucket": b[starts], "mean_ratio": s_sum / n_sum, "n": n_sum},
                            schema=out_schema)

    # ------------------------------------------------------------------ internals
    def _partitions(self, lo_ms: int | None, hi_ms: int | None, *,
                    newest_first: bool = False) -> Iterator[tuple[Path, Path, int]]:
        """Yield ``(date_dir, hour_dir, hour_start_ms)`` overlapping ``[lo_ms, hi_ms]``."""
        if not self.root.is_dir():
            return
        lo_day = None if lo_ms is None else _utc(lo_ms).date().isoformat()
        hi_day = None if hi_ms is None else _utc(hi_ms).date().isoformat()
        days = sorted(
            (m.group(1), Path(e.path)) for e in os.scandir(self.root)
            if e.is_dir() and (m := _DATE_RE.match(e.name))
            and (lo_day is None or m.group(1) >= lo_day) and (hi_day is None or m.group(1) <= hi_day)
        )
        for day, date_dir in (reversed(days) if newest_first else days):
            day_ms = int(datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp() * 1000)
            hours = sorted(
                (day_ms + int(m.group(1)) * _HOUR_MS, Path(e.path)) for e in os.scandir(date_dir)
                if e.is_dir() and (m := _HOUR_RE.match(e.name))
            )
            for start_ms, hour_dir in (reversed(hours) if newest_first else hours):
                if (lo_ms is None or start_ms + _HOUR_MS > lo_ms) and (hi_ms is None or start_ms <= hi_ms):
                    yield date_dir, hour_dir, start_ms


def _sums_per_time(rows: pl.DataFrame) -> pl.DataFrame:
    """Sum of ``ratio`` and row count per snapshot time, the same bits on every call.

    A parallel group-by adds each group's floats in whatever order its threads finish, so
    two identical queries could differ in the last bit. Rows are put in (t, key) order and
    each time's run is added left to right.
    """
    if rows.height == 0:
        return pl.DataFrame(schema={"t": pl.Float64(), "s": pl.Float64(), "n": pl.Int64()})
    t = rows["t"].to_numpy()
    order = np.lexsort((rows["key"].to_numpy(), t))
    t = t[order]
    ratio = rows["ratio"].cast(pl.Float64).to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    return pl.DataFrame({"t": t[starts], "s": np.add.reduceat(ratio, starts),
                         "n": np.diff(np.r_[starts, t.size]).astype(np.int64)})


def validate_snapshot_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Check an estimator snapshot against :data:`SNAPSHOT_SCHEMA`; return it in stored form.

    Renames ``edge_key`` to ``key``, drops a dense ``edge`` id column, casts losslessly to the
    stored dtypes and orders the columns as :data:`SNAPSHOT_COLUMNS`.

    Raises
    ------
    SnapshotSchemaError
        Not a polars DataFrame; a missing or unknown column; a dtype that would lose
        information (a float key, a string speed); a null or duplicate key.
    """
    if not isinstance(df, pl.DataFrame):
        raise SnapshotSchemaError(f"a snapshot must be a polars DataFrame; got {type(df).__name__}")
    renames = {a: c for a, c in _INPUT_ALIASES.items() if a in df.columns and c not in df.columns}
    df = df.rename(renames).drop([c for c in _DROPPED_INPUT_COLUMNS if c in df.columns])
    missing = [c for c in SNAPSHOT_COLUMNS if c not in df.columns]
    unknown = [c for c in df.columns if c not in SNAPSHOT_SCHEMA]
    if missing or unknown:
        raise SnapshotSchemaError(
            f"snapshot columns must be {list(SNAPSHOT_COLUMNS)}; missing {missing}, unknown {unknown}"
        )
    for name in SNAPSHOT_COLUMNS:
        dtype = df.schema[name]
        ok = dtype.is_integer() if name in _INTEGER_COLUMNS else (
            dtype.is_integer() or dtype in (pl.Float32, pl.Float64) or dtype == pl.Null)
        if not ok:
            raise SnapshotSchemaError(
                f"snapshot column `{name}` must be {SNAPSHOT_SCHEMA[name]} (or losslessly castable); got {dtype}"
            )
    try:
        out = df.select([pl.col(c).cast(SNAPSHOT_SCHEMA[c], strict=True) for c in SNAPSHOT_COLUMNS])
    except pl.exceptions.InvalidOperationError as exc:
        raise SnapshotSchemaError(f"snapshot columns do not fit {SNAPSHOT_SCHEMA}: {exc}") from exc
    if out["key"].null_count():
        raise SnapshotSchemaError(f"snapshot column `key` has {out['key'].null_count()} null values")
    if out["key"].n_unique() != out.height:
        dup = out["key"].filter(out["key"].is_duplicated()).first()
        raise SnapshotSchemaError(f"snapshot column `key` has duplicates (e.g. {dup})")
    return out


# ---------------------------------------------------------------------- query arguments
def fill_absent(frame: pl.DataFrame, keys: np.ndarray, freeflow_mps: np.ndarray) -> pl.DataFrame:
    """``frame`` (:data:`SNAPSHOT_COLUMNS`) with a row for each of ``keys`` it lacks: an edge
    with no state (free-flow speed ``freeflow_mps`` of that key, ratio 1, confidence 0, no
    observations, null ``last_update_t``); sorted by key. ``freeflow_mps`` is per key of
    ``keys``. O(rows + keys)."""
    keys = np.asarray(keys, dtype=np.int64)
    missing = ~np.isin(keys, frame["key"].to_numpy())
    if not missing.any():
        return frame.sort("key")
    ff = np.asarray(freeflow_mps, dtype=np.float64)[missing]
    n = int(missing.sum())
    rows = pl.DataFrame({
        "key": keys[missing], "speed_mps": ff, "freeflow_mps": ff, "ratio": np.ones(n),
        "confidence": np.zeros(n), "observations": np.zeros(n, dtype=np.int64),
        "last_update_t": pl.Series(np.zeros(n)).replace(0.0, None),
    }, schema=SNAPSHOT_SCHEMA)
    return pl.concat([frame.select(SNAPSHOT_COLUMNS).cast(SNAPSHOT_SCHEMA), rows]).sort("key")


def check_bbox(bbox: Sequence[float], *, shown: str | None = None) -> tuple[float, float, float, float]:
    """Check a box ``(minlon, minlat, maxlon, maxlat)`` in degrees; return it as floats.

    ``shown`` is how the box is named in error messages (default: its repr). Parsing the
    box from text is the caller's (``api.params.parse_bbox``).

    Raises
    ------
    SnapshotQueryError
        Not four finite numbers, out of range, or min above max (a box crossing the
        antimeridian is not supported).
    """
    shown = repr(list(bbox)) if shown is None else shown
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError) as exc:
        raise SnapshotQueryError(f"bbox {shown} must be four numbers minlon,minlat,maxlon,maxlat") from exc
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise SnapshotQueryError(f"bbox {shown} must be four finite numbers minlon,minlat,maxlon,maxlat")
    minlon, minlat, maxlon, maxlat = values
    if not (-180 <= minlon <= 180 and -180 <= maxlon <= 180 and -90 <= minlat <= 90 and -90 <= maxlat <= 90):
        raise SnapshotQueryError(f"bbox {shown}: lon must be within [-180, 180], lat within [-90, 90]")
    if minlon > maxlon or minlat > maxlat:
        raise SnapshotQueryError(f"bbox {shown}: minlon must be <= maxlon and minlat <= maxlat")
    return minlon, minlat, maxlon, maxlat


def edge_bboxes(net: RoadNetwork) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bounding box of every edge's polyline: ``(minlon, minlat, maxlon, maxlat)``, float64[m].

    One ``reduceat`` per bound over the geometry arrays (every edge has >= 2 points). Cache
    the result beside the network when asking many bbox queries.
    """
    if net.n_edges == 0:
        empty = np.zeros(0, dtype=np.float64)
        return empty, empty, empty, empty
    starts = net.geom_offsets[:-1]
    return (np.minimum.reduceat(net.geom_lon, starts), np.minimum.reduceat(net.geom_lat, starts),
            np.maximum.reduceat(net.geom_lon, starts), np.maximum.reduceat(net.geom_lat, starts))


def keys_in_bbox(net: RoadNetwork, minlon: float, minlat: float, maxlon: float, maxlat: float, *,
                 road_class: str | Sequence[str] | None = None,
                 bboxes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Stable keys of the edges whose geometry bounding box meets the box (degrees).

    An edge is in when its polyline's bounding box intersects the query box (boundary
    included): cheap and vectorised, and a superset of the edges that truly cross the box
    only for long diagonal edges. ``road_class`` keeps only edges of the named class(es)
    (names of :data:`graph.network.ROAD_CLASSES`). ``bboxes`` is :func:`edge_bboxes` of
    ``net``, when cached. Returns int64 keys in edge-id order.

    Raises
    ------
    SnapshotQueryError
        A bad box (see :func:`check_bbox`) or an unknown road class.
    """
    minlon, minlat, maxlon, maxlat = check_bbox([minlon, minlat, maxlon, maxlat])
    e_minlon, e_minlat, e_maxlon, e_maxlat = edge_bboxes(net) if bboxes is None else bboxes
    inside = (e_minlon <= maxlon) & (e_maxlon >= minlon) & (e_minlat <= maxlat) & (e_maxlat >= minlat)
    if road_class is not None:
        inside &= of_road_class(net.edge_road_class, road_class)
    return np.asarray(net.edge_key[inside], dtype=np.int64)


def of_road_class(edge_road_class: np.ndarray, road_class: str | Sequence[str]) -> np.ndarray:
    """Bool per entry of ``edge_road_class`` (codes): whether it is one of the named classes
    (names of :data:`graph.network.ROAD_CLASSES`).

    Raises
    ------
    SnapshotQueryError
        An unknown class name.
    """
    names = [road_class] if isinstance(road_class, str) else list(road_class)
    unknown = [n for n in names if n not in ROAD_CLASS_INDEX]
    if unknown:
        raise SnapshotQueryError(f"unknown road class {unknown}; known: {', '.join(ROAD_CLASSES)}")
    return np.isin(edge_road_class, [ROAD_CLASS_INDEX[n] for n in names])


# ---------------------------------------------------------------------- helpers
def _check_time(t_s: float, name: str) -> float:
    try:
        t = float(t_s)
    except (TypeError, ValueError) as exc:
        raise SnapshotQueryError(f"`{name}` must be a number of unix seconds; got {t_s!r}") from exc
    if not math.isfinite(t):
        raise SnapshotQueryError(f"`{name}` must be finite unix seconds; got {t_s!r}")
    return t


def _to_ms(t_s: float, name: str, *, allow_negative: bool = False) -> int:
    t = _check_time(t_s, name)
    if t < 0 and not allow_negative:
        raise SnapshotQueryError(f"`{name}` must be >= 0 unix seconds; got {t_s!r}")
    return int(round(t * 1000))


def _check_range(t_from: float, t_to: float) -> None:
    a, b = _check_time(t_from, "t_from"), _check_time(t_to, "t_to")
    if a > b:
        raise SnapshotQueryError(f"`t_from` ({t_from}) is after `t_to` ({t_to})")


def _check_key(key: int) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise SnapshotQueryError(f"`key` must be an integer edge key; got {key!r}")
    return int(key)


def _keys_array(keys: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(keys)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise SnapshotQueryError(f"`keys` must be a 1-D array of integer edge keys; got {arr.dtype}{list(arr.shape)}")
    return np.unique(arr.astype(np.int64))


def _utc(t_ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=t_ms)


def _iso(t_s: float) -> str:
    try:
        return _utc(int(round(t_s * 1000))).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return repr(t_s)


def _partition(t_ms: int) -> str:
    d = _utc(t_ms)
    return f"date={d.date().isoformat()}/hour={d.hour:02d}"


def _refs_in(hour_dir: Path) -> list[SnapshotRef]:
    refs = []
    for e in os.scandir(hour_dir):
        m = _FILE_RE.match(e.name)
        if m:
            refs.append(SnapshotRef(int(m.group(1)) / 1000.0, m.group(2), Path(e.path)))
    return refs


def _stale(entry: os.DirEntry[str]) -> bool:
    import time

    try:
        return time.time() - entry.stat().st_mtime > _STALE_TEMP_WALL_S
    except FileNotFoundError:
        return False


def _make_dirs(directory: Path) -> None:
    """Create the partition directories, fsyncing each parent that gained an entry."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_directory(d.parent)


def _rmdir_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (or already gone): keep it


def _retry_once(run):  # type: ignore[no-untyped-def]
    """Run a query; replan once if :meth:`SnapshotStore.prune` deleted a file meanwhile."""
    try:
        return run()
    except (FileNotFoundError, pl.exceptions.ComputeError) as exc:
        if not isinstance(exc, FileNotFoundError) and "No such file" not in str(exc):
            raise
        return run()
