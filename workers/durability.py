"""Durable ingest: the probe log, estimator checkpoints and recovery, as one plain class.

The service facades (:class:`workers.services.LocalServices`,
:class:`workers.pipeline.RayPipeline`) call :class:`Durability` on the ingest path and at
start; this module owns no workers and does no networking.

Write path. A batch taken by the facade (queue room reserved first, so a batch answered
503 is never logged) is coerced to the probe schema, its ``vehicle_id`` replaced by the
keyed pseudonym (:mod:`traffic.privacy`), a ``_now_s`` column (the service clock the batch
is validated against) added, and appended to the :class:`traffic.wal.ProbeLog`, which
fsyncs before returning. Only then is it handed to validation and matching, and only after
that is it answered 2xx. Append and hand-off happen under one lock, so every ingest
partition sees its batches in log order. (Single appends reach ~300 fsync'd 1,000-probe
batches/s here, far above what matching takes, so the lock costs no throughput.)

The log holds the batch *as received* (pseudonymised), not only its accepted rows:
validation is deterministic given the per-vehicle state and ``_now_s``, so replaying a
batch through validation again accepts exactly the rows it accepted the first time, and
the 2xx count the client saw is the count replay reproduces.

Checkpoints: exactly once, without disturbing the stream. A checkpoint is taken at a quiet
point (:mod:`workers.checkpointing`): new batches wait, in-flight ones finish and every
traversal batch handed on is folded. The matchers are *not* flushed: each stage saves its
state through its own ``state_dict`` (an ingest partition's includes its matcher's pending
candidates and open traversal runs, and its :class:`traffic.probes.VehicleLastSeen`, the
dedupe memory), so the state reflects exactly the log up to its position ``P``: every
batch <= P fully (decided, or held exactly as the live matcher holds it), none > P at all.
The checkpoint stores that state with ``P``. Recovery loads the newest good checkpoint and
replays the batches after ``P`` through the same path (validation against the restored
dedupe memory, matching from the restored pending state, folding). So a batch <= P is never
applied again, a batch > P is applied exactly once, a client re-post of an applied probe is
rejected as ``duplicate`` by the restored dedupe memory, and the estimates are the same
whether checkpoints ran every 10 s, every 300 s or never.

Cadence under fast replay. With ``--clock event`` the service clock is event time, which
runs as fast as probes are posted: a replay at 150x real time crossed a 300-s boundary
every 2 wall seconds, and each checkpoint stalls the whole pipeline (quiet point, state
copy, fsync). ``min_gap_wall_s`` adds a second condition: at least that many *wall*
seconds since the last checkpoint. To keep the trigger a function of the log, the wall
clock used for the decision is stamped into the batch (``_wall_s``, next to ``_now_s``)
and replay decides from the stamps, so after a crash the next checkpoint falls where it
would have without one. (A trigger by log position alone, e.g. "and N probes since the last",
cannot tell fast replay from live ingest: probes per event second are a property of the
fleet, not of the replay speed.) ``min_gap_wall_s = 0`` (the default) is the old,
event-time-only cadence; batches logged without ``_wall_s`` are decided that way too.

Compaction. After a checkpoint the log is compacted to
:meth:`traffic.checkpoints.CheckpointStore.compaction_position` (the *oldest* kept
checkpoint, so a fall-back from a damaged newest one can still replay), and segments older
than the retention (default 7 days) are deleted whatever the checkpoints.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from traffic.checkpoints import CheckpointStore
from traffic.native_memory import release_free_heap
from traffic.privacy import Pseudonymizer, load_or_create_key
from traffic.probes import PROBE_SCHEMA, coerce_probes
from traffic.wal import DEFAULT_RETENTION_S, LogPosition, ProbeLog

__all__ = [
    "DurabilityConfig",
    "Durability",
    "NOW_COLUMN",
    "WALL_COLUMN",
]

logger = logging.getLogger(__name__)

#: Column of a logged batch holding the service clock it was validated against (s).
NOW_COLUMN = "_now_s"
#: Column of a logged batch holding the wall clock (unix s) its checkpoint decision used.
WALL_COLUMN = "_wall_s"


@dataclass(frozen=True, slots=True)
class DurabilityConfig:
    """Where and how often the service persists what it acknowledged.

    Attributes
    ----------
    data_dir
        Root of ``wal/``, ``checkpoints/`` and ``pseudonym.key``.
    checkpoint_every_s
        Take a checkpoint when the service clock (event or wall, as the pipeline runs)
        crosses a multiple of this many seconds ...
    min_gap_wall_s
        ... and at least this many wall seconds (as stamped in the log) have passed since
        the last one (module docstring: fast replay). 0: no such condition.
    retention_s
        Raw (pseudonymised) probes are deleted from the log after this long.
    keep_checkpoints
        Checkpoints kept (more than one lets recovery skip a damaged newest one).
    fsync
        Fsync each append (off only in benchmarks that measure fsync itself).
    pseudonym_key
        Configured key text (``TRAFFIC_PSEUDONYM_KEY``, read by the entry point); ``None``:
        the data directory's generated key file.
    segment_max_bytes
        WAL segment size; smaller segments compact sooner.
    """

    data_dir: str
    checkpoint_every_s: float = 300.0
    min_gap_wall_s: float = 0.0
    retention_s: float = DEFAULT_RETENTION_S
    keep_checkpoints: int = 3
    fsync: bool = True
    pseudonym_key: str | None = None
    segment_max_bytes: int = 16 * 2**20

    def __post_init__(self) -> None:
        if not self.checkpoint_every_s > 0:
            raise ValueError(f"`checkpoint_every_s` must be > 0; got {self.checkpoint_every_s!r}")
        if not self.min_gap_wall_s >= 0:
            raise ValueError(f"`min_gap_wall_s` must be >= 0; got {self.min_gap_wall_s!r}")


@dataclass(slots=True)
class Recovery:
    """What :meth:`Durability.recover` found: a checkpoint's state (or ``None``) and the tail."""

    state: dict[str, Any] | None
    position: LogPosition
    tail: Iterator[tuple[LogPosition, pl.DataFrame]]


