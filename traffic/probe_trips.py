"""Completed probe trips from the matcher's pieces: the driven route and its real duration.

The online bias corrections (:mod:`traffic.route_bias`) and the junction-delay measurement
learn from the probe vehicles' own trips, never from a scenario's truth: a *trip* here is
one matched trace, from its first to its last matched position, closed when the matcher
ends the trace (a gap, a reset, an idle flush).

:class:`ProbeTripCollector` keeps whole trips (offsets and times; the accuracy benchmark's).
The service's ingest stage keeps :class:`RouteTripCollector`, which holds only each open
trace's edges (bounded per trace) and hands on the trips the router's bias learning uses in
the compact form :class:`RouteTrips` (:func:`compact_trips`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from graph.network import RoadNetwork
from traffic.matching import MatchOutput
from traffic.traversals import merge_pieces


@dataclass(frozen=True, slots=True, eq=False)
class ProbeTrip:
    """One completed trace: ``edge`` in driving order (consecutive duplicates merged),
    the driven metres ``covered_m`` of each, entry and exit times (s) per edge."""

    trace: int
    edge: np.ndarray
    covered_m: np.ndarray
    t_enter_s: np.ndarray
    t_exit_s: np.ndarray

    @property
    def duration_s(self) -> float:
        """Real duration from the first matched position to the last (s)."""
        return float(self.t_exit_s[-1] - self.t_enter_s[0]) if self.edge.size else 0.0


class ProbeTripCollector:
    """Keeps every open trace's pieces; :meth:`push` returns the trips that ended.

    Memory is O(pieces of open traces); a trace's pieces are dropped when it ends.
    """

    def __init__(self) -> None:
        self._open: dict[int, list[tuple[np.ndarray, ...]]] = {}

    def open_count(self) -> int:
        """Traces with pieces held."""
        return len(self._open)

    def push(self, out: MatchOutput) -> list[ProbeTrip]:
        """Add a matcher output's pieces; return the trips its ``ended_traces`` closed."""
        tr = np.asarray(out.piece_trace)
        if tr.size:
            order = np.argsort(tr, kind="stable")
            cols = [np.asarray(a)[order] for a in (out.piece_trace, out.piece_edge,
                                                   out.piece_off0_m, out.piece_off1_m,
                                                   out.piece_t0_s, out.piece_t1_s)]
            keys, first = np.unique(cols[0], return_index=True)
            bounds = np.r_[first, cols[0].size]
            for j, k in enumerate(keys.tolist()):
                a, b = bounds[j], bounds[j + 1]
                self._open.setdefault(k, []).append(tuple(c[a:b] for c in cols))
        done = []
        for k in np.asarray(out.ended_traces).tolist():
            parts = self._open.pop(int(k), None)
            if not parts:
                continue
            cat = [np.concatenate([p[i] for p in parts]) for i in range(6)]
            _, edge, off0, off1, t0, t1 = merge_pieces(*cat)
            done.append(ProbeTrip(int(k), edge.astype(np.int64), np.maximum(off1 - off0, 0.0),
                                  t0.astype(np.float64), t1.astype(np.float64)))
        return done


