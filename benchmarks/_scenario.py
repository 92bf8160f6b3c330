"""Reading a SUMO scenario directory and mapping its edges onto our road network.

A scenario directory (see ``../shared/data/scenario_kbh/README.md``) holds ``manifest.json``,
``network.osm.pbf``, ``edges.csv.gz`` (SUMO's static edge table with ``geometry_lonlat``),
``edge_speeds_truth.csv.gz``, ``trips_truth.csv`` and ``trips_routes.csv.gz``.

SUMO edge ``123#2`` is a piece of OSM way 123 driven in the way's direction, ``-123#2`` the
same piece against it (``...-AddedOnRampEdge`` pieces carry the way id in ``osm_way_id``).
SUMO splits ways at its own junctions and cuts edge ends back to the junction outline, so a
SUMO edge is mapped *geometrically*: each of our edges on the same way and direction is
sampled at ``K`` points, and the samples that project onto the inside of the SUMO edge's
polyline within a tolerance count as covered. A SUMO edge maps to the our-edges with enough
covered samples, ordered along it, with the covered length in metres.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from graph.network import EARTH_RADIUS_M, RoadNetwork


@dataclass(frozen=True, slots=True)
class Scenario:
    """Paths and constants of one scenario directory (nothing scenario-specific hard-coded)."""

    root: Path
    manifest: dict
    t0_s: float  # unix s of simulation second 0
    peak_s: tuple[float, float]  # peak departure window, unix s, [begin, end)
    interval_s: float  # length of the truth's speed intervals (manifest ``edge_interval``)

    @classmethod
    def open(cls, root: str | Path) -> Scenario:
        """Read ``manifest.json`` of ``root``; raise FileNotFoundError naming a missing file."""
        root = Path(root)
        for name in ("manifest.json", "network.osm.pbf", "probes.parquet", "trips_truth.csv"):
            if not (root / name).exists():
                raise FileNotFoundError(f"scenario {root}: missing {name}")
        man = json.loads((root / "manifest.json").read_text())
        tr = man["time_range"]
        t0 = float(tr.get("epoch", tr["t_min"]))
        pk = man["summary"]["trip_windows"]["peak"]["depart_window_sim_s"]
        step = float(man.get("parameters", {}).get("edge_interval", 300.0))
        return cls(root, man, t0, (t0 + float(pk[0]), t0 + float(pk[1])), step)


@dataclass(frozen=True, slots=True, eq=False)
class EdgeMap:
    """SUMO edge -> our edges, CSR: ``edge[first[i]:first[i + 1]]`` in driving order along
    SUMO edge ``i`` (``ids[i]``), with ``cover_m`` metres of each of our edges covered."""

    ids: list[str]
    index: dict[str, int]
    length_m: np.ndarray  # SUMO length
    first: np.ndarray
    edge: np.ndarray
    cover_m: np.ndarray

    def our_edges(self, i: int) -> np.ndarray:
        """Our edges along SUMO edge ``i`` (empty where unmapped)."""
        return self.edge[self.first[i]:self.first[i + 1]]

    @property
    def mapped(self) -> np.ndarray:
        """bool per SUMO edge: at least one of our edges covers it."""
        return np.diff(self.first) > 0


def _xy(lat: np.ndarray, lon: np.ndarray, lat0: float) -> tuple[np.ndarray, np.ndarray]:
    k = np.pi / 180.0 * EARTH_RADIUS_M
    return lon * k * np.cos(np.radians(lat0)), lat * k


def _edge_samples(net: RoadNetwork, k: int, lat0: float) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` float64[m, k]: ``k`` points of every edge at fractions ``(j + 0.5) / k``."""
    gx, gy = _xy(net.geom_lat, net.geom_lon, lat0)
    go = net.geom_offsets
    seg = np.hypot(np.diff(gx), np.diff(gy))
    seg[go[1:-1] - 1] = 0.0  # no segment across edge boundaries
    cum = np.r_[0.0, np.cumsum(seg)]
    base = cum[go[:-1]]
    elen = cum[go[1:] - 1] - base
    frac = (np.arange(k) + 0.5) / k
    target = base[:, None] + elen[:, None] * frac[None, :]
    # cum is non-decreasing globally; search within each edge's point range.
    j = np.searchsorted(cum, target.ravel(), side="right") - 1
    lo = np.repeat(go[:-1], k)
    hi = np.repeat(go[1:] - 2, k)
    j = np.clip(j, lo, np.maximum(hi, lo))
    d = np.maximum(cum[j + 1] - cum[j], 1e-12)
    t = np.clip((target.ravel() - cum[j]) / d, 0.0, 1.0)
    x = gx[j] + t * (gx[j + 1] - gx[j])
    y = gy[j] + t * (gy[j + 1] - gy[j])
    return x.reshape(-1, k), y.reshape(-1, k)


