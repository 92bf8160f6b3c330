"""Learning the time-of-week profile inside the estimator stage, and answering from it.

:class:`ProfileLearning` is a part of :class:`workers.estimator.EstimatorCore` (a mixin): on
every ``profile_observe_every_s`` of event time crossed by a fold, the current paces of
confident edges, as of that boundary, are folded into the profile (so what it learns
depends on event time and fold order only); the profile is saved every
``profile_save_every_s``; routers ask it for the weights of a later departure. It reads the
core's ``profile``, ``prior``, ``estimator``, ``net`` and ``config``.
"""

from __future__ import annotations

import numpy as np


class ProfileLearning:
    """Profile methods of :class:`workers.estimator.EstimatorCore`."""

    def _learn_profile(self, t_s: float) -> None:
        """When event time ``t_s`` crosses an observe boundary, fold the current paces of
        confident edges, as of that boundary, into the profile; save it when a save boundary
        is crossed."""
        cfg = self.config
        every = cfg.profile_observe_every_s
        last = self._profile_observed_t
        if last is None or np.floor(t_s / every) > np.floor(last / every):
            # The boundary crossed lies after `last`, since their observe periods differ.
            at = t_s if last is None else float(np.floor(t_s / every) * every)
            # Only edges with evidence can be confident: O(those), not a confidence and an
            # exponential for every edge of the network (9 s a minute at 26M edges).
            edges = self.estimator.evidence_edges()
            pace, conf = self.estimator.pace_and_confidence_of(edges, at)
            conf = conf.astype(np.float32, copy=False)
            conf[conf < cfg.profile_min_confidence] = 0.0
            self.profile.observe_edges(edges, pace, conf, at)
            self._profile_observed_t = at
        save = cfg.profile_save_every_s
        if cfg.profile_path is None or save is None:
            return
        if self._profile_saved_t is None:
            self._profile_saved_t = t_s  # first publication: the boundary count starts here
        elif np.floor(t_s / save) > np.floor(self._profile_saved_t / save):
            self.save_profile()
            self._profile_saved_t = t_s

    def save_profile(self) -> bool:
        """Save the profile to ``profile_path`` atomically now; whether it was written.

        An I/O error is logged and counted, never raised (estimation must go on).
        """
        if self.profile is None or self.config.profile_path is None:
            return False
        try:
            self.profile.save_atomic(self.config.profile_path)
        except OSError:
            import logging

            self.profile_save_errors += 1
            logging.getLogger(__name__).exception("saving the profile failed")
            return False
        self.profile_saves += 1
        return True

    def profile_revision(self, t_s: float) -> tuple[int, int] | None:
        """``(bin, revision)`` of the profile at ``t_s``; ``None`` without one or no data there."""
        if self.profile is None or not self.profile.has_data(t_s):
            return None
        return self.profile.revision(t_s)

    def profile_travel_times(self, t_s: float) -> np.ndarray | None:
        """Travel times (s) for a departure at ``t_s``: learned pace, free-flow where the bin
        has no data for an edge; ``None`` when the profile has no data in that bin at all."""
        if self.profile is None or not self.profile.has_data(t_s):
            return None
        pace = self.profile.prior_pace(t_s)
        length = np.asarray(self.net.edge_length_m, dtype=np.float64)
        freeflow = length / np.asarray(self.net.edge_freeflow_mps, dtype=np.float64)
        return np.where(np.isfinite(pace), length * pace, freeflow)

    def prior_travel_times(self, t_s: float) -> np.ndarray | None:
        """Travel times (s) from the time-of-week profile at ``t_s``; ``None`` without one."""
        if self.prior is None:
            return None
        pace = np.asarray(self.prior.prior_pace(t_s), dtype=np.float64)
        return np.asarray(self.net.edge_length_m) * pace
