"""Probe intake of the service facade: queue bounds, the probe log, partitions, fold order.

:class:`Intake` is a part of :class:`workers.services.Services` (a mixin). A batch takes a
queue place in each partition it touches (or :class:`Overloaded`, nothing taken), is
appended to the probe log (fsync'd) before any stage sees it, is split by vehicle
partition and sent to the ingest stages; their replies' traversal batches go to the
estimator in the order the batches took the log (tickets), so the fold order is the log
order and a recovery that replays the log folds exactly as the live run did.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import polars as pl

from workers.ingest import partition_of


class Overloaded(RuntimeError):
    """Ingest queues are full; the batch was not taken. ``retry_after_s`` says when to retry."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Intake:
    """Ingest methods of :class:`workers.services.Services` (see the module docstring)."""

    # -- ingest -------------------------------------------------------------------------
    def ingest(self, probes: pl.DataFrame) -> tuple[int, list[tuple[int, str]]]:
        """Validate and queue a probe batch; returns ``(accepted, [(row, reason), ...])``.

        With durability the batch is logged (fsync'd) before any stage sees it. Raises
        :class:`Overloaded` (nothing taken) when the batch's partitions are at their queue
        bound, the service is shutting down, or a worker is restarting.
        """
        from workers.checkpointing import checkpoint

        accepted_wall = time.time()
        self._refuse_if_draining()
        stages = self.stages
        with self._order_lock:  # log append and hand-off in one order: partitions see log order
            now = self.now_s(self._batch_max_t(probes))
            if self.durability is not None and self.durability.checkpoint_due(now):
                try:
                    checkpoint(self, now)
                except Exception as exc:
                    if not stages.is_restart(exc):
                        raise
                    raise Overloaded(f"a worker is restarting ({exc.__class__.__name__}); "
                                     f"retry", retry_after_s=self.config.retry_after_s) from exc
            parts = self._reserve(self._split(probes))
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                if self.durability is not None and probes.height:
                    probes = self._log_batch(probes, now)  # fsync'd before any matcher sees it
                    # Partitions by pseudonym: the same vehicles stay together, but a group's
                    # partition number can change, so move the in-flight counts with them.
                    new_parts = self._split(probes)
                    with self._cv:
                        for p, _, _ in parts:
                            self._inflight[p] -= 1
                        for p, _, _ in new_parts:
                            self._inflight[p] += 1
                        self._cv.notify_all()
                    parts = new_parts
                futures = [stages.call(self.ingest_stages[p], "ingest", part, now_s=now,
                                       accepted_wall_s=accepted_wall) for p, part, _ in parts]
            except BaseException:
                self._release(parts)
                self._end_turn(ticket)
                raise
        try:
            replies = stages.get(futures)
            self._wait_turn(ticket)
            self.fold_replies(replies)
        except Exception as exc:
            if not stages.is_restart(exc):
                raise  # a bug in the worker, not a restart
            # Logged already (when durable): the restore after the restart replays it.
            raise Overloaded(f"an ingest worker is restarting ({exc.__class__.__name__}); "
                             f"retry", retry_after_s=self.config.retry_after_s) from exc
        finally:
            self._end_turn(ticket)
            self._release(parts)
        accepted, rejected = 0, []
        for (_, _, rows), reply in zip(parts, replies, strict=True):
            accepted += reply.accepted
            rejected += [(int(rows[r]), why) for r, why in reply.rejected]
        rejected.sort()
        self._note_accepted(probes, rejected)
        if stages.inline_publish:
            self._publish(self.estimator_call("maybe_publish"))
        return accepted, rejected

    def replay_batch(self, probes: pl.DataFrame, now_s: float) -> list[Any]:
        """Start one logged batch through the ingest stages (recovery); returns futures."""
        return [self.stages.call(self.ingest_stages[p], "ingest", part, now_s=now_s)
                for p, part, _ in self._split(probes)]

    def _wait_turn(self, ticket: int) -> None:
        """Wait until every ingest call that took the log before ``ticket`` handed on."""
        with self._turn:
            while self._serving < ticket:
                self._turn.wait()

    def _end_turn(self, ticket: int) -> None:
        """Let the next ticket hand on (after ours, whether it folded or failed)."""
        with self._turn:
            self._wait_turn(ticket)
            self._serving = ticket + 1
            self._turn.notify_all()

    def _reserve(self, parts: list[tuple[int, pl.DataFrame, np.ndarray]]) -> list[Any]:
        """Take a queue place in each part's partition, or raise :class:`Overloaded`."""
        bound = self.config.max_inflight_per_partition
        with self._cv:
            while self._swapping:
                self._cv.wait()
            full = [p for p, _, _ in parts if self._inflight[p] >= bound]
            if full:
                raise Overloaded(f"ingest partition(s) {full} are at their queue bound "
                                 f"({bound} batches); retry",
                                 retry_after_s=self.config.retry_after_s)
            for p, _, _ in parts:
                self._inflight[p] += 1
        return parts

    def _release(self, parts: list[tuple[int, Any, Any]]) -> None:
        with self._cv:
            for p, _, _ in parts:
                self._inflight[p] -= 1
            self._cv.notify_all()

    def _split(self, probes: pl.DataFrame) -> list[tuple[int, pl.DataFrame, np.ndarray]]:
        """Split a batch by partition; each part keeps its rows' positions in ``probes``."""
        n = self.config.n_ingest
        if n == 1 or probes.height == 0 or "vehicle_id" not in probes.columns:
            return [(0, probes, np.arange(probes.height))]
        part = partition_of(probes["vehicle_id"].cast(pl.Utf8), n)
        out = []
        for p in np.unique(part).tolist():
            rows = np.flatnonzero(part == p)
            out.append((int(p), probes[rows], rows))
        return out

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise Overloaded("the service is shutting down; send this batch again to its "
                             "successor", retry_after_s=self.config.retry_after_s)

    def _log_batch(self, probes: pl.DataFrame, now_s: float) -> pl.DataFrame:
        """Append the batch to the probe log (fsync'd); return it as the stages see it."""
        logged = self.durability.prepare(probes, now_s)
        self.durability.append(logged)
        return self.durability.split_logged(logged)[0]

    @staticmethod
    def _batch_max_t(probes: pl.DataFrame) -> float | None:
        if "t" not in probes.columns or probes.height == 0:
            return None
        t = probes["t"].cast(pl.Float64, strict=False)
        t = t.filter(t.is_finite())
        return None if t.len() == 0 else float(t.max())  # type: ignore[arg-type]