def map_sumo_edges(net: RoadNetwork, edges_csv: str | Path, *, samples: int = 9,
                   tol_m: float = 6.0, min_samples: int = 2) -> EdgeMap:
    """Map every SUMO edge of ``edges_csv`` onto our edges of the same way and direction.

    An our-edge is on a SUMO edge when at least ``min_samples`` of its ``samples`` points lie
    within ``tol_m`` of the SUMO polyline and project strictly inside it (not beyond its
    cut-back ends). Its covered length is that share of its length.
    """
    e = pl.read_csv(edges_csv, schema_overrides={"osm_way_id": pl.Utf8, "from_node": pl.Utf8,
                                                  "to_node": pl.Utf8})
    lat0 = float(np.mean(net.node_lat))
    sx, sy = _edge_samples(net, samples, lat0)
    gx, gy = _xy(net.geom_lat, net.geom_lon, lat0)
    way = np.asarray(net.edge_osm_way, dtype=np.int64)
    rev = np.asarray(net.edge_reversed, dtype=bool)
    order = np.lexsort((rev, way))
    key_sorted = way[order] * 2 + rev[order]
    ids = e["edge_id"].to_list()
    ways = e["osm_way_id"].cast(pl.Int64, strict=False).fill_null(-1).to_numpy()
    geoms = e["geometry_lonlat"].to_list()
    firsts, outs, covs = [0], [], []
    for sid, w, g in zip(ids, ways, geoms):
        key = int(w) * 2 + int(sid.startswith("-"))
        a, b = np.searchsorted(key_sorted, [key, key + 1])
        cand = order[a:b]
        got = False
        if cand.size and g:
            pts = np.array([p.split(",") for p in g.split()], dtype=np.float64)
            px, py = _xy(pts[:, 1], pts[:, 0], lat0)
            x0, y0, dx, dy = px[:-1], py[:-1], np.diff(px), np.diff(py)
            slen = np.hypot(dx, dy)
            cum = np.r_[0.0, np.cumsum(slen)]
            qx, qy = sx[cand].ravel()[:, None], sy[cand].ravel()[:, None]
            l2 = np.maximum(slen * slen, 1e-12)
            t = np.clip(((qx - x0) * dx + (qy - y0) * dy) / l2, 0.0, 1.0)
            dist = np.hypot(qx - (x0 + t * dx), qy - (y0 + t * dy))
            best = np.argmin(dist, axis=1)
            r = np.arange(best.size)
            along = cum[best] + t[r, best] * slen[best]
            inside = (dist[r, best] <= tol_m) & (along > 0.5) & (along < cum[-1] - 0.5)
            inside = inside.reshape(cand.size, samples)
            n_in = inside.sum(axis=1)
            pos = np.where(inside, along.reshape(cand.size, samples), 0.0).sum(1) / np.maximum(n_in, 1)
            cov = n_in / samples * net.edge_length_m[cand]
            # The other way round: samples of the SUMO edge projected onto our candidates
            # (finds our edges much longer than the SUMO piece).
            hit, hpos, hcov = _sumo_samples_on(net, cand, gx, gy, cum, px, py, samples, tol_m)
            keep = (n_in >= min_samples) | hit
            if keep.any():
                pos = np.where(n_in >= min_samples, pos, hpos)
                cov = np.maximum(np.where(n_in >= min_samples, cov, 0.0), hcov)
                sel = np.flatnonzero(keep)
                sel = sel[np.argsort(pos[sel], kind="stable")]
                outs.append(cand[sel])
                covs.append(cov[sel])
                firsts.append(firsts[-1] + sel.size)
                got = True
        if not got:
            firsts.append(firsts[-1])
    edge = np.concatenate(outs).astype(np.int64) if outs else np.zeros(0, np.int64)
    cover = np.concatenate(covs) if covs else np.zeros(0)
    return EdgeMap(ids, {s: i for i, s in enumerate(ids)}, e["length_m"].to_numpy(),
                   np.asarray(firsts, dtype=np.int64), edge, cover)


