"""Published travel times: :class:`Publication`, a full vector or a delta on an earlier one.

Publications are deltas with a full vector at a bounded cadence. A full
:class:`Publication` carries one travel time per edge. A delta carries only the edges whose
state a fold changed since the previous publication (``edges``, their ``travel_time_s`` at the
new watermark) and names the publication it applies on (``base_version``,
``base_weights_t``); it costs O(edges touched), not O(edges). :meth:`EstimatorCore.maybe_publish`
publishes a full vector when ``full_every_s`` of the clock has passed since the last full
one, when the prior changed under every edge (a new time-of-week bin), after the state was
replaced (restore, network swap) and on the first publication; :meth:`EstimatorCore.publish`
is full unless asked otherwise.

What a delta leaves out, on purpose: the decay of edges it does not list. An edge's
published time blends its evidence with the prior, and the evidence weight decays with time
``T = decay_tau_s``, so an edge not folded since it was last published at ``t_e`` keeps the
time it had then, while a full vector at ``t`` would give it the time at ``t``. So after a full
publication and any deltas, every edge holds exactly the time a full publication would give
it at ``t_e`` (the last publication that listed it, or the full one), with ``t - t_e <
full_every_s`` (plus one refresh), and (without min/max pace clipping, which only narrows it)

    |held - exact(t)| <= (1 - exp(-(t - t_e) / T)) * |held - prior_time|,

the exact time lying between the held one and the prior's. Edges never observed (no evidence)
and edges folded since the last publication are exact. With the defaults (``T`` = 600 s, a
full vector every 60 s) the deferred drift is at most 9.5 % of an edge's distance from its
prior.

A publication, full or delta, may also carry the probe trips completed since the previous
one (``trips``, :class:`traffic.probe_trips.RouteTrips`): the ingest stages hand them on with
their traversal batches, the facade keeps the newest in a :class:`TripBuffer` and attaches
them to the next publication it sends, and each router learns its optimism from them
(:mod:`traffic.route_bias`, ``workers.router.RouterCore``). They are not probes: no probe
count depends on them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Publication:
    """Published travel times: ``version`` (the estimator's state version), the event time
    ``weights_t`` they stand at, and values.

    Full (``edges is None``): ``travel_time_s`` holds one time (s, float64) per edge. Delta:
    ``edges`` (int32, sorted, distinct) and their ``travel_time_s``; it applies only on the
    publication ``(base_version, base_weights_t)`` (:attr:`base_key`), see
    :meth:`apply_to`. The other edges keep the times they had there.
    """

    version: int
    weights_t: float | None
    travel_time_s: np.ndarray
    network_version: str
    published_wall_s: float = field(default=0.0)
    edges: np.ndarray | None = None
    base_version: int | None = None
    base_weights_t: float | None = None
    #: With a full publication: the forecast and range model (``traffic.eta_model.EtaModel``)
    #: at ``weights_t``, or ``None``; routers keep the newest one they took.
    eta: Any = None
    #: Probe trips completed since the previous publication (``traffic.probe_trips.RouteTrips``
    #: of this network, newest last), or ``None``: each router learns its bias from them once.
    trips: Any = None

    @property
    def full(self) -> bool:
        """Whether this is a whole vector (else a delta on :attr:`base_key`)."""
        return self.edges is None

    @property
    def key(self) -> tuple[int, float]:
        """``(version, weights_t)``: publications are ordered by it (``None`` time first)."""
        return _pub_key(self.version, self.weights_t)

    @property
    def base_key(self) -> tuple[int, float] | None:
        """The :attr:`key` of the publication a delta applies on (``None`` when full)."""
        return None if self.full else _pub_key(self.base_version, self.base_weights_t)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays it carries (the ETA model aside)."""
        return int(self.travel_time_s.nbytes + (0 if self.edges is None else self.edges.nbytes)
                   + (0 if self.trips is None else self.trips.nbytes))

    def apply_to(self, base: np.ndarray | None) -> np.ndarray:
        """The whole vector after this publication, given the whole vector of its base.

        A full publication returns (a copy of) its own vector and ignores ``base``; a delta
        returns a copy of ``base`` with its edges replaced.
        """
        if self.full:
            return np.array(self.travel_time_s, dtype=np.float64)
        if base is None:
            raise ValueError("a delta publication needs the vector of its base publication")
        out = np.array(base, dtype=np.float64)
        out[self.edges] = self.travel_time_s
        return out


def _pub_key(version: int | None, weights_t: float | None) -> tuple[int, float]:
    return (-1 if version is None else int(version),
            -np.inf if weights_t is None else float(weights_t))


class PublicationChain:
    """What the facade hands the routers: the last full publication and the deltas since.

    :meth:`add` takes each publication with its shared form (itself in process, a Ray object
    ref on Ray) and returns the chain to send, newest last; ``None`` for a publication older
    than the chain's newest (a late one: drop it); :data:`BROKEN` for a delta that does not
    follow the newest (one was missed: publish a full vector). Thread-safe. Holds at most one
    full vector and the deltas of one ``full_every_s``.
    """

    BROKEN = "broken"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[tuple[int, float], Any]] = []

    def add(self, pub: Any, shared: Any) -> list[Any] | str | None:
        with self._lock:
            newest = self._items[-1][0] if self._items else None
            if pub.full:
                if newest is not None and pub.key < newest:
                    return None
                self._items = [(pub.key, shared)]
            else:
                if newest is not None and pub.key <= newest:
                    return None
                if newest is None or pub.base_key != newest:
                    return self.BROKEN
                self._items.append((pub.key, shared))
            return [x for _, x in self._items]


class TripBuffer:
    """The probe trips the facade received since its last publication, the newest
    ``max_trips`` (older ones are dropped: memory and each router's learning cost per
    publication stay bounded). Thread-safe.

    :meth:`add` takes an ingest reply's trips (``traffic.probe_trips.RouteTrips`` or
    ``None``); :meth:`take` returns those of one network and empties the buffer.
    """

    def __init__(self, max_trips: int = 64) -> None:
        if max_trips < 0:
            raise ValueError(f"`max_trips` must be >= 0; got {max_trips!r}")
        self.max_trips = int(max_trips)
        self._lock = threading.Lock()
        self._held: Any = None
        self.received = 0
        self.dropped = 0

    def add(self, trips: Any) -> None:
        """Keep ``trips`` (trips of another network than those held replace them)."""
        from traffic.probe_trips import concat_route_trips

        if trips is None or not len(trips) or self.max_trips == 0:
            return
        with self._lock:
            self.received += len(trips)
            held = self._held
            if held is not None and held.network_version != trips.network_version:
                self.dropped += len(held)
                held = None
            parts = [trips] if held is None else [held, trips]
            n = sum(len(p) for p in parts)
            self._held = concat_route_trips(parts, max_trips=self.max_trips)
            self.dropped += n - len(self._held)

    def take(self, network_version: str) -> Any:
        """The trips held if they are of ``network_version`` (else ``None``); empties."""
        with self._lock:
            held, self._held = self._held, None
            if held is not None and held.network_version != network_version:
                self.dropped += len(held)
                held = None
        return held

    def clear(self) -> None:
        """Drop what is held."""
        with self._lock:
            self._held = None