@dataclass(frozen=True, slots=True, eq=False)
class RouteTrips:
    """Completed probe trips in the compact form the router's bias learning reads
    (:mod:`traffic.route_bias`): for trip ``i``, the edges driven between its first and last
    junction, ``edge[edge_first[i]:edge_first[i + 1]]`` (driving order, contiguous), and the
    junctions they join, ``src_node[i]`` to ``dst_node[i]``; all ids of the network
    ``network_version``. Trips are in the order they ended, oldest first.

    About 4 B per edge; what a publication carries (:class:`workers.publication.Publication`).
    """

    src_node: np.ndarray    # int32[k]
    dst_node: np.ndarray    # int32[k]
    edge_first: np.ndarray  # int64[k + 1]   CSR offsets into ``edge``
    edge: np.ndarray        # int32[m]
    network_version: str

    def __len__(self) -> int:
        return int(self.src_node.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays."""
        return int(self.src_node.nbytes + self.dst_node.nbytes + self.edge_first.nbytes
                   + self.edge.nbytes)

    def mid_edges(self, i: int) -> np.ndarray:
        """The edges of trip ``i`` (a view)."""
        return self.edge[self.edge_first[i]:self.edge_first[i + 1]]

    @classmethod
    def empty(cls, network_version: str) -> RouteTrips:
        """No trips."""
        z = np.zeros(0, dtype=np.int32)
        return cls(z, z, np.zeros(1, dtype=np.int64), z, network_version)

    def newest(self, n: int) -> RouteTrips:
        """The ``n`` trips that ended last (all when there are no more)."""
        k = len(self)
        if k <= n:
            return self
        a = k - max(int(n), 0)
        first = self.edge_first[a:] - self.edge_first[a]
        return RouteTrips(self.src_node[a:].copy(), self.dst_node[a:].copy(), first,
                          self.edge[self.edge_first[a]:].copy(), self.network_version)


def concat_route_trips(parts: Sequence[RouteTrips], *, max_trips: int) -> RouteTrips | None:
    """The newest ``max_trips`` trips of ``parts`` (oldest part first), as one record;
    ``None`` when there are none. Every part must be of one network (``ValueError``)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    versions = {p.network_version for p in parts}
    if len(versions) > 1:
        raise ValueError(f"route trips of several networks: {sorted(versions)}")
    if len(parts) == 1:
        return parts[0].newest(max_trips)
    sizes = np.array([p.edge.shape[0] for p in parts], dtype=np.int64)
    shift = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    first = np.concatenate([p.edge_first[:-1] + s for p, s in zip(parts, shift, strict=True)]
                           + [np.array([sizes.sum()], dtype=np.int64)])
    out = RouteTrips(np.concatenate([p.src_node for p in parts]),
                     np.concatenate([p.dst_node for p in parts]), first.astype(np.int64),
                     np.concatenate([p.edge for p in parts]), parts[0].network_version)
    return out.newest(max_trips)


def compact_trips(edge_seqs: Sequence[np.ndarray], net: RoadNetwork, *,
                  max_trips: int) -> RouteTrips:
    """The eligible trips of ``edge_seqs`` (each a trip's edges in driving order, consecutive
    duplicates merged, oldest trip first) as :class:`RouteTrips`, the newest ``max_trips``.

    Eligible: at least 4 edges and no gap (each edge starts where the one before ends). The
    first and last edges are driven in part, so a trip keeps its middle ``e[1:-1]``, from
    the junction where its second edge starts to the one where its second-to-last ends.
    O(edges of the newest eligible trips); older ones are not looked at once ``max_trips``
    are found.
    """
    src, dst = net.edge_src, net.edge_dst
    keep: list[np.ndarray] = []
    for e in reversed(edge_seqs):
        if len(keep) >= max_trips:
            break
        if e.shape[0] < 4 or (dst[e[:-1]] != src[e[1:]]).any():
            continue
        keep.append(e[1:-1])
    if not keep:
        return RouteTrips.empty(net.version)
    keep.reverse()
    sizes = np.array([m.shape[0] for m in keep], dtype=np.int64)
    return RouteTrips(
        src_node=np.array([src[m[0]] for m in keep], dtype=np.int32),
        dst_node=np.array([dst[m[-1]] for m in keep], dtype=np.int32),
        edge_first=np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
        edge=np.concatenate(keep).astype(np.int32), network_version=net.version)


class RouteTripCollector:
    """The edges of every open trace; :meth:`push` returns the eligible trips that ended
    (:func:`compact_trips`), the newest ``max_trips``.

    The lean form of :class:`ProbeTripCollector` the ingest stage keeps: the same trips (a
    trace from its first matched piece to its last, closed by the matcher's
    ``ended_traces``) but only their edge sequence (int32, consecutive duplicates merged),
    not the offsets and times. Memory is bounded per open trace: beyond ``2 *
    max_edges_per_trace`` held edges a trace keeps its newest ``max_edges_per_trace`` (so a
    very long trace's trip starts that many edges before its end; still contiguous, and
    only its middle between two junctions is used), and its chunks are joined into one
    every 32 pushes. Cost per push: O(pieces) plus a Python step per trace in it.
    """

    #: Chunks a trace may hold before they are joined (bounds the per-array overhead).
    MAX_CHUNKS = 32

    def __init__(self, net: RoadNetwork, *, max_edges_per_trace: int = 256,
                 max_trips: int = 64) -> None:
        if max_edges_per_trace < 4:
            raise ValueError(f"`max_edges_per_trace` must be >= 4; got {max_edges_per_trace!r}")
        if max_trips < 0:
            raise ValueError(f"`max_trips` must be >= 0; got {max_trips!r}")
        self.net = net
        self.max_edges_per_trace = int(max_edges_per_trace)
        self.max_trips = int(max_trips)
        self._open: dict[int, list[np.ndarray]] = {}
        self._held: dict[int, int] = {}
        self._held_total = 0
        self.trips = 0  # eligible trips returned so far

    def open_count(self) -> int:
        """Traces with edges held."""
        return len(self._open)

    def held_edges(self) -> int:
        """Edges held over all open traces."""
        return self._held_total

    def push(self, out: MatchOutput) -> RouteTrips:
        """Add a matcher output's pieces; return the eligible trips its ``ended_traces``
        closed (the newest ``max_trips``; empty with ``max_trips`` 0)."""
        tr = np.asarray(out.piece_trace)
        if tr.size:
            order = np.argsort(tr, kind="stable")
            tr, edge = tr[order], np.asarray(out.piece_edge)[order]
            new = np.ones(tr.size, dtype=bool)  # merge consecutive duplicates per trace
            new[1:] = (tr[1:] != tr[:-1]) | (edge[1:] != edge[:-1])
            tr, edge = tr[new], edge[new].astype(np.int32)
            keys, first = np.unique(tr, return_index=True)
            bounds = np.r_[first, tr.size].tolist()
            cap = self.max_edges_per_trace
            for j, k in enumerate(keys.tolist()):
                part = edge[bounds[j]:bounds[j + 1]].copy()  # a copy: nothing pins `edge`
                chunks = self._open.setdefault(k, [])
                chunks.append(part)
                before = self._held.get(k, 0)
                held = before + part.size
                if held > 2 * cap or len(chunks) >= self.MAX_CHUNKS:
                    joined = np.concatenate(chunks)[-cap if held > 2 * cap else 0:]
                    chunks[:] = [joined]
                    held = joined.size
                self._held[k] = held
                self._held_total += held - before
        ended = np.asarray(out.ended_traces).tolist()
        seqs = []
        for k in ended:
            chunks = self._open.pop(int(k), None)
            self._held_total -= self._held.pop(int(k), 0)
            if not chunks:
                continue
            e = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
            if e.size > 1:
                e = e[np.r_[True, e[1:] != e[:-1]]]  # duplicates across pushes
            seqs.append(e)
        done = compact_trips(seqs, self.net, max_trips=self.max_trips)
        self.trips += len(done)
        return done
