"""Road distances between nearby nodes for map matching: bounded searches on demand, cached.

Map matching asks, thousands of times per second, "how far by road from node ``u`` to node
``v``?" for nodes a few hundred metres apart. Valhalla's Meili answers it without any table
over the whole network: when a transition needs distances from ``u``, it runs one
one-to-many Dijkstra from ``u``, stopped at a small bound, and caches the nodes it reached.
:class:`RouteDistances` does the same, vectorised over a batch of pairs:

* the pairs are grouped by source node; sources not in the cache, or cached with too small a
  search radius, get one bounded Dijkstra each (numba-compiled, over the network's CSR arrays,
  all of a batch's sources in one call);
* each search is kept as a small map sorted by destination node (``dst``, ``dist_m`` as
  float32, ``last_edge``: the edge entering ``dst`` on the shortest path), in one pooled arena;
  a lookup is a binary search in its source's map;
* the arena holds at most ``max_entries`` reached nodes (12 bytes each): when full, the
  least recently used sources are dropped (those of the current call are always kept, so one
  call's working set may exceed the limit until the next call).

Building one costs nothing: no pass over the network and no file, so its cost grows with the
probes, not the network. The first lookup allocates node-wide scratch (16 bytes per node).

Each pair may carry a limit ``max_m`` (the matcher passes the farthest a car could have driven
in the time between two points). A source is searched to the smallest radius on a ladder
(200 m times powers of sqrt 2, capped at ``bound_m``) that covers its pairs' limits; a search
area grows with the square of its radius, so short probe intervals cost far less than a fixed
1.5 km search. Answers never depend on what is cached: a distance is returned when it is
within ``min(max_m, bound_m)`` and ``inf`` otherwise, whatever radius the cached search had,
and the heap breaks ties between equal distances by node id, so a search of any radius
settles the nodes within a smaller radius in the same order, with the same distances and the
same last edges. Cache eviction, the order of calls and sharing one object between several
matchers therefore never change a result.

Distances are in ``edge_length_m`` metres; turn restrictions are ignored (matching tolerates
them; routing honours them). One object may serve several matchers of one process, one call
at a time (it is not safe for concurrent calls from several threads).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from graph.network import RoadNetwork

#: Default search bound (m): covers 30 s of driving at 100 km/h with detours.
DEFAULT_BOUND_M = 1500.0
#: Default most reached nodes kept in the cache (12 bytes each: 48 MB).
DEFAULT_MAX_ENTRIES = 4_000_000
#: Smallest search radius (m); radii grow from it by factors of sqrt 2 up to the bound.
MIN_RADIUS_M = 200.0


class RouteDistances:
    """Bounded road distances and shortest paths between node pairs, searched on demand.

    See the module docstring. Build with :func:`build_route_distances`.

    Attributes
    ----------
    network_version, n_nodes, bound_m, max_entries
        The network it serves, the largest distance it returns (m) and the cache limit.
    stats
        Counters: ``searches`` (Dijkstras run), ``reached`` (nodes they settled),
        ``evictions`` (compactions of the cache), ``lookups`` (pairs asked).
    """

    def __init__(self, net: RoadNetwork, *, bound_m: float = DEFAULT_BOUND_M,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if not (np.isfinite(bound_m) and bound_m > 0):
            raise ValueError(f"`bound_m` must be a positive number of metres; got {bound_m!r}")
        if int(max_entries) < 1:
            raise ValueError(f"`max_entries` must be at least 1; got {max_entries!r}")
        self.network_version = net.version
        self.n_nodes = int(net.n_nodes)
        self.bound_m = float(bound_m)
        self.max_entries = int(max_entries)
        self._out_first = np.ascontiguousarray(net.out_first)
        self._out_edge = np.ascontiguousarray(net.out_edge)
        self._edge_src = np.ascontiguousarray(net.edge_src)
        self._edge_dst = np.ascontiguousarray(net.edge_dst)
        self._length = np.ascontiguousarray(net.edge_length_m, dtype=np.float64)
        self._radii = _radius_ladder(self.bound_m)
        self.stats = {"searches": 0, "reached": 0, "evictions": 0, "lookups": 0}
        self._clear()

    # ------------------------------------------------------------------ public
    @property
    def nbytes(self) -> int:
        """Memory held by the cache and the search scratch, in bytes (the network excluded)."""
        arrays = (self._node_slot, self._scratch_dist, self._scratch_last, self._pool_dst,
                  self._pool_dist, self._pool_last, self._slot_node, self._slot_start,
                  self._slot_len, self._slot_radius, self._slot_stamp)
        return int(sum(a.nbytes for a in arrays))

    @property
    def cached_entries(self) -> int:
        """Reached nodes held in the cache now (live ones, after the last compaction)."""
        return int(self._slot_len[: self._n_slots].sum())

    def lookup(self, src: np.ndarray, dst: np.ndarray,
               max_m: np.ndarray | float | None = None) -> np.ndarray:
        """Road distance (m, float64) from ``src[i]`` to ``dst[i]``; ``inf`` beyond the limit.

        Parameters
        ----------
        src, dst
            Node ids, arrays of equal shape.
        max_m
            Largest distance wanted per pair (scalar or array), capped at ``bound_m``; default
            ``bound_m``. Pairs farther apart by road (or not connected) get ``inf``.
        """
        src, dst, lim = self._pairs(src, dst, max_m)
        out = np.empty(src.shape, dtype=np.float64)
        if src.size:
            slot = self._ensure(src, lim)
            _lookup_pairs(self._slot_start, self._slot_len, slot, dst, lim, self._pool_dst,
                          self._pool_dist, out)
        return out

    def path_edges(self, edge_src: np.ndarray, src: np.ndarray, dst: np.ndarray,
                   max_m: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The edges of the shortest paths ``src[i] -> dst[i]``.

        Parameters
        ----------
        edge_src
            ``net.edge_src`` of the network served (kept for the older table's signature;
            only its length is checked).
        src, dst
            Node pairs; pairs beyond the limit (see :meth:`lookup`) or with ``src == dst``
            yield no edges.
        max_m
            As in :meth:`lookup`.

        Returns
        -------
        pair, edge
            For each path edge, the pair it belongs to (int64, ascending) and the edge id
            (int32), in driving order within each pair.
        """
        if len(edge_src) != len(self._edge_src):
            raise ValueError("`edge_src` is not the edge_src of the network these distances serve")
        src, dst, lim = self._pairs(src, dst, max_m)
        if src.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        slot = self._ensure(src, lim)
        return _walk_paths(self._slot_start, self._slot_len, slot, src, dst, lim,
                           self._pool_dst, self._pool_dist, self._pool_last, self._edge_src)

    def clear(self) -> None:
        """Drop every cached search (answers stay the same; the next lookups search again)."""
        self._clear()

    # --------------------------------------------------------------- pickling
    def __getstate__(self) -> dict:
        # The cache is derived state: a copy starts empty and answers the same.
        state = {k: v for k, v in self.__dict__.items() if not k.startswith(("_pool", "_slot",
                 "_node_slot", "_scratch", "_n_slots", "_fill", "_tick"))}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._clear()

    # ------------------------------------------------------------- internals
    def _clear(self) -> None:
        self._node_slot = np.zeros(0, np.int32)        # node -> slot, -1 when not cached
        self._scratch_dist = np.zeros(0, np.float64)   # search scratch, inf between searches
        self._scratch_last = np.zeros(0, np.int32)
        self._pool_dst = np.zeros(0, np.int32)
        self._pool_dist = np.zeros(0, np.float32)
        self._pool_last = np.zeros(0, np.int32)
        self._slot_node = np.zeros(0, np.int32)
        self._slot_start = np.zeros(0, np.int64)
        self._slot_len = np.zeros(0, np.int64)
        self._slot_radius = np.zeros(0, np.float64)
        self._slot_stamp = np.zeros(0, np.int64)
        self._n_slots = 0
        self._fill = 0
        self._tick = 0

    def _pairs(self, src, dst, max_m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.ascontiguousarray(src, dtype=np.int64)
        dst = np.ascontiguousarray(dst, dtype=np.int64)
        if src.shape != dst.shape or src.ndim != 1:
            raise ValueError("`src` and `dst` must be 1-D arrays of equal length")
        if src.size and (min(src.min(), dst.min()) < 0
                         or max(src.max(), dst.max()) >= self.n_nodes):
            raise ValueError(f"node ids must be in 0..{self.n_nodes - 1}")
        # Limits go to the kernels as given: NaN or negative answers inf, and a limit above
        # the bound needs no clipping (no cached search reaches beyond the bound).
        lim = np.full(src.shape, self.bound_m) if max_m is None else np.ascontiguousarray(
            np.broadcast_to(np.asarray(max_m, dtype=np.float64), src.shape))
        self.stats["lookups"] += int(src.size)
        return src, dst, lim

    def _ensure(self, src: np.ndarray, lim: np.ndarray) -> np.ndarray:
        """Slot of each pair's source, searching the sources whose cached radius is short."""
        if self._node_slot.size == 0:
            self._node_slot = np.full(self.n_nodes, -1, np.int32)
            self._scratch_dist = np.full(self.n_nodes, np.inf)
            self._scratch_last = np.full(self.n_nodes, -1, np.int32)
        self._tick += 1
        slot = np.empty(src.shape, np.int32)
        short = np.empty(src.shape, np.bool_)
        if _slots_of(self._node_slot, self._slot_radius, self._slot_stamp, src, lim,
                     self.bound_m, self._tick, slot, short):
            nodes, inv = np.unique(src[short], return_inverse=True)
            need = np.zeros(nodes.size)
            np.maximum.at(need, inv, np.minimum(lim[short], self.bound_m))
            have = self._node_slot[nodes]
            cached = have >= 0
            need[cached] = np.maximum(need[cached], self._slot_radius[have[cached]])
            radius = self._radii[np.minimum(np.searchsorted(self._radii, need), self._radii.size - 1)]
            self._search(nodes.astype(np.int32), radius)
            slot = self._node_slot[src]
        return slot

    def _search(self, nodes: np.ndarray, radius: np.ndarray) -> None:
        offsets, dst, dist, last = _search_many(
            self._out_first, self._out_edge, self._edge_dst, self._length, nodes, radius,
            self._scratch_dist, self._scratch_last)
        self.stats["searches"] += int(nodes.size)
        self.stats["reached"] += int(dst.size)
        old = self._node_slot[nodes]
        self._node_slot[nodes[old >= 0]] = -1  # re-searched: the old map becomes garbage
        if self._fill + dst.size > self.max_entries:
            self._compact(dst.size)
        # Room for the new maps and slots (amortised doubling; beyond max_entries only when
        # one call's working set alone is larger).
        end = self._fill + dst.size
        if end > self._pool_dst.size:
            cap = max(end, min(2 * self._pool_dst.size, self.max_entries), 1024)
            self._pool_dst = _grown(self._pool_dst, cap, self._fill)
            self._pool_dist = _grown(self._pool_dist, cap, self._fill)
            self._pool_last = _grown(self._pool_last, cap, self._fill)
        ns = self._n_slots + nodes.size
        if ns > self._slot_node.size:
            cap = max(ns, 2 * self._slot_node.size, 256)
            self._slot_node = _grown(self._slot_node, cap, self._n_slots)
            self._slot_start = _grown(self._slot_start, cap, self._n_slots)
            self._slot_len = _grown(self._slot_len, cap, self._n_slots)
            self._slot_radius = _grown(self._slot_radius, cap, self._n_slots)
            self._slot_stamp = _grown(self._slot_stamp, cap, self._n_slots)
        self._pool_dst[self._fill:end] = dst
        self._pool_dist[self._fill:end] = dist
        self._pool_last[self._fill:end] = last
        s = slice(self._n_slots, ns)
        self._slot_node[s] = nodes
        self._slot_start[s] = self._fill + offsets[:-1]
        self._slot_len[s] = np.diff(offsets)
        self._slot_radius[s] = radius
        self._slot_stamp[s] = self._tick
        self._node_slot[nodes] = np.arange(self._n_slots, ns, dtype=np.int32)
        self._n_slots, self._fill = ns, end

    def _compact(self, incoming: int) -> None:
        """Keep the most recently used maps (all of this call's) in at most half the limit
        (less what arrives now); drop the rest and the garbage of re-searched sources."""
        self.stats["evictions"] += 1
        n = self._n_slots
        live = np.flatnonzero(self._node_slot[self._slot_node[:n]] == np.arange(n))
        order = live[np.argsort(-self._slot_stamp[live], kind="stable")]
        now = self._slot_stamp[order] == self._tick
        room = max(self.max_entries // 2 - incoming, 0)
        keep = order[now | (np.cumsum(self._slot_len[order]) <= room)]
        keep = np.sort(keep)
        lens = self._slot_len[keep]
        total = int(lens.sum())
        idx = (np.repeat(self._slot_start[keep] - (np.cumsum(lens) - lens), lens)
               + np.arange(total))
        self._pool_dst[:total] = self._pool_dst[idx]
        self._pool_dist[:total] = self._pool_dist[idx]
        self._pool_last[:total] = self._pool_last[idx]
        self._node_slot[self._slot_node[live]] = -1
        k = keep.size
        for a in ("_slot_node", "_slot_len", "_slot_radius", "_slot_stamp"):
            arr = getattr(self, a)
            arr[:k] = arr[keep]
        self._slot_start[:k] = np.cumsum(lens) - lens
        self._node_slot[self._slot_node[:k]] = np.arange(k, dtype=np.int32)
        self._n_slots, self._fill = k, total


def build_route_distances(net: RoadNetwork, *, bound_m: float = DEFAULT_BOUND_M,
                          max_entries: int = DEFAULT_MAX_ENTRIES) -> RouteDistances:
    """An empty :class:`RouteDistances` for ``net``: nothing is searched until asked.

    Raises
    ------
    ValueError
        When ``bound_m`` is not a positive finite number or ``max_entries < 1``.
    """
    return RouteDistances(net, bound_m=bound_m, max_entries=max_entries)


def _radius_ladder(bound_m: float) -> np.ndarray:
    """Search radii: ``MIN_RADIUS_M * sqrt(2)**i`` below ``bound_m``, then ``bound_m``."""
    n = max(0, math.ceil(math.log(bound_m / MIN_RADIUS_M, math.sqrt(2)))) if bound_m > MIN_RADIUS_M else 0
    r = MIN_RADIUS_M * np.sqrt(2.0) ** np.arange(n)
    return np.r_[r[r < bound_m], bound_m].astype(np.float64)


def _grown(a: np.ndarray, cap: int, used: int) -> np.ndarray:
    out = np.empty(cap, dtype=a.dtype)
    out[:used] = a[:used]
    return out


# ------------------------------------------------------------------ kernels
# Compiled with numba (cache=True: on disk in __pycache__ or NUMBA_CACHE_DIR, so only the first
# process of a fresh checkout pays the few seconds of compilation). A Python-level Dijkstra
# would cost ~100x more per settled node, and scipy's csgraph.dijkstra allocates n_nodes-wide
# result rows per source, the very cost this module avoids.

@njit(cache=True, nogil=True, inline="always")
def _heap_less(k1, n1, k2, n2):  # pragma: no cover - jitted
    return k1 < k2 or (k1 == k2 and n1 < n2)


@njit(cache=True, nogil=True)
def _search_many(out_first, out_edge, edge_dst, length_m, sources, radius, dist, last):
    """Dijkstra from each of ``sources`` (``radius[i]`` bound, inclusive); return
    ``(offsets, dst, dist_m, last_edge)``: each source's reached nodes sorted by id.

    ``dist``/``last`` are node-wide scratch (``inf``/``-1``), restored before returning. The
    heap orders by (distance, node id), so ties settle in a fixed order.
    """  # pragma: no cover - jitted
    ns = sources.shape[0]
    offsets = np.zeros(ns + 1, np.int64)
    cap = 1024
    r_dst = np.empty(cap, np.int32)
    r_dist = np.empty(cap, np.float32)
    r_last = np.empty(cap, np.int32)
    hk = np.empty(64, np.float64)
    hn = np.empty(64, np.int32)
    touched = np.empty(64, np.int32)
    fill = 0
    for si in range(ns):
        s = sources[si]
        bound = radius[si]
        nt = 0
        dist[s] = 0.0
        last[s] = -1
        touched[0] = s
        nt = 1
        hk[0] = 0.0
        hn[0] = s
        size = 1
        while size > 0:
            d = hk[0]
            u = hn[0]
            size -= 1
            if size > 0:  # sift the last entry down from the root
                k, nd_ = hk[size], hn[size]
                i = 0
                while True:
                    c = 2 * i + 1
                    if c >= size:
                        break
                    if c + 1 < size and _heap_less(hk[c + 1], hn[c + 1], hk[c], hn[c]):
                        c += 1
                    if _heap_less(hk[c], hn[c], k, nd_):
                        hk[i] = hk[c]
                        hn[i] = hn[c]
                        i = c
                    else:
                        break
                hk[i] = k
                hn[i] = nd_
            if d > dist[u]:
                continue  # stale entry
            for j in range(out_first[u], out_first[u + 1]):
                e = out_edge[j]
                v = edge_dst[e]
                nd = d + length_m[e]
                if nd <= bound and nd < dist[v]:
                    if dist[v] == np.inf:
                        if nt == touched.shape[0]:
                            t2 = np.empty(2 * nt, np.int32)
                            t2[:nt] = touched
                            touched = t2
                        touched[nt] = v
                        nt += 1
                    dist[v] = nd
                    last[v] = e
                    if size == hk.shape[0]:
                        k2 = np.empty(2 * size, np.float64)
                        n2 = np.empty(2 * size, np.int32)
                        k2[:size] = hk
                        n2[:size] = hn
                        hk, hn = k2, n2
                    i = size  # sift up
                    size += 1
                    while i > 0:
                        p = (i - 1) >> 1
                        if _heap_less(nd, v, hk[p], hn[p]):
                            hk[i] = hk[p]
                            hn[i] = hn[p]
                            i = p
                        else:
                            break
                    hk[i] = nd
                    hn[i] = v
        reached = np.sort(touched[:nt])
        if fill + nt > cap:
            while fill + nt > cap:
                cap *= 2
            a = np.empty(cap, np.int32)
            a[:fill] = r_dst[:fill]
            r_dst = a
            b = np.empty(cap, np.float32)
            b[:fill] = r_dist[:fill]
            r_dist = b
            c2 = np.empty(cap, np.int32)
            c2[:fill] = r_last[:fill]
            r_last = c2
        for i in range(nt):
            v = reached[i]
            r_dst[fill + i] = v
            r_dist[fill + i] = dist[v]
            r_last[fill + i] = last[v]
            dist[v] = np.inf
            last[v] = -1
        fill += nt
        offsets[si + 1] = fill
    return offsets, r_dst[:fill].copy(), r_dist[:fill].copy(), r_last[:fill].copy()


@njit(cache=True, nogil=True, inline="always")
def _find(pool_dst, lo, hi, t):  # pragma: no cover - jitted
    """Position of node ``t`` in the sorted ``pool_dst[lo:hi]``, or -1."""
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if pool_dst[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    if lo < end and pool_dst[lo] == t:
        return lo
    return -1


@njit(cache=True, nogil=True)
def _slots_of(node_slot, slot_radius, slot_stamp, src, lim, bound, tick, slot,
              short):  # pragma: no cover - jitted
    """Each pair's cache slot (``-1``: none) and whether its source must be searched (not
    cached, or cached with a radius below the pair's limit capped at ``bound``; a negative
    or NaN limit needs nothing). Stamps the slots used with ``tick``. Returns the number of
    pairs to search for."""
    n_short = 0
    for i in range(src.shape[0]):
        s = node_slot[src[i]]
        slot[i] = s
        if not lim[i] >= 0:
            short[i] = False
        elif s < 0 or slot_radius[s] < min(lim[i], bound):
            short[i] = True
            n_short += 1
        else:
            short[i] = False
            slot_stamp[s] = tick
    return n_short


@njit(cache=True, nogil=True)
def _lookup_pairs(slot_start, slot_len, slot, dst, lim, pool_dst, pool_dist, out):  # pragma: no cover
    for i in range(dst.shape[0]):
        out[i] = np.inf
        if not lim[i] >= 0:
            continue
        s = slot[i]
        lo = slot_start[s]
        p = _find(pool_dst, lo, lo + slot_len[s], dst[i])
        if p >= 0:
            d = np.float64(pool_dist[p])
            if d <= lim[i]:
                out[i] = d


@njit(cache=True, nogil=True)
def _walk_paths(slot_start, slot_len, slot, src, dst, lim, pool_dst, pool_dist, pool_last,
                edge_src):  # pragma: no cover - jitted
    n = src.shape[0]
    count = np.zeros(n, np.int64)
    for i in range(n):
        if not lim[i] >= 0 or src[i] == dst[i]:
            continue
        s = slot[i]
        lo = slot_start[s]
        hi = lo + slot_len[s]
        p = _find(pool_dst, lo, hi, dst[i])
        if p < 0 or np.float64(pool_dist[p]) > lim[i]:
            continue
        c = 0
        cur = dst[i]
        while cur != src[i] and p >= 0 and c <= hi - lo:
            c += 1
            cur = edge_src[pool_last[p]]
            p = _find(pool_dst, lo, hi, cur)
        if cur == src[i]:  # (a broken chain cannot happen: subpaths of a search are in it)
            count[i] = c
    total = count.sum()
    pair = np.empty(total, np.int64)
    edge = np.empty(total, np.int32)
    at = 0
    for i in range(n):
        c = count[i]
        if c == 0:
            continue
        s = slot[i]
        lo = slot_start[s]
        hi = lo + slot_len[s]
        cur = dst[i]
        for j in range(c - 1, -1, -1):
            p = _find(pool_dst, lo, hi, cur)
            e = pool_last[p]
            pair[at + j] = i
            edge[at + j] = e
            cur = edge_src[e]
        at += c
    return pair, edge
