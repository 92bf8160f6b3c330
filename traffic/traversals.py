"""Segment traversals from matched paths: which edge, entered and left when, at what pace.

The matcher (:mod:`traffic.matching`) emits *pieces*: the stretch of one edge driven between
two consecutive matched points, with times interpolated by distance along the matched route.
Consecutive pieces of one trace on the same edge are one traversal; it is complete when the
car moved on to another edge (or its trace ended). The last piece of every live trace stays
open here until then, so a traversal is reported once, whole, however many probes it spans.

A traversal's pace is ``(t_exit - t_enter) / covered_m`` (s/m) and its weight the covered
fraction of the edge, ``covered_m / length_m`` (1 for a full traversal). Partial traversals
(the first and last edge of a trace) are kept with their fraction as weight when it is at
least ``min_fraction`` and the covered stretch at least ``min_covered_m``; shorter ones are
dropped and counted, because the pace of a few metres is dominated by GPS jitter and by the
time a car stands at the point where its trace starts or ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graph.network import RoadNetwork
from traffic.matching import MatchOutput


@dataclass(frozen=True, slots=True)
class TraversalConfig:
    """Which traversals to keep (fractions of edge length, metres)."""

    min_fraction: float = 0.1
    min_covered_m: float = 5.0
    full_fraction: float = 0.95


@dataclass(frozen=True, slots=True, eq=False)
class Traversals:
    """Edge traversals as parallel 1-D arrays of equal length (NumPy, or CuPy on a GPU);
    the batch :meth:`traffic.estimator.SpeedEstimator.apply` folds.

    Attributes
    ----------
    edge
        ``int32`` dense edge ids.
    t_enter_s, t_exit_s
        ``float64`` unix seconds when the vehicle entered / left the segment (interpolated).
    pace_s_per_m
        Observed pace (s/m), ``float64`` (``float32`` accepted).
    weight
        ``float64`` in ``(0, 1]``: 1 for a full traversal, the covered fraction for a partial
        one.
    """

    edge: np.ndarray
    t_enter_s: np.ndarray
    t_exit_s: np.ndarray
    pace_s_per_m: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return int(self.edge.shape[0])

    @classmethod
    def empty(cls, xp=np) -> Traversals:
        """Traversals with no rows (``xp``: ``numpy`` or ``cupy``)."""
        f64 = xp.zeros(0, dtype=xp.float64)
        return cls(xp.zeros(0, dtype=xp.int32), f64, f64.copy(), f64.copy(), f64.copy())

    def validate(self, n_edges: int | None = None) -> Traversals:
        """Check lengths, dtypes and ranges; return ``self``.

        Raises
        ------
        traffic.errors.TraversalBatchError
            When arrays are not 1-D of equal length, ``edge`` is not integer or outside
            ``0..n_edges-1``, times are not finite or exit before entry, a pace is not finite
            and > 0, or a weight is outside ``(0, 1]``. The message names the field and the
            first offending index.
        """
        from traffic._xp import array_module
        from traffic.errors import TraversalBatchError

        n = len(self)
        for name in _TRAVERSAL_FIELDS:
            a = getattr(self, name)
            if getattr(a, "ndim", None) != 1 or a.shape[0] != n:
                raise TraversalBatchError(
                    f"`{name}` must be a 1-D array of length {n} (like `edge`); "
                    f"got shape {getattr(a, 'shape', None)}")
        if self.edge.dtype.kind not in "iu":
            raise TraversalBatchError(f"`edge` must be an integer array; got {self.edge.dtype}")
        if n == 0:
            return self
        xp = array_module(self.edge)
        checks = (
            ("edge", (self.edge < 0) | ((self.edge >= n_edges) if n_edges is not None
                                        else xp.zeros(n, dtype=bool)),
             f"within 0..{n_edges - 1 if n_edges is not None else 'm-1'}"),
            ("t_enter_s", ~xp.isfinite(self.t_enter_s), "finite"),
            ("t_exit_s", ~xp.isfinite(self.t_exit_s) | (self.t_exit_s < self.t_enter_s),
             "finite and >= t_enter_s"),
            ("pace_s_per_m", ~(xp.isfinite(self.pace_s_per_m) & (self.pace_s_per_m > 0)),
             "finite and > 0"),
            ("weight", ~((self.weight > 0) & (self.weight <= 1)), "within (0, 1]"),
        )
        for name, bad, what in checks:
            if bool(bad.any()):
                i = int(xp.argmax(bad))
                raise TraversalBatchError(
                    f"`{name}` must be {what}; got {getattr(self, name)[i].item()!r} at index {i}")
        return self


_TRAVERSAL_FIELDS = ("edge", "t_enter_s", "t_exit_s", "pace_s_per_m", "weight")


def merge_pieces(
    trace: np.ndarray, edge: np.ndarray, off0_m: np.ndarray, off1_m: np.ndarray,
    t0_s: np.ndarray, t1_s: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Merge runs of consecutive pieces with the same ``(trace, edge)`` (input in driving
    order within each trace, traces contiguous). Returns the same six arrays, one row per run:
    first ``off0``, largest ``off1``, first ``t0``, last ``t1``."""
    n = trace.shape[0]
    if n == 0:
        return trace, edge, off0_m, off1_m, t0_s, t1_s
    start = np.ones(n, dtype=bool)
    start[1:] = (trace[1:] != trace[:-1]) | (edge[1:] != edge[:-1])
    first = np.flatnonzero(start)
    last = np.r_[first[1:] - 1, n - 1]
    return (trace[first], edge[first], off0_m[first], np.maximum.reduceat(off1_m, first),
            t0_s[first], t1_s[last])


