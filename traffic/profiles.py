"""Historical time-of-week pace profiles: learned from published estimates, used as priors.

A :class:`TimeOfWeekProfile` keeps, per segment and per time-of-week bin (default 15 min x 7
days = 672 bins, Monday 00:00 first, in a configured time zone), a running weighted mean of
the published pace, weighted by the estimator's confidence. It is stored keyed by stable edge
keys, so it survives a network re-import. Memory: 8 bytes x bins x segments (float32 mean and
weight), e.g. 270 MB for 50,000 segments at 672 bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from graph.network import RoadNetwork
from traffic.errors import EstimatorConfigError, EstimatorStateError

_WEEK_S = 7 * 86_400
# 1970-01-01 was a Thursday, 3 days after a Monday: shift so bin 0 starts Monday 00:00.
_EPOCH_TO_MONDAY_S = 3 * 86_400


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Binning and learning parameters of a time-of-week profile.

    Attributes
    ----------
    bin_s
        Bin width in seconds; must divide a week.
    timezone
        IANA zone name for local time of week (``"UTC"``; ``"Europe/Copenhagen"`` for the
        SUMO scenario), daylight saving included.
    max_weight
        Cap on a bin's accumulated weight: beyond it the mean keeps adapting as an
        exponential moving average with rate ``w / max_weight``.
    min_confidence
        Observations with a lower confidence are ignored.
    """

    bin_s: int = 900
    timezone: str = "UTC"
    max_weight: float = 50.0
    min_confidence: float = 0.05

    def __post_init__(self) -> None:
        if self.bin_s <= 0 or _WEEK_S % self.bin_s:
            raise EstimatorConfigError(
                f"`bin_s` must be a positive divisor of a week ({_WEEK_S} s); got {self.bin_s!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise EstimatorConfigError(
                f"`timezone` must be an IANA zone name; got {self.timezone!r}") from err
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise EstimatorConfigError(f"`max_weight` must be > 0; got {self.max_weight!r}")
        if not 0 <= self.min_confidence <= 1:
            raise EstimatorConfigError(
                f"`min_confidence` must be within [0, 1]; got {self.min_confidence!r}")

    @property
    def n_bins(self) -> int:
        """Number of bins in a week."""
        return _WEEK_S // self.bin_s


