"""Vehicle-id pseudonyms: a keyed hash applied before ids reach the log or any state.

A pseudonym is the first 8 bytes of keyed BLAKE2b (domain-separated with a ``person``
tag) of the UTF-8 id, as 16 lowercase hex characters. The same id and key always give the
same pseudonym, so per-vehicle logic (duplicates, jumps) still works; a different key
gives unrelated pseudonyms; without the key an id cannot be recovered or even tested
(unlike a plain hash, which anyone can compute over a list of candidate ids).

The key text comes from configuration (the caller reads ``TRAFFIC_PSEUDONYM_KEY`` once)
or, when none is configured, from ``<data_dir>/pseudonym.key``, created with 32 random
bytes and mode 0600 on first use, so pseudonyms stay stable across restarts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
from pathlib import Path

import polars as pl

from traffic.errors import TrafficError

__all__ = [
    "KEY_FILE_NAME",
    "PseudonymInputError",
    "PseudonymKeyError",
    "Pseudonymizer",
    "key_from_text",
    "load_or_create_key",
]

logger = logging.getLogger(__name__)

#: Name of the generated key file under the data directory.
KEY_FILE_NAME = "pseudonym.key"
_MIN_KEY_TEXT_CHARS = 16
_PERSON_ID = b"traffic-vid-v1"
_PERSON_KEY = b"traffic-key-v1"


class PseudonymKeyError(TrafficError, ValueError):
    """A pseudonym key (configured text, key file or bytes) is missing, short or unreadable."""


class PseudonymInputError(TrafficError, ValueError):
    """Ids handed to the pseudonymizer are not a string column."""


def key_from_text(text: str, *, source: str = "key") -> bytes:
    """Derive the 32-byte hashing key from configured key text.

    Any text of at least 16 characters (after stripping whitespace) works; a random hex
    string, as the generated key file holds, is best. ``source`` names where the text came
    from in error messages (say ``"TRAFFIC_PSEUDONYM_KEY"``).

    Raises
    ------
    PseudonymKeyError
        The text is shorter than 16 characters.
    """
    text = text.strip()
    if len(text) < _MIN_KEY_TEXT_CHARS:
        raise PseudonymKeyError(
            f"{source} must be at least {_MIN_KEY_TEXT_CHARS} characters; got {len(text)}")
    return hashlib.blake2b(text.encode(), digest_size=32, person=_PERSON_KEY).digest()


def _create_key_file(path: Path) -> None:
    """Write a fresh random key to ``path`` (0600) unless another process got there first."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails if the name exists, so two processes starting together agree on one key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_or_create_key(data_dir: Path, *, configured: str | None = None) -> bytes:
    """Return the pseudonym key: from ``configured`` text, else from the data dir's key file.

    Parameters
    ----------
    data_dir
        Where ``pseudonym.key`` lives; created if absent. Used only when ``configured`` is
        None.
    configured
        Key text from configuration (``TRAFFIC_PSEUDONYM_KEY``), or None.

    Raises
    ------
    PseudonymKeyError
        The configured text or the key file's content is too short.
    """
    if configured is not None:
        return key_from_text(configured, source="the configured pseudonym key")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE_NAME
    if not path.exists():
        _create_key_file(path)
        logger.info("generated a new pseudonym key in %s", path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("pseudonym key file %s is readable by others (mode %o); chmod 600 it",
                       path, mode)
    return key_from_text(path.read_text(), source=f"key file {path}")


class Pseudonymizer:
    """Map vehicle ids to stable keyed pseudonyms (16 hex characters).

    Parameters
    ----------
    key
        16 to 64 key bytes (from :func:`load_or_create_key`).
    cache_size
        How many id -> pseudonym pairs to remember between batches; vehicles report again
        and again, so most ids of a batch are then a dictionary hit instead of a hash.
        The cache is dropped whole when full.

    Notes
    -----
    Work is per *unique* id of a batch: one BLAKE2b call (about a microsecond with the
    Python call overhead) or one cache hit each, then a vectorised polars replace maps
    every row. See ``benchmarks/wal.py`` for ids/s.
    """

    def __init__(self, key: bytes, *, cache_size: int = 1_000_000) -> None:
        if not isinstance(key, bytes) or not 16 <= len(key) <= 64:
            got = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
            raise PseudonymKeyError(f"`key` must be 16 to 64 bytes; got {got}")
        if cache_size < 0:
            raise PseudonymInputError(f"`cache_size` must be >= 0; got {cache_size!r}")
        self._key = key
        self._cache_size = int(cache_size)
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Pseudonymizer(key=<{len(self._key)} bytes hidden>)"

    def pseudonym(self, vehicle_id: str) -> str:
        """Return the pseudonym of one id (the slow reference for :meth:`pseudonymize`)."""
        return hashlib.blake2b(vehicle_id.encode(), digest_size=8, key=self._key,
                               person=_PERSON_ID).hexdigest()

    def pseudonymize(self, ids: pl.Series) -> pl.Series:
        """Return a String Series of pseudonyms, same length and name; nulls stay null.

        Raises
        ------
        PseudonymInputError
            ``ids`` is not a polars String Series.
        """
        if not isinstance(ids, pl.Series) or ids.dtype != pl.Utf8:
            got = ids.dtype if isinstance(ids, pl.Series) else type(ids).__name__
            raise PseudonymInputError(f"`ids` must be a polars String Series; got {got}")
        uniq = ids.drop_nulls().unique().to_list()
        if not uniq:
            return pl.Series(ids.name, [None] * ids.len(), dtype=pl.Utf8)
        cache = self._cache
        if len(cache) + len(uniq) > self._cache_size:
            cache.clear()
        out = []
        for vid in uniq:
            p = cache.get(vid)
            if p is None:
                p = self.pseudonym(vid)
                if self._cache_size:
                    cache[vid] = p
            out.append(p)
        return ids.replace_strict(uniq, out, default=None, return_dtype=pl.Utf8)

    def pseudonymize_frame(self, df: pl.DataFrame, *, column: str = "vehicle_id") -> pl.DataFrame:
        """Return ``df`` with ``column`` replaced by its pseudonyms (other columns untouched)."""
        if not isinstance(df, pl.DataFrame) or column not in df.columns:
            raise PseudonymInputError(f"`df` must be a polars DataFrame with a {column!r} column")
        return df.with_columns(self.pseudonymize(df[column]))
