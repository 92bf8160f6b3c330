"""Estimator shards: the speed state and its profile split by segment over N stages.

``traffic serve --estimator-shards N`` runs N :class:`workers.estimator.EstimatorCore` stages
(Ray actors on different nodes, or plain objects in process), each over the segments of one
shard, and :class:`workers.sharded_estimator.ShardedEstimator` in the facade, which stands
where the one estimator stood: the facade's ``estimator_call`` and fold queue reach the
shards through it.

Shard map
    An edge's shard is a hash of its stable key (splitmix64, mod N), so an edge keeps its
    shard across network versions (a swap remaps each shard on its own) and a profile or
    checkpoint written unsharded splits by key. Inside a shard, edges are numbered ``0..m_s-1``
    in ascending global id (:class:`ShardMap`: ``shard``, ``local`` per global edge and
    ``edges[s]``, the global ids of shard ``s``).
A shard's network
    :class:`EdgeShard`, a network-shaped view of the shard's segments: lengths, free-flow
    speeds, keys, the whole network's version. The estimator reads only those; a real
    sub-``RoadNetwork`` would carry nodes, CSR indexes and geometry the estimator never reads
    (and need its own version, while publications must name the serving network's).
Folds
    Every traversal batch is split by shard in its order and *every* shard folds its part
    (possibly empty) at the whole batch's newest exit time, so every shard's clock,
    watermark, state version, prior bin and profile boundaries are those the one estimator
    would have: per segment the arithmetic is the same, so N shards compute exactly what one
    estimator computes (``tests/test_shards.py``). The matched-probe count of a batch
    (``applied``) is counted once, by shard 0 (it also keeps the freshness samples); the
    status sums ``applied`` over the shards.
Publications
    The facade asks every shard for its plan (:meth:`EstimatorCore.publish_plan`), decides
    full or delta for all (full when any shard needs it or the deltas together list over a
    quarter of the edges, as one estimator decides), and merges: a full publication scatters
    each shard's vector into a global one (O(edges), at the full cadence); a delta maps the
    shards' local edge ids to global ones and sorts them (O(edges changed)).
Snapshots
    One writer: the facade merges the shards' snapshots (global edge ids) and writes them,
    when a batch crosses a snapshot boundary, before the batch's folds are sent (so it is
    the state before the batch, as with one estimator). Shards write none.
Profiles
    Each shard learns its segments' profile and saves it as
    ``<data-dir>/profiles/profile.shard<s>-of-<N>.npz``; at start a shard loads its file, or
    else its keys' part of the unsharded ``profile.npz`` (or of the prior passed in).
Checkpoints and per-shard recovery
    A sharded checkpoint holds each shard's ``state_dict`` under ``estimator<s>.`` (pipeline
    state version 3, :mod:`workers.state`); an unsharded one (versions 1 and 2) is split by
    edge key. Between checkpoints the facade keeps a fold journal: each shard's parts of the
    batches folded since the last checkpoint, in fold order (:class:`FoldJournal`). A shard
    that restarted (its boot token is gone) is restored alone: its part of the newest
    checkpoint is loaded and its journal refolded, while ingest waits at a quiet point and
    the other shards keep their state. The journal rather than a replay of the probe log
    through fresh matchers, because idle-flush ticks, flushes and network swaps hand the
    estimator traversals that are not in the probe log: a log replay would refold them at
    other points (or not at all), and the restored shard would differ from its peers. The
    journal is exact, costs no matching, and holds O(traversals since the last checkpoint)
    in the facade; past ``max_bytes`` it is dropped and a restart restores the whole
    pipeline from the checkpoint and the log, as with one estimator. A facade that dies
    takes the journal with it, and then the whole pipeline recovers from the checkpoint
    and the probe log anyway.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from traffic.traversals import Traversals

logger = logging.getLogger(__name__)

_INT64 = np.int64


def shard_of_keys(edge_key: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard (``int32``) of each stable edge key: splitmix64 of the key, mod ``n_shards``.

    >>> shard_of_keys(np.array([1, 2, 3], dtype=np.int64), 1).tolist()
    [0, 0, 0]
    """
    if n_shards < 1:
        raise ValueError(f"`n_shards` must be >= 1; got {n_shards}")
    z = np.asarray(edge_key, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_shards)).astype(np.int32)