def traversals_from_runs(
    net: RoadNetwork, edge: np.ndarray, off0_m: np.ndarray, off1_m: np.ndarray,
    t0_s: np.ndarray, t1_s: np.ndarray, config: TraversalConfig = TraversalConfig(),
) -> tuple[Traversals, int]:
    """Turn closed runs into traversals; returns them and how many were dropped as too short."""
    length = net.edge_length_m[edge]
    covered = np.maximum(off1_m - off0_m, 0.0)
    frac = np.where(length > 0, covered / np.where(length > 0, length, 1.0), 1.0)
    keep = (frac >= config.min_fraction) & (covered >= np.minimum(config.min_covered_m, 0.999 * length))
    keep &= covered > 0
    weight = np.where(frac >= config.full_fraction, 1.0, np.minimum(frac, 1.0))
    e, a, b, c, w = edge[keep], t0_s[keep], t1_s[keep], covered[keep], weight[keep]
    tr = Traversals(edge=e.astype(np.int32), t_enter_s=a.astype(np.float64),
                    t_exit_s=b.astype(np.float64), pace_s_per_m=(b - a) / c,
                    weight=w.astype(np.float64))
    return tr, int((~keep).sum())


class TraversalExtractor:
    """Keeps the open (last) run of every live trace and emits finished traversals.

    Examples
    --------
    >>> # ex = TraversalExtractor(net)
    >>> # trav = ex.push(matcher.push(...))   # Traversals, possibly empty
    """

    def __init__(self, net: RoadNetwork, config: TraversalConfig = TraversalConfig()) -> None:
        self.net, self.cfg = net, config
        z = np.zeros(0)
        self._open = (np.zeros(0, np.int64), np.zeros(0, np.int32), z, z, z, z)
        self.dropped = 0
        self.emitted = 0

    def open_count(self) -> int:
        """Runs held open (one per live trace that has moved at least once)."""
        return int(self._open[0].shape[0])

    #: Names of the open-run arrays in :meth:`state_dict` (the order of ``_open``).
    _OPEN_FIELDS = ("trace", "edge", "off0_m", "off1_m", "t0_s", "t1_s")
    #: Version of :meth:`state_dict`'s contents.
    STATE_VERSION = 1

    def state_dict(self) -> dict[str, Any]:
        """The open runs (``open_<field>`` arrays) and counters, as a copy.

        Version 1: ``version``, ``open_trace`` int64, ``open_edge`` int32, ``open_off0_m``,
        ``open_off1_m`` (m), ``open_t0_s``, ``open_t1_s`` (s), ``dropped``, ``emitted``.
        """
        out: dict[str, Any] = {f"open_{name}": a.copy()
                               for name, a in zip(self._OPEN_FIELDS, self._open, strict=True)}
        out.update(version=self.STATE_VERSION, dropped=int(self.dropped), emitted=int(self.emitted))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; ``ValueError`` for another version."""
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"traversal extractor state has version {state.get('version')!r}; "
                             f"this code reads {self.STATE_VERSION}")
        dtypes = (np.int64, np.int32, np.float64, np.float64, np.float64, np.float64)
        self._open = tuple(np.array(state[f"open_{name}"], dtype=dt)  # type: ignore[assignment]
                           for name, dt in zip(self._OPEN_FIELDS, dtypes, strict=True))
        self.dropped, self.emitted = int(state["dropped"]), int(state["emitted"])

    def push(self, out: MatchOutput) -> Traversals:
        """Add a matcher output's pieces; return traversals that finished."""
        new = (out.piece_trace, out.piece_edge, out.piece_off0_m, out.piece_off1_m,
               out.piece_t0_s, out.piece_t1_s)
        # Open runs come first: a trace's earlier pieces precede its new ones.
        cat = [np.concatenate([o, x]) for o, x in zip(self._open, new)]
        seq = np.arange(cat[0].shape[0])
        order = np.lexsort((seq, cat[0]))
        runs = merge_pieces(*(c[order] for c in cat))
        trace = runs[0]
        n = trace.shape[0]
        last_of_trace = np.ones(n, dtype=bool)
        last_of_trace[:-1] = trace[1:] != trace[:-1]
        ended = np.isin(trace, out.ended_traces)
        stay = last_of_trace & ~ended
        self._open = tuple(r[stay] for r in runs)  # type: ignore[assignment]
        done = ~stay
        tr, dropped = traversals_from_runs(self.net, *(r[done] for r in runs[1:]), config=self.cfg)
        self.dropped += dropped
        self.emitted += len(tr)
        return tr
