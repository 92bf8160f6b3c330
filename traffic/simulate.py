"""Probe-stream simulator: cars driving shortest routes through a time-varying congestion field.

Any :class:`~graph.network.RoadNetwork` works. Every car drives the free-flow shortest route
between two random nodes, then starts another trip from where it arrived. Its speed on an edge
is the edge's free-flow speed times the congestion factor of that edge at that moment:

``factor(e, t) = (1 - depth_e * rush(t)) * prod_h (1 - depth_h(t) * exp(-dist(e, h)^2 / (2 r_h^2)))
* prod_k incident_k(e, t)``, floored at ``min_factor``.

- **Rush.** ``rush(t)`` in [0, 1] builds with a raised cosine from ``rush_peak_s -
  rush_width_s`` to ``rush_peak_s`` (by default over the first 10 minutes: demand rising),
  holds ``rush_hold_s``, eases over ``rush_width_s`` and, with ``rush_period_s > 0``, comes
  back every period. Its depth is ``main_rush_depth`` on main roads (motorway to secondary
  and their links; in a network without road classes, the fastest fifth of edges) and
  ``rush_depth`` elsewhere, so main roads turn orange while side streets stay yellow-green.
- **Hotspots.** ``n_hotspots`` places at random with Gaussian footprints and their own on/off
  time profiles.
- **Incidents.** With ``incident_every_s >= 0`` (``-1``: none), a stretch of about
  ``incident_length_m`` along one direction of a main road near the network's centre has
  its speed collapse to ``incident_factor`` of free flow from ``incident_start_s`` for
  ``incident_duration_s`` (one-minute onset, two-minute recovery); it turns red on the map
  and, once the estimator has seen it, routes avoid it (of a few candidate stretches, the
  one with the quickest way round). ``incident_every_s > 0`` (default: hourly) starts a new
  incident, somewhere else, every that many seconds; ``0``: just the one.
  :func:`incident_edges` names each incident's edges and time window.

The defaults build this congestion (``traffic serve --simulate N`` and ``make run`` use them);
``rush_hold_s=0, rush_period_s=0, main_rush_depth=None, incident_every_s=-1,
rush_peak_s=1800, rush_width_s=1800`` gives the older field: one mild network-wide rush bump.
:func:`true_speed_mps` gives the same field back, so tests know the truth.

Cars advance in steps of ``step_s`` (vectorised over cars); each reports one probe every
``interval_s`` at its own phase: ``vehicle_id, t, lat, lon, speed_mps, heading_deg,
accuracy_m`` with Gaussian position noise of ``gps_sigma_m`` per axis. Deterministic for a
seed. :func:`simulate_probes` yields time-ordered polars DataFrames, one per ``batch_s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from graph.network import EARTH_RADIUS_M, ROAD_CLASS_INDEX, RoadNetwork, haversine_m

#: Road classes whose traffic the rush hits hardest and where incidents happen.
MAIN_ROAD_CLASSES: tuple[str, ...] = (
    "motorway", "trunk", "primary", "secondary",
    "motorway_link", "trunk_link", "primary_link", "secondary_link",
)
#: Where incidents happen, in order of preference (no links: a stretch of through road).
_INCIDENT_CLASSES: tuple[str, ...] = ("primary", "trunk", "secondary", "motorway")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Simulation parameters (times in s from ``t0_s``, distances in m)."""

    n_vehicles: int = 200
    duration_s: float = 3600.0
    t0_s: float = 1_767_225_600.0
    step_s: float = 1.0
    interval_s: float = 5.0
    batch_s: float = 10.0
    gps_sigma_m: float = 5.0
    n_hotspots: int = 3
    hotspot_radius_m: float = 400.0
    hotspot_depth: float = 0.7
    rush_depth: float = 0.3
    rush_peak_s: float = 600.0
    rush_width_s: float = 600.0
    rush_hold_s: float = 2400.0
    rush_period_s: float = 5400.0
    main_rush_depth: float | None = 0.5
    incident_every_s: float = 3600.0
    incident_start_s: float = 120.0
    incident_duration_s: float = 2400.0
    incident_length_m: float = 800.0
    incident_factor: float = 0.1
    min_factor: float = 0.08
    seed: int = 0
    include_truth: bool = False

    def __post_init__(self) -> None:
        if self.n_vehicles < 1 or not (self.step_s > 0 and self.interval_s >= self.step_s):
            raise ValueError("SimConfig needs n_vehicles >= 1 and interval_s >= step_s > 0; got "
                             f"{self.n_vehicles}, {self.interval_s}, {self.step_s}")
        for name in ("rush_depth", "incident_factor", "min_factor") + (
                ("main_rush_depth",) if self.main_rush_depth is not None else ()):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SimConfig.{name} must be within [0, 1]; got {v}")
        if self.rush_width_s <= 0 or self.rush_hold_s < 0 or self.rush_period_s < 0:
            raise ValueError("SimConfig needs rush_width_s > 0, rush_hold_s >= 0 and "
                             f"rush_period_s >= 0; got {self.rush_width_s}, {self.rush_hold_s}, "
                             f"{self.rush_period_s}")
        if self.incident_every_s < 0 and self.incident_every_s != -1:
            raise ValueError("SimConfig.incident_every_s must be >= 0 (0: one incident) or -1 "
                             f"(none); got {self.incident_every_s}")
        if self.incident_duration_s <= 0 or self.incident_length_m <= 0:
            raise ValueError("SimConfig needs incident_duration_s > 0 and incident_length_m > 0; "
                             f"got {self.incident_duration_s}, {self.incident_length_m}")


