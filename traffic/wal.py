"""The probe write-ahead log: accepted batches, fsync'd before they are acknowledged.

Layout. A log is a directory of segment files ``wal-<first_seq:020d>.arrow``. A segment
starts with a 32-byte header (magic, first sequence number, first global row, CRC32) and
is created atomically (temp file, fsync, rename, directory fsync), so a header is never
torn. Then come frames, one per appended batch::

    magic u32 | seq u64 | first_row u64 | n_rows u32 | payload_len u32 | t_append_s f64
    | crc32 u32 (of the header fields above, seeded with the payload's CRC32) | payload

where the payload is the batch as one self-contained Arrow IPC *stream* (schema + one
record batch + end marker). The payload is encoded and
checksummed outside the log's lock. Each frame stands alone, so no footer is needed and a crash
mid-write damages only the frame being written: on open, the last segment is scanned and
cut at the first frame whose header or CRC does not check out. Every frame before it was
written and fsync'd in full and survives.

Positions. :class:`LogPosition` ``(seq, row)`` names the end of a batch: ``seq`` is the
batch's sequence number (1, 2, ...; 0 means "before everything") and ``row`` the global
count of rows up to and including it. Both only grow, across segments, compaction and
restarts.

Durability. :meth:`ProbeLog.append` returns only after the frame is written and the file
fsync'd (and the directory, when it created a segment). Concurrent appenders share fsyncs
(group commit): a thread whose frame was covered by another thread's fsync returns
without its own.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from storage import fsync_directory, write_atomic
from traffic.errors import TrafficError
from traffic.probes import REQUIRED_COLUMNS

__all__ = [
    "LogPosition",
    "ProbeLog",
    "WALClosedError",
    "WALCorruptionError",
    "WALInputError",
    "DEFAULT_RETENTION_S",
]

logger = logging.getLogger(__name__)

#: Raw probes are kept no longer than this by default (7 days).
DEFAULT_RETENTION_S = 7 * 86400.0
_SEGMENT_MAGIC = b"TRWALSG1"
_SEGMENT_HEADER = struct.Struct("<8sQQI4x")  # magic, first_seq, first_row, crc32, pad
_FRAME_MAGIC = 0x4D415254  # b"TRAM" little-endian
_FRAME_HEADER = struct.Struct("<IQQIId")  # magic, seq, first_row, n_rows, payload_len, t_s
_FRAME_CRC = struct.Struct("<I")
_FRAME_OVERHEAD = _FRAME_HEADER.size + _FRAME_CRC.size
_MAX_PAYLOAD_BYTES = 2**32 - 1


class WALCorruptionError(TrafficError):
    """A sealed log segment (not the last one) has a bad frame, so data would be lost."""


class WALInputError(TrafficError, ValueError):
    """A batch or option handed to the log has the wrong type, columns or value."""


class WALClosedError(TrafficError):
    """The log was closed and cannot take appends."""


@dataclass(frozen=True, slots=True, order=True)
class LogPosition:
    """The end of one batch in the log.

    Attributes
    ----------
    seq
        Sequence number of the batch (first batch is 1; 0 is the start of the log).
    row
        Global number of rows up to and including this batch.
    """

    seq: int
    row: int

    @classmethod
    def start(cls) -> LogPosition:
        """Return the position before the first batch."""
        return cls(0, 0)


@dataclass(slots=True)
class _Segment:
    first_seq: int
    first_row: int
    path: Path


def _segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.arrow"


def _encode_segment_header(first_seq: int, first_row: int) -> bytes:
    body = struct.pack("<8sQQ", _SEGMENT_MAGIC, first_seq, first_row)
    return _SEGMENT_HEADER.pack(_SEGMENT_MAGIC, first_seq, first_row, zlib.crc32(body))


def _decode_segment_header(raw: bytes, path: Path) -> tuple[int, int]:
    if len(raw) < _SEGMENT_HEADER.size:
        raise WALCorruptionError(f"segment {path} is shorter than its {_SEGMENT_HEADER.size}-byte header")
    magic, first_seq, first_row, crc = _SEGMENT_HEADER.unpack_from(raw)
    body = struct.pack("<8sQQ", magic, first_seq, first_row)
    if magic != _SEGMENT_MAGIC or zlib.crc32(body) != crc:
        raise WALCorruptionError(f"segment {path} has a bad header (magic or CRC32 mismatch)")
    return first_seq, first_row


def _encode_payload(df: pl.DataFrame) -> tuple[pa.Buffer, int]:
    """Return the batch as one Arrow IPC stream and the CRC32 of those bytes.

    pyarrow writes into its own buffer with the GIL released; polars writing into a Python
    file object from several threads at once can deadlock, so it is not used here.
    """
    table = df.to_arrow()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    payload = sink.getvalue()
    if payload.size > _MAX_PAYLOAD_BYTES:
        raise WALInputError(f"batch of {df.height} rows is {payload.size} bytes; frames hold < 4 GiB")
    return payload, zlib.crc32(payload)


def _frame_header(seq: int, first_row: int, n_rows: int, payload: pa.Buffer, payload_crc: int,
                  t_s: float) -> bytes:
    head = _FRAME_HEADER.pack(_FRAME_MAGIC, seq, first_row, n_rows, payload.size, t_s)
    return head + _FRAME_CRC.pack(zlib.crc32(head, payload_crc))


def _decode_payload(raw: memoryview) -> pl.DataFrame:
    table = pa.ipc.open_stream(pa.py_buffer(raw)).read_all()
    out = pl.from_arrow(table, rechunk=False)
    return out if isinstance(out, pl.DataFrame) else out.to_frame()


def _scan_frames(raw: memoryview, start: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield ``(seq, first_row, n_rows, payload_start, frame_end)`` for each good frame.

    Stops silently at the first frame that is short, has a bad magic or fails its CRC;
    the caller compares the last ``frame_end`` with the buffer length to detect that.
    """
    offset = start
    end = len(raw)
    while offset + _FRAME_OVERHEAD <= end:
        magic, seq, first_row, n_rows, n_bytes, _t = _FRAME_HEADER.unpack_from(raw, offset)
        payload_start = offset + _FRAME_OVERHEAD
        if magic != _FRAME_MAGIC or payload_start + n_bytes > end:
            return
        (crc,) = _FRAME_CRC.unpack_from(raw, offset + _FRAME_HEADER.size)
        payload_crc = zlib.crc32(raw[payload_start:payload_start + n_bytes])
        if zlib.crc32(raw[offset:offset + _FRAME_HEADER.size], payload_crc) != crc:
            return
        yield seq, first_row, n_rows, payload_start, payload_start + n_bytes
        offset = payload_start + n_bytes


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _check_batch(df: object) -> pl.DataFrame:
    if not isinstance(df, pl.DataFrame):
        raise WALInputError(f"`df` must be a polars DataFrame; got {type(df).__name__}")
    for name, dtype in REQUIRED_COLUMNS.items():
        if name not in df.columns:
            raise WALInputError(f"`df` lacks the probe column {name!r}; columns are {df.columns}")
        if df.schema[name] != dtype:
            raise WALInputError(f"`df` column {name!r} must be {dtype}; got {df.schema[name]}")
    return df


