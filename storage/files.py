"""Crash-safe file writes: a file is replaced whole or not at all, and survives a power cut.

Used by the network files (``graph.io``, ``graph.geojson``) and by the traffic state on disk
(the probe log, checkpoints, snapshots, profiles). Nothing here knows about networks or traffic.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Write a file so that readers see either the old or the complete new content.

    ``write(fh)`` fills a temporary file in the same directory; it is then flushed to disk
    (``fsync``) and renamed over ``path`` (``os.replace``, atomic on POSIX). On any error the
    temporary file is removed and ``path`` is untouched. The new file gets the old one's
    permissions, or 0644.
    """
    path = Path(path)
    directory = path.parent
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o644
    # Hidden and ending in .tmp: readers of a directory (snapshots, checkpoints, the probe
    # log) skip such names, and their owners remove stale ones.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries to disk, so a rename or a new file in it survives a crash.

    Filesystems that cannot fsync a directory (``EINVAL``) are tolerated; other errors raise.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