@dataclass(frozen=True, slots=True)
class _Field:
    hx: np.ndarray  # hotspot centres, local metres
    hy: np.ndarray
    h_on: np.ndarray  # start, s
    h_off: np.ndarray
    ex: np.ndarray  # edge midpoints, local metres
    ey: np.ndarray
    rush_depth: np.ndarray  # float64[m], the rush's depth on each edge
    inc_on: np.ndarray  # float64[k], incident k's start, s
    inc_off: np.ndarray  # float64[k], its end, s
    inc_edges: tuple[np.ndarray, ...]  # int64 edge ids of each incident, sorted


def _field(net: RoadNetwork, cfg: SimConfig) -> _Field:
    rng = np.random.default_rng([cfg.seed, 1])
    lat0 = float(net.node_lat.mean())
    ky = np.pi * EARTH_RADIUS_M / 180.0
    kx = ky * np.cos(np.radians(lat0))
    mid_lat = 0.5 * (net.node_lat[net.edge_src] + net.node_lat[net.edge_dst])
    mid_lon = 0.5 * (net.node_lon[net.edge_src] + net.node_lon[net.edge_dst])
    ex, ey = (mid_lon - net.node_lon.mean()) * kx, (mid_lat - lat0) * ky
    pick = rng.integers(0, net.n_edges, cfg.n_hotspots)
    on = rng.uniform(0, 0.6 * cfg.duration_s, cfg.n_hotspots)
    off = on + rng.uniform(0.2, 0.5, cfg.n_hotspots) * cfg.duration_s
    main = _main_roads(net)
    depth = np.full(net.n_edges, cfg.rush_depth)
    if cfg.main_rush_depth is not None:
        depth[main] = cfg.main_rush_depth
    inc_on, inc_edges = _incidents(net, cfg, main, ex, ey)
    return _Field(ex[pick], ey[pick], on, off, ex, ey, depth, inc_on,
                  inc_on + cfg.incident_duration_s, inc_edges)


def _main_roads(net: RoadNetwork) -> np.ndarray:
    """bool[m]: the main roads (classes in ``MAIN_ROAD_CLASSES``; without any, the fastest
    fifth of the edges)."""
    main = np.isin(net.edge_road_class, [ROAD_CLASS_INDEX[c] for c in MAIN_ROAD_CLASSES])
    if not main.any() and net.n_edges:
        main = net.edge_speed_kph >= np.quantile(net.edge_speed_kph, 0.8)
    return main


