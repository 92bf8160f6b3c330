"""Checkpoints and recovery, once, over the stages' ``state_dict`` interface.

Used by every service (:class:`workers.services.Services`, in process or on Ray); the stages
are reached only through the service's runner, and their state only through
``state_dict`` / ``load_state_dict`` (contents documented on each stage; the composed
checkpoint in :mod:`workers.state`; the log and files in :mod:`workers.durability`).

A checkpoint is taken at a *quiet point*: new batches wait (the caller holds the log's order
lock), in-flight ingest calls and idle-flush ticks finish, every traversal batch an ingest
stage handed on is folded. It does not flush the matchers: each one's pending candidates
and open traversal runs are saved as they are, so taking a checkpoint changes nothing in
what the pipeline computes, and the estimates do not depend on how often checkpoints run.
The state then reflects exactly the log up to its position: every batch up to it fully
(decided or held), none after it. Recovery loads that state into fresh stages and replays
the log after it through the same path, so a batch is never applied twice and none is lost.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from workers.shards import FoldJournal
from workers.stages import StageRestarted
from workers.state import compose, decompose, prefixed, unprefixed

logger = logging.getLogger(__name__)


def checkpoint(svc: Any, now_s: float | None) -> None:
    """Save the state of every stage of ``svc`` as covering the log so far.

    ``now_s``: the service clock of the batch whose boundary triggered it (``None``: on
    demand). The caller holds ``svc.durability.order_lock``. Raises
    :class:`workers.stages.StageRestarted` when the estimator restarted since its last
    restore (its state is short of folds and must not be saved); an I/O error saving the
    file is logged and the service keeps serving (the log keeps everything since the last
    checkpoint).
    """
    durability = svc.durability
    journal = None if svc.shards is None else svc.shards.journal
    t0 = time.perf_counter()
    with svc.quiet():  # every batch handed on is folded
        est = svc.estimator_call("state_dict_if_booted", svc.boot)
        if est is None:
            raise StageRestarted("the estimator restarted; no checkpoint until it is restored")
        parts = svc.ingest_call_all("state_dict")
        mark = None if journal is None else journal.mark()
    if now_s is not None:
        durability.note_checkpoint(now_s)
    marks = [e["watermark_t"] for e in (est if isinstance(est, list) else [est])
             if e["watermark_t"] is not None]
    try:
        state = compose(est, parts, svc.watermark_t())
        state.update(prefixed("closures", svc.closures.state_dict()))
        state.update(prefixed("feeds", svc.feeds.state_dict()))
        path = durability.save(state, event_time_s=max(marks) if marks else None)
        durability.last_checkpoint_took_s = time.perf_counter() - t0
        durability.last_checkpoint_bytes = path.stat().st_size
    except OSError:
        logger.exception("checkpoint failed; the probe log keeps everything since the last one")
        return
    if journal is not None:
        journal.saved(mark, durability.log.position)


def recover(svc: Any) -> dict[str, dict[str, Any] | None]:
    """Load the newest good checkpoint into ``svc``'s stages and replay the log after it.

    The stages must be fresh (just started, or reset). Returns the checkpoint's closures and
    speed-feed parts (``{"closures": ..., "feeds": ...}``, ``None`` where it has none): the
    service loads them only when their own files, written at every change and so newer,
    are gone. The batches replayed are in ``svc.durability.replayed_batches``.

    Raises
    ------
    ValueError
        When the checkpoint is of a state version this code does not read, or was taken
        with another number of ingest partitions (the message says which).
    """
    durability, stages = svc.durability, svc.stages
    rec = durability.recover()
    n_shards = 1 if svc.shards is None else len(svc.shards.handles)
    if svc.shards is not None:
        # The folds replayed below are journaled; the journal starts at this checkpoint.
        svc.shards.journal = svc.shards.journal or FoldJournal(
            n_shards, max_bytes=svc.shards.JOURNAL_MAX_BYTES)
        svc.shards.journal.reset(rec.position if rec.state is not None else None)
    overlays: dict[str, dict[str, Any] | None] = {"closures": None, "feeds": None}
    if rec.state is not None:
        est, parts, watermark = decompose(rec.state, len(svc.ingest_stages), n_shards)
        svc.estimator_call("load_state_dict", est)
        stages.get([stages.call(a, "load_state_dict", part)
                    for a, part in zip(svc.ingest_stages, parts, strict=True)])
        svc.set_watermark(watermark)
        overlays = {k: unprefixed(k, rec.state) or None for k in overlays}
    svc.boot = f"{time.time_ns()}"
    svc.estimator_call("mark_boot", svc.boot)  # from here on the estimator's state is whole
    n, window = 0, []  # each batch's futures, oldest first: folded in log order
    for _pos, logged in rec.tail:
        probes, now = durability.split_logged(logged)
        wall = durability.logged_wall_s(logged)
        # Keep the checkpoint cadence a function of the log: the next live checkpoint falls
        # where it would have without the crash. No file is written while replaying.
        if durability.checkpoint_due(now, wall, replay=True):
            durability.note_checkpoint(now, wall)
        window.append(svc.replay_batch(probes, now))
        n += 1
        while len(window) > 32:
            svc.fold_replies(stages.get(window.pop(0)))
    for futures in window:
        svc.fold_replies(stages.get(futures))
    svc.folds.drain()
    marks = [s["watermark_t"] for s in svc.ingest_call_all("stats")]
    marks = [m for m in [*marks, svc.watermark_t()] if m is not None]
    if marks:
        svc.set_watermark(max(marks))
    durability.replayed_batches = n
    logger.info("replayed %d logged batches", n)
    return overlays


def restore_if_restarted(svc: Any) -> bool:
    """If the estimator restarted (fresh state, no boot token), bring the whole pipeline
    back to the checkpoint and replay the log after it; routers keep the last published
    weights meanwhile. With estimator shards, only the shards that restarted are restored
    (:func:`restore_shards`) when the fold journal covers the newest checkpoint. Returns
    whether it restored."""
    if svc.shards is not None:
        dead = [s for s, t in enumerate(svc.shards.boot_tokens()) if t != svc.boot]
        if not dead:
            return False
        with svc.durability.order_lock, svc.quiet():
            if restore_shards(svc, dead):
                svc.estimator_restores += 1
                return True
        logger.warning("estimator shard(s) %s restarted and the fold journal does not cover "
                       "the newest checkpoint; restoring the whole pipeline", dead)
    elif svc.estimator_call("boot_token", timeout=30) == svc.boot:
        return False
    logger.warning("the estimator restarted; restoring from the checkpoint and replaying")
    with svc.durability.order_lock, svc.quiet():
        svc.folds.forget()  # folds sent to the estimator that died: the replay redoes them
        svc.ingest_call_all("reset")
        recover(svc)
    svc.estimator_restores += 1
    return True


def restore_shards(svc: Any, dead: list[int]) -> bool:
    """Restore the estimator shards ``dead`` alone: each loads its part of the newest
    checkpoint and refolds its journaled parts of the batches folded since, in fold order;
    the ingest stages and the other shards keep their state. The caller holds the order lock
    at a quiet point. Returns ``False`` (nothing done) when the journal does not start at the
    newest checkpoint (it overflowed, or that checkpoint is not the one it started at)."""
    shards, stages = svc.shards, svc.stages
    journal = shards.journal
    loaded = svc.durability.store.load_latest()
    if journal is None or loaded is None or journal.base is None \
            or loaded.log_position != journal.base:
        return False
    logger.warning("estimator shard(s) %s restarted; restoring them from the checkpoint and "
                   "the fold journal", dead)
    state = {k: v for k, v in loaded.state.items() if not k.startswith("durability.")}
    est, _, _ = decompose(state, len(svc.ingest_stages), len(shards.handles))
    for s in dead:
        h = shards.handles[s]
        if isinstance(est, dict):  # an unsharded checkpoint, split by key
            stages.get(stages.call(h, "load_state_by_key", est, keep_applied=(s == 0)))
        else:
            stages.get(stages.call(h, "load_state_dict", est[s]))
        stages.get(stages.call(h, "forget_publications"))
        window = []
        for batch, n, wall, t_batch, vehicles in journal.calls_of(s):
            window.append(stages.call(h, "fold", batch, n, accepted_wall_s=wall,
                                      batch_t_s=t_batch, vehicles=vehicles))
            if len(window) > 64:
                stages.get(window.pop(0))
        stages.get(window)
        stages.get(stages.call(h, "mark_boot", svc.boot))
        shards.restores[s] += 1
    return True
