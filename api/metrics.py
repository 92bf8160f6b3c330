"""Prometheus metrics of one app: request latency per route, and pipeline gauges on scrape.

Each app gets its own ``CollectorRegistry`` (no process-global registry), so two apps in
one test process do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _PipelineCollector(Collector):
    """Reads the services' status on each scrape and exposes it as metrics."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        try:
            st = self._status()
        except Exception:  # a scrape during start-up or a swap: expose nothing this time
            return
        probes = st["probes"]
        c = CounterMetricFamily("traffic_probes", "Probes by fate", labels=["fate"])
        for fate in ("received", "accepted", "rejected", "applied", "unmatched"):
            c.add_metric([fate], float(probes[fate]))
        yield c
        r = CounterMetricFamily("traffic_probes_rejected", "Rejected probes by reason",
                                labels=["reason"])
        for reason, n in probes["rejected_by_reason"].items():
            r.add_metric([reason], float(n))
        yield r
        g = GaugeMetricFamily("traffic_probes_pending", "Probes held by matchers")
        g.add_metric([], float(probes["pending"]))
        yield g
        q = GaugeMetricFamily("traffic_queue_depth", "Queued work items", labels=["queue"])
        for name, n in st["queues"].items():
            q.add_metric([name], float(n))
        yield q
        v = GaugeMetricFamily("traffic_weights_version", "Published travel-time version")
        v.add_metric([], float(st["weights_version"]))
        yield v
        if st.get("watermark_t") is not None and st.get("weights_t") is not None:
            lag = GaugeMetricFamily("traffic_weights_lag_s",
                                    "Event time between the newest probe and the published weights")
            lag.add_metric([], float(st["watermark_t"]) - float(st["weights_t"]))
            yield lag
        est = st.get("workers", {}).get("estimator", {})
        if est.get("freshness_p99_s") is not None:
            f = GaugeMetricFamily("traffic_freshness_p99_s",
                                  "p99 of probe accepted -> published (wall s)")
            f.add_metric([], float(est["freshness_p99_s"]))
            yield f


class Metrics:
    """Request counters and latency histograms, plus the pipeline collector."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("traffic_http_requests", "HTTP requests",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("traffic_http_request_seconds", "HTTP request latency",
                                 ["route", "method"], buckets=_LATENCY_BUCKETS_S,
                                 registry=self.registry)
        self.registry.register(_PipelineCollector(status))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and its latency."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