@dataclass(frozen=True, slots=True)
class EdgeShard:
    """The segments of one shard, shaped as much like a ``RoadNetwork`` as the estimator
    reads: ``edge_length_m``, ``edge_freeflow_mps``, ``edge_key`` (local order: ascending
    global id), ``n_edges``, ``version`` (the whole network's), ``edge_index_of_keys`` and
    ``freeflow_mps_at``."""

    edge_length_m: np.ndarray
    edge_freeflow_mps: np.ndarray
    edge_key: np.ndarray
    version: str
    shard: int
    n_shards: int

    @property
    def n_edges(self) -> int:
        """Number of segments in this shard."""
        return int(self.edge_key.shape[0])

    def freeflow_mps_at(self, edges: np.ndarray) -> np.ndarray:
        """Free-flow speed (m/s) of the given local edges."""
        return np.asarray(self.edge_freeflow_mps[edges], dtype=np.float64)

    def edge_index_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Map stable edge keys to local edge ids; ``-1`` where a key is not in this shard."""
        from traffic.profiles import index_of_keys

        return index_of_keys(self.edge_key, np.asarray(keys, dtype=_INT64))


class ShardMap:
    """Global edge id <-> (shard, local id) for one network (see the module docstring).

    ``shard`` and ``local`` are ``int32`` per global edge; ``edges[s]`` the global ids of
    shard ``s``, ascending. 8 B per edge plus 4 B per edge for ``edges``.
    """

    def __init__(self, net: Any, n_shards: int) -> None:
        self.n = int(n_shards)
        self.n_edges = int(net.n_edges)
        self.version = net.version
        self.shard = shard_of_keys(np.asarray(net.edge_key), self.n)
        order = np.argsort(self.shard, kind="stable").astype(np.int32)
        bounds = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.shard, minlength=self.n), out=bounds[1:])
        self.edges = [order[bounds[s]:bounds[s + 1]] for s in range(self.n)]
        self.local = np.empty(self.n_edges, dtype=np.int32)
        for s, e in enumerate(self.edges):
            self.local[e] = np.arange(e.size, dtype=np.int32)

    def view(self, net: Any, s: int) -> EdgeShard:
        """Shard ``s``'s segments of ``net`` (copies: O(shard edges))."""
        e = self.edges[s]
        return EdgeShard(edge_length_m=np.ascontiguousarray(np.asarray(net.edge_length_m)[e]),
                         edge_freeflow_mps=np.ascontiguousarray(
                             np.asarray(net.edge_freeflow_mps)[e]),
                         edge_key=np.ascontiguousarray(np.asarray(net.edge_key, _INT64)[e]),
                         version=net.version, shard=s, n_shards=self.n)

    def split(self, batch: Traversals) -> list[Traversals]:
        """Each shard's traversals of ``batch`` (local edge ids), in ``batch``'s order; O(batch)."""
        edge = np.asarray(batch.edge)
        if self.n == 1:
            return [batch]
        sh = self.shard[edge]
        out = []
        for s in range(self.n):
            m = sh == s
            out.append(Traversals(self.local[edge[m]], np.asarray(batch.t_enter_s)[m],
                                  np.asarray(batch.t_exit_s)[m],
                                  np.asarray(batch.pace_s_per_m)[m],
                                  np.asarray(batch.weight)[m]))
        return out

    def merge_full(self, vectors: list[np.ndarray]) -> np.ndarray:
        """One global vector from each shard's (O(edges))."""
        out = np.empty(self.n_edges, dtype=np.float64)
        for e, v in zip(self.edges, vectors, strict=True):
            out[e] = v
        return out

    def merge_delta(self, edges: list[np.ndarray], values: list[np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Global sorted edge ids and their values from each shard's local delta
        (O(k log k) for k edges changed)."""
        g = np.concatenate([self.edges[s][np.asarray(e, dtype=np.int64)]
                            for s, e in enumerate(edges)]).astype(np.int32)
        v = np.concatenate([np.asarray(x, dtype=np.float64) for x in values])
        order = np.argsort(g, kind="stable")
        return g[order], v[order]

    def merge_frames(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        """The shards' snapshot frames as one, with global edge ids, sorted by edge."""
        parts = [f.with_columns(pl.Series("edge", self.edges[s][f["edge"].to_numpy()],
                                          dtype=pl.Int32))
                 for s, f in enumerate(frames)]
        return pl.concat(parts).sort("edge")


def shard_profile_path(data_dir: str | Path | None, shard: int, n_shards: int) -> str | None:
    """Where shard ``shard`` of ``n_shards`` keeps its learned profile (``None``: no data dir)."""
    if data_dir is None:
        return None
    return str(Path(data_dir) / "profiles" / f"profile.shard{shard}-of-{n_shards}.npz")


def shard_prior(prior: Any, view: EdgeShard, edges: np.ndarray, path: str | None) -> Any:
    """The prior of one shard: its own saved profile when there is one, else its keys'
    part of ``prior`` (a ``TimeOfWeekProfile`` is split by key, a per-edge array sliced)."""
    from traffic.profiles import TimeOfWeekProfile

    if isinstance(prior, TimeOfWeekProfile):
        if path is not None and Path(path).exists():
            return TimeOfWeekProfile.load(path, edge_key=view.edge_key)
        return prior.remap_to(view.edge_key)
    if prior is None:
        return None
    return np.asarray(prior)[edges]


class FoldJournal:
    """Each shard's fold calls since the last checkpoint, in fold order (module docstring).

    ``mark()`` at a checkpoint's quiet point, then ``saved(mark, position)`` once that
    checkpoint is saved (covering the probe log up to ``position``): the entries up to the
    mark are dropped. :attr:`base` is the log position of the checkpoint the journal starts
    at (``None``: unusable, a restart then restores the whole pipeline). Past ``max_bytes``
    the journal is dropped and stays unusable until a checkpoint taken after that.
    """

    def __init__(self, n_shards: int, *, max_bytes: int) -> None:
        self.n, self.max_bytes = n_shards, max_bytes
        self._lock = threading.Lock()
        self._entries: list[tuple[int, list[Any]]] = []  # (seq, per-shard fold args)
        self._seq = 0
        self.nbytes = 0
        self.base: Any = None
        self._overflowed = False

    def append(self, calls: list[Any]) -> None:
        with self._lock:
            self._seq += 1
            if self._overflowed:
                return
            self._entries.append((self._seq, calls))
            self.nbytes += sum(_nbytes(c[0]) for c in calls) + 64
            if self.nbytes > self.max_bytes:
                logger.warning("the fold journal passed %d bytes; until the next checkpoint a "
                               "shard restart restores the whole pipeline", self.max_bytes)
                self._entries, self.nbytes, self.base = [], 0, None
                self._overflowed = True

    def mark(self) -> int:
        """The journal position of a quiet point (a checkpoint's state is taken there)."""
        with self._lock:
            if self._overflowed:  # record again from here; usable once this checkpoint is saved
                self._overflowed = False
            return self._seq

    def saved(self, mark: int, position: Any) -> None:
        """The checkpoint taken at ``mark`` was saved at log ``position``."""
        with self._lock:
            self._entries = [(q, c) for q, c in self._entries if q > mark]
            self.nbytes = sum(sum(_nbytes(x[0]) for x in c) + 64 for _, c in self._entries)
            self.base = None if self._overflowed else position

    def reset(self, base: Any) -> None:
        """Start afresh at a checkpoint loaded at log position ``base`` (a whole recovery)."""
        with self._lock:
            self._entries, self.nbytes, self.base, self._overflowed = [], 0, base, False

    def calls_of(self, shard: int) -> list[Any]:
        """Shard ``shard``'s fold calls since the last checkpoint, oldest first."""
        with self._lock:
            return [c[shard] for _, c in self._entries]


def _nbytes(batch: Any) -> int:
    if batch is None:
        return 0
    return int(sum(np.asarray(getattr(batch, k)).nbytes
                   for k in ("edge", "t_enter_s", "t_exit_s", "pace_s_per_m", "weight")))