class Durability:
    """The probe log, checkpoint store and pseudonymizer of one service (module docstring).

    Parameters
    ----------
    config
        Paths and intervals.
    """

    def __init__(self, config: DurabilityConfig) -> None:
        self.config = config
        root = Path(config.data_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.log = ProbeLog(root / "wal", fsync=config.fsync, retention_s=config.retention_s,
                            segment_max_bytes=config.segment_max_bytes)
        self.store = CheckpointStore(root / "checkpoints", keep_last=config.keep_checkpoints)
        self.pseudonymizer = Pseudonymizer(load_or_create_key(root, configured=config.pseudonym_key))
        #: Held across append + hand-off so partitions see batches in log order.
        self.order_lock = threading.RLock()
        self._last_bucket: int | None = None
        #: Logged wall stamp of the last checkpoint (or of the first batch seen).
        self._last_wall: float | None = None
        #: Wall clock the last live ``checkpoint_due`` used; ``prepare`` stamps it.
        self._decided_wall: float | None = None
        self.checkpoints_saved = 0
        self.replayed_batches = 0
        self.last_checkpoint_s: float | None = None
        #: The last checkpoint's cost: seconds from asking the stages for their state to the
        #: file being durable (the stream waits that long), and the file's bytes.
        self.last_checkpoint_took_s: float | None = None
        self.last_checkpoint_bytes: int | None = None

    # -- write path ---------------------------------------------------------------------
    def prepare(self, probes: pl.DataFrame, now_s: float, *,
                wall_s: float | None = None) -> pl.DataFrame:
        """The batch as logged: probe schema, pseudonymised ids, ``_now_s`` and ``_wall_s``.

        ``wall_s`` defaults to the wall clock the preceding :meth:`checkpoint_due` decided
        with (the caller holds ``order_lock`` across both), so replay sees the same input.
        Raises ``traffic.probes.ProbeSchemaError`` when the batch lacks a probe column.
        """
        if wall_s is None:
            wall_s = self._decided_wall if self._decided_wall is not None else time.time()
        self._decided_wall = None
        df = coerce_probes(probes, source="probe batch")
        df = self.pseudonymizer.pseudonymize_frame(df)
        return df.with_columns(pl.lit(float(now_s), dtype=pl.Float64).alias(NOW_COLUMN),
                               pl.lit(float(wall_s), dtype=pl.Float64).alias(WALL_COLUMN))

    def append(self, logged: pl.DataFrame) -> LogPosition:
        """Append a prepared batch; returns once it is on disk (fsync'd)."""
        return self.log.append(logged)

    def checkpoint_due(self, now_s: float, wall_s: float | None = None, *,
                       replay: bool = False) -> bool:
        """Whether a batch validated at ``now_s`` (wall clock ``wall_s``) takes a checkpoint.

        Due when ``now_s`` is in a later ``checkpoint_every_s`` bucket than the last
        checkpoint's and ``wall_s`` is at least ``min_gap_wall_s`` after the last
        checkpoint's stamp. Live (``replay=False``), ``wall_s`` defaults to the wall clock
        now and is remembered for :meth:`prepare` to stamp; replaying, pass the logged
        stamp (:meth:`logged_wall_s`; ``None`` for batches logged without one: the gap is
        then not applied). The first batch seen only sets the reference, so the answer is
        a function of the logged ``(_now_s, _wall_s)`` sequence: live run and replay agree.
        """
        if not replay:
            wall_s = time.time() if wall_s is None else float(wall_s)
        self._decided_wall = wall_s
        if not math.isfinite(now_s):
            return False
        bucket = int(now_s // self.config.checkpoint_every_s)
        if self._last_bucket is None:
            self._last_bucket = bucket
            if self._last_wall is None and wall_s is not None:
                self._last_wall = float(wall_s)
            return False
        if bucket <= self._last_bucket:
            return False
        gap = self.config.min_gap_wall_s
        if gap > 0 and wall_s is not None and self._last_wall is not None:
            return float(wall_s) - self._last_wall >= gap
        return True

    def note_checkpoint(self, now_s: float, wall_s: float | None = None) -> None:
        """Record that the checkpoint for ``now_s``'s boundary was taken (or replayed).

        ``wall_s``: the stamp the decision used (default: the last live decision's).
        """
        if math.isfinite(now_s):
            self._last_bucket = int(now_s // self.config.checkpoint_every_s)
        wall = self._decided_wall if wall_s is None else wall_s
        if wall is not None and math.isfinite(wall):
            self._last_wall = float(wall)

    # -- checkpoints --------------------------------------------------------------------
    def save(self, state: dict[str, Any], *, event_time_s: float | None = None) -> Path:
        """Save ``state`` as covering the log as it stands now, then compact and expire.

        The caller guarantees the quiet point: no batch is between append and fold.
        """
        position = self.log.position
        state = dict(state)
        state["durability.last_bucket"] = -1 if self._last_bucket is None else int(self._last_bucket)
        state["durability.last_wall_s"] = self._last_wall
        path = self.store.save(state, log_position=position, event_time_s=event_time_s)
        self.checkpoints_saved += 1
        self.last_checkpoint_s = time.time()
        upto = self.store.compaction_position()
        if upto is not None:
            self.log.compact(upto)
        self.log.enforce_retention()
        release_free_heap()  # the state's temporaries, not kept resident for hours
        return path

    def recover(self) -> Recovery:
        """Load the newest checkpoint that verifies and iterate the log after it."""
        loaded = self.store.load_latest()
        if loaded is None:
            position, state = LogPosition.start(), None
        else:
            position, state = loaded.log_position, loaded.state
            bucket = int(state.pop("durability.last_bucket", -1))
            self._last_bucket = None if bucket < 0 else bucket
            wall = state.pop("durability.last_wall_s", None)
            self._last_wall = None if wall is None else float(wall)
        logger.info("recovering from %s; replaying the log after seq %d",
                    "a checkpoint" if state is not None else "the start", position.seq)
        return Recovery(state, position, self.log.read_from(position))

    @staticmethod
    def split_logged(logged: pl.DataFrame) -> tuple[pl.DataFrame, float]:
        """``(probes, now_s)`` of a logged batch."""
        now = logged[NOW_COLUMN]
        now_s = float(now[0]) if now.len() else float("nan")
        return logged.select(list(PROBE_SCHEMA)), now_s

    @staticmethod
    def logged_wall_s(logged: pl.DataFrame) -> float | None:
        """The wall stamp a logged batch's checkpoint decision used (``None``: not logged)."""
        if WALL_COLUMN not in logged.columns or logged.height == 0:
            return None
        wall = float(logged[WALL_COLUMN][0])
        return wall if math.isfinite(wall) else None

    def stats(self) -> dict[str, Any]:
        """Log position, checkpoints saved, batches replayed at start."""
        pos = self.log.position
        return {"log_seq": pos.seq, "log_rows": pos.row,
                "checkpoints_saved": self.checkpoints_saved,
                "replayed_batches": self.replayed_batches,
                "last_checkpoint_unix_s": self.last_checkpoint_s,
                "last_checkpoint_took_s": self.last_checkpoint_took_s,
                "last_checkpoint_bytes": self.last_checkpoint_bytes}

    def close(self) -> None:
        """Close the log (appends then fail)."""
        self.log.close()
