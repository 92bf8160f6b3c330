"""``GET /v1/status``: the service's accounting merged from its stages' counters."""

from __future__ import annotations

from typing import Any


def merge_status(parts: list[dict[str, Any]], est: dict[str, Any], router: dict[str, Any], *,
                 clock: str, network_version: str, mode: str, ingest_inflight: int,
                 router_replicas: int, estimator_on_gpu: bool,
                 sources: dict[str, Any] | None = None) -> dict[str, Any]:
    """One status document from every ingest partition's, the estimator's and a router's
    ``stats()``.

    Every probe received is in exactly one of ``rejected``, ``pending``, ``unmatched`` and
    ``applied``, or in flight between a matcher and the estimator (``fold_inflight``: decided
    as matched, not yet folded).

    ``sources`` lists what feeds the live travel times: ``probes`` (folded by the estimator,
    weight per traversal) and any other source the facade blends in (``speed_feed``:
    its weight, age limit and live lines).
    """
    rejected: dict[str, int] = {}
    unmatched: dict[str, int] = {}
    for p in parts:
        for k, v in p["rejected_by_reason"].items():
            rejected[k] = rejected.get(k, 0) + int(v)
        for k, v in p["unmatched_by_reason"].items():
            unmatched[k] = unmatched.get(k, 0) + int(v)
    matched = sum(p["matched"] for p in parts)
    probes = {
        "received": sum(p["received"] for p in parts),
        "accepted": sum(p["accepted"] for p in parts),
        "rejected": sum(rejected.values()),
        "rejected_by_reason": rejected,
        "applied": int(est["applied"]),
        "pending": sum(p["pending"] for p in parts),
        "unmatched": sum(unmatched.values()),
        "unmatched_by_reason": unmatched,
    }
    marks = [p["watermark_t"] for p in parts if p["watermark_t"] is not None]
    return {
        "clock": clock,
        "watermark_t": max(marks) if marks else None,
        "weights_version": str(router["weights_version"]),
        "weights_t": router["weights_t"],
        "network_version": network_version,
        "probes": probes,
        "queues": {"ingest_inflight": int(ingest_inflight),
                   "fold_inflight": int(matched - int(est["applied"]))},
        "coverage": {"edges_observed": est["coverage_edges"]},
        "sources": {"probes": {"applied": int(est["applied"]),
                               "edges_observed": est["coverage_edges"]},
                    **(sources or {})},
        "workers": {"mode": mode, "ingest": parts, "estimator": est, "router": router,
                    "router_replicas": int(router_replicas),
                    "estimator_on_gpu": bool(estimator_on_gpu)},
    }
