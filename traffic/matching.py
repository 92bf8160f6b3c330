"""Online hidden-Markov-model map matching (Newson & Krumm 2009), vectorised across vehicles.

Each GPS point gets up to ``k`` candidate positions on edges within ``radius_m`` (the spatial
index). A candidate's emission log-probability is Gaussian in its distance to the point
(``sigma`` = the probe's ``accuracy_m`` when given, else ``MatcherConfig.sigma_m``), plus
``kappa * (cos(heading - road bearing) - 1)`` when a heading is given and the car moves. A
transition between candidates of consecutive points costs ``|route - great_circle| / beta_m``
(log domain), with the route distance: the rest of the first edge + the road distance between
the two edges' nodes + the offset on the second, or the offset difference on one edge. Road
distances come from :class:`graph.route_distances.RouteDistances`, bounded Dijkstras run on
demand per source node and cached (Valhalla Meili's design), each asked only as far as the car
could have driven (``max_speed_mps * dt + speed_slack_m``); its answers do not depend on its
cache, so matching is a function of the input stream alone. Moving back on the same edge by up
to ``backward_tolerance_m`` counts as standing still (GPS jitter of a stopped car); a U-turn
onto the reverse twin edge costs ``uturn_penalty``; routes longer than the search bound
(``RouteDistances.bound_m``) or faster than ``max_speed_mps`` are infeasible.

Online, fixed lag: each vehicle keeps its last Viterbi column and a ring of back-pointers for
at most ``lag + 1`` pending points; once a point has ``lag`` successors it is decided by
backtracking from the best current candidate, and the candidates that do not descend from the
decision are pruned so later decisions stay consistent with it. A time gap above
``max_gap_s`` or a point no candidate can reach breaks the trace: every pending point is
decided and a new trace starts. Points with no candidate are counted and skipped.

A push processes all its vehicles together, one column (the k-th new point of every vehicle)
at a time, with transitions as ``(vehicles, k, k)`` arrays: no Python loop per probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graph.network import RoadNetwork, haversine_m
from graph.spatial import SpatialIndex, candidates
from graph.route_distances import RouteDistances

NEG_INF = -np.inf


@dataclass(frozen=True, slots=True)
class MatcherConfig:
    """Parameters of :class:`OnlineMatcher` (distances in m, times in s, scores in log units)."""

    radius_m: float = 50.0
    k: int = 8
    sigma_m: float = 5.0
    min_sigma_m: float = 2.0
    beta_m: float = 10.0
    heading_kappa: float = 2.0
    heading_min_speed_mps: float = 1.0
    lag: int = 4
    max_gap_s: float = 60.0
    max_speed_mps: float = 50.0
    speed_slack_m: float = 50.0
    backward_tolerance_m: float = 30.0
    uturn_penalty: float = 6.0
    speed_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("radius_m", "sigma_m", "min_sigma_m", "beta_m", "max_gap_s", "max_speed_mps"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"MatcherConfig.{name} must be a positive number; got {v!r}")
        if self.k < 1 or self.lag < 0:
            raise ValueError(f"MatcherConfig needs k >= 1 and lag >= 0; got k={self.k}, lag={self.lag}")


@dataclass(frozen=True, slots=True, eq=False)
class MatchOutput:
    """What one :meth:`OnlineMatcher.push` or ``flush`` decided.

    Matched points (``point_*``): the input row id (``row``; for ``push`` the position in that
    call's arrays), the vehicle slot, the trace id, edge, offset along it (m) and time (s).
    Path pieces (``piece_*``): the driven stretch between consecutive matched points of one
    trace, one row per edge touched, in driving order within each trace: edge, offsets
    ``off0_m <= off1_m`` along it, and times ``t0_s <= t1_s`` interpolated by distance.
    ``ended_traces``: traces that closed in this call (their last edge is final).
    """

    point_row: np.ndarray
    point_slot: np.ndarray
    point_trace: np.ndarray
    point_edge: np.ndarray
    point_offset_m: np.ndarray
    point_t_s: np.ndarray
    piece_trace: np.ndarray
    piece_edge: np.ndarray
    piece_off0_m: np.ndarray
    piece_off1_m: np.ndarray
    piece_t0_s: np.ndarray
    piece_t1_s: np.ndarray
    ended_traces: np.ndarray


class OnlineMatcher:
    """Fixed-lag online HMM map matcher holding per-vehicle state; see the module docstring.

    Examples
    --------
    >>> # m = OnlineMatcher(net, build_spatial_index(net), build_route_distances(net),
    >>> #                   MatcherConfig())
    >>> # out = m.push(vid, t, lat, lon, speed_mps=s, heading_deg=h)  # sorted by vid, t
    >>> # out_rest = m.flush()
    """

    def __init__(self, net: RoadNetwork, index: SpatialIndex, routes: RouteDistances,
                 config: MatcherConfig = MatcherConfig()) -> None:
        if index.network_version != net.version or routes.network_version != net.version:
            raise ValueError("spatial index / route distances were built for another network "
                             f"version ({index.network_version}, {routes.network_version} "
                             f"!= {net.version})")
        self.net, self.index, self.routes, self.cfg = net, index, routes, config
        self.ubodt = routes  # the older name, still read by callers that share it
        self._len = net.edge_length_m
        self._twin = _reverse_twins(net)
        scale = float(net.edge_length_m.max(initial=0.0)) + 1.0
        self._seg_key = index.seg_edge.astype(np.float64) * scale + index.seg_start_m
        self._seg_scale_key = scale
        self._seg_bearing = np.degrees(np.arctan2(index.seg_x1 - index.seg_x0,
                                                  index.seg_y1 - index.seg_y0))
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._cap = 0
        self._next_trace = 0
        self._seq = 0
        self.counts = {"pushed": 0, "matched": 0, "no_candidate": 0}
        self._grow(1024)

    # ----------------------------------------------------------------- state
    def _grow(self, cap: int) -> None:
        w, k, old = self.cfg.lag + 1, self.cfg.k, self._cap

        def g(name: str, shape: tuple[int, ...], dtype: type, fill: object) -> None:
            new = np.full((cap, *shape), fill, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)

        g("_c_edge", (w, k), np.int32, -1)
        g("_c_off", (w, k), np.float64, 0.0)
        g("_bp", (w, k), np.int16, -1)
        g("_p_row", (w,), np.int64, -1)
        g("_p_t", (w,), np.float64, 0.0)
        g("_score", (k,), np.float64, NEG_INF)
        g("_last_lat", (), np.float64, 0.0)
        g("_last_lon", (), np.float64, 0.0)
        g("_last_t", (), np.float64, -np.inf)
        g("_last_v", (), np.float64, np.nan)
        g("_n_pend", (), np.int64, 0)
        g("_head", (), np.int64, 0)
        g("_trace", (), np.int64, -1)
        g("_dec_edge", (), np.int32, -1)
        g("_dec_off", (), np.float64, 0.0)
        g("_dec_t", (), np.float64, 0.0)
        g("_dec_trace", (), np.int64, -1)
        self._cap = cap

    def _slot_of(self, vids: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(vids, return_inverse=True)
        out = np.empty(uniq.shape, dtype=np.int64)
        for i, v in enumerate(uniq.tolist()):
            s = self._slots.get(v)
            if s is None:
                if not self._free:
                    self._free = list(range(self._cap * 2 - 1, self._cap - 1, -1))
                    self._grow(self._cap * 2)
                s = self._free.pop()
                self._slots[v] = s
            out[i] = s
        return out[inv]

    def pending_count(self) -> int:
        """Points accepted by :meth:`push` and not yet decided (matched) or counted unmatched."""
        return int(self._n_pend.sum())

    #: Per-vehicle slot arrays (see ``_grow``): the open candidates, back-pointers, scores,
    #: held points and last decided point of every vehicle the matcher follows.
    _SLOT_ARRAYS = ("_c_edge", "_c_off", "_bp", "_p_row", "_p_t", "_score", "_last_lat",
                    "_last_lon", "_last_t", "_last_v", "_n_pend", "_head", "_trace",
                    "_dec_edge", "_dec_off", "_dec_t", "_dec_trace")
    #: Version of :meth:`state_dict`'s contents.
    STATE_VERSION = 1

    def state_dict(self) -> dict[str, Any]:
        """The matcher's whole pending state as flat arrays and scalars (a copy).

        Contents (version 1): ``version``; ``slot_vid`` (str) and ``slot`` (int64), the
        vehicle -> slot map in insertion order; ``free`` (int64), free slots in pop order;
        every array of ``_SLOT_ARRAYS`` (without its leading ``_``) at full capacity;
        ``next_trace``, ``seq`` and ``counts``. Slot numbers are kept exactly because the
        order of decided points follows them, so a restored matcher continues bit for bit
        as the original would have. Route-distance caches are not state: their answers do
        not depend on what they hold.
        """
        out: dict[str, Any] = {name[1:]: getattr(self, name).copy() for name in self._SLOT_ARRAYS}
        out["version"] = self.STATE_VERSION
        out["slot_vid"] = np.asarray(list(self._slots.keys()), dtype=np.str_)
        out["slot"] = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        out["free"] = np.asarray(self._free, dtype=np.int64)
        out["next_trace"] = int(self._next_trace)
        out["seq"] = int(self._seq)
        out["counts"] = {k: int(v) for k, v in self.counts.items()}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (same network and configuration).

        Raises ``ValueError`` naming the mismatch when the state is of another version or
        was saved with another lag or candidate count.
        """
        version = state.get("version")
        if version != self.STATE_VERSION:
            raise ValueError(f"matcher state has version {version!r}; this code reads "
                             f"{self.STATE_VERSION}")
        c_edge = np.asarray(state["c_edge"])
        if c_edge.shape[1:] != (self.cfg.lag + 1, self.cfg.k):
            raise ValueError(f"matcher state was saved with lag {c_edge.shape[1] - 1} and "
                             f"k {c_edge.shape[2]}; this matcher has lag {self.cfg.lag} and "
                             f"k {self.cfg.k}")
        for name in self._SLOT_ARRAYS:
            ref = getattr(self, name)
            setattr(self, name, np.array(state[name[1:]], dtype=ref.dtype))
        self._cap = int(c_edge.shape[0])
        vids = np.asarray(state["slot_vid"]).tolist()
        self._slots = dict(zip(vids, np.asarray(state["slot"], dtype=np.int64).tolist(),
                               strict=True))
        self._free = np.asarray(state["free"], dtype=np.int64).tolist()
        self._next_trace = int(state["next_trace"])
        self._seq = int(state["seq"])
        self.counts = {k: int(v) for k, v in state["counts"].items()}

    # ------------------------------------------------------------------ push
    def push(self, vehicle_ids: np.ndarray, t: np.ndarray, lat: np.ndarray, lon: np.ndarray, *,
             speed_mps: np.ndarray | None = None, heading_deg: np.ndarray | None = None,
             accuracy_m: np.ndarray | None = None, row_ids: np.ndarray | None = None) -> MatchOutput:
        """Add probes (sorted by vehicle, then time) and return what became decided.

        ``row_ids`` (default ``0..n-1``) are carried to ``MatchOutput.point_row``. A vehicle's
        new points must be later than its earlier ones (validation guarantees it).
        """
        vids = np.asarray(vehicle_ids)
        t = np.asarray(t, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        n = t.shape[0]
        if not (vids.shape == lat.shape == lon.shape == (n,)):
            raise ValueError("vehicle_ids, t, lat and lon must be 1-D arrays of equal length")
        rows = np.arange(n, dtype=np.int64) if row_ids is None else np.asarray(row_ids, np.int64)
        self.counts["pushed"] += n
        recs: list[tuple[np.ndarray, ...]] = []
        ended: list[np.ndarray] = []
        if n == 0:
            return self._finish(recs, ended)
        slots = self._slot_of(vids)
        if n > 1 and np.any((slots[1:] == slots[:-1]) & (t[1:] <= t[:-1])):
            raise ValueError("probes must be sorted by vehicle then strictly increasing time")
        ce, co, em = self._candidates(lat, lon, speed_mps, heading_deg, accuracy_m)
        v = (np.full(n, np.nan) if speed_mps is None
             else np.asarray(speed_mps, dtype=np.float64).copy())
        has = ce[:, 0] >= 0
        self.counts["no_candidate"] += int((~has).sum())
        keep = np.flatnonzero(has)
        slots, t, lat, lon, rows, v = (a[keep] for a in (slots, t, lat, lon, rows, v))
        ce, co, em = ce[keep], co[keep], em[keep]
        if keep.size == 0:
            return self._finish(recs, ended)
        first = np.ones(keep.size, dtype=bool)
        first[1:] = slots[1:] != slots[:-1]
        start = np.maximum.accumulate(np.where(first, np.arange(keep.size), 0))
        rank = np.arange(keep.size) - start
        order = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[order], np.arange(rank.max() + 2))
        for r in range(rank.max() + 1):
            i = order[bounds[r]:bounds[r + 1]]
            self._step(slots[i], t[i], lat[i], lon[i], v[i], rows[i], ce[i], co[i], em[i],
                       recs, ended)
        return self._finish(recs, ended)

    def flush(self, vehicle_ids: np.ndarray | None = None) -> MatchOutput:
        """Decide every pending point (of the given vehicles, or all) and close their traces."""
        if vehicle_ids is None:
            s = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        else:
            s = np.array([self._slots[v] for v in np.asarray(vehicle_ids).tolist()
                          if v in self._slots], dtype=np.int64)
        recs: list[tuple[np.ndarray, ...]] = []
        ended: list[np.ndarray] = []
        self._end_trace(s[self._trace[s] >= 0], recs, ended)
        return self._finish(recs, ended)

    def flush_idle(self, now_t: float, idle_s: float) -> MatchOutput:
        """Flush vehicles whose last point is older than ``now_t - idle_s`` and forget them."""
        idle = [v for v, s in self._slots.items() if self._last_t[s] < now_t - idle_s]
        out = self.flush(np.array(idle, dtype=object))
        for v in idle:
            s = self._slots.pop(v)
            self._free.append(s)
            self._last_t[s] = -np.inf
            self._dec_trace[s] = -1
        return out

    # ------------------------------------------------------------ internals
    def _candidates(self, lat: np.ndarray, lon: np.ndarray, speed: np.ndarray | None,
                    heading: np.ndarray | None, acc: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg, n = self.cfg, lat.shape[0]
        pi, ei, d, off = candidates(self.index, lat, lon, radius_m=cfg.radius_m, k=cfg.k + 1)
        rank = np.arange(pi.size) - np.searchsorted(pi, pi)
        # Keep the two directions of a road together: when the k-th candidate's twin is cut
        # off, drop it too (a stopped car would otherwise flip to the reverse edge whenever the
        # nearer-ranked direction falls out of the top k).
        nxt = np.r_[ei[1:], -1]
        split = (rank == cfg.k - 1) & (np.r_[rank[1:], -1] == cfg.k) & (self._twin[ei] == nxt)
        keep = (rank < cfg.k) & ~split
        pi, ei, d, off, rank = pi[keep], ei[keep], d[keep], off[keep], rank[keep]
        ce = np.full((n, cfg.k), -1, dtype=np.int32)
        co = np.zeros((n, cfg.k))
        em = np.full((n, cfg.k), NEG_INF)
        sigma = np.full(n, cfg.sigma_m)
        if acc is not None:
            a = np.asarray(acc, dtype=np.float64)
            sigma = np.where(np.isfinite(a) & (a > 0), np.maximum(a, cfg.min_sigma_m), sigma)
        logp = -0.5 * (d / sigma[pi]) ** 2
        if heading is not None and cfg.heading_kappa > 0:
            h = np.asarray(heading, dtype=np.float64)[pi]
            use = np.isfinite(h)
            if speed is not None:
                use &= np.asarray(speed, dtype=np.float64)[pi] >= cfg.heading_min_speed_mps
            b = self._bearing(ei, off)
            logp += np.where(use, cfg.heading_kappa * (np.cos(np.radians(h - b)) - 1.0), 0.0)
        ce[pi, rank], co[pi, rank], em[pi, rank] = ei, off, logp
        return ce, co, em

    def _bearing(self, edge: np.ndarray, off: np.ndarray) -> np.ndarray:
        key = edge.astype(np.float64) * self._seg_scale_key + off
        s = np.clip(np.searchsorted(self._seg_key, key, side="right") - 1, 0, None)
        return self._seg_bearing[s]

    def _route(self, ea: np.ndarray, oa: np.ndarray, eb: np.ndarray, ob: np.ndarray,
               gc: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Transition cost (log units, inf = infeasible), route distance (m), U-turn flag."""
        cfg, net = self.cfg, self.net
        fwd = (ea == eb) & (ob >= oa - cfg.backward_tolerance_m)
        # Asked no farther than the car could have driven: a longer route is too fast anyway.
        reach = self._reach_m(dt)
        mid = self.routes.lookup(net.edge_dst[ea], net.edge_src[eb], reach)
        d = np.where(fwd, np.maximum(ob - oa, 0.0), self._len[ea] - oa + mid + ob)
        cost = np.abs(d - gc) / cfg.beta_m
        # Turning back onto the reverse twin, mid-edge or at the node, pays the U-turn penalty.
        twin = (self._twin[ea] == eb) & ~fwd
        du = np.abs(self._len[ea] - ob - oa)
        cu = np.abs(du - gc) / cfg.beta_m
        uturn = twin & (cu < cost)
        d = np.where(uturn, du, d)
        cost = np.where(twin, np.minimum(cu, cost) + cfg.uturn_penalty, cost)
        too_fast = d > reach
        cost = np.where(too_fast | ~np.isfinite(d), np.inf, cost)
        return cost, d, uturn

    def _reach_m(self, dt: np.ndarray) -> np.ndarray:
        """Farthest route (m) that is not too fast for a time step ``dt`` (see ``_route``)."""
        return self.cfg.max_speed_mps * dt + self.cfg.speed_slack_m

    def _step(self, s: np.ndarray, t: np.ndarray, lat: np.ndarray, lon: np.ndarray,
              v: np.ndarray, rows: np.ndarray, ce: np.ndarray, co: np.ndarray, em: np.ndarray,
              recs: list, ended: list) -> None:
        cfg, k, w = self.cfg, self.cfg.k, self.cfg.lag + 1
        live = self._trace[s] >= 0
        gap = live & (t - self._last_t[s] > cfg.max_gap_s)
        new_score = em.copy()
        bp = np.full((s.size, k), -1, dtype=np.int16)
        cont = np.flatnonzero(live & ~gap)
        if cont.size:
            sc = s[cont]
            pos = (self._head[sc] - 1) % w
            pe, po = self._c_edge[sc, pos], self._c_off[sc, pos]
            ps = self._score[sc]
            valid = (pe[:, :, None] >= 0) & np.isfinite(ps)[:, :, None] & (ce[cont][:, None, :] >= 0)
            vi, ai, bi = np.nonzero(valid)
            gc = haversine_m(self._last_lat[sc], self._last_lon[sc], lat[cont], lon[cont])
            dt = t[cont] - self._last_t[sc]
            cost, d, _ = self._route(pe[vi, ai], po[vi, ai], ce[cont][vi, bi], co[cont][vi, bi],
                                     gc[vi], dt[vi])
            # Reported speeds (Doppler, far less noisy than positions) say how far the car went.
            dv = 0.5 * (self._last_v[sc] + v[cont]) * dt
            if cfg.speed_weight > 0 and np.isfinite(dv).any():
                extra = cfg.speed_weight * np.abs(d - dv[vi]) / cfg.beta_m
                cost = cost + np.where(np.isfinite(extra), extra, 0.0)
            tot = np.full((cont.size, k, k), NEG_INF)
            tot[vi, ai, bi] = ps[vi, ai] - cost
            best = tot.argmax(axis=1)
            bval = np.take_along_axis(tot, best[:, None, :], axis=1)[:, 0, :]
            new_score[cont] = bval + em[cont]
            bp[cont] = best.astype(np.int16)
        broken = gap.copy()
        if cont.size:
            broken[cont] = ~np.isfinite(new_score[cont]).any(axis=1)
        if broken.any():
            self._end_trace(s[broken], recs, ended)
        restart = ~live | broken
        if restart.any():
            rs = s[restart]
            self._trace[rs] = np.arange(self._next_trace, self._next_trace + rs.size)
            self._next_trace += rs.size
            new_score[restart] = em[restart]
            bp[restart] = -1
        new_score -= np.max(new_score, axis=1, keepdims=True)
        h = self._head[s] % w
        self._c_edge[s, h], self._c_off[s, h], self._bp[s, h] = ce, co, bp
        self._p_row[s, h], self._p_t[s, h] = rows, t
        self._head[s] = (h + 1) % w
        self._n_pend[s] += 1
        self._score[s] = new_score
        self._last_lat[s], self._last_lon[s], self._last_t[s] = lat, lon, t
        self._last_v[s] = v
        full = s[self._n_pend[s] > cfg.lag]
        if full.size:
            self._decide_oldest(full, recs)

    def _backtrack(self, s: np.ndarray) -> np.ndarray:
        """Best candidate index at each pending point, ``(len(s), lag + 1)``, oldest first."""
        w = self.cfg.lag + 1
        n = self._n_pend[s]
        choice = np.full((s.size, w), -1, dtype=np.int64)
        j = self._score[s].argmax(axis=1)
        for i in range(int(n.max(initial=0))):
            act = i < n
            pos = (self._head[s] - 1 - i) % w
            slot = n - 1 - i
            choice[act, slot[act]] = j[act]
            j = np.where(act, self._bp[s, pos, j], j)
            j = np.maximum(j, 0)
        return choice

    def _emit(self, s: np.ndarray, ring_pos: np.ndarray, cand: np.ndarray, recs: list) -> None:
        recs.append((
            np.full(s.size, self._seq, dtype=np.int64), s, self._trace[s].copy(),
            self._p_row[s, ring_pos], self._c_edge[s, ring_pos, cand],
            self._c_off[s, ring_pos, cand], self._p_t[s, ring_pos],
        ))
        self._seq += 1
        self.counts["matched"] += int(s.size)

    def _decide_oldest(self, s: np.ndarray, recs: list) -> None:
        w = self.cfg.lag + 1
        choice = self._backtrack(s)
        oldest = (self._head[s] - self._n_pend[s]) % w
        c0 = choice[:, 0]
        self._emit(s, oldest, c0, recs)
        # Prune the last column to candidates whose path passes through the decision.
        anc = np.broadcast_to(np.arange(self.cfg.k), (s.size, self.cfg.k)).copy()
        for i in range(int(self._n_pend[s].max()) - 1):
            pos = (self._head[s] - 1 - i) % w
            anc = np.maximum(self._bp[s[:, None], pos[:, None], anc], 0)
        sc = self._score[s]
        sc[anc != c0[:, None]] = NEG_INF
        self._score[s] = sc
        self._n_pend[s] -= 1

    def _end_trace(self, s: np.ndarray, recs: list, ended: list) -> None:
        if s.size == 0:
            return
        w = self.cfg.lag + 1
        choice = self._backtrack(s)
        n = self._n_pend[s]
        for i in range(int(n.max(initial=0))):
            act = i < n
            sa = s[act]
            pos = (self._head[sa] - n[act] + i) % w
            self._emit(sa, pos, choice[act, i], recs)
        ended.append(self._trace[s].copy())
        self._n_pend[s] = 0
        self._trace[s] = -1

    # -------------------------------------------------------------- output
    def _finish(self, recs: list, ended: list) -> MatchOutput:
        if recs:
            seq, slot, trace, row, edge, off, tt = (np.concatenate(c) for c in zip(*recs))
        else:
            seq = slot = trace = row = np.zeros(0, np.int64)
            edge, off, tt = np.zeros(0, np.int32), np.zeros(0), np.zeros(0)
        order = np.lexsort((seq, slot))
        slot, trace, row, edge, off, tt = (a[order] for a in (slot, trace, row, edge, off, tt))
        # Pair each point with the previously decided point of its vehicle (same trace).
        us = np.unique(slot)
        p_slot = np.concatenate([us, slot])
        p_trace = np.concatenate([self._dec_trace[us], trace])
        p_edge = np.concatenate([self._dec_edge[us], edge])
        p_off = np.concatenate([self._dec_off[us], off])
        p_t = np.concatenate([self._dec_t[us], tt])
        o = np.lexsort((np.concatenate([np.zeros(us.size), np.ones(slot.size)]), p_slot))
        p_slot, p_trace, p_edge, p_off, p_t = (a[o] for a in (p_slot, p_trace, p_edge, p_off, p_t))
        a = np.flatnonzero((p_slot[1:] == p_slot[:-1]) & (p_trace[1:] == p_trace[:-1])
                           & (p_trace[:-1] >= 0))
        pieces = self._pieces(p_trace[a], p_edge[a], p_off[a], p_t[a],
                              p_edge[a + 1], p_off[a + 1], p_t[a + 1])
        if slot.size:
            last = np.flatnonzero(np.r_[slot[1:] != slot[:-1], True])
            ls = slot[last]
            self._dec_edge[ls], self._dec_off[ls] = edge[last], off[last]
            self._dec_t[ls], self._dec_trace[ls] = tt[last], trace[last]
        return MatchOutput(
            point_row=row, point_slot=slot, point_trace=trace, point_edge=edge.astype(np.int32),
            point_offset_m=off, point_t_s=tt, ended_traces=(np.concatenate(ended) if ended
                                                           else np.zeros(0, np.int64)),
            **pieces,
        )

    def _pieces(self, tr: np.ndarray, ea: np.ndarray, oa: np.ndarray, ta: np.ndarray,
                eb: np.ndarray, ob: np.ndarray, tb: np.ndarray) -> dict[str, np.ndarray]:
        """Edges driven between consecutive matched points, with interpolated times."""
        net, L = self.net, self._len
        gc = np.zeros(tr.size)
        # The pairs are consecutive points of one trace: their transition was feasible in
        # ``tb - ta``, so the route search needs to reach no farther than then.
        _, d, uturn = self._route(ea, oa, eb, ob, gc, tb - ta)
        fwd = (ea == eb) & (ob >= oa - self.cfg.backward_tolerance_m)
        gen = ~fwd & ~uturn
        # Piece lists: (pair, position, edge, off0, off1)
        P, S, E, O0, O1 = [], [], [], [], []
        f = np.flatnonzero(fwd)
        P += [f]; S += [np.zeros(f.size)]; E += [ea[f]]; O0 += [oa[f]]; O1 += [np.maximum(oa[f], ob[f])]
        u = np.flatnonzero(uturn)
        start_u = np.clip(L[eb[u]] - oa[u], 0.0, L[eb[u]])
        P += [u, u]; S += [np.zeros(u.size), np.ones(u.size)]; E += [ea[u], eb[u]]
        O0 += [oa[u], np.minimum(start_u, ob[u])]; O1 += [oa[u], ob[u]]
        g = np.flatnonzero(gen)
        pp, pe = self.routes.path_edges(net.edge_src, net.edge_dst[ea[g]], net.edge_src[eb[g]],
                                        self._reach_m((tb - ta)[g]))
        within = np.arange(pp.size) - np.searchsorted(pp, pp)
        P += [g, g[pp], g]; S += [np.zeros(g.size), 1.0 + within, np.full(g.size, 1e9)]
        E += [ea[g], pe, eb[g]]
        O0 += [oa[g], np.zeros(pp.size), np.zeros(g.size)]
        O1 += [L[ea[g]], L[pe], ob[g]]
        P_, S_, E_, O0_, O1_ = (np.concatenate(x) for x in (P, S, E, O0, O1))
        o = np.lexsort((S_, P_))
        P_, E_, O0_, O1_ = P_[o], E_[o].astype(np.int32), O0_[o], O1_[o]
        seglen = np.maximum(O1_ - O0_, 0.0)
        cum = np.cumsum(seglen)
        gs = np.searchsorted(P_, P_)
        c1 = cum - (cum[gs] - seglen[gs]) if P_.size else cum
        c0 = c1 - seglen
        total = np.bincount(P_, weights=seglen, minlength=tr.size)[P_]
        safe = np.where(total > 0, total, 1.0)
        frac0 = np.where(total > 0, c0 / safe, 0.0)
        frac1 = np.where(total > 0, c1 / safe, 1.0)
        dur = (tb - ta)[P_]
        return dict(piece_trace=tr[P_], piece_edge=E_, piece_off0_m=O0_, piece_off1_m=O1_,
                    piece_t0_s=ta[P_] + dur * frac0, piece_t1_s=ta[P_] + dur * frac1)


def _reverse_twins(net: RoadNetwork) -> np.ndarray:
    """For each edge the edge running the other way between the same nodes (``-1`` if none);
    a U-turn onto it needs no junction."""
    n = net.n_nodes
    fwd = net.edge_src.astype(np.int64) * n + net.edge_dst
    rev = net.edge_dst.astype(np.int64) * n + net.edge_src
    order = np.argsort(fwd, kind="stable")
    pos = np.clip(np.searchsorted(fwd[order], rev), 0, max(fwd.size - 1, 0))
    if fwd.size == 0:
        return np.zeros(0, np.int32)
    found = fwd[order][pos] == rev
    return np.where(found, order[pos], -1).astype(np.int32)


# ---------------------------------------------------------------------------------- offline
@dataclass(frozen=True, slots=True, eq=False)
class TraceMatch:
    """What :func:`match_trace` (or :meth:`OfflineMatcher.match`) found for one trace.

    Per input point (``point_*``, in input order): the matched edge (``-1``: not matched),
    offset along it (m), snapped position (degrees; NaN when not matched), the sub-trace
    (``-1`` when not matched) and a reason for an unmatched point (``"no_candidate"``: no road
    within ``radius_m``; ``""`` when matched). Per driven edge (``edge_*``, in driving order,
    sub-traces one after another): edge, sub-trace, offsets ``off0_m <= off1_m`` of the driven
    part, enter and exit times (s, interpolated by distance between matched points) and the
    driven length (m). Per sub-trace (``trace_*``): a confidence in ``[0, 1]``, its first
    and last input point. A sub-trace ends where the HMM breaks (a time gap above
    ``max_gap_s``, or no candidate reachable from the previous point's).
    """

    point_edge: np.ndarray  # int32[n]
    point_offset_m: np.ndarray  # float64[n]
    point_lat: np.ndarray  # float64[n]
    point_lon: np.ndarray  # float64[n]
    point_trace: np.ndarray  # int64[n]
    point_reason: np.ndarray  # str[n]
    edge: np.ndarray  # int32[e]
    edge_trace: np.ndarray  # int64[e]
    edge_off0_m: np.ndarray
    edge_off1_m: np.ndarray
    edge_t0_s: np.ndarray
    edge_t1_s: np.ndarray
    trace_confidence: np.ndarray  # float64[s]
    trace_first_point: np.ndarray  # int64[s]
    trace_last_point: np.ndarray  # int64[s]

    @property
    def edge_distance_m(self) -> np.ndarray:
        """Metres driven on each edge of the route."""
        return np.maximum(self.edge_off1_m - self.edge_off0_m, 0.0)

    @property
    def n_traces(self) -> int:
        """How many sub-traces the trace broke into (0 when no point matched)."""
        return int(self.trace_confidence.size)


class OfflineMatcher:
    """Whole-trace HMM map matching: the online matcher's model with full look-ahead.

    The candidates, emission and transition scores are :class:`OnlineMatcher`'s own methods
    (``_candidates``, ``_route`` and the reported-speed term of ``_step``), over the same
    :class:`graph.route_distances.RouteDistances`; only the decoding differs: a Viterbi over
    the whole trace, backtracked once from its last point, instead of a decision ``lag``
    points behind. All transitions of a trace are scored in one vectorised call (``(n - 1) *
    k * k`` pairs), then a compiled loop runs the Viterbi recursion. The trace breaks where the
    online matcher's would (a gap above ``max_gap_s``, or no feasible transition).

    Not safe for concurrent calls (the route-distance cache is not): use one per thread, or a
    lock. It holds no per-trace state, so calls are independent and deterministic.
    """

    def __init__(self, net: RoadNetwork, index: SpatialIndex, routes: RouteDistances,
                 config: MatcherConfig = MatcherConfig()) -> None:
        self.hmm = OnlineMatcher(net, index, routes, config)
        self.net, self.index, self.routes, self.cfg = net, index, routes, config
        # Position of every geometry point along its edge (m, edge_length_m units), from the
        # index's segment starts, so an offset maps back to the point the index projected on.
        n_pts = int(net.geom_offsets[-1])
        cum = np.empty(n_pts, dtype=np.float64)
        last = net.geom_offsets[1:] - 1
        not_last = np.ones(n_pts, dtype=bool)
        not_last[last] = False
        cum[not_last] = index.seg_start_m
        cum[last] = net.edge_length_m
        self._pt_cum_m = cum
        owner = np.repeat(np.arange(net.n_edges, dtype=np.int64), np.diff(net.geom_offsets))
        self._pt_key = owner * self.hmm._seg_scale_key + cum

    @property
    def network_version(self) -> str:
        """Version of the network this matcher was built for."""
        return self.net.version

    def match(self, t: np.ndarray, lat: np.ndarray, lon: np.ndarray, *,
              speed_mps: np.ndarray | None = None, heading_deg: np.ndarray | None = None,
              accuracy_m: np.ndarray | None = None) -> TraceMatch:
        """Match one vehicle's trace (``t`` strictly increasing, s) and return its route.

        Costs ``O(n k^2)`` array work plus the route-distance searches; the Viterbi loop is
        compiled. Raises ``ValueError`` for arrays of unequal length or times that do not
        increase.
        """
        t = np.asarray(t, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        n = t.shape[0]
        if not (t.ndim == 1 and lat.shape == lon.shape == (n,)):
            raise ValueError("t, lat and lon must be 1-D arrays of equal length")
        if n > 1 and np.any(np.diff(t) <= 0):
            raise ValueError("t must be strictly increasing")
        hmm, cfg, k = self.hmm, self.cfg, self.cfg.k
        ce, co, em = hmm._candidates(lat, lon, speed_mps, heading_deg, accuracy_m)
        v = (np.full(n, np.nan) if speed_mps is None
             else np.asarray(speed_mps, dtype=np.float64).copy())
        keep = np.flatnonzero(ce[:, 0] >= 0)
        m = keep.size
        cost = np.full((max(m - 1, 0), k, k), np.inf)
        gap = np.zeros(m, dtype=np.bool_)
        gc = np.zeros(max(m - 1, 0))
        if m > 1:
            a_, b_ = keep[:-1], keep[1:]
            dt = t[b_] - t[a_]
            gap[1:] = dt > cfg.max_gap_s
            cea, ceb, coa, cob = ce[a_], ce[b_], co[a_], co[b_]
            valid = (cea[:, :, None] >= 0) & (ceb[:, None, :] >= 0) & ~gap[1:, None, None]
            pi, ai, bi = np.nonzero(valid)
            gc = haversine_m(lat[a_], lon[a_], lat[b_], lon[b_])
            c, d, _ = hmm._route(cea[pi, ai], coa[pi, ai], ceb[pi, bi], cob[pi, bi], gc[pi],
                                 dt[pi])
            dv = 0.5 * (v[a_] + v[b_]) * dt
            if cfg.speed_weight > 0 and np.isfinite(dv).any():
                extra = cfg.speed_weight * np.abs(d - dv[pi]) / cfg.beta_m
                c = c + np.where(np.isfinite(extra), extra, 0.0)
            cost[pi, ai, bi] = c
        choice, trace = _viterbi(np.ascontiguousarray(em[keep]), cost, gap)
        return self._answer(t, gc, ce, co, keep, choice, trace)

    def _answer(self, t: np.ndarray, gc: np.ndarray, ce: np.ndarray, co: np.ndarray,
                keep: np.ndarray, choice: np.ndarray, trace: np.ndarray) -> TraceMatch:
        n = t.shape[0]
        p_edge = np.full(n, -1, dtype=np.int32)
        p_off = np.zeros(n)
        p_trace = np.full(n, -1, dtype=np.int64)
        p_edge[keep] = ce[keep, choice]
        p_off[keep] = co[keep, choice]
        p_trace[keep] = trace
        p_lat, p_lon = np.full(n, np.nan), np.full(n, np.nan)
        if keep.size:
            p_lat[keep], p_lon[keep] = self.points_at(p_edge[keep], p_off[keep])
        reason = np.where(p_edge >= 0, "", "no_candidate")
        # Driven pieces between consecutive matched points of one sub-trace (the online
        # matcher's own piece builder), merged into one row per edge traversal.
        a = np.flatnonzero(trace[1:] == trace[:-1]) if keep.size > 1 else np.zeros(0, np.int64)
        ia, ib = keep[a], keep[a + 1]
        pieces = self.hmm._pieces(trace[a], p_edge[ia], p_off[ia], t[ia], p_edge[ib],
                                  p_off[ib], t[ib])
        e_tr, e, o0, o1, t0, t1 = _merge_pieces(
            pieces, trace, p_edge[keep], p_off[keep], t[keep], self.net.edge_length_m)
        n_tr = int(trace[-1]) + 1 if keep.size else 0
        first = np.searchsorted(trace, np.arange(n_tr))
        lastp = np.searchsorted(trace, np.arange(n_tr), side="right") - 1
        conf = self._confidence(gc, trace, e_tr, o1 - o0, n_tr)
        return TraceMatch(
            point_edge=p_edge, point_offset_m=p_off, point_lat=p_lat, point_lon=p_lon,
            point_trace=p_trace, point_reason=reason.astype(str), edge=e, edge_trace=e_tr,
            edge_off0_m=o0, edge_off1_m=o1, edge_t0_s=t0, edge_t1_s=t1,
            trace_confidence=conf, trace_first_point=keep[first].astype(np.int64),
            trace_last_point=keep[lastp].astype(np.int64))

    def _confidence(self, gc_m: np.ndarray, trace: np.ndarray, e_tr: np.ndarray,
                    driven_m: np.ndarray, n_tr: int) -> np.ndarray:
        """Per sub-trace: the ratio of the trace's straight-line length to the matched
        route's length, or its inverse, whichever is at most 1 (1: the route is as long as the
        trace; a detour or a zig-zag of the trace lowers it); a one-point sub-trace gets 1."""
        same = trace[1:] == trace[:-1]
        gc = np.bincount(trace[1:][same], weights=gc_m[same], minlength=n_tr)
        rd = np.bincount(e_tr, weights=np.maximum(driven_m, 0.0), minlength=n_tr)
        lo, hi = np.minimum(gc, rd), np.maximum(gc, rd)
        return np.where(hi > 1.0, lo / np.maximum(hi, 1e-9), 1.0)

    def points_at(self, edge: np.ndarray, offset_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(lat, lon)`` of positions ``offset_m`` along ``edge`` (linear between the edge's
        geometry points)."""
        go = self.net.geom_offsets
        edge = np.asarray(edge, dtype=np.int64)
        off = np.asarray(offset_m, dtype=np.float64)
        key = edge * self.hmm._seg_scale_key + off
        i = np.searchsorted(self._pt_key, key, side="right") - 1
        i = np.clip(i, go[edge], go[edge + 1] - 2)
        cum = self._pt_cum_m
        span = cum[i + 1] - cum[i]
        f = np.clip(np.divide(off - cum[i], span, out=np.zeros_like(off), where=span > 0), 0, 1)
        glat, glon = self.net.geom_lat, self.net.geom_lon
        return glat[i] + f * (glat[i + 1] - glat[i]), glon[i] + f * (glon[i + 1] - glon[i])

    def geometry(self, edge: np.ndarray, off0_m: np.ndarray,
                 off1_m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Polyline of driven edge parts, in order: ``(lat, lon, first point of each part)``;
        a point shared by consecutive parts appears once."""
        go = self.net.geom_offsets
        edge = np.asarray(edge, dtype=np.int64)
        if edge.size == 0:
            return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
        la0, lo0 = self.points_at(edge, off0_m)
        la1, lo1 = self.points_at(edge, off1_m)
        cnt = go[edge + 1] - go[edge]
        part = np.repeat(np.arange(edge.size), cnt)
        idx = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt) + go[edge][part]
        cum = self._pt_cum_m[idx]
        inner = (cum > np.asarray(off0_m)[part]) & (cum < np.asarray(off1_m)[part])
        # Each part: its start, its inner points, its end; sorted by (part, position).
        P = np.concatenate([np.arange(edge.size), part[inner], np.arange(edge.size)])
        S = np.concatenate([np.zeros(edge.size), 1 + cum[inner], np.full(edge.size, np.inf)])
        LA = np.concatenate([la0, self.net.geom_lat[idx[inner]], la1])
        LO = np.concatenate([lo0, self.net.geom_lon[idx[inner]], lo1])
        o = np.lexsort((S, P))
        P, LA, LO = P[o], LA[o], LO[o]
        dup = np.r_[False, (LA[1:] == LA[:-1]) & (LO[1:] == LO[:-1])]
        P, LA, LO = P[~dup], LA[~dup], LO[~dup]
        start = np.searchsorted(P, np.arange(edge.size))
        return LA, LO, np.minimum(start, max(LA.size - 1, 0))


def _merge_pieces(pieces: dict[str, np.ndarray], trace: np.ndarray, edge: np.ndarray,
                  off: np.ndarray, t: np.ndarray,
                  length_m: np.ndarray) -> tuple[np.ndarray, ...]:
    """One row per edge traversal from the matcher's path pieces: consecutive pieces of one
    sub-trace on the same edge that continue each other are joined. A sub-trace of a single
    point gets its point's edge (a zero-length part)."""
    tr, e = pieces["piece_trace"], pieces["piece_edge"]
    o0, o1 = pieces["piece_off0_m"], pieces["piece_off1_m"]
    t0, t1 = pieces["piece_t0_s"], pieces["piece_t1_s"]
    single = np.flatnonzero(np.bincount(trace, minlength=int(trace.max(initial=-1)) + 1) == 1)
    if single.size:
        at = np.searchsorted(trace, single)
        tr = np.r_[tr, single]
        e = np.r_[e, edge[at]].astype(np.int32)
        o0, o1 = np.r_[o0, off[at]], np.r_[o1, off[at]]
        t0, t1 = np.r_[t0, t[at]], np.r_[t1, t[at]]
        o = np.argsort(tr, kind="stable")
        tr, e, o0, o1, t0, t1 = tr[o], e[o], o0[o], o1[o], t0[o], t1[o]
    if tr.size == 0:
        z = np.zeros(0)
        return np.zeros(0, np.int64), np.zeros(0, np.int32), z, z, z, z
    # A new traversal starts at a new sub-trace, a new edge, or the same edge entered again
    # at its start after the previous part reached its end (a loop back onto it).
    looped = (o1[:-1] >= length_m[e[:-1]] - 1e-6) & (o0[1:] <= 1e-6) & (length_m[e[1:]] > 1e-6)
    new = np.r_[True, (tr[1:] != tr[:-1]) | (e[1:] != e[:-1]) | looped]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], tr.size] - 1
    return (tr[starts].astype(np.int64), e[starts].astype(np.int32),
            np.minimum.reduceat(o0, starts), np.maximum.reduceat(o1, starts),
            t0[starts], t1[ends])


def match_trace(net: RoadNetwork, index: SpatialIndex, routes: RouteDistances, t: np.ndarray,
                lat: np.ndarray, lon: np.ndarray, *, speed_mps: np.ndarray | None = None,
                heading_deg: np.ndarray | None = None, accuracy_m: np.ndarray | None = None,
                config: MatcherConfig = MatcherConfig()) -> TraceMatch:
    """Match one recorded trace offline (full look-ahead); see :class:`OfflineMatcher`.

    Builds the matcher's lookup arrays on each call (``O(edges)``); callers that match many
    traces keep one :class:`OfflineMatcher`.

    Examples
    --------
    >>> # m = match_trace(net, build_spatial_index(net), build_route_distances(net), t, lat, lon)
    >>> # m.edge, m.edge_t0_s, m.edge_t1_s: the driven edges with enter and exit times
    """
    return OfflineMatcher(net, index, routes, config).match(
        t, lat, lon, speed_mps=speed_mps, heading_deg=heading_deg, accuracy_m=accuracy_m)


def _viterbi_py(em: np.ndarray, cost: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Viterbi over a whole trace: ``em`` (m, k) emission log-probabilities, ``cost``
    (m - 1, k, k) transition costs (inf: infeasible), ``gap`` (m,) a forced break before a
    point. Returns the best candidate per point and the sub-trace of each point (a new one
    where ``gap`` or where no candidate is reachable: the online matcher's breaks)."""
    m, k = em.shape
    choice = np.zeros(m, dtype=np.int64)
    trace = np.zeros(m, dtype=np.int64)
    bp = np.full((m, k), -1, dtype=np.int64)
    score = np.empty(k)
    new = np.empty(k)
    if m == 0:
        return choice, trace
    for b in range(k):
        score[b] = em[0, b]
    cur = 0
    start = 0
    for i in range(1, m + 1):
        broken = i == m
        if not broken:
            any_finite = False
            if not gap[i]:
                for b in range(k):
                    best = -np.inf
                    arg = 0
                    for a in range(k):
                        v = score[a] - cost[i - 1, a, b]
                        if v > best:
                            best = v
                            arg = a
                    new[b] = best + em[i, b]
                    bp[i, b] = arg
                    if new[b] > -np.inf:
                        any_finite = True
            broken = not any_finite
        if broken:
            # Backtrack the closed sub-trace [start, i) from its best last candidate.
            j = 0
            for b in range(1, k):
                if score[b] > score[j]:
                    j = b
            for p in range(i - 1, start - 1, -1):
                choice[p] = j
                trace[p] = cur
                if p > start:
                    j = bp[p, j]
            if i == m:
                break
            cur += 1
            start = i
            for b in range(k):
                new[b] = em[i, b]
        top = -np.inf
        for b in range(k):
            top = max(top, new[b])
        for b in range(k):
            score[b] = new[b] - top
    return choice, trace


try:  # compiled when numba is there (it is a dependency of graph.route_distances)
    from numba import njit as _njit

    _viterbi = _njit(cache=True, nogil=True)(_viterbi_py)
except ImportError:  # pragma: no cover - numba is a hard dependency today
    _viterbi = _viterbi_py
