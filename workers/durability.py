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

Checkpoints: exactly once. A checkpoint is taken only at a quiet point: new batches wait,
in-flight ones finish, every matcher is flushed (held points decided, open traversal runs
closed) and every traversal folded. At that point the whole pipeline state is the
estimator's state, each partition's :class:`traffic.probes.VehicleLastSeen` (the dedupe
memory) and the counters, and it reflects exactly the log up to its position ``P``: every
batch <= P fully, none > P at all. The checkpoint stores that state with ``P``. Recovery
loads the newest good checkpoint and replays the batches after ``P`` through the same path
(validation against the restored dedupe memory, matching, folding), flushing at the same
points the live run did (the trigger is a function of the logged ``_now_s`` and ``_wall_s``
in log order).
So a batch <= P is never applied again, a batch > P is applied exactly once, and a client
re-post of an applied probe is rejected as ``duplicate`` by the restored dedupe memory.

The price is that a checkpoint cuts each moving vehicle's trace once (its held points are
decided with less look-ahead and its run on the current edge is closed), so checkpoints
are spaced minutes apart by default (``checkpoint_every_s`` = 300 s of the service clock).

Cadence under fast replay. With ``--clock event`` the service clock is event time, which
runs as fast as probes are posted: a replay at 150x real time crossed a 300-s boundary
every 2 wall seconds, and each checkpoint stalls the whole pipeline (quiet point, state
copy, fsync). ``min_gap_wall_s`` adds a second condition: at least that many *wall*
seconds since the last checkpoint. To keep the trigger a function of the log, the wall
clock used for the decision is stamped into the batch (``_wall_s``, next to ``_now_s``)
and replay decides from the stamps, so a crash-replay flushes at exactly the batches the
live run flushed at. (A trigger by log position alone, e.g. "and N probes since the last",
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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from traffic.checkpoints import CheckpointStore
from traffic.native_memory import release_free_heap
from traffic.privacy import Pseudonymizer, load_or_create_key
from traffic.probes import PROBE_SCHEMA, VehicleLastSeen, coerce_probes
from traffic.wal import DEFAULT_RETENTION_S, LogPosition, ProbeLog

__all__ = [
    "DurabilityConfig",
    "Durability",
    "NOW_COLUMN",
    "WALL_COLUMN",
    "ingest_state",
    "load_ingest_state",
    "estimator_state",
    "load_estimator_state",
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
                "last_checkpoint_unix_s": self.last_checkpoint_s}

    def close(self) -> None:
        """Close the log (appends then fail)."""
        self.log.close()


# -- state of the stages, as checkpoint entries (host arrays and plain scalars) -----------
def ingest_state(core: Any) -> dict[str, Any]:
    """An ``IngestCore``'s durable state after a flush: dedupe memory and counters.

    Raises ``RuntimeError`` when the core still holds points (flush it first).
    """
    if int(core.matcher.pending_count()) or int(core.extractor.open_count()):
        raise RuntimeError(f"ingest partition {core.partition} holds points; flush before a checkpoint")
    seen: VehicleLastSeen = core.last_seen
    last = seen.last
    pairs = seen.seen_pairs()
    return {
        "last_vid": np.asarray(last["vehicle_id"].fill_null("").to_list(), dtype=np.str_),
        "last_t": last["last_t"].to_numpy().astype(np.float64),
        "last_lat": last["last_lat"].to_numpy().astype(np.float64),
        "last_lon": last["last_lon"].to_numpy().astype(np.float64),
        "pair_vid": np.asarray(pairs["vehicle_id"].fill_null("").to_list(), dtype=np.str_),
        "pair_t": pairs["t"].to_numpy().astype(np.float64),
        "counts": {k: int(v) for k, v in core._counts.items()},
        "rejected_by_reason": {k: int(v) for k, v in core._rejected_by_reason.items()},
        "matcher_counts": {k: int(v) for k, v in core.matcher.counts.items()},
        "watermark_t": core._watermark_t,
    }


def load_ingest_state(core: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`ingest_state` saved into a fresh ``IngestCore``."""
    seen = VehicleLastSeen(horizon_s=core.config.validation.duplicate_horizon_s)
    last = pl.DataFrame({"vehicle_id": pl.Series(np.asarray(state["last_vid"]).tolist(), dtype=pl.Utf8),
                         "last_t": np.asarray(state["last_t"], dtype=np.float64),
                         "last_lat": np.asarray(state["last_lat"], dtype=np.float64),
                         "last_lon": np.asarray(state["last_lon"], dtype=np.float64)})
    seen._last = last
    pairs = pl.DataFrame({"vehicle_id": pl.Series(np.asarray(state["pair_vid"]).tolist(), dtype=pl.Utf8),
                          "t": np.asarray(state["pair_t"], dtype=np.float64)})
    if pairs.height:
        max_t = float(pairs["t"].max())  # type: ignore[arg-type]
        seen._recent_chunks = [(max_t, pairs)]
        seen._recent_max_t = max_t
    core.last_seen = seen
    core._counts = Counter(state["counts"])
    core._rejected_by_reason = Counter(state["rejected_by_reason"])
    core.matcher.counts.update({k: int(v) for k, v in state["matcher_counts"].items()})
    core._watermark_t = state["watermark_t"]


def estimator_state(core: Any) -> dict[str, Any]:
    """An ``EstimatorCore``'s durable state: the speed state and its counters."""
    out = {f"speed.{k}": v for k, v in core.estimator.state_dict().items()}
    out["covered"] = np.asarray(core._covered).copy()
    out["counters"] = {"applied": int(core.applied), "folds": int(core.folds),
                       "traversals": int(core.traversals)}
    out["watermark_t"] = core.watermark_t
    profile = getattr(core, "profile", None)
    if profile is not None:
        # The profile is the estimator's prior, so it is part of the state a replay must
        # restore. Only bins holding data are stored (a run of hours touches a few of 672).
        bins = np.flatnonzero(profile.weight.any(axis=1))
        out["profile.bins"] = bins
        out["profile.mean_pace"] = profile.mean_pace[bins].copy()
        out["profile.weight"] = profile.weight[bins].copy()
        out["profile.observed_t"] = core._profile_observed_t
    return out


def load_estimator_state(core: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`estimator_state` saved (same network: strict edge keys)."""
    speed = {k[len("speed."):]: v for k, v in state.items() if k.startswith("speed.")}
    profile = getattr(core, "profile", None)
    if profile is not None and "profile.bins" in state:
        # In place: the estimator holds this same object as its prior.
        bins = np.asarray(state["profile.bins"], dtype=np.int64)
        profile.mean_pace[:] = 0.0
        profile.weight[:] = 0.0
        profile.mean_pace[bins] = state["profile.mean_pace"]
        profile.weight[bins] = state["profile.weight"]
        profile.bin_revision += 1  # routers cached on the old contents must re-customize
        core._profile_observed_t = state["profile.observed_t"]
    core.estimator.load_state_dict(speed)
    core._covered = np.asarray(state["covered"], dtype=bool).copy()
    counters = state["counters"]
    core.applied = int(counters["applied"])
    core.folds = int(counters["folds"])
    core.traversals = int(counters["traversals"])
    core.watermark_t = state["watermark_t"]
    core._dirty = True


def prefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every key prefixed ``prefix.`` (one checkpoint holds several stages)."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix.``, prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def reset_ingest(core: Any, state: dict[str, Any] | None) -> None:
    """Empty an ``IngestCore`` (matcher, runs, dedupe memory, counters), then load ``state``.

    Used when the estimator restarted: the whole pipeline goes back to the checkpoint and
    the log after it is replayed, so no fold is lost and none is applied twice.
    """
    core._set_network(core.net, index=core.matcher.index, ubodt=core.matcher.ubodt)
    core._counts, core._rejected_by_reason, core._watermark_t = Counter(), Counter(), None
    if core.sink is not None:
        core.sink._refs = []  # folds sent to the estimator that died: replay redoes them
    if state:
        load_ingest_state(core, state)


def mark_boot(core: Any, token: str) -> None:
    """Tag a live estimator actor; a restarted one comes back without the tag."""
    core._durable_boot = token


def boot_of(core: Any) -> str | None:
    """The tag :func:`mark_boot` set (``None`` on a restarted actor)."""
    return getattr(core, "_durable_boot", None)


def estimator_state_if_booted(core: Any, token: str | None) -> dict[str, Any] | None:
    """:func:`estimator_state` if the actor still carries ``token``, else ``None``.

    A restarted estimator lost folds; its state must not go into a checkpoint.
    """
    return estimator_state(core) if boot_of(core) == token else None
