"""Speed feeds: OSRM segment-speed files read into per-part edge travel times, and written back.

A feed line ``from_osm_node_id,to_osm_node_id,speed_kmh[,rate]`` names one *segment*: two
consecutive OSM nodes of a way, in the direction of travel. Our edges span several such
segments (the geometry points between two junctions), so a line applies to one *part* of
an edge: geometry segment ``s`` (points ``s`` and ``s + 1`` of ``geom_lat``/``geom_lon``,
OSM ids from :attr:`graph.network.RoadNetwork.geom_osm_node`), whose length is its
great-circle share of the edge length.

Blend (the feed is a source beside the probes). A part fed ``v`` km/h at time ``t_r`` has
weight ``alpha = weight * max(0, 1 - age / age_limit_s)`` (linear fade, ``age = now - t_r``),
and replaces that share of the published time::

    routed_e = pub_e * (1 - sum_j alpha_j * len_j / L_e) + sum_j alpha_j * len_j / v_j

so a fresh feed with ``weight = 1`` sets the part to the feed's speed, parts without a line
keep the estimate, and as the feed ages the edge fades back to the probe estimate; past the
age limit the line is dropped. The routers keep this as one affine term per fed edge
(:meth:`FeedStore.blend`: ``keep``, ``add``), applied under the closure multipliers.
A speed of 0 closes the edge holding that part (the facade turns it into a closure until
``t_r + age_limit_s``; :meth:`FeedStore.zero_edges`); a later non-zero line reopens it.

:class:`FeedStore` keeps the live lines as sorted arrays of geometry segment ids (O(fed
parts) memory, 40 B per part) and its state as OSM node pairs, so it survives a network swap.
The pair lookup (:class:`SegmentLookup`, 24 B per geometry segment) is built on the first
feed for a network version.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from graph.network import RoadNetwork, haversine_m

#: Version of :meth:`FeedStore.state_dict`.
STATE_VERSION = 1
_PAIR = np.dtype([("a", "<i8"), ("b", "<i8")])


class FeedFormatError(ValueError):
    """A speed file is malformed (wrong column count, non-numeric or negative speed)."""


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """How a speed feed is blended: ``weight`` (0..1) of a fresh line, the age after which a
    line no longer counts (``age_limit_s``; also how long a speed-0 closure lasts), and the
    cadence (``refresh_s``, wall seconds) at which the facade re-sends the fading blend."""

    weight: float = 1.0
    age_limit_s: float = 900.0
    refresh_s: float = 5.0


def parse_speed_csv(
    data: bytes | str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse an OSRM segment-speed file: ``(from_osm int64, to_osm int64, speed_kmh float64,
    row int64)`` (row: the 1-based line number of each line in the file).

    Blank lines are skipped; the optional fourth column (``rate``) is checked as a number and
    otherwise ignored (we route on time). Raises :class:`FeedFormatError` naming the first bad
    row (1-based) and field; nothing is returned for a file with any bad row.
    """
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    frm: list[int] = []
    to: list[int] = []
    speed: list[float] = []
    rows: list[int] = []
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split(",")
        if len(cols) not in (3, 4):
            raise FeedFormatError(f"row {row}: expected 3 or 4 columns "
                                  f"(from_osm_node_id,to_osm_node_id,speed_kmh[,rate]); "
                                  f"got {len(cols)}")
        try:
            a, b = int(cols[0]), int(cols[1])
        except ValueError:
            raise FeedFormatError(f"row {row}: OSM node ids must be integers; got "
                                  f"{cols[0].strip()!r}, {cols[1].strip()!r}") from None
        try:
            v = float(cols[2])
            if len(cols) == 4:
                float(cols[3])
        except ValueError:
            raise FeedFormatError(f"row {row}: `speed_kmh` (and `rate`) must be numeric; got "
                                  f"{','.join(c.strip() for c in cols[2:])!r}") from None
        if not math.isfinite(v) or v < 0:
            raise FeedFormatError(f"row {row}: `speed_kmh` must be a finite number >= 0; "
                                  f"got {cols[2].strip()!r}")
        frm.append(a)
        to.append(b)
        speed.append(v)
        rows.append(row)
    return (np.asarray(frm, dtype=np.int64), np.asarray(to, dtype=np.int64),
            np.asarray(speed, dtype=np.float64), np.asarray(rows, dtype=np.int64))


