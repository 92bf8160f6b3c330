"""Estimator checkpoints: atomic, checksummed files that name the log position they cover.

A checkpoint file ``ckpt-<log_seq:020d>.trck`` is::

    magic b"TRCKPT01" | header_len u32 | header_crc32 u32 | header (UTF-8 JSON) | payload

The payload is an uncompressed ``.npz`` of the state's arrays; the JSON header holds the
format version, the log position, the event time, the estimator version, the state's
plain scalars, the payload length and its SHA-256. A file is written to a temporary name,
fsync'd, renamed over its final name and the directory fsync'd, so a crash leaves either
the old set of checkpoints or the new one, never a partial file under a checkpoint name.
Loading verifies the header CRC and the payload hash and falls back to older checkpoints
when the newest does not verify.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from storage import fsync_directory, write_atomic
from traffic.errors import EstimatorStateError, TrafficError
from traffic.wal import LogPosition

__all__ = [
    "CheckpointCorruptError",
    "CheckpointHeader",
    "CheckpointStore",
    "LoadedCheckpoint",
    "FORMAT_VERSION",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MAGIC = b"TRCKPT01"
_PREFIX = struct.Struct("<8sII")  # magic, header_len, header_crc32
_MAX_HEADER_BYTES = 16 * 2**20
_COPY_CHUNK = 2**20  # bytes per read when hashing and copying the payload
_SCALAR_TYPES = (bool, int, float, str, type(None))


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is a scalar, or a dict/list/tuple of them, that JSON keeps exactly."""
    if isinstance(value, _SCALAR_TYPES):
        return True
    if depth > 8:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, depth + 1) for v in value)
    return False


class CheckpointCorruptError(TrafficError):
    """A checkpoint file is truncated, altered or not a checkpoint at all."""


@dataclass(frozen=True, slots=True)
class CheckpointHeader:
    """What a checkpoint says about itself (read without loading the payload)."""

    path: Path
    format_version: int
    log_position: LogPosition
    event_time_s: float | None
    estimator_version: int | str | None
    created_unix_s: float
    payload_bytes: int
    payload_sha256: str
    scalars: dict[str, Any]
    generic_keys: tuple[str, ...]


class LoadedCheckpoint(NamedTuple):
    """The newest checkpoint that verified: ``state, log_position = store.load_latest()``."""

    state: dict[str, Any]
    log_position: LogPosition


def _checkpoint_name(seq: int) -> str:
    return f"ckpt-{seq:020d}.trck"


