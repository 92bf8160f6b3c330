"""Probe vehicles on the road, and how far a congestion trend persists.

A network's travel times follow how many vehicles are on it, its *accumulation* (the
macroscopic fundamental diagram; Geroliminis and Daganzo, 2008): queues grow while more
vehicles enter than leave, and shrink once fewer do. The probe vehicles the matchers follow
(those that reported within the idle window) are a sample of that accumulation, seen as they
report. Completed traversals show a queue only once vehicles have left it, minutes later: at
a rush hour's turn the pace trend (:class:`traffic.forecast.PaceTrend`, 900 s of memory)
still points up for a quarter of an hour after the accumulation has stopped growing
(scenario_kbh: the pooled slope peaks at 2370 s and stays positive until 3700 s; the count of
probe vehicles peaks around 2400-2500 s).

:class:`VehicleAccumulation` keeps two exponentially weighted least-squares lines of the
count ``N`` against event time, a short one (``short_tau_s``) and a long one
(``long_tau_s``, the pace trend's memory), and gives the trend's *persistence*::

    m = clip((g_s * g_l + eps^2) / (g_l^2 + eps^2), m_min, m_max),   eps = rel_eps * N

the growth now (``g_s``, vehicles/s) regressed on the growth the pace trend was learned over
(``g_l``), shrunk towards 1: about 1 while the count grows as it did, or when it is steady
(then a local queue's own trend stands), towards 0 when the growth stops, negative when the
count falls (queues drain: the trend reverses). Forecast slopes are the measured slopes times
``m``; with no counts ``m`` is 1.

Counts arrive per source (an ingest partition) with their event time; the total is the sum of
every source's newest count (sources silent for ``stale_s`` drop out), sampled once per
``sample_s`` of event time, so the lines do not depend on how often batches arrive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from traffic.errors import EstimatorConfigError, EstimatorStateError


@dataclass(frozen=True, slots=True)
class AccumulationConfig:
    """Parameters of :class:`VehicleAccumulation` (module docstring). Chosen on scenario_kbh
    and checked on scenario_li (BENCHMARKS.md, "ETAs users can trust (issue 14)").

    Attributes
    ----------
    short_tau_s
        Memory (s) of the recent growth ``g_s``.
    long_tau_s
        Memory (s) of the growth ``g_l`` the pace trend was learned over (the trend's
        ``edge_tau_s``).
    rel_eps_per_s
        Relative growth rate (1/s) below which ``g_l`` counts as steady (``eps / N``).
    min_persistence, max_persistence
        Bounds of ``m``.
    sample_s
        One sample of the total count per this many seconds of event time.
    stale_s
        A source whose newest count is this much older than the newest of all drops out.
    """

    short_tau_s: float = 120.0
    long_tau_s: float = 900.0
    rel_eps_per_s: float = 1e-4
    min_persistence: float = -1.0
    max_persistence: float = 1.0
    sample_s: float = 10.0
    stale_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("short_tau_s", "long_tau_s", "rel_eps_per_s", "sample_s", "stale_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise EstimatorConfigError(f"`{name}` must be finite and > 0; got {v!r}")
        lo, hi = self.min_persistence, self.max_persistence
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= 1.0 <= hi):
            raise EstimatorConfigError("`min_persistence` <= 1 <= `max_persistence` must hold "
                                       f"(finite); got {lo!r}, {hi!r}")


class _DecayedLine:
    """Exponentially weighted least-squares line of ``y`` on ``t`` (time constant ``tau_s``),
    in the centred form (weight, mean time, mean value, ``Ctt``, ``Cty``): one sample at a
    time, stable at any clock value."""

    FIELDS = ("w", "t_mean", "y_mean", "ctt", "cty", "t_last")

    def __init__(self, tau_s: float) -> None:
        self.tau_s = tau_s
        self.w = self.t_mean = self.y_mean = self.ctt = self.cty = 0.0
        self.t_last = -math.inf

    def add(self, t_s: float, y: float) -> None:
        d = math.exp(-(t_s - self.t_last) / self.tau_s) if self.w > 0 else 0.0
        w0 = self.w * d
        w1 = w0 + 1.0
        dt, dy = t_s - self.t_mean, y - self.y_mean
        f = w0 / w1
        self.ctt = self.ctt * d + f * dt * dt
        self.cty = self.cty * d + f * dt * dy
        self.t_mean += dt / w1
        self.y_mean += dy / w1
        self.w, self.t_last = w1, t_s

    def slope(self) -> float | None:
        """Slope (y per s), ``None`` before two samples at different times."""
        return self.cty / self.ctt if self.ctt > 0 else None

    def state(self) -> list[float]:
        return [float(getattr(self, k)) for k in self.FIELDS]

    def load(self, values: Any) -> None:
        for k, v in zip(self.FIELDS, np.asarray(values, dtype=np.float64).tolist(), strict=True):
            setattr(self, k, float(v))


class VehicleAccumulation:
    """The probe vehicles on the road over event time and the trend's persistence
    (module docstring).

    Parameters
    ----------
    config
        Parameters; defaults when ``None``.
    """

    STATE_VERSION = 1

    def __init__(self, config: AccumulationConfig | None = None) -> None:
        self.config = config or AccumulationConfig()
        self._short = _DecayedLine(self.config.short_tau_s)
        self._long = _DecayedLine(self.config.long_tau_s)
        self._counts: dict[int, tuple[float, int]] = {}  # source -> (t, vehicles)
        self._sample_k: float = -math.inf
        self.total = 0

    def observe(self, source: int, t_s: float, vehicles: int) -> None:
        """Source ``source`` (an ingest partition) follows ``vehicles`` probe vehicles at
        event time ``t_s`` (s). Raises ``ValueError`` on a negative count or a time that is
        not finite."""
        n, t = int(vehicles), float(t_s)
        if n < 0 or not math.isfinite(t):
            raise ValueError(f"vehicle count must be >= 0 at a finite time; got {vehicles!r} "
                             f"at {t_s!r}")
        old = self._counts.get(int(source))
        if old is not None and t < old[0]:
            return  # an older count than the one held (a replayed or reordered reply)
        self._counts[int(source)] = (t, n)
        newest = max(c[0] for c in self._counts.values())
        self.total = sum(c[1] for c in self._counts.values()
                         if c[0] >= newest - self.config.stale_s)
        k = math.floor(t / self.config.sample_s)
        if k > self._sample_k:
            self._sample_k = k
            self._short.add(t, float(self.total))
            self._long.add(t, float(self.total))

    def growth(self) -> tuple[float | None, float | None]:
        """``(g_s, g_l)``: the short and long lines' slopes (vehicles/s; ``None`` before two
        samples)."""
        return self._short.slope(), self._long.slope()

    def persistence(self) -> float:
        """The factor ``m`` forecast slopes are multiplied by (module docstring); 1 without
        two samples."""
        gs, gl = self.growth()
        if gs is None or gl is None:
            return 1.0
        c = self.config
        eps = c.rel_eps_per_s * max(self.total, 1)
        m = (gs * gl + eps * eps) / (gl * gl + eps * eps)
        return float(min(max(m, c.min_persistence), c.max_persistence))

    def stats(self) -> dict[str, Any]:
        """The count, the growths and the persistence, for status pages."""
        gs, gl = self.growth()
        return {"vehicles": self.total, "growth_short_per_s": gs, "growth_long_per_s": gl,
                "persistence": self.persistence()}

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint: ``version``, ``sources``, ``source_t``, ``source_vehicles``,
        ``short``, ``long`` (each line's weight, mean time, mean count, ``Ctt``, ``Cty``, last
        time), ``sample_k``, ``total``."""
        src = sorted(self._counts)
        return {"version": self.STATE_VERSION,
                "sources": np.array(src, dtype=np.int64),
                "source_t": np.array([self._counts[s][0] for s in src], dtype=np.float64),
                "source_vehicles": np.array([self._counts[s][1] for s in src], dtype=np.int64),
                "short": np.array(self._short.state()), "long": np.array(self._long.state()),
                "sample_k": float(self._sample_k), "total": int(self.total)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. Raises :class:`EstimatorStateError` on another
        version or malformed arrays."""
        if state.get("version") != self.STATE_VERSION:
            raise EstimatorStateError(f"vehicle accumulation state has version "
                                      f"{state.get('version')!r}; this code reads "
                                      f"{self.STATE_VERSION}")
        src = np.asarray(state["sources"], dtype=np.int64)
        ts = np.asarray(state["source_t"], dtype=np.float64)
        ns = np.asarray(state["source_vehicles"], dtype=np.int64)
        lines = [np.asarray(state[k], dtype=np.float64) for k in ("short", "long")]
        if ts.shape != src.shape or ns.shape != src.shape or any(
                a.shape != (len(_DecayedLine.FIELDS),) for a in lines):
            raise EstimatorStateError("vehicle accumulation state has arrays of the wrong "
                                      "shapes")
        self._counts = {int(s): (float(t), int(n)) for s, t, n in zip(src, ts, ns, strict=True)}
        self._short.load(lines[0])
        self._long.load(lines[1])
        self._sample_k = float(state["sample_k"])
        self.total = int(state["total"])
