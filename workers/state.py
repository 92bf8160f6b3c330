"""The pipeline's checkpoint state: every stage's ``state_dict`` under its own prefix.

A checkpoint (:class:`traffic.checkpoints.CheckpointStore`) holds one flat dict of arrays and
plain values. The pipeline composes it from its stages' :meth:`state_dict` results, each
under a prefix (``estimator.``, ``ingest<p>.``, ``facade.``), and hands each stage back its
part on recovery. Nothing here reads a stage's private fields: what a stage saves, and in
which version, is the stage's own business (see ``IngestCore.state_dict`` and
``EstimatorCore.state_dict``).

Versions of the whole pipeline state (the ``version`` entry):

1. Written by the first durable release (no ``version`` entry). Taken at a flushed quiet
   point: the matchers held no points, so the ingest parts carry no matcher state.
2. Ingest parts carry each matcher's pending candidates and open traversal runs, so a
   checkpoint no longer flushes the matchers (it does not cut any vehicle's look-ahead).
3. A sharded estimator (``--estimator-shards N``, :mod:`workers.shards`): ``estimator_shards``
   (N) and each shard's state under ``estimator<s>.`` instead of ``estimator.``. A service
   with one estimator still writes version 2 (unchanged, so a release before shards can
   still read it). Read into N shards, a version 1 or 2 state is split by edge key; a
   version 3 state must have as many shards as the service (the message names both counts).
"""

from __future__ import annotations

from typing import Any

#: Version of the pipeline state this code writes (one estimator: 2, see the docstring).
STATE_VERSION = 3
#: Versions this code reads.
READABLE_VERSIONS = (1, 2, 3)


def prefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every key prefixed ``prefix.`` (one checkpoint holds several stages)."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix.``, prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def compose(estimator: dict[str, Any] | list[dict[str, Any]], ingest: list[dict[str, Any]],
            watermark_t: float | None) -> dict[str, Any]:
    """One checkpoint state from the estimator's (or every estimator shard's, a list) and
    every ingest partition's state."""
    state: dict[str, Any] = {"facade.watermark_t": watermark_t}
    if isinstance(estimator, dict):
        state["version"] = 2
        state.update(prefixed("estimator", estimator))
    else:
        state["version"] = STATE_VERSION
        state["estimator_shards"] = len(estimator)
        for s, part in enumerate(estimator):
            state.update(prefixed(f"estimator{s}", part))
    for p, part in enumerate(ingest):
        state.update(prefixed(f"ingest{p}", part))
    return state


def decompose(state: dict[str, Any], n_ingest: int, n_shards: int = 1
              ) -> tuple[Any, list[dict[str, Any]], float | None]:
    """``(estimator, [ingest part per partition], facade watermark)`` of a checkpoint state.

    ``estimator`` is one state (a dict: versions 1 and 2, which N shards split by key) or,
    for a version 3 state, a list of the ``n_shards`` shards' states.

    Raises
    ------
    ValueError
        When the state is of a version this code does not read (the message names both),
        lacks a partition (the service was restarted with another ``--ingest`` count), or
        holds another number of estimator shards than ``n_shards`` (both counts named).
    """
    version = state.get("version", 1)
    if version not in READABLE_VERSIONS:
        raise ValueError(f"the checkpoint holds pipeline state version {version!r}; this code "
                         f"reads versions {', '.join(map(str, READABLE_VERSIONS))} (written "
                         f"{STATE_VERSION}): run the release that wrote it, or start on a new "
                         f"--data-dir")
    parts = [unprefixed(f"ingest{p}", state) for p in range(n_ingest)]
    missing = [p for p, part in enumerate(parts) if not part]
    extra = unprefixed(f"ingest{n_ingest}", state)
    if missing or extra:
        raise ValueError(f"the checkpoint was taken with another number of ingest partitions "
                         f"(this service has {n_ingest}); restart with the same --ingest count")
    if version == 3:
        stored = int(state["estimator_shards"])
        if stored != n_shards:
            raise ValueError(f"the checkpoint was taken with {stored} estimator shards and this "
                             f"service has {n_shards}; restart with --estimator-shards {stored} "
                             f"(only an unsharded checkpoint is split into shards)")
        shards = [unprefixed(f"estimator{s}", state) for s in range(stored)]
        return shards, parts, state.get("facade.watermark_t")
    if version == 1:  # stage states of the first release carry no version of their own
        parts = [{**part, "version": 1} for part in parts]
        est = {**unprefixed("estimator", state), "version": 1}
    else:
        est = unprefixed("estimator", state)
    return est, parts, state.get("facade.watermark_t")