def _incidents(net: RoadNetwork, cfg: SimConfig, main: np.ndarray, ex: np.ndarray,
               ey: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Start times and edges of the incidents: each a stretch of about ``incident_length_m``
    along one direction of a main road, starting at a random edge among the main-road
    edges nearest the network's centre."""
    if cfg.incident_every_s < 0 or net.n_edges == 0:
        return np.zeros(0), ()
    n = 1 if cfg.incident_every_s == 0 else max(
        1, int(np.ceil((cfg.duration_s - cfg.incident_start_s) / cfg.incident_every_s)))
    rng = np.random.default_rng([cfg.seed, 3])
    pool = np.zeros(0, np.int64)
    for cls in _INCIDENT_CLASSES:  # the best class with enough road for a stretch
        cand = np.flatnonzero(net.edge_road_class == ROAD_CLASS_INDEX[cls])
        if net.edge_length_m[cand].sum() >= 4 * cfg.incident_length_m:
            pool = cand
            break
    if pool.size == 0:
        pool = np.flatnonzero(main)
    # The third of that road nearest the centre of the network's edges.
    cx, cy = float(np.median(ex)), float(np.median(ey))
    d2 = (ex[pool] - cx) ** 2 + (ey[pool] - cy) ** 2
    pool = pool[np.argsort(d2, kind="stable")[:max(1, pool.size // 3)]]
    starts = cfg.incident_start_s + np.arange(n) * max(cfg.incident_every_s, 0.0)
    stretches = []
    for _ in range(n):
        # Of a few random stretches, the one with the quickest way round it, so that routes
        # can avoid it once it is slow (a stretch with no way round is kept only as a last
        # resort).
        tries = [_stretch(net, int(e), cfg.incident_length_m)
                 for e in pool[rng.integers(pool.size, size=min(8, pool.size))]]
        stretches.append(min(tries, key=lambda st: _detour_ratio(net, st)))
    return starts, tuple(np.sort(st) for st in stretches)


def _detour_ratio(net: RoadNetwork, stretch: np.ndarray) -> float:
    """Free-flow time of the quickest way from the stretch's start to its end that leaves out
    its edges, over the stretch's own free-flow time (``inf``: no way round nearby)."""
    w = net.edge_freeflow_time_s
    own = float(w[stretch].sum())
    keep = np.ones(net.n_edges, dtype=bool)
    keep[stretch] = False
    # Both directions of the stretch are left out: a U-turn is no way round.
    rev = np.isin(net.edge_src, net.edge_dst[stretch]) & np.isin(net.edge_dst, net.edge_src[stretch])
    keep &= ~rev
    e = np.flatnonzero(keep)
    key = net.edge_src[e].astype(np.int64) * net.n_nodes + net.edge_dst[e]
    order = np.lexsort((w[e], key))  # parallel edges: keep the quickest (csr would sum them)
    e = e[order][np.r_[True, key[order][1:] != key[order][:-1]]]
    g = sp.csr_matrix((np.maximum(w[e], 1e-3), (net.edge_src[e], net.edge_dst[e])),
                      shape=(net.n_nodes, net.n_nodes))
    a, b = int(net.edge_src[stretch[0]]), int(net.edge_dst[stretch[-1]])
    d = dijkstra(g, indices=a, limit=10.0 * own + 600.0)[b]
    return float(d) / max(own, 1e-9)


def _stretch(net: RoadNetwork, edge: int, length_m: float) -> np.ndarray:
    """Edges from ``edge`` on, forward, keeping to its OSM way (else its road class, else
    the straightest way on, never back), until about ``length_m`` (in driving order)."""
    out, total = [edge], float(net.edge_length_m[edge])
    seen = {edge}
    while total < length_m:
        cur = out[-1]
        v = int(net.edge_dst[cur])
        nxt = net.out_edge[net.out_first[v]:net.out_first[v + 1]].astype(np.int64)
        nxt = nxt[(net.edge_dst[nxt] != net.edge_src[cur]) & ~np.isin(nxt, list(seen))]
        if nxt.size == 0:
            break
        same_way = nxt[net.edge_osm_way[nxt] == net.edge_osm_way[cur]] \
            if net.edge_osm_way[cur] >= 0 else nxt[:0]
        same_class = nxt[net.edge_road_class[nxt] == net.edge_road_class[cur]]
        choice = same_way if same_way.size else same_class if same_class.size else nxt
        # The straightest of them: smallest turn between the edges' end-to-end directions.
        def bearing(e: np.ndarray) -> np.ndarray:
            s, d = net.edge_src[e], net.edge_dst[e]
            dx = (net.node_lon[d] - net.node_lon[s]) * np.cos(np.radians(net.node_lat[s]))
            return np.arctan2(dx, net.node_lat[d] - net.node_lat[s])
        turn = np.abs((bearing(choice) - bearing(np.array([cur])) + np.pi) % (2 * np.pi) - np.pi)
        e = int(choice[np.argmin(turn)])
        out.append(e)
        seen.add(e)
        total += float(net.edge_length_m[e])
    return np.array(out, dtype=np.int64)


def _rush(cfg: SimConfig, t: np.ndarray) -> np.ndarray:
    """The rush's level in [0, 1] at ``t`` (s from the start)."""
    if cfg.rush_period_s > 0:
        # Shift so the first period starts where the first rise does (t = peak - width).
        rise0 = cfg.rush_peak_s - cfg.rush_width_s
        t = rise0 + np.mod(t - rise0, cfg.rush_period_s)
    u = np.where(t <= cfg.rush_peak_s, t - cfg.rush_peak_s,
                 np.maximum(t - cfg.rush_peak_s - cfg.rush_hold_s, 0.0))
    u = np.clip(u / cfg.rush_width_s, -1.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * u))


def _factor(f: _Field, cfg: SimConfig, edge: np.ndarray, t_rel_s: np.ndarray | float) -> np.ndarray:
    t = np.asarray(t_rel_s, dtype=np.float64)
    fac = 1.0 - f.rush_depth[edge] * _rush(cfg, t)
    for h in range(f.hx.size):
        # On/off ramps of 5 minutes so the field changes smoothly.
        level = np.clip(np.minimum(t - f.h_on[h], f.h_off[h] - t) / 300.0, 0.0, 1.0)
        d2 = (f.ex[edge] - f.hx[h]) ** 2 + (f.ey[edge] - f.hy[h]) ** 2
        fac = fac * (1.0 - cfg.hotspot_depth * level * np.exp(-d2 / (2 * cfg.hotspot_radius_m ** 2)))
    t_min, t_max = float(t.min(initial=np.inf)), float(t.max(initial=-np.inf))
    for k in range(f.inc_on.size):
        if f.inc_off[k] + 120.0 <= t_min or f.inc_on[k] >= t_max:
            continue
        # Speed collapses within a minute, recovers over two.
        level = np.clip(np.minimum((t - f.inc_on[k]) / 60.0, (f.inc_off[k] + 120.0 - t) / 120.0),
                        0.0, 1.0)
        hit = np.isin(edge, f.inc_edges[k])
        fac = fac * np.where(hit, 1.0 - (1.0 - cfg.incident_factor) * level, 1.0)
    return np.maximum(fac, cfg.min_factor)


def incident_edges(net: RoadNetwork, config: SimConfig) -> list[tuple[np.ndarray, float, float]]:
    """The simulated incidents: ``(edge ids, start t_s, end t_s)`` each, in absolute unix s.

    Speeds on those edges fall to ``incident_factor`` of free flow within a minute of the
    start and recover over two minutes after the end.
    """
    f = _field(net, config)
    t0 = config.t0_s
    return [(e.copy(), t0 + float(a), t0 + float(b))
            for e, a, b in zip(f.inc_edges, f.inc_on, f.inc_off)]


def true_speed_mps(net: RoadNetwork, config: SimConfig, edge: np.ndarray,
                   t_s: np.ndarray | float) -> np.ndarray:
    """The simulated speed (m/s) on ``edge`` at absolute time ``t_s`` (the ground truth)."""
    edge = np.asarray(edge, dtype=np.int64)
    f = _field(net, config)
    return net.freeflow_mps_at(edge) * _factor(f, config, edge, np.asarray(t_s) - config.t0_s)


class _Routes:
    """Free-flow shortest routes from many origins at once (scipy's Dijkstra, in chunks)."""

    def __init__(self, net: RoadNetwork) -> None:
        self.net = net
        w = net.edge_freeflow_time_s
        key = net.edge_src.astype(np.int64) * net.n_nodes + net.edge_dst
        order = np.lexsort((w, key))
        first = np.r_[True, key[order][1:] != key[order][:-1]]
        self.pair_edge = order[first]
        self.pair_key = key[self.pair_edge]
        self.graph = sp.csr_matrix(
            (np.maximum(w[self.pair_edge], 1e-3),
             (net.edge_src[self.pair_edge], net.edge_dst[self.pair_edge])),
            shape=(net.n_nodes, net.n_nodes))

    def trips(self, origin: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """A route (edge ids) from each origin to a random reachable node; may be empty."""
        out: list[np.ndarray] = []
        n = self.net.n_nodes
        for a in range(0, origin.size, 256):
            o = origin[a:a + 256]
            dist, pred = dijkstra(self.graph, indices=o, return_predecessors=True)
            for row in range(o.size):
                reach = np.flatnonzero(np.isfinite(dist[row]) & (dist[row] > 60.0))
                if reach.size == 0:
                    out.append(np.zeros(0, np.int64))
                    continue
                node = int(reach[rng.integers(reach.size)])
                nodes = [node]
                while pred[row, node] >= 0:
                    node = int(pred[row, node])
                    nodes.append(node)
                nodes_a = np.array(nodes[::-1], dtype=np.int64)
                k = nodes_a[:-1] * n + nodes_a[1:]
                out.append(self.pair_edge[np.searchsorted(self.pair_key, k)])
        return out


def simulate_probes(net: RoadNetwork, config: SimConfig = SimConfig()) -> Iterator[pl.DataFrame]:
    """Yield the probe stream as time-ordered DataFrames, one per ``config.batch_s``.

    Columns: ``vehicle_id`` (str), ``t`` (unix s), ``lat``, ``lon``, ``speed_mps``,
    ``heading_deg``, ``accuracy_m``; with ``include_truth`` also ``true_edge`` and
    ``true_offset_m``. Memory is O(vehicles + route lengths), so thousands of cars stream.
    """
    cfg, rng = config, np.random.default_rng([config.seed, 2])
    field = _field(net, cfg)
    routes = _Routes(net)
    nv = cfg.n_vehicles
    names = np.array([f"sim{i:06d}" for i in range(nv)])
    # Routes live in one flat array; a car's route is flat[start:start + length].
    flat = np.zeros(0, np.int64)
    start = np.zeros(nv, np.int64)
    length = np.zeros(nv, np.int64)

    def assign(cars: np.ndarray, origins: np.ndarray) -> None:
        nonlocal flat
        new = routes.trips(origins, rng)
        sizes = np.array([r.size for r in new], dtype=np.int64)
        start[cars] = flat.size + np.r_[0, np.cumsum(sizes)[:-1]]
        length[cars] = sizes
        flat = np.concatenate([flat, *new]) if new else flat
        if flat.size > 4 * max(int(length.sum()), 1024):  # compact finished routes away
            keep = np.concatenate([flat[a:a + b] for a, b in zip(start, length)])
            start[:] = np.r_[0, np.cumsum(length)[:-1]]
            flat = keep

    assign(np.arange(nv), rng.integers(0, net.n_nodes, nv))
    pos = np.zeros(nv, dtype=np.int64)
    off = np.zeros(nv)
    every = round(cfg.interval_s / cfg.step_s)
    phase = rng.integers(0, every, nv)
    geo = _Geometry(net)
    buf: list[dict[str, np.ndarray]] = []
    next_batch = cfg.batch_s
    n_steps = int(cfg.duration_s / cfg.step_s)
    for step in range(n_steps + 1):
        t_rel = step * cfg.step_s
        stuck = np.flatnonzero(length == 0)
        if stuck.size:
            assign(stuck, rng.integers(0, net.n_nodes, stuck.size))
            pos[stuck], off[stuck] = 0, 0.0
        edge = flat[np.minimum(start + np.minimum(pos, np.maximum(length - 1, 0)), flat.size - 1)]
        speed = net.freeflow_mps_at(edge) * _factor(field, cfg, edge, t_rel)
        report = ((step + phase) % every == 0) & (length > 0)
        if report.any():
            buf.append(_emit(net, geo, cfg, rng, names[report], t_rel, edge[report], off[report],
                             speed[report]))
        if t_rel + cfg.step_s >= next_batch or step == n_steps:
            if buf:
                yield _frame(buf, cfg)
            buf = []
            next_batch += cfg.batch_s
        # Advance; cross as many edges as the step allows, each at its own speed.
        left = np.full(nv, cfg.step_s)
        for _ in range(16):
            moving = (length > 0) & (left > 1e-9)
            if not moving.any():
                break
            edge = flat[np.minimum(start + np.minimum(pos, np.maximum(length - 1, 0)), flat.size - 1)]
            v = net.freeflow_mps_at(edge) * _factor(field, cfg, edge, t_rel)
            rest = np.maximum(net.edge_length_m[edge] - off, 0.0)
            go = np.where(moving, np.minimum(left, rest / v), 0.0)
            off += go * v
            left -= go
            done = moving & (left > 1e-9)
            pos[done] += 1
            off[done] = 0.0
            finished = np.flatnonzero(done & (pos >= length))
            if finished.size:
                last = flat[start[finished] + length[finished] - 1]
                assign(finished, net.edge_dst[last].astype(np.int64))
                pos[finished] = 0
                off[finished] = 0.0


class _Geometry:
    """Edge polylines as cumulative lengths, for position and bearing at an offset."""

    def __init__(self, net: RoadNetwork) -> None:
        lat, lon, offs = net.geom_lat, net.geom_lon, net.geom_offsets
        owner = np.repeat(np.arange(net.n_edges), np.diff(offs))
        step = np.r_[0.0, haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:])]
        step[offs[:-1]] = 0.0
        cum = np.cumsum(step)
        cum -= cum[offs[:-1]][owner]
        total = np.maximum(cum[offs[1:] - 1], 1e-9)
        self.frac = cum / total[owner]
        self.scale = float(net.n_edges + 1)
        self.key = owner + np.minimum(self.frac, 1.0 - 1e-12)
        self.key[offs[1:] - 1] = owner[offs[1:] - 1] + 1.0 - 1e-12
        self.lat, self.lon, self.len = lat, lon, net.edge_length_m

    def at(self, edge: np.ndarray, off_m: np.ndarray) -> tuple[np.ndarray, ...]:
        f = np.clip(off_m / np.maximum(self.len[edge], 1e-9), 0.0, 1.0 - 1e-9)
        i = np.clip(np.searchsorted(self.key, edge + f, side="right") - 1, 0, self.key.size - 2)
        span = np.maximum(self.frac[i + 1] - self.frac[i], 1e-12)
        w = np.clip((f - self.frac[i]) / span, 0.0, 1.0)
        lat = self.lat[i] + w * (self.lat[i + 1] - self.lat[i])
        lon = self.lon[i] + w * (self.lon[i + 1] - self.lon[i])
        dy = self.lat[i + 1] - self.lat[i]
        dx = (self.lon[i + 1] - self.lon[i]) * np.cos(np.radians(lat))
        return lat, lon, np.degrees(np.arctan2(dx, dy)) % 360.0


def _emit(net: RoadNetwork, geo: _Geometry, cfg: SimConfig, rng: np.random.Generator,
          names: np.ndarray, t_rel: float, edge: np.ndarray, off: np.ndarray,
          speed: np.ndarray) -> dict[str, np.ndarray]:
    lat, lon, head = geo.at(edge, off)
    ky = np.pi * EARTH_RADIUS_M / 180.0
    noise = rng.normal(0.0, cfg.gps_sigma_m, (2, names.size))
    return {
        "vehicle_id": names, "t": np.full(names.size, cfg.t0_s + t_rel),
        "lat": lat + noise[0] / ky, "lon": lon + noise[1] / (ky * np.cos(np.radians(lat))),
        "speed_mps": speed, "heading_deg": head, "accuracy_m": np.full(names.size, cfg.gps_sigma_m),
        "true_edge": edge.astype(np.int32), "true_offset_m": off.copy(),
    }


def _frame(buf: list[dict[str, np.ndarray]], cfg: SimConfig) -> pl.DataFrame:
    cols = {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}
    if not cfg.include_truth:
        cols.pop("true_edge"), cols.pop("true_offset_m")
    return pl.DataFrame(cols).sort(["t", "vehicle_id"])