def _split_state(state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
    """Split a state dict into npz arrays, JSON scalars and the keys of NumPy scalars."""
    if not isinstance(state, dict):
        raise EstimatorStateError(f"`state` must be a dict; got {type(state).__name__}")
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    generic: list[str] = []
    for key, value in state.items():
        if not isinstance(key, str) or not key:
            raise EstimatorStateError(f"`state` keys must be non-empty strings; got {key!r}")
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise EstimatorStateError(f"`state[{key!r}]` has object dtype; store numeric arrays")
            arrays[key] = value
        elif isinstance(value, np.generic):
            arrays[key] = np.asarray(value)
            generic.append(key)
        elif _is_plain(value):
            scalars[key] = value
        else:
            raise EstimatorStateError(
                f"`state[{key!r}]` must be a host NumPy array, a NumPy scalar, or plain scalars "
                f"(in dicts/lists) JSON can hold; got "
                f"{type(value).__module__}.{type(value).__name__} (copy device arrays to host first)"
            )
    return arrays, scalars, generic


def _read_header(fh: io.BufferedReader, path: Path) -> tuple[dict[str, Any], int]:
    prefix = fh.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise CheckpointCorruptError(f"checkpoint {path} is shorter than its {_PREFIX.size}-byte prefix")
    magic, header_len, header_crc = _PREFIX.unpack(prefix)
    if magic != _MAGIC:
        raise CheckpointCorruptError(f"checkpoint {path} has magic {magic!r}, not {_MAGIC!r}")
    if header_len > _MAX_HEADER_BYTES:
        raise CheckpointCorruptError(f"checkpoint {path} claims a {header_len}-byte header")
    raw = fh.read(header_len)
    if len(raw) != header_len or zlib.crc32(raw) != header_crc:
        raise CheckpointCorruptError(f"checkpoint {path} has a truncated or altered header (CRC32)")
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise CheckpointCorruptError(f"checkpoint {path} header is not JSON: {err}") from err
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointCorruptError(
            f"checkpoint {path} has format version {header.get('format_version')!r}; "
            f"this code reads {FORMAT_VERSION}"
        )
    return header, _PREFIX.size + header_len


def _header_record(path: Path, header: dict[str, Any]) -> CheckpointHeader:
    return CheckpointHeader(
        path=path,
        format_version=header["format_version"],
        log_position=LogPosition(int(header["log_seq"]), int(header["log_row"])),
        event_time_s=header["event_time_s"],
        estimator_version=header["estimator_version"],
        created_unix_s=header["created_unix_s"],
        payload_bytes=int(header["payload_bytes"]),
        payload_sha256=header["payload_sha256"],
        scalars=dict(header["scalars"]),
        generic_keys=tuple(header["generic_keys"]),
    )


class CheckpointStore:
    """A directory of estimator checkpoints; keeps the newest ``keep_last``.

    Parameters
    ----------
    dir
        Directory of the checkpoint files; created if absent. Leftover temporary files
        from an interrupted save are removed on open.
    keep_last
        How many checkpoints to keep. Keeping more than one lets :meth:`load_latest` fall
        back when the newest is damaged; compact the log only up to
        :meth:`compaction_position` so the fallback can still replay.
    """

    def __init__(self, dir: Path, *, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise EstimatorStateError(f"`keep_last` must be >= 1; got {keep_last!r}")
        self.dir = Path(dir)
        self.keep_last = int(keep_last)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".ckpt-*.tmp"):
            stale.unlink(missing_ok=True)

    def paths(self) -> list[Path]:
        """Return the checkpoint files, newest (highest log position) first."""
        return sorted(self.dir.glob("ckpt-*.trck"), reverse=True)

    def save(
        self,
        state: dict[str, Any],
        *,
        log_position: LogPosition,
        event_time_s: float | None = None,
        estimator_version: int | str | None = None,
    ) -> Path:
        """Write ``state`` atomically as the checkpoint covering ``log_position``.

        Costs one serialisation and one SHA-256 pass over the arrays, then a write and two
        fsyncs (file and directory). A checkpoint at the same log position replaces the
        previous one atomically. Older checkpoints beyond ``keep_last`` are deleted.

        Parameters
        ----------
        state
            ``str -> numpy.ndarray | numpy scalar | bool | int | float | str | None`` or a
            dict/list of such plain scalars (e.g. a config as ``asdict``; tuples come back
            as lists). Arrays must be on the host: ``estimator.state_dict()`` is.
        log_position
            The last log batch folded into ``state``.
        event_time_s
            Event time (unix s) the state is current to; stored in the header.
        estimator_version
            The estimator's version counter; stored in the header.

        Returns
        -------
        Path
            The checkpoint file.

        Raises
        ------
        EstimatorStateError
            ``state`` holds something other than host arrays and plain scalars.
        """
        if not isinstance(log_position, LogPosition):
            raise EstimatorStateError(
                f"`log_position` must be a LogPosition; got {type(log_position).__name__}")
        arrays, scalars, generic = _split_state(state)
        path = self.dir / _checkpoint_name(log_position.seq)
        # The payload is encoded into an unnamed spool file, not memory: an in-memory
        # encoding (a BytesIO grown by doubling) briefly needed two to three times the
        # state's size in resident memory at every checkpoint.
        with tempfile.TemporaryFile(dir=self.dir) as spool:
            np.savez(spool, **arrays)
            payload_bytes = spool.tell()
            digest = hashlib.sha256()
            spool.seek(0)
            while chunk := spool.read(_COPY_CHUNK):
                digest.update(chunk)
            header = json.dumps({
                "format_version": FORMAT_VERSION,
                "log_seq": log_position.seq,
                "log_row": log_position.row,
                "event_time_s": None if event_time_s is None else float(event_time_s),
                "estimator_version": estimator_version,
                "created_unix_s": time.time(),
                "payload_bytes": payload_bytes,
                "payload_sha256": digest.hexdigest(),
                "scalars": scalars,
                "generic_keys": generic,
            }).encode()
            prefix = _PREFIX.pack(_MAGIC, len(header), zlib.crc32(header))

            def write(fh: BinaryIO) -> None:
                fh.write(prefix)
                fh.write(header)
                spool.seek(0)
                shutil.copyfileobj(spool, fh, _COPY_CHUNK)

            write_atomic(path, write)
        self._prune()
        return path

    def _prune(self) -> None:
        doomed = self.paths()[self.keep_last:]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            fsync_directory(self.dir)

    def read_header(self, path: Path) -> CheckpointHeader:
        """Read and check one checkpoint's header (not its payload).

        Raises
        ------
        CheckpointCorruptError
            The prefix or header is truncated, altered or of another format version.
        """
        with open(path, "rb") as fh:
            header, _ = _read_header(fh, path)
        return _header_record(path, header)

    def load(self, path: Path) -> LoadedCheckpoint:
        """Load and verify one checkpoint file.

        Raises
        ------
        CheckpointCorruptError
            The file is truncated, has trailing bytes, or its header CRC or payload
            SHA-256 does not match.
        """
        with open(path, "rb") as fh:
            header, _ = _read_header(fh, path)
            payload = fh.read()
        rec = _header_record(path, header)
        if len(payload) != rec.payload_bytes:
            raise CheckpointCorruptError(
                f"checkpoint {path} has {len(payload)} payload bytes; its header says {rec.payload_bytes}")
        if hashlib.sha256(payload).hexdigest() != rec.payload_sha256:
            raise CheckpointCorruptError(f"checkpoint {path} payload does not match its SHA-256")
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
                state: dict[str, Any] = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, zlib.error) as err:
            raise CheckpointCorruptError(f"checkpoint {path} payload is not a readable .npz: {err}") from err
        for key in rec.generic_keys:
            state[key] = state[key][()]
        state.update(rec.scalars)
        return LoadedCheckpoint(state, rec.log_position)

    def load_latest(self) -> LoadedCheckpoint | None:
        """Return the newest checkpoint that verifies, or None if there is none.

        Damaged checkpoints are skipped with a logged warning (and left on disk for a
        person to look at; :meth:`save` prunes them in time).
        """
        for path in self.paths():
            try:
                return self.load(path)
            except (CheckpointCorruptError, OSError) as err:
                logger.warning("skipping checkpoint %s: %s", path, err)
        return None

    def compaction_position(self) -> LogPosition | None:
        """Return the oldest log position any kept checkpoint may need, or None.

        The write-ahead log may be compacted up to here: falling back from a damaged newest
        checkpoint to an older one still finds every batch it needs. None (compact nothing)
        when no checkpoint header is readable.
        """
        positions = []
        for path in self.paths():
            try:
                positions.append(self.read_header(path).log_position)
            except (CheckpointCorruptError, OSError):
                continue
        return min(positions) if positions else None