class TimeOfWeekProfile:
    """Per-segment, per-time-of-week-bin running mean of published pace (s/m).

    Parameters
    ----------
    edge_key
        Stable keys of the segments (``RoadNetwork.edge_key``), defining the row order.
    config
        Binning and learning parameters.
    """

    def __init__(self, edge_key: np.ndarray, config: ProfileConfig | None = None) -> None:
        self.config = config or ProfileConfig()
        self.edge_key = np.ascontiguousarray(edge_key, dtype=np.int64)
        shape = (self.config.n_bins, self.edge_key.shape[0])
        self.mean_pace = np.zeros(shape, dtype=np.float32)
        self.weight = np.zeros(shape, dtype=np.float32)
        #: Per bin, how many observations changed it (not stored): a cache key for weights.
        self.bin_revision = np.zeros(self.config.n_bins, dtype=np.int64)

    @classmethod
    def for_network(cls, net: RoadNetwork, config: ProfileConfig | None = None) -> TimeOfWeekProfile:
        """An empty profile over ``net``'s edges."""
        return cls(net.edge_key, config)

    @property
    def n_edges(self) -> int:
        """Number of segments."""
        return int(self.edge_key.shape[0])

    def bin_of(self, t_s: float) -> int:
        """Time-of-week bin of unix time ``t_s`` in the configured zone (Monday 00:00 = 0)."""
        if not math.isfinite(t_s):
            raise EstimatorConfigError(f"`t_s` must be a finite unix time; got {t_s!r}")
        when = datetime.fromtimestamp(t_s, tz=timezone.utc).astimezone(ZoneInfo(self.config.timezone))
        offset = when.utcoffset()
        local_s = t_s + (offset.total_seconds() if offset else 0.0)
        return int(((local_s + _EPOCH_TO_MONDAY_S) % _WEEK_S) // self.config.bin_s)

    def observe(self, pace_s_per_m: np.ndarray, confidence: np.ndarray, t_s: float) -> None:
        """Fold one published estimate (pace per segment, its confidence) into ``t_s``'s bin.

        Entries with non-finite or non-positive pace, or confidence below
        ``min_confidence``, are ignored. Cost O(m).
        """
        pace = np.asarray(pace_s_per_m, dtype=np.float32)
        conf = np.asarray(confidence, dtype=np.float32)
        if pace.shape != (self.n_edges,) or conf.shape != (self.n_edges,):
            raise EstimatorStateError(
                f"`pace_s_per_m` and `confidence` must have one entry per segment "
                f"({self.n_edges}); got {pace.shape} and {conf.shape}")
        b = self.bin_of(t_s)
        use = np.isfinite(pace) & (pace > 0) & np.isfinite(conf) & (conf >= self.config.min_confidence)
        idx = np.flatnonzero(use)
        w = conf[idx]
        total = np.minimum(self.weight[b, idx] + w, np.float32(self.config.max_weight))
        mean = self.mean_pace[b, idx]
        self.mean_pace[b, idx] = mean + (w / total) * (pace[idx] - mean)
        self.weight[b, idx] = total
        if idx.size:
            self.bin_revision[b] += 1

    def has_data(self, t_s: float) -> bool:
        """Whether any segment has a learned pace in ``t_s``'s bin."""
        return bool(np.any(self.weight[self.bin_of(t_s)] > 0))

    def revision(self, t_s: float) -> tuple[int, int]:
        """``(bin, revision)`` of ``t_s``'s bin; the revision grows with each observation."""
        b = self.bin_of(t_s)
        return b, int(self.bin_revision[b])

    def prior_pace(self, t_s: float) -> np.ndarray:
        """Learned pace (s/m, float64[m]) for ``t_s``'s bin; NaN where the bin has no data."""
        b = self.bin_of(t_s)
        out = self.mean_pace[b].astype(np.float64)
        out[self.weight[b] <= 0] = np.nan
        return out

    def remap_to(self, edge_key: np.ndarray) -> TimeOfWeekProfile:
        """A profile over ``edge_key`` keeping rows whose key is known; others start empty."""
        other = TimeOfWeekProfile(edge_key, self.config)
        src = index_of_keys(self.edge_key, other.edge_key)
        found = np.flatnonzero(src >= 0)
        other.mean_pace[:, found] = self.mean_pace[:, src[found]]
        other.weight[:, found] = self.weight[:, src[found]]
        return other

    def save(self, path: str | Path | BinaryIO) -> None:
        """Write the profile as a compressed ``.npz`` (keys, arrays and the configuration)."""
        np.savez_compressed(
            path if hasattr(path, "write") else Path(path), edge_key=self.edge_key, mean_pace=self.mean_pace, weight=self.weight,
            bin_s=np.int64(self.config.bin_s), timezone=np.str_(self.config.timezone),
            max_weight=np.float64(self.config.max_weight),
            min_confidence=np.float64(self.config.min_confidence))

    def save_atomic(self, path: str | Path) -> None:
        """:meth:`save` so that readers see the old or the complete new file (fsync, rename)."""
        from storage import write_atomic

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.save)

    @classmethod
    def load(cls, path: str | Path, *, edge_key: np.ndarray | None = None) -> TimeOfWeekProfile:
        """Read a profile written by :meth:`save`; remap to ``edge_key`` when given.

        Raises
        ------
        EstimatorStateError
            When the file is not a profile (missing arrays or inconsistent shapes).
        """
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                data: dict[str, Any] = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise EstimatorStateError(f"{path}: not a readable profile file: {err}") from err
        need = ("edge_key", "mean_pace", "weight", "bin_s", "timezone", "max_weight",
                "min_confidence")
        missing = [k for k in need if k not in data]
        if missing:
            raise EstimatorStateError(f"{path}: profile file lacks {missing}")
        config = ProfileConfig(bin_s=int(data["bin_s"]), timezone=str(data["timezone"]),
                               max_weight=float(data["max_weight"]),
                               min_confidence=float(data["min_confidence"]))
        profile = cls(data["edge_key"], config)
        expected = profile.mean_pace.shape
        if data["mean_pace"].shape != expected or data["weight"].shape != expected:
            raise EstimatorStateError(
                f"{path}: profile arrays have shapes {data['mean_pace'].shape} and "
                f"{data['weight'].shape}; expected {expected}")
        profile.mean_pace[...] = data["mean_pace"]
        profile.weight[...] = data["weight"]
        if edge_key is not None:
            profile = profile.remap_to(edge_key)
        return profile


def index_of_keys(old_keys: np.ndarray, new_keys: np.ndarray) -> np.ndarray:
    """For each new key, its index in ``old_keys`` or -1."""
    if old_keys.size == 0:
        return np.full(new_keys.shape, -1, dtype=np.int64)
    order = np.argsort(old_keys, kind="stable")
    sorted_keys = old_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, new_keys), 0, sorted_keys.size - 1)
    return np.where(sorted_keys[pos] == new_keys, order[pos], -1).astype(np.int64)
