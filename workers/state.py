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
"""

from __future__ import annotations

from typing import Any

#: Version of the pipeline state this code writes.
STATE_VERSION = 2
#: Versions this code reads.
READABLE_VERSIONS = (1, 2)


def prefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every key prefixed ``prefix.`` (one checkpoint holds several stages)."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix.``, prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def compose(estimator: dict[str, Any], ingest: list[dict[str, Any]],
            watermark_t: float | None) -> dict[str, Any]:
    """One checkpoint state from the estimator's and every ingest partition's state."""
    state: dict[str, Any] = {"version": STATE_VERSION, "facade.watermark_t": watermark_t}
    state.update(prefixed("estimator", estimator))
    for p, part in enumerate(ingest):
        state.update(prefixed(f"ingest{p}", part))
    return state


def decompose(state: dict[str, Any], n_ingest: int
              ) -> tuple[dict[str, Any], list[dict[str, Any]], float | None]:
    """``(estimator, [ingest part per partition], facade watermark)`` of a checkpoint state.

    Raises
    ------
    ValueError
        When the state is of a version this code does not read (the message names both),
        or lacks a partition (the service was restarted with another ``--ingest`` count).
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
    if version == 1:  # stage states of the first release carry no version of their own
        parts = [{**part, "version": 1} for part in parts]
        est = {**unprefixed("estimator", state), "version": 1}
    else:
        est = unprefixed("estimator", state)
    return est, parts, state.get("facade.watermark_t")
