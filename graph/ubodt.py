"""Bounded shortest-path distances between all node pairs closer than a bound (FMM's UBODT).

Map matching asks, thousands of times per second, "how far by road from node ``u`` to node
``v``?" for nodes a few hundred metres apart. Instead of searching each time, we run one
Dijkstra per node, stopped at ``bound_m`` of road distance, once per network version, and keep
every reached pair as arrays sorted by the combined key ``src * n_nodes + dst``. A lookup goes
through an open-addressing hash table over those keys (linear probing, built when the table is
made), vectorised over a whole batch of pairs: most pairs resolve in one or two rounds of array
gathers, several times faster than a binary search over millions of keys. Each pair also stores the last edge of its
shortest path, so paths are recovered backwards pair by pair (``edge_src`` of the last edge is
the previous node). Distances are in ``edge_length_m`` metres; turn restrictions are ignored
(matching tolerates them; routing honours them).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
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
    ``slots`` (derived, not a constructor argument) is the hash table of positions in ``key``.
    """

    network_version: str
    n_nodes: int
    bound_m: float
    key: np.ndarray
    dist_m: np.ndarray
    last_edge: np.ndarray
    slots: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", _build_slots(self.key))

    @property
    def nbytes(self) -> int:
        """Memory held by the table's arrays (hash slots included), in bytes."""
        return int(self.key.nbytes + self.dist_m.nbytes + self.last_edge.nbytes + self.slots.nbytes)

    def lookup(self, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(dist_m, pos)`` for node pairs; ``inf`` and ``-1`` where beyond the bound.

        ``pos`` indexes ``key``/``dist_m``/``last_edge``. Vectorised: expected O(p) (one hash
        probe per pair, a few more for the unlucky ones).
        """
        q = np.asarray(src, dtype=np.int64) * self.n_nodes + np.asarray(dst, dtype=np.int64)
        pos = _probe(self.slots, self.key, q)
        dist = np.full(q.shape, np.inf)
        if self.key.size:
            np.copyto(dist, self.dist_m[np.maximum(pos, 0)], where=pos >= 0)
        return dist, pos

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


# Fibonacci hashing: multiply by 2**64 / golden ratio (mod 2**64), keep the top bits.
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


def _hash(key: np.ndarray, bits: int) -> np.ndarray:
    """Slot of each key in a table of ``2**bits`` slots (int64)."""
    h = key.astype(np.uint64) * _HASH_MULT
    return (h >> np.uint64(64 - bits)).astype(np.int64)


def _build_slots(key: np.ndarray) -> np.ndarray:
    """Open-addressing table (linear probing) of positions in ``key``: int32, ``-1`` = empty.

    At least twice as many slots as keys (a power of two), so probe runs stay short. Built a
    round at a time: every unplaced key tries its next slot; of the keys claiming one empty
    slot in a round, the last writer wins and the others move on.
    """
    bits = max(4, int(np.ceil(np.log2(max(2 * key.size, 1)))))
    slots = np.full(1 << bits, -1, dtype=np.int32)
    mask = (1 << bits) - 1
    todo = np.arange(key.size, dtype=np.int64)
    at = _hash(key, bits)
    while todo.size:
        free = slots[at] < 0
        slots[at[free]] = todo[free]
        won = slots[at] == todo
        keep = ~won
        todo, at = todo[keep], (at[keep] + 1) & mask
    return slots


#: Probe rounds before the leftover queries fall back to a binary search.
_MAX_ROUNDS = 4


def _probe(slots: np.ndarray, key: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Position of each query key in ``key`` (``-1`` when absent), through ``slots``."""
    bits = int(slots.size).bit_length() - 1
    mask = slots.size - 1
    if key.size == 0 or q.size == 0:
        return np.full(q.shape, -1, dtype=np.int64)
    at = _hash(q, bits)
    p = slots[at]
    hit = key[np.maximum(p, 0)] == q
    hit &= p >= 0
    pos = np.where(hit, p, -1).astype(np.int64)
    # The few queries whose slot holds another key walk on along their probe run.
    # A short tail of long runs is settled by binary search, not by many small rounds.
    todo = np.flatnonzero((p >= 0) & ~hit)
    for _ in range(_MAX_ROUNDS):
        if not todo.size:
            return pos
        at[todo] = (at[todo] + 1) & mask
        p = slots[at[todo]]
        hit = key[np.maximum(p, 0)] == q[todo]
        hit &= p >= 0
        pos[todo[hit]] = p[hit]
        todo = todo[(p >= 0) & ~hit]
    if todo.size:
        i = np.minimum(np.searchsorted(key, q[todo]), key.size - 1)
        pos[todo] = np.where(key[i] == q[todo], i, -1)
    return pos