def _sumo_samples_on(net: RoadNetwork, cand: np.ndarray, gx: np.ndarray, gy: np.ndarray,
                     cum: np.ndarray, px: np.ndarray, py: np.ndarray, samples: int,
                     tol_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of the SUMO polyline ``(px, py)`` (cumulative ``cum`` m) at fractions
    ``(j + 0.5) / samples``, each given to the nearest candidate edge within ``tol_m``.
    Returns per candidate: hit (bool), mean position along the SUMO edge (m), covered m."""
    target = cum[-1] * (np.arange(samples) + 0.5) / samples
    j = np.clip(np.searchsorted(cum, target, side="right") - 1, 0, max(len(px) - 2, 0))
    d = np.maximum(cum[j + 1] - cum[j], 1e-12)
    t = np.clip((target - cum[j]) / d, 0.0, 1.0)
    qx = (px[j] + t * (px[j + 1] - px[j]))[:, None]
    qy = (py[j] + t * (py[j + 1] - py[j]))[:, None]
    go = net.geom_offsets
    a, b = go[cand], go[cand + 1] - 1  # segment start indices a..b-1 per candidate
    counts = b - a
    seg = np.repeat(a - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    owner = np.repeat(np.arange(cand.size), counts)
    x0, y0 = gx[seg], gy[seg]
    dx, dy = gx[seg + 1] - x0, gy[seg + 1] - y0
    l2 = np.maximum(dx * dx + dy * dy, 1e-12)
    u = np.clip(((qx - x0) * dx + (qy - y0) * dy) / l2, 0.0, 1.0)
    dist = np.hypot(qx - (x0 + u * dx), qy - (y0 + u * dy))
    best = np.argmin(dist, axis=1)
    ok = dist[np.arange(samples), best] <= tol_m
    who = owner[best[ok]]
    n = np.bincount(who, minlength=cand.size)
    pos = np.bincount(who, weights=target[ok], minlength=cand.size) / np.maximum(n, 1)
    return n > 0, pos, n / samples * cum[-1]


def project_on_edge(net: RoadNetwork, edge: int, lat: float, lon: float) -> float:
    """Offset (m, scaled to ``edge_length_m``) of the point of ``edge`` nearest to (lat, lon)."""
    a, b = int(net.geom_offsets[edge]), int(net.geom_offsets[edge + 1])
    lat0 = float(net.geom_lat[a])
    gx, gy = _xy(net.geom_lat[a:b], net.geom_lon[a:b], lat0)
    px, py = _xy(np.array([lat]), np.array([lon]), lat0)
    dx, dy = np.diff(gx), np.diff(gy)
    slen = np.hypot(dx, dy)
    t = np.clip(((px - gx[:-1]) * dx + (py - gy[:-1]) * dy) / np.maximum(slen * slen, 1e-12), 0, 1)
    d = np.hypot(px - gx[:-1] - t * dx, py - gy[:-1] - t * dy)
    i = int(np.argmin(d))
    total = float(slen.sum())
    along = float(slen[:i].sum() + t[i] * slen[i])
    return along / total * float(net.edge_length_m[edge]) if total > 0 else 0.0


@dataclass(frozen=True, slots=True, eq=False)
class TrueRoutes:
    """Each trip's SUMO route as our edges: ``edge[first[i]:first[i + 1]]``, the share of the
    first edge behind the origin (``frac0``) and of the last edge behind the destination
    (``frac1``), our length of the route and whether it is faithful (``ok``: every SUMO edge
    mapped or bridged, our length within ``len_tol`` of SUMO's ``route_length_m``)."""

    first: np.ndarray
    edge: np.ndarray
    frac0: np.ndarray
    frac1: np.ndarray
    length_m: np.ndarray
    ok: np.ndarray
    n_unbridged: np.ndarray  # gaps no short path closes (their length is then missing)

    def eta_s(self, travel_time_s: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Travel time (s) of trips ``rows`` along their routes, partial end edges included."""
        out = np.full(rows.size, np.nan)
        for j, i in enumerate(rows):
            e = self.edge[self.first[i]:self.first[i + 1]]
            if e.size == 0:
                continue
            if e.size == 1:
                out[j] = max(self.frac1[i] - self.frac0[i], 0.0) * travel_time_s[e[0]]
            else:
                out[j] = ((1.0 - self.frac0[i]) * travel_time_s[e[0]]
                          + travel_time_s[e[1:-1]].sum() + self.frac1[i] * travel_time_s[e[-1]])
        return out


def _bridges(net: RoadNetwork, pairs: np.ndarray, limit_m: float) -> dict[tuple[int, int], np.ndarray]:
    """Shortest (by length) edge paths for node pairs ``(a, b)`` up to ``limit_m``."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import dijkstra

    n = net.n_nodes
    key = net.edge_src.astype(np.int64) * n + net.edge_dst
    order = np.lexsort((net.edge_length_m, key))
    pe = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    pk = key[pe]
    g = sp.csr_matrix((np.maximum(net.edge_length_m[pe], 1e-3), (net.edge_src[pe], net.edge_dst[pe])),
                      shape=(n, n))
    out: dict[tuple[int, int], np.ndarray] = {}
    if pairs.size == 0:
        return out
    src = np.unique(pairs[:, 0])
    row = {int(s): r for r, s in enumerate(src)}
    _, pred = dijkstra(g, indices=src, limit=limit_m, return_predecessors=True)
    for a, b in pairs:
        p, node, nodes = pred[row[int(a)]], int(b), [int(b)]
        while node != a and node >= 0:
            node = int(p[node])
            nodes.append(node)
        if node < 0:
            continue
        nd = np.array(nodes[::-1], dtype=np.int64)
        out[(int(a), int(b))] = pe[np.searchsorted(pk, nd[:-1] * n + nd[1:])]
    return out


def map_true_routes(net: RoadNetwork, em: EdgeMap, routes: list[str], trips: pl.DataFrame, *,
                    bridge_limit_m: float = 400.0, len_tol: float = 0.1) -> TrueRoutes:
    """Map each trip's SUMO edge list (``routes``, space-separated, aligned with ``trips``)
    onto our edges; gaps between consecutive mapped edges (junction pieces SUMO merges into
    one junction, SUMO edges of ways we do not import) are bridged by the shortest path."""
    seqs = []
    for rt in routes:
        idx = [em.index.get(s, -1) for s in rt.split()]
        parts = [em.our_edges(i) for i in idx if i >= 0]
        seq = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if seq.size:
            seq = seq[np.r_[True, seq[1:] != seq[:-1]]]
        seqs.append(seq)
    gaps = [np.column_stack([net.edge_dst[s[:-1]], net.edge_src[s[1:]]])[
        net.edge_dst[s[:-1]] != net.edge_src[s[1:]]] for s in seqs if s.size > 1]
    pairs = np.unique(np.concatenate(gaps), axis=0) if gaps else np.zeros((0, 2), np.int64)
    br = _bridges(net, pairs, bridge_limit_m)
    first, edges, ok = [0], [], np.zeros(len(seqs), dtype=bool)
    n_missing = np.zeros(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        good = s.size > 0
        out = [s]
        if s.size > 1:
            cut = np.flatnonzero(net.edge_dst[s[:-1]] != net.edge_src[s[1:]])
            prev = 0
            out = []
            for k in cut:
                out.append(s[prev:k + 1])
                p = br.get((int(net.edge_dst[s[k]]), int(net.edge_src[s[k + 1]])))
                if p is None:
                    n_missing[i] += 1
                else:
                    out.append(p)
                prev = k + 1
            out.append(s[prev:])
        e = np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)
        edges.append(e)
        first.append(first[-1] + e.size)
        ok[i] = good
    edge = np.concatenate(edges) if edges else np.zeros(0, np.int64)
    first_a = np.asarray(first, dtype=np.int64)
    n = len(seqs)
    frac0, frac1, length = np.zeros(n), np.ones(n), np.zeros(n)
    olat, olon = trips["origin_lat"].to_numpy(), trips["origin_lon"].to_numpy()
    dlat, dlon = trips["dest_lat"].to_numpy(), trips["dest_lon"].to_numpy()
    L = net.edge_length_m
    for i in range(n):
        e = edge[first_a[i]:first_a[i + 1]]
        if e.size == 0:
            continue
        frac0[i] = project_on_edge(net, int(e[0]), olat[i], olon[i]) / max(L[e[0]], 1e-9)
        frac1[i] = project_on_edge(net, int(e[-1]), dlat[i], dlon[i]) / max(L[e[-1]], 1e-9)
        if e.size == 1:
            length[i] = max(frac1[i] - frac0[i], 0.0) * L[e[0]]
        else:
            length[i] = (1 - frac0[i]) * L[e[0]] + L[e[1:-1]].sum() + frac1[i] * L[e[-1]]
    true_len = trips["route_length_m"].to_numpy()
    ok &= np.abs(length - true_len) <= len_tol * true_len
    return TrueRoutes(first_a, edge, frac0, frac1, length, ok, n_missing)