class ProbeLog:
    """An append-only, fsync'd log of accepted probe batches (see the module docstring).

    Parameters
    ----------
    dir
        Directory of the segment files; created if absent.
    segment_max_bytes
        A new segment is started once the current one has reached this size. Smaller
        segments let :meth:`compact` and :meth:`enforce_retention` free space sooner.
    fsync
        Fsync every append before returning (turn off only in tests and benchmarks that
        measure the cost of fsync itself).
    retention_s
        :meth:`enforce_retention` deletes segments last written longer ago than this.

    Raises
    ------
    WALCorruptionError
        A segment header is unreadable. A torn *last frame* is not an error: it is cut off
        with a warning.
    """

    def __init__(
        self,
        dir: Path,
        *,
        segment_max_bytes: int = 64 * 2**20,
        fsync: bool = True,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        if segment_max_bytes < 1:
            raise WALInputError(f"`segment_max_bytes` must be >= 1; got {segment_max_bytes!r}")
        if not retention_s > 0:
            raise WALInputError(f"`retention_s` must be > 0; got {retention_s!r}")
        self.dir = Path(dir)
        self.segment_max_bytes = int(segment_max_bytes)
        self.fsync = bool(fsync)
        self.retention_s = float(retention_s)
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self.n_fsyncs = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segments = self._open_segments()
        last = self._segments[-1]
        self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        self._durable_seq = self._written_seq

    # ------------------------------------------------------------------ opening
    def _open_segments(self) -> list[_Segment]:
        for stale in self.dir.glob(".wal-*.tmp"):
            stale.unlink(missing_ok=True)
        segments = []
        for path in sorted(self.dir.glob("wal-*.arrow")):
            with open(path, "rb") as fh:
                first_seq, first_row = _decode_segment_header(fh.read(_SEGMENT_HEADER.size), path)
            segments.append(_Segment(first_seq, first_row, path))
        if not segments:
            segments.append(self._create_segment(1, 0))
            self._written_seq, self._next_row = 0, 0
            return segments
        self._written_seq, self._next_row = self._recover_tail(segments[-1])
        return segments

    def _recover_tail(self, seg: _Segment) -> tuple[int, int]:
        """Cut a torn last frame off the last segment; return (last seq, next row)."""
        raw = memoryview(seg.path.read_bytes())
        good_end = _SEGMENT_HEADER.size
        last_seq, next_row = seg.first_seq - 1, seg.first_row
        for seq, first_row, n_rows, _p, frame_end in _scan_frames(raw, good_end):
            if seq != last_seq + 1 or first_row != next_row:
                break
            last_seq, next_row, good_end = seq, first_row + n_rows, frame_end
        if good_end < len(raw):
            logger.warning(
                "write-ahead log %s: cutting %d bytes of a torn or corrupt tail after seq %d",
                seg.path, len(raw) - good_end, last_seq,
            )
            with open(seg.path, "r+b") as fh:
                fh.truncate(good_end)
                os.fsync(fh.fileno())
        return last_seq, next_row

    def _create_segment(self, first_seq: int, first_row: int) -> _Segment:
        path = self.dir / _segment_name(first_seq)
        header = _encode_segment_header(first_seq, first_row)
        write_atomic(path, lambda fh: fh.write(header))
        return _Segment(first_seq, first_row, path)

    # ------------------------------------------------------------------ writing
    @property
    def position(self) -> LogPosition:
        """Return the position of the last appended batch (``LogPosition.start()`` if none)."""
        with self._write_lock:
            return LogPosition(self._written_seq, self._next_row)

    def append(self, df: pl.DataFrame) -> LogPosition:
        """Append one batch and return its position once it is durable.

        The frame is encoded outside the lock, written under it, then fsync'd; appends
        from other threads that arrive meanwhile share the next fsync (group commit).
        A failed write is rolled back (the file is truncated to where it was), so a later
        append never follows a half-written frame.

        Parameters
        ----------
        df
            A probe batch with at least the columns of ``traffic.probes.REQUIRED_COLUMNS``
            (any further columns are kept as they are). An empty batch is allowed.

        Returns
        -------
        LogPosition
            The batch's sequence number and the global row count after it.

        Raises
        ------
        WALInputError
            ``df`` is not a polars DataFrame, lacks a probe column or has a wrong dtype.
        """
        df = _check_batch(df)
        payload, payload_crc = _encode_payload(df)
        t_s = time.time()
        with self._write_lock:
            if self._fd < 0:
                raise WALClosedError(f"the write-ahead log in {self.dir} is closed")
            self._roll_if_full()
            seq, first_row = self._written_seq + 1, self._next_row
            head = _frame_header(seq, first_row, df.height, payload, payload_crc, t_s)
            try:
                _write_all(self._fd, head)
                _write_all(self._fd, payload)
            except BaseException:
                os.ftruncate(self._fd, self._size)
                raise
            self._size += len(head) + payload.size
            self._written_seq, self._next_row = seq, first_row + df.height
        if self.fsync:
            self._sync_through(seq)
        return LogPosition(seq, first_row + df.height)

    def _sync_through(self, seq: int) -> None:
        with self._sync_lock:
            with self._write_lock:
                if self._durable_seq >= seq:
                    return
                target = self._written_seq
                # A duplicate descriptor stays valid if a roll closes the original meanwhile.
                fd = os.dup(self._fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._write_lock:
                self._durable_seq = max(self._durable_seq, target)
                self.n_fsyncs += 1

    def _roll_if_full(self) -> None:
        """Start a new segment when the current one is full (caller holds the write lock)."""
        if self._size < self.segment_max_bytes or self._written_seq < self._segments[-1].first_seq:
            return
        self._roll()

    def _roll(self) -> None:
        if self.fsync:
            os.fsync(self._fd)
            self.n_fsyncs += 1
        self._durable_seq = self._written_seq
        seg = self._create_segment(self._written_seq + 1, self._next_row)
        os.close(self._fd)
        self._segments.append(seg)
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size

    # ------------------------------------------------------------------ reading
    def read_from(self, position: LogPosition | None = None) -> Iterator[tuple[LogPosition, pl.DataFrame]]:
        """Yield ``(position, batch)`` for every batch after ``position``, in order.

        Reads what was appended before the call (later appends are not seen). Segments are
        read whole, one at a time.

        Raises
        ------
        WALCorruptionError
            A segment other than the last has a bad frame, a gap or a sequence break, or
            ``position`` lies before the oldest batch still in the log (it was compacted or
            expired away).
        """
        position = LogPosition.start() if position is None else position
        with self._write_lock:
            segments = list(self._segments)
            end_seq, end_size = self._written_seq, self._size
        if position.seq + 1 < segments[0].first_seq:
            raise WALCorruptionError(
                f"position seq {position.seq} is before the oldest batch in {self.dir} "
                f"(seq {segments[0].first_seq}); the batches between were compacted or expired"
            )
        for i, seg in enumerate(segments):
            seg_last = segments[i + 1].first_seq - 1 if i + 1 < len(segments) else end_seq
            if seg_last <= position.seq or seg_last < seg.first_seq:
                continue
            limit = end_size if i == len(segments) - 1 else None
            yield from self._read_segment(seg, seg_last, position.seq, limit)

    def _read_segment(
        self, seg: _Segment, seg_last: int, after_seq: int, limit: int | None
    ) -> Iterator[tuple[LogPosition, pl.DataFrame]]:
        with open(seg.path, "rb") as fh:
            raw = memoryview(fh.read() if limit is None else fh.read(limit))
        expect_seq, expect_row = seg.first_seq, seg.first_row
        for seq, first_row, n_rows, payload_start, frame_end in _scan_frames(raw, _SEGMENT_HEADER.size):
            if seq != expect_seq or first_row != expect_row:
                break
            expect_seq, expect_row = seq + 1, first_row + n_rows
            if seq > after_seq:
                df = _decode_payload(raw[payload_start:frame_end])
                yield LogPosition(seq, first_row + n_rows), df
            if seq == seg_last:
                return
        raise WALCorruptionError(
            f"segment {seg.path} ends at seq {expect_seq - 1} but seq {seg_last} was expected "
            "(a bad frame in a sealed segment)"
        )

    # ------------------------------------------------------------------ deleting
    def compact(self, upto: LogPosition) -> list[Path]:
        """Delete segments whose batches all lie at or before ``upto``; return their paths.

        Call it with the position of the *oldest* checkpoint still kept, so that falling
        back to an older checkpoint can still replay. The last segment is never deleted,
        so sequence numbers carry on after a restart.
        """
        with self._write_lock:
            keep_from = 0
            for i in range(len(self._segments) - 1):
                if self._segments[i + 1].first_seq - 1 <= upto.seq:
                    keep_from = i + 1
            doomed = self._segments[:keep_from]
            self._segments = self._segments[keep_from:]
        return self._unlink(doomed)

    def enforce_retention(self, *, now_s: float | None = None) -> list[Path]:
        """Delete segments last written more than ``retention_s`` before ``now_s``.

        Age is the segment file's modification time (its last append). If the current
        segment is itself too old and holds batches, a new empty segment is started first,
        so the old data goes and sequence numbers still carry on.
        """
        now_s = time.time() if now_s is None else now_s
        cutoff = now_s - self.retention_s
        with self._write_lock:
            last = self._segments[-1]
            if self._written_seq >= last.first_seq and last.path.stat().st_mtime < cutoff:
                self._roll()
            doomed = [s for s in self._segments[:-1] if s.path.stat().st_mtime < cutoff]
            self._segments = [s for s in self._segments if s not in doomed]
        return self._unlink(doomed)

    def _unlink(self, doomed: list[_Segment]) -> list[Path]:
        for seg in doomed:
            seg.path.unlink(missing_ok=True)
        if doomed:
            fsync_directory(self.dir)
        return [seg.path for seg in doomed]

    def segment_paths(self) -> list[Path]:
        """Return the live segment files, oldest first."""
        with self._write_lock:
            return [s.path for s in self._segments]

    def close(self) -> None:
        """Fsync and close the current segment; the log cannot be used afterwards."""
        with self._sync_lock, self._write_lock:
            if self._fd >= 0:
                if self.fsync:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> ProbeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
