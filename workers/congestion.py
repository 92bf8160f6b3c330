"""Congestion queries behind the service facade: live state or stored snapshots, by bbox and time.

:class:`CongestionQueries` is what :class:`workers.services.ServiceBase` delegates its
``congestion``/``edge_history``/``aggregate`` methods to. It owns the snapshot store the
estimator writes into (``<data_dir>/snapshots``) and a per-network-version cache of edge
bounding boxes, so a bbox query is one vectorised comparison over the edges, then either a
filter of the live frame or one Parquet read (:meth:`traffic.snapshots.SnapshotStore.at`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from graph.network import RoadNetwork
from graph.spatial import edges_in_box
from traffic.errors import NoSnapshotError, SnapshotQueryError
from traffic.snapshots import (
    SNAPSHOT_COLUMNS,
    SnapshotStore,
    check_bbox,
    edge_bboxes,
    fill_absent,
    keys_in_bbox,
    of_road_class,
)

#: Default look-back of a history or aggregate query without ``t_from`` (s).
DEFAULT_HISTORY_S = 6 * 3600.0
#: Largest number of buckets an aggregate query may ask for.
MAX_AGGREGATE_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class CongestionAnswer:
    """One congestion answer: the per-edge frame and where it comes from.

    Attributes
    ----------
    frame
        :data:`traffic.snapshots.SNAPSHOT_COLUMNS` (``key`` is the stable edge key), sorted
        by key.
    as_of_t_s
        Event time (unix s) of the state: the snapshot time, or the live watermark
        (``None`` before any traversal was folded).
    source
        ``"live"`` or ``"snapshot"``.
    network_version
        The network the frame's keys were drawn from (the snapshot's, for a snapshot).
    """

    frame: pl.DataFrame
    as_of_t_s: float | None
    source: str
    network_version: str


def snapshot_dir(data_dir: str | Path | None) -> Path | None:
    """Where the estimator writes snapshots under ``data_dir`` (``None``: not written)."""
    return None if data_dir is None else Path(data_dir) / "snapshots"


def live_frame(snapshot: pl.DataFrame) -> pl.DataFrame:
    """The estimator's live table (``edge, edge_key, ...``) in stored snapshot form."""
    return snapshot.rename({"edge_key": "key"}).select(SNAPSHOT_COLUMNS).sort("key")


