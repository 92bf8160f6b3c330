"""Bounded shortest-path distances between all node pairs closer than a bound (FMM's UBODT).

Map matching asks, thousands of times per second, "how far by road from node ``u`` to node
``v``?" for nodes a few hundred metres apart. Instead of searching each time, we run one
Dijkstra per node, stopped at ``bound_m`` of road distance, once per network version, and keep
every reached pair as sorted arrays: a lookup is one ``np.searchsorted`` on the combined key
``src * n_nodes + dst`` for a whole batch of pairs. Each pair also stores the last edge of its
shortest path, so paths are recovered backwards pair by pair (``edge_src`` of the last edge is
the previous node). Distances are in ``edge_length_m`` metres; turn restrictions are ignored
(matching tolerates them; routing honours them).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from graph.network import RoadNetwork

logger = logging.getLogger(__name__)

#: Default search bound (m): covers 30 s of driving at 100 km/h with detours.
DEFAULT_BOUND_M = 1500.0


@dataclass(frozen=True, slots=True, eq=False)
class UBODT:
    """Upper-bounded origin-destination table: every ``(src, dst)`` within ``bound_m``.

    ``key`` (int64, sorted, ``src * n_nodes + dst``), ``dist_m`` (float32) and ``last_edge``
    (int32: the edge entering ``dst`` on the shortest path; ``-1`` for ``src == dst``).
    """

    network_version: str
    n_nodes: int
    bound_m: float
    key: np.ndarray
    dist_m: np.ndarray
    last_edge: np.ndarray

    @property
    def nbytes(self) -> int:
        """Memory held by the table's arrays, in bytes."""
        return int(self.key.nbytes + self.dist_m.nbytes + self.last_edge.nbytes)

    def lookup(self, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(dist_m, pos)`` for node pairs; ``inf`` and ``-1`` where beyond the bound.

        ``pos`` indexes ``key``/``dist_m``/``last_edge``. Vectorised: O(p log table size).
        """
        q = np.asarray(src, dtype=np.int64) * self.n_nodes + np.asarray(dst, dtype=np.int64)
        pos = np.searchsorted(self.key, q)
        pos_c = np.minimum(pos, max(self.key.size - 1, 0))
        found = (self.key[pos_c] == q) if self.key.size else np.zeros(q.shape, dtype=bool)
        dist = np.where(found, self.dist_m[pos_c] if self.key.size else np.inf, np.inf)
        return dist.astype(np.float64), np.where(found, pos_c, -1)

    def path_edges(
        self, edge_src: np.ndarray, src: np.ndarray, dst: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Recover the edges of the shortest paths ``src[i] -> dst[i]`` (pairs in the table).

        Parameters
        ----------
        edge_src
            ``net.edge_src``, to step back from an edge to its start node.
        src, dst
            Node pairs; pairs not in the table (or ``src == dst``) yield no edges.

        Returns
        -------
        pair, edge
            For each path edge, the pair it belongs to and the edge id, grouped by pair and in
            driving order. Vectorised over pairs; the loop runs once per hop of the longest path.
        """
        src = np.asarray(src, dtype=np.int64)
        cur = np.asarray(dst, dtype=np.int64).copy()
        live = np.flatnonzero(cur != src)
        pairs: list[np.ndarray] = []
        edges: list[np.ndarray] = []
        steps: list[np.ndarray] = []
        step = 0
        while live.size:
            _, pos = self.lookup(src[live], cur[live])
            ok = pos >= 0
            live, pos = live[ok], pos[ok]
            e = self.last_edge[pos]
            pairs.append(live)
            edges.append(e)
            steps.append(np.full(live.shape, step, dtype=np.int64))
            cur[live] = edge_src[e]
            live = live[cur[live] != src[live]]
            step += 1
        if not pairs:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        p, e, s = np.concatenate(pairs), np.concatenate(edges), np.concatenate(steps)
        order = np.lexsort((-s, p))
        return p[order], e[order].astype(np.int32)


def build_ubodt(
    net: RoadNetwork, *, bound_m: float = DEFAULT_BOUND_M, chunk: int | None = None
) -> UBODT:
    """Run a Dijkstra bounded at ``bound_m`` from every node and keep the reached pairs.

    Parallel edges keep the shorter one. The searches run in chunks of sources through
    ``scipy.sparse.csgraph.dijkstra(limit=...)`` (C code); a chunk's dense result is reduced
    to its finite entries at once. Cost grows with ``n_nodes * chunk`` per chunk (the dense
    rows) plus the pairs found; measured figures are in BENCHMARKS.md.

    Raises
    ------
    ValueError
        When ``bound_m`` is not a positive finite number.
    """
    if not (np.isfinite(bound_m) and bound_m > 0):
        raise ValueError(f"`bound_m` must be a positive number of metres; got {bound_m!r}")
    n = net.n_nodes
    pair_edge = _min_edge_per_pair(net)
    src_e, dst_e = net.edge_src[pair_edge], net.edge_dst[pair_edge]
    w = np.maximum(net.edge_length_m[pair_edge], 1e-3)  # csgraph treats explicit 0 as no edge
    graph = sp.csr_matrix((w, (src_e, dst_e)), shape=(n, n))
    pair_key = src_e.astype(np.int64) * n + dst_e
    if chunk is None:
        chunk = int(max(16, min(2048, 4_000_000 // max(n, 1))))
    keys, dists, lasts = [], [], []
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n))
        dist, pred = dijkstra(graph, directed=True, indices=idx, limit=bound_m,
                              return_predecessors=True)
        row, col = np.nonzero(np.isfinite(dist))
        d = dist[row, col]
        p = pred[row, col].astype(np.int64)
        has_pred = p >= 0
        last = np.full(row.shape, -1, dtype=np.int32)
        k = p[has_pred] * n + col[has_pred]
        last[has_pred] = pair_edge[np.searchsorted(pair_key, k)]
        keys.append(idx[row].astype(np.int64) * n + col)
        dists.append(d.astype(np.float32))
        lasts.append(last)
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    return UBODT(
        network_version=net.version, n_nodes=n, bound_m=float(bound_m), key=key,
        dist_m=np.concatenate(dists) if dists else np.zeros(0, np.float32),
        last_edge=np.concatenate(lasts) if lasts else np.zeros(0, np.int32),
    )


def load_or_build_ubodt(
    net: RoadNetwork, cache_dir: str | Path, *, bound_m: float = DEFAULT_BOUND_M
) -> UBODT:
    """Return the table for ``net`` from ``cache_dir`` (keyed by network version and bound),
    building and saving it on a miss."""
    cache_dir = Path(cache_dir)
    tag = hashlib.blake2b(f"{net.version}:{bound_m:.3f}".encode(), digest_size=6).hexdigest()
    path = cache_dir / f"ubodt-{net.version}-{tag}.npz"
    if path.exists():
        with np.load(path) as z:
            return UBODT(network_version=net.version, n_nodes=net.n_nodes, bound_m=bound_m,
                         key=z["key"], dist_m=z["dist_m"], last_edge=z["last_edge"])
    t0 = time.perf_counter()
    table = build_ubodt(net, bound_m=bound_m)
    logger.info("built UBODT for %s: %d pairs in %.1f s", net.version, table.key.size,
                time.perf_counter() - t0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, key=table.key, dist_m=table.dist_m, last_edge=table.last_edge)
    tmp.replace(path)
    return table


def _min_edge_per_pair(net: RoadNetwork) -> np.ndarray:
    """Edge ids, one per distinct ``(src, dst)`` pair (the shortest), sorted by that pair.
    Self-loops are left out (they never shorten a path)."""
    keep = np.flatnonzero(net.edge_src != net.edge_dst)
    key = net.edge_src[keep].astype(np.int64) * net.n_nodes + net.edge_dst[keep]
    order = np.lexsort((net.edge_length_m[keep], key))
    key, cand = key[order], keep[order]
    first = np.ones(key.shape, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return cand[first].astype(np.int32)
