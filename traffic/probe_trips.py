"""Completed probe trips from the matcher's pieces: the driven route and its real duration.

The online bias corrections (:mod:`traffic.route_bias`) and the junction-delay measurement
learn from the probe vehicles' own trips, never from a scenario's truth: a *trip* here is
one matched trace, from its first to its last matched position, closed when the matcher
ends the trace (a gap, a reset, an idle flush).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
