"""What the routers apply on top of the published travel times: operators' closures and
slowdowns (:mod:`traffic.closures`) and speed feeds (:mod:`traffic.speed_feeds`).

:class:`RouterOverrides` is a part of :class:`workers.router.RouterCore` (a mixin). It keeps
the travel times as published (8 B per edge), so an override's end restores them, and
applies the overrides in force to every full vector and delta the router takes; a change
of overrides is a partial update of the edges it touches. It reads the core's ``router``,
``net``, ``weights_version`` and ``_lock``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RouterOverrides:
    """Override methods of :class:`workers.router.RouterCore`."""

    def set_overrides(self, edges: Any, factors: Any, revision: int) -> bool:
        """Multiply the travel times of ``edges`` by ``factors`` (``inf`` closes) on top of
        every publication, from now on; the edges of the previous overrides go back to their
        published times. Costs a partial update of the edges that changed. Returns whether
        anything changed (an older ``revision`` than the one held is ignored)."""
        edges = np.asarray(edges, dtype=np.int64)
        factors = np.asarray(factors, dtype=np.float64)
        with self._lock:
            if revision <= self._ov_revision:
                return False
            old = self._ov_edges
            self._ov_edges, self._ov_factor, self._ov_revision = edges, factors, int(revision)
            self._reapply(np.union1d(old, edges), f"closures{revision}")
        return True

    def set_feed(self, edges: Any, keep: Any, add: Any, revision: int) -> bool:
        """Blend a speed feed into every publication from now on: the travel time of
        ``edges`` (sorted ids) becomes ``published * keep + add`` (``traffic.speed_feeds``),
        under the closure multipliers; edges of the previous blend go back to their published
        times. A partial update of the edges that changed; an older ``revision`` is ignored."""
        edges = np.asarray(edges, dtype=np.int64)
        with self._lock:
            if revision <= self._fb_revision:
                return False
            old = self._fb_edges
            self._fb_edges, self._fb_revision = edges, int(revision)
            self._fb_keep = np.asarray(keep, dtype=np.float64)
            self._fb_add = np.asarray(add, dtype=np.float64)
            self._reapply(np.union1d(old, edges), f"feed{revision}")
        return True

    def _reapply(self, changed: np.ndarray, tag: str) -> None:
        """Bring ``changed`` (sorted ids) to their published times with what is in force now
        (a partial update; caller holds the lock)."""
        if changed.size:
            base = self._published()
            self.router.update_edges(changed, self._overridden(changed, base[changed]),
                                     f"{self.weights_version}+{tag}")

    def live_travel_times(self) -> np.ndarray:
        """The travel times routed on now: published, feed blend and overrides applied."""
        with self._lock:
            tt = self._published().copy()
            touched = np.union1d(self._ov_edges, self._fb_edges)
            if touched.size:
                tt[touched] = self._overridden(touched, tt[touched])
        return tt

    def _published(self) -> np.ndarray:
        """The travel times as published (before overrides): free flow before any."""
        if self._base is None:
            self._base = (np.asarray(self.net.edge_length_m, dtype=np.float64)
                          / np.asarray(self.net.edge_freeflow_mps, dtype=np.float64))
        return self._base

    def _overridden(self, edges: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``values`` of ``edges`` (sorted ids) with the feed blend, then the overrides in
        force, applied."""
        out = np.array(values, dtype=np.float64)
        if self._fb_edges.size:
            pos = np.minimum(np.searchsorted(self._fb_edges, edges), self._fb_edges.size - 1)
            hit = self._fb_edges[pos] == edges
            out[hit] = out[hit] * self._fb_keep[pos[hit]] + self._fb_add[pos[hit]]
        if self._ov_edges.size:
            pos = np.minimum(np.searchsorted(self._ov_edges, edges), self._ov_edges.size - 1)
            hit = self._ov_edges[pos] == edges
            out[hit] = out[hit] * self._ov_factor[pos[hit]]
        return out

    def _customize(self, travel_time_s: np.ndarray, version: str) -> None:
        """A whole published vector, overrides applied on top (caller holds the lock)."""
        self._base = np.array(travel_time_s, dtype=np.float64)
        tt = self._base
        touched = np.union1d(self._ov_edges, self._fb_edges)
        if touched.size:
            tt = tt.copy()
            tt[touched] = self._overridden(touched, tt[touched])
        self.router.customize(tt, version)

    def _update_edges(self, edges: np.ndarray, values: np.ndarray, version: str) -> None:
        """A published delta, overrides applied on top (caller holds the lock)."""
        edges = np.asarray(edges, dtype=np.int64)
        base = self._published()
        base[edges] = values
        order = np.argsort(edges)
        e = edges[order]
        self.router.update_edges(e, self._overridden(e, base[e]), version)