class SegmentLookup:
    """``(from_osm, to_osm) -> geometry segment id`` over one network (sorted pairs)."""

    def __init__(self, net: RoadNetwork) -> None:
        osm = np.asarray(net.geom_osm_node)
        g = osm.shape[0]
        start = np.ones(max(g - 1, 0), dtype=bool)
        ends = np.asarray(net.geom_offsets[1:], dtype=np.int64) - 1  # last point of each edge
        start[ends[ends < g - 1]] = False
        seg = np.flatnonzero(start)
        seg = seg[(osm[seg] != -1) & (osm[seg + 1] != -1)]
        pairs = np.empty(seg.size, dtype=_PAIR)
        pairs["a"], pairs["b"] = osm[seg], osm[seg + 1]
        order = np.argsort(pairs, kind="stable")
        self.pairs, self.seg = pairs[order], seg[order]

    def find_all(self, frm: np.ndarray, to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(line, seg)``: every geometry segment running ``frm[line] -> to[line]`` (two
        ways drawn over the same nodes give one pair several segments; a line sets all)."""
        q = np.empty(frm.shape[0], dtype=_PAIR)
        q["a"], q["b"] = frm, to
        lo = np.searchsorted(self.pairs, q, side="left")
        hi = np.searchsorted(self.pairs, q, side="right")
        count = hi - lo
        line = np.repeat(np.arange(q.shape[0]), count)
        pos = np.repeat(lo, count) + (np.arange(line.size) - np.repeat(np.cumsum(count) - count,
                                                                        count))
        return line.astype(np.int64), self.seg[pos].astype(np.int64)

    def find(self, frm: np.ndarray, to: np.ndarray) -> np.ndarray:
        """Geometry segment id of each pair; -1 where no edge runs ``frm -> to`` directly."""
        q = np.empty(frm.shape[0], dtype=_PAIR)
        q["a"], q["b"] = frm, to
        if self.pairs.size == 0:
            return np.full(q.shape[0], -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.pairs, q), self.pairs.size - 1)
        hit = self.pairs[pos] == q
        return np.where(hit, self.seg[pos], -1).astype(np.int64)


def segment_parts(net: RoadNetwork, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(edge, length_m)`` of geometry segments: the edge holding each and its share of the
    edge length (its great-circle length scaled so an edge's parts sum to ``edge_length_m``).
    O(points of the edges touched)."""
    off = np.asarray(net.geom_offsets)
    edge = (np.searchsorted(off, seg, side="right") - 1).astype(np.int64)
    lat, lon = net.geom_lat, net.geom_lon
    own = haversine_m(lat[seg], lon[seg], lat[seg + 1], lon[seg + 1])
    uniq, inv = np.unique(edge, return_inverse=True)
    counts = off[uniq + 1] - off[uniq] - 1  # segments per edge
    first = np.repeat(off[uniq], counts) + (np.arange(counts.sum()) - np.repeat(
        np.cumsum(counts) - counts, counts))
    whole = np.bincount(np.repeat(np.arange(uniq.size), counts),
                        weights=haversine_m(lat[first], lon[first], lat[first + 1],
                                            lon[first + 1]), minlength=uniq.size)
    length = np.asarray(net.edge_length_m)[edge]
    share = np.where(whole[inv] > 0, own / np.where(whole[inv] > 0, whole[inv], 1.0),
                     1.0 / counts[inv])
    return edge, share * length


class FeedStore:
    """The live speed-feed lines of one network (see the module docstring). Thread-safe."""

    def __init__(self, net: RoadNetwork, config: FeedConfig | None = None) -> None:
        self.net, self.config = net, config or FeedConfig()
        self._lock = threading.Lock()
        self._lookup: SegmentLookup | None = None
        self._seg = np.zeros(0, dtype=np.int64)  # sorted geometry segment ids
        self._speed = np.zeros(0)  # km/h; 0 closes
        self._t = np.zeros(0)  # clock seconds the line was received
        self._edge = np.zeros(0, dtype=np.int64)
        self._len = np.zeros(0)  # m, the part's length
        self.revision = 0
        self.lines_received = self.lines_applied = self.lines_rejected = 0
        self.last_received_t: float | None = None

    def lookup(self) -> SegmentLookup:
        """The pair lookup of this network (built on first use)."""
        if self._lookup is None:
            self._lookup = SegmentLookup(self.net)
        return self._lookup

    def apply(self, frm: np.ndarray, to: np.ndarray, speed_kmh: np.ndarray,
              now_s: float) -> list[tuple[int, str]]:
        """Keep the lines that name a segment of the network (received at ``now_s``; a later
        line for the same segment replaces an earlier one); returns ``(row, reason)`` of the
        others (row: 0-based position among the non-blank lines)."""
        lk = self.lookup()
        line, seg_all = lk.find_all(frm, to)
        ok = np.zeros(frm.shape[0], dtype=bool)
        ok[line] = True
        bad = np.flatnonzero(~ok)
        rejected: list[tuple[int, str]] = []
        if bad.size:
            rev = lk.find(to[bad], frm[bad])
            for i, r in zip(bad.tolist(), rev.tolist()):
                a, b = int(frm[i]), int(to[i])
                why = (f"no edge runs from OSM node {a} to {b}; only {b} -> {a} (one-way)"
                       if r >= 0 else
                       f"OSM nodes {a} -> {b} are not consecutive nodes of any edge")
                rejected.append((i, why))
        # Later lines of one file win: keep the last occurrence of each segment.
        s_new, v_new = seg_all[::-1], speed_kmh[line][::-1]
        s_new, first = np.unique(s_new, return_index=True)
        v_new = v_new[first]
        edge, length = segment_parts(self.net, s_new) if s_new.size else (
            np.zeros(0, dtype=np.int64), np.zeros(0))
        with self._lock:
            keep = ~np.isin(self._seg, s_new)
            seg_all = np.concatenate([self._seg[keep], s_new])
            order = np.argsort(seg_all, kind="stable")
            cat = lambda old, new: np.concatenate([old[keep], new])[order]
            self._speed = cat(self._speed, v_new)
            self._t = cat(self._t, np.full(s_new.size, float(now_s)))
            self._edge = cat(self._edge, edge)
            self._len = cat(self._len, length)
            self._seg = seg_all[order]
            self.revision += 1
            self.lines_received += int(frm.size)
            self.lines_applied += int(ok.sum())
            self.lines_rejected += len(rejected)
            self.last_received_t = float(now_s)
        return rejected

    def expire(self, now_s: float) -> int:
        """Drop lines older than the age limit; returns how many."""
        with self._lock:
            live = (now_s - self._t) < self.config.age_limit_s
            n = int((~live).sum())
            if n:
                for name in ("_seg", "_speed", "_t", "_edge", "_len"):
                    setattr(self, name, getattr(self, name)[live])
                self.revision += 1
            return n

    def blend(self, now_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(edges, keep, add)`` at ``now_s``: sorted fed edge ids and the affine term that
        gives ``routed = published * keep + add`` (module docstring). Speed-0 parts are left
        to the closures. O(fed parts)."""
        cfg = self.config
        with self._lock:
            age = np.maximum(now_s - self._t, 0.0)
            alpha = cfg.weight * np.maximum(0.0, 1.0 - age / cfg.age_limit_s)
            use = (alpha > 0) & (self._speed > 0)
            edge, a, ln, v = self._edge[use], alpha[use], self._len[use], self._speed[use]
        if edge.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
        uniq, inv = np.unique(edge, return_inverse=True)
        total = np.asarray(self.net.edge_length_m)[uniq]
        frac = np.where(total[inv] > 0, ln / np.where(total[inv] > 0, total[inv], 1.0), 1.0)
        keep = 1.0 - np.bincount(inv, weights=a * frac, minlength=uniq.size)
        add = np.bincount(inv, weights=a * ln / (v / 3.6), minlength=uniq.size)
        return uniq, np.maximum(keep, 0.0), add

    def zero_edges(self, now_s: float) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, end_t)``: edges holding a live speed-0 part, and when that closure ends
        (the newest such line's time plus the age limit)."""
        with self._lock:
            z = (self._speed == 0) & ((now_s - self._t) < self.config.age_limit_s)
            edge, t = self._edge[z], self._t[z]
        if edge.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        uniq, inv = np.unique(edge, return_inverse=True)
        end = np.full(uniq.size, -np.inf)
        np.maximum.at(end, inv, t)
        return uniq, end + self.config.age_limit_s

    def stats(self, now_s: float) -> dict[str, Any]:
        """What ``/v1/status`` shows under ``sources.speed_feed``."""
        with self._lock:
            live = (now_s - self._t) < self.config.age_limit_s
            return {
                "weight": self.config.weight, "age_limit_s": self.config.age_limit_s,
                "blend": "alpha = weight * max(0, 1 - age / age_limit_s) per part",
                "lines_received": self.lines_received, "lines_applied": self.lines_applied,
                "lines_rejected": self.lines_rejected,
                "parts_live": int(live.sum()), "edges_live": int(np.unique(self._edge[live]).size),
                "closed_parts": int(((self._speed == 0) & live).sum()),
                "last_received_t": self.last_received_t,
                "oldest_age_s": float(now_s - self._t[live].min()) if live.any() else None,
            }

    # -- state (checkpoints, the feeds file) ---------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Version 1: the live lines as OSM node pairs (stable across network versions),
        their speeds and receive times, and the counters."""
        osm = np.asarray(self.net.geom_osm_node)
        with self._lock:
            return {"version": STATE_VERSION, "from_osm": osm[self._seg].copy(),
                    "to_osm": osm[self._seg + 1].copy(), "speed_kmh": self._speed.copy(),
                    "t_s": self._t.copy(),
                    "counters": np.array([self.lines_received, self.lines_applied,
                                                  self.lines_rejected], dtype=np.int64),
                    "last_received_t": math.nan if self.last_received_t is None
                    else self.last_received_t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (lines whose segment is gone are dropped).
        ``ValueError`` for another version."""
        if int(state.get("version", -1)) != STATE_VERSION:
            raise ValueError(f"feed state has version {state.get('version')!r}; this code "
                             f"reads {STATE_VERSION}")
        frm = np.asarray(state["from_osm"], dtype=np.int64)
        to = np.asarray(state["to_osm"], dtype=np.int64)
        speed = np.asarray(state["speed_kmh"], dtype=np.float64)
        t = np.asarray(state["t_s"], dtype=np.float64)
        line, seg = (self.lookup().find_all(frm, to) if frm.size else
                     (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
        # A pair of several segments was saved once per segment: keep each segment once.
        seg, first = np.unique(seg, return_index=True)
        speed, t = speed[line][first], t[line][first]
        order = np.argsort(seg, kind="stable")
        seg, speed, t = seg[order], speed[order], t[order]
        edge, length = segment_parts(self.net, seg) if seg.size else (
            np.zeros(0, dtype=np.int64), np.zeros(0))
        counters = [int(c) for c in np.asarray(state.get("counters", [0, 0, 0])).tolist()]
        last = state.get("last_received_t")
        with self._lock:
            self._seg, self._speed, self._t, self._edge, self._len = seg, speed, t, edge, length
            self.lines_received, self.lines_applied, self.lines_rejected = counters
            self.last_received_t = (None if last is None or math.isnan(float(last))
                                    else float(last))
            self.revision += 1

    def remap_to(self, net: RoadNetwork) -> FeedStore:
        """The same lines over another network version (by OSM node pairs)."""
        other = FeedStore(net, self.config)
        other.load_state_dict(self.state_dict())
        return other


def export_speed_csv(net: RoadNetwork, travel_time_s: np.ndarray) -> bytes:
    """OSRM segment-speed CSV of ``travel_time_s``: one line per consecutive OSM node pair of
    every edge whose points all have OSM ids, at the edge's speed in whole km/h (closed or
    infinite: 0; a moving edge never rounds below 1). O(geometry points)."""
    osm = np.asarray(net.geom_osm_node)
    off = np.asarray(net.geom_offsets)
    tt = np.asarray(travel_time_s, dtype=np.float64)
    length = np.asarray(net.edge_length_m)
    with np.errstate(divide="ignore", invalid="ignore"):
        kmh = np.where(np.isfinite(tt) & (tt > 0), length / tt * 3.6, 0.0)
    speed = np.where(kmh > 0, np.maximum(np.rint(kmh), 1), 0).astype(np.int64)
    known = osm != -1
    # An edge qualifies when every point has an id: count unknown points per edge.
    owner = np.repeat(np.arange(off.size - 1), np.diff(off))
    bad_edge = np.bincount(owner[~known], minlength=off.size - 1) > 0
    start = np.ones(osm.size, dtype=bool)
    start[off[1:] - 1] = False
    start &= ~bad_edge[owner]
    seg = np.flatnonzero(start)
    cols = np.column_stack([osm[seg], osm[seg + 1], speed[owner[seg]]])
    if cols.size == 0:
        return b""
    lines = "\n".join(f"{a},{b},{v}" for a, b, v in cols.tolist())
    return (lines + "\n").encode()