class CongestionQueries:
    """Bbox, history and aggregate queries over live state and the snapshot store.

    Parameters
    ----------
    store
        The snapshot store (``None`` when snapshots are not written: every time query then
        answers :class:`traffic.errors.NoSnapshotError`).
    """

    def __init__(self, store: SnapshotStore | None) -> None:
        self.store = store
        self._bboxes: tuple[str, tuple[np.ndarray, ...]] | None = None

    def edges(self, net: RoadNetwork, spatial: Any, bbox: Sequence[float], *,
              road_class: str | Sequence[str] | None = None) -> np.ndarray:
        """Ids of ``net``'s edges with a segment meeting ``bbox`` (degrees), optionally of some
        classes, from the spatial index (:func:`graph.spatial.edges_in_box`): O(edges under
        the box), whatever the network's size.

        Raises
        ------
        SnapshotQueryError
            A bad box or an unknown road class.
        """
        minlon, minlat, maxlon, maxlat = check_bbox(bbox)
        ids = edges_in_box(spatial, minlon, minlat, maxlon, maxlat)
        if road_class is not None:
            ids = ids[of_road_class(net.edge_road_class[ids], road_class)]
        return ids

    def keys(self, net: RoadNetwork, bbox: Sequence[float], *,
             road_class: str | Sequence[str] | None = None, spatial: Any = None) -> np.ndarray:
        """Stable keys of ``net``'s edges meeting ``bbox`` (degrees), optionally of some
        classes: through the spatial index when given (:meth:`edges`), else by a pass over
        every edge's bounding box (:func:`traffic.snapshots.keys_in_bbox`, cached per
        network; 32 B per edge and O(edges) per query)."""
        if spatial is not None:
            return np.asarray(net.edge_key[self.edges(net, spatial, bbox, road_class=road_class)],
                              dtype=np.int64)
        cached = self._bboxes
        if cached is None or cached[0] != net.version:
            cached = self._bboxes = (net.version, edge_bboxes(net))
        return keys_in_bbox(net, *bbox, road_class=road_class, bboxes=cached[1])  # type: ignore[arg-type]

    def congestion(self, net: RoadNetwork, bbox: Sequence[float], *,
                   live: Callable[..., tuple[float | None, pl.DataFrame]],
                   at_s: float | None = None, road_class: str | Sequence[str] | None = None,
                   min_ratio: float | None = None, max_ratio: float | None = None,
                   spatial: Any = None) -> CongestionAnswer:
        """Per-edge state in ``bbox``: live (``at_s is None``) or the snapshot at or before ``at_s``.

        ``min_ratio``/``max_ratio`` keep edges whose speed / free-flow ratio lies within them
        (an analyst asking for jams passes ``max_ratio=0.5``). With the network's ``spatial``
        index the edges come from it and ``live`` is called with their ids (it answers only
        those rows): the cost follows the box, not the network. Without, ``live()`` answers
        every edge and the box filters them.

        Raises
        ------
        NoSnapshotError
            ``at_s`` is before the first snapshot, or snapshots are not written.
        SnapshotQueryError
            A bad bbox, road class or ratio bound.
        """
        for name, bound in (("min_ratio", min_ratio), ("max_ratio", max_ratio)):
            if bound is not None and not (math.isfinite(bound) and bound >= 0):
                raise SnapshotQueryError(f"`{name}` must be a finite number >= 0; got {bound!r}")
        if spatial is not None:
            ids = self.edges(net, spatial, bbox, road_class=road_class)
            keys = np.asarray(net.edge_key[ids], dtype=np.int64)
        else:
            keys = self.keys(net, bbox, road_class=road_class)
        if at_s is None:
            as_of, snap = live(ids) if spatial is not None else live()
            frame = live_frame(snap)
            if spatial is None:
                frame = frame.filter(pl.col("key").is_in(keys))
            answer = CongestionAnswer(frame, as_of, "live", net.version)
        else:
            store = self._require_store()
            ref = store.find(at_s)
            t_s, frame = store.at(at_s, keys=keys)
            if ref.network_version == net.version:  # the edges it lacks had no state
                ids = ids if spatial is not None else net.edge_index_of_keys(keys)
                frame = fill_absent(frame, keys, net.freeflow_mps_at(ids))
            answer = CongestionAnswer(frame, t_s, "snapshot", ref.network_version)
        if min_ratio is not None:
            answer = _with_frame(answer, answer.frame.filter(pl.col("ratio") >= min_ratio))
        if max_ratio is not None:
            answer = _with_frame(answer, answer.frame.filter(pl.col("ratio") <= max_ratio))
        return answer

    def edge_history(self, key: int, t_from: float | None, t_to: float | None, *,
                     now_s: float, net: RoadNetwork | None = None) -> pl.DataFrame:
        """One edge's snapshots in ``[t_from, t_to]`` (defaults: the last 6 h before ``now_s``).

        With ``net``: a snapshot of ``net``'s version that lacks the edge (it had no state
        then) gives a free-flow row, as a stored row would have said."""
        t_from, t_to = _range(t_from, t_to, now_s)
        store = self._require_store()
        frame = store.edge_history(key, t_from, t_to)
        if net is None:
            return frame
        edge = int(net.edge_index_of_keys(np.array([key], dtype=np.int64))[0])
        if edge < 0:
            return frame
        have = set(frame["t"].to_list())
        lack = [r.t_s for r in store.snapshots(t_from, t_to)
                if r.network_version == net.version and r.t_s not in have]
        if not lack:
            return frame
        ff = float(net.freeflow_mps_at(np.array([edge]))[0])
        n = len(lack)
        rows = pl.DataFrame({"t": lack, "speed_mps": [ff] * n, "freeflow_mps": [ff] * n,
                             "ratio": [1.0] * n, "confidence": [0.0] * n,
                             "observations": [0] * n, "last_update_t": [None] * n},
                            schema=frame.schema)
        return pl.concat([frame, rows]).sort("t")

    def aggregate(self, net: RoadNetwork, bbox: Sequence[float], t_from: float | None,
                  t_to: float | None, *, interval_s: float, now_s: float,
                  road_class: str | Sequence[str] | None = None,
                  spatial: Any = None) -> pl.DataFrame:
        """Mean ratio over the edges of ``bbox`` per ``interval_s`` bucket of snapshot time.

        Raises
        ------
        SnapshotQueryError
            A bad interval, or more than :data:`MAX_AGGREGATE_BUCKETS` buckets.
        """
        t_from, t_to = _range(t_from, t_to, now_s)
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise SnapshotQueryError(f"`interval` must be a finite number of seconds > 0; got {interval_s!r}")
        n_buckets = (t_to - t_from) / interval_s
        if n_buckets > MAX_AGGREGATE_BUCKETS:
            raise SnapshotQueryError(
                f"`interval` {interval_s:g} s over {t_to - t_from:g} s makes {math.ceil(n_buckets)} "
                f"buckets; at most {MAX_AGGREGATE_BUCKETS}")
        keys = self.keys(net, bbox, road_class=road_class, spatial=spatial)
        return self._require_store().aggregate_ratio(keys, t_from, t_to, interval_s=interval_s,
                                                     network_version=net.version)

    def snapshot_times(self, t_from: float | None = None, t_to: float | None = None) -> np.ndarray:
        """Stored snapshot times (unix s, ascending); empty when snapshots are not written."""
        return np.zeros(0) if self.store is None else self.store.times(t_from, t_to)

    def _require_store(self) -> SnapshotStore:
        if self.store is None:
            raise NoSnapshotError("snapshots are not written by this server (it has no data directory)")
        return self.store


def _with_frame(answer: CongestionAnswer, frame: pl.DataFrame) -> CongestionAnswer:
    return CongestionAnswer(frame, answer.as_of_t_s, answer.source, answer.network_version)


def _range(t_from: float | None, t_to: float | None, now_s: float) -> tuple[float, float]:
    t_to = now_s if t_to is None else t_to
    t_from = t_to - DEFAULT_HISTORY_S if t_from is None else t_from
    if t_from > t_to:
        raise SnapshotQueryError(f"`from` ({t_from:g}) is after `to` ({t_to:g})")
    return t_from, t_to


def congestion_queries(config: Any) -> CongestionQueries:
    """The congestion queries of a service configured by ``config`` (a
    ``workers.config.PipelineConfig``): over its snapshot store when it has a data dir."""
    directory = snapshot_dir(config.data_dir)
    return CongestionQueries(None if directory is None else SnapshotStore(
        directory, retention_s=config.snapshot_retention_s))
