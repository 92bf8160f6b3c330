"""The estimator stage's durable state: what a checkpoint saves and a restore loads.

:class:`EstimatorState` is a part of :class:`workers.estimator.EstimatorCore` (a mixin):
the versioned ``state_dict``/``load_state_dict`` (contents documented on them), the
by-edge-key load a shard uses, and the boot token by which the service tells a restarted
estimator (whose state is short of folds) from a live one.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class EstimatorState:
    """State methods of :class:`workers.estimator.EstimatorCore`."""

    # -- state (checkpoints: workers/state.py) ------------------------------------------
    #: Version of :meth:`state_dict`'s contents.
    STATE_VERSION = 2

    def state_dict(self) -> dict[str, Any]:
        """The durable state: speed state, counters, coverage and the learned profile.

        Version 2: ``version``; ``speed.*`` (``SpeedEstimator.state_dict``); ``covered``
        (bool per edge); ``counters`` (``applied``, ``folds``, ``traversals``);
        ``watermark_t`` (s); ``trend.*`` (``traffic.forecast.PaceTrend.state_dict``, its
        own version; a state without it loads with an empty trend); with a profile,
        ``profile.*``
        (``TimeOfWeekProfile.state_dict``) and ``profile_observed_t`` (s). The profile is the
        estimator's prior, so it is part of what a replay must restore. Version 1 (the first
        release) stored the profile as dense rows ``profile.bins``/``mean_pace``/``weight``
        and ``profile.observed_t``; :meth:`load_state_dict` reads both.
        """
        from workers.state import prefixed

        out: dict[str, Any] = {"version": self.STATE_VERSION}
        out.update(prefixed("speed", self.estimator.state_dict()))
        out["covered"] = np.asarray(self._covered).copy()
        out["counters"] = {"applied": int(self.applied), "folds": int(self.folds),
                           "traversals": int(self.traversals)}
        out["watermark_t"] = self.watermark_t
        trend = getattr(self, "trend", None)
        if trend is not None:
            out.update(prefixed("trend", trend.state_dict()))
        if self.profile is not None:
            out.update(prefixed("profile", self.profile.state_dict()))
            out["profile_observed_t"] = self._profile_observed_t
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (same network: strict edge keys).

        Raises ``ValueError`` naming both versions for a version this code does not read.
        """
        from workers.state import unprefixed

        version = self._state_version(state)
        profile = unprefixed("profile", state)
        if self.profile is not None and profile:
            observed_t = _profile_observed_t(state, profile, version)
            # In place: the speed estimator holds this same object as its prior.
            self.profile.load_state_dict(profile)
            self._profile_observed_t = observed_t
        self.estimator.load_state_dict(unprefixed("speed", state))
        self._covered = np.asarray(state["covered"], dtype=bool).copy()
        counters = state["counters"]
        self.applied = int(counters["applied"])
        self.folds = int(counters["folds"])
        self.traversals = int(counters["traversals"])
        self.watermark_t = state["watermark_t"]
        trend = unprefixed("trend", state)
        if trend and getattr(self, "trend", None) is not None:
            self.trend.load_state_dict(trend)  # by edge key; absent in older states
        self._dirty = True

    def load_state_by_key(self, state: dict[str, Any], *, keep_applied: bool = True) -> None:
        """Restore this estimator's segments from a state saved over a superset of them,
        matching by edge key (an estimator shard starting from an unsharded checkpoint).

        Every key of this estimator must be in the saved state (same network). The counters
        ``applied`` and ``traversals`` are kept only with ``keep_applied`` (one shard counts
        them, :mod:`workers.shards`); the others start at 0.

        Raises ``ValueError`` when the saved state lacks some of this estimator's keys.
        """
        from traffic.profiles import TimeOfWeekProfile, index_of_keys
        from workers.state import unprefixed

        version = self._state_version(state)
        speed = unprefixed("speed", state)
        if bool(speed.get("sparse", False)):
            # A sparse state lists only its touched edges; the coordinator that splits it
            # adds the whole network's keys (``network_keys``), which ``covered`` and the
            # profile's edge ids follow.
            if "network_keys" not in state:
                raise ValueError("a sparse estimator state needs `network_keys` (the saved "
                                 "network's edge keys, in order) to be split by key")
            saved_keys = np.asarray(state["network_keys"], dtype=np.int64)
        else:
            saved_keys = np.asarray(speed["edge_key"], dtype=np.int64)
        src = index_of_keys(saved_keys, np.asarray(self.net.edge_key, dtype=np.int64))
        if np.any(src < 0):
            raise ValueError(f"the saved estimator state lacks {int(np.sum(src < 0))} of this "
                             f"shard's {src.size} edge keys (a checkpoint of another network)")
        profile = unprefixed("profile", state)
        if self.profile is not None and profile:
            observed_t = _profile_observed_t(state, profile, version)
            whole = TimeOfWeekProfile(saved_keys, self.profile.config)
            whole.load_state_dict(profile)
            self.profile = self.prior = whole.remap_to(self.net.edge_key)
            self.estimator._profile = self.profile  # the estimator's prior is this profile
            self._profile_observed_t = observed_t
        self.estimator.load_state_dict(speed, strict=False)
        self._covered = np.asarray(state["covered"], dtype=bool)[src].copy()
        counters = state["counters"]
        self.applied = int(counters["applied"]) if keep_applied else 0
        self.traversals = int(counters["traversals"]) if keep_applied else 0
        self.folds = int(counters["folds"])
        self.watermark_t = state["watermark_t"]
        self._dirty = True

    def _state_version(self, state: dict[str, Any]) -> int:
        """The state's version (1 when it has none); ``ValueError`` naming both versions for
        one this code does not read."""
        version = state.get("version", 1)
        if version not in (1, self.STATE_VERSION):
            raise ValueError(f"estimator state version {version!r}; this code reads 1 and "
                             f"{self.STATE_VERSION}")
        return int(version)

    def mark_boot(self, token: str) -> None:
        """Tag this live estimator; a restarted actor comes back without the tag (its state
        is then short of folds, and the pipeline restores it)."""
        self._boot = token

    def boot_token(self) -> str | None:
        """The tag :meth:`mark_boot` set (``None`` on a fresh or restarted estimator)."""
        return self._boot

    def state_dict_if_booted(self, token: str | None) -> dict[str, Any] | None:
        """:meth:`state_dict` if this estimator still carries ``token``, else ``None``: a
        restarted estimator lost folds, and its state must not go into a checkpoint."""
        return self.state_dict() if self._boot == token else None


def _profile_observed_t(state: dict[str, Any], profile: dict[str, Any],
                        version: int) -> float | None:
    """When the profile last learned: ``profile.observed_t`` in version 1 (taken out of the
    profile's part), ``profile_observed_t`` since."""
    if version == 1:
        return profile.pop("observed_t", None)
    return state.get("profile_observed_t")
