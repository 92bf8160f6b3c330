"""Network files: the compiled on-disk format, and one loader that recognises every format.

The compiled format is an uncompressed ZIP archive (what ``numpy.savez`` writes) whose first
member, ``header.json``, names the format, its version, the network's name and content
``version``, and lists the arrays; every array of :meth:`RoadNetwork.arrays` follows as a
``.npy`` member. Nothing is recomputed on load. Files written since the country-scale work
place each array's data at a 64-byte boundary of the file (a padding record in the member's
ZIP extra field), so :func:`load_compiled` with ``mmap=True`` maps the arrays read-only
straight from the file: processes on one machine then share the page cache instead of each
holding a copy. Older files (unaligned members) still load; their arrays are read into memory. The content hash (0.07-0.15 s for the 87 MB
DIMACS NY network on the 2-core machine) is recomputed and compared with the header only
when asked (``verify=True``): by default the version recorded in the header is
trusted, because every member's CRC-32 is checked as it is read (a flipped or missing byte
fails the load), and recomputing the hash would double the load time.
"""

from __future__ import annotations

import json
import mmap as _mmap
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import BinaryIO

import numpy as np

from graph.errors import NetworkFileNotFoundError, NetworkFormatError
from graph.network import NAME_ARRAYS, RoadNetwork, assemble_network, empty_name_arrays
from storage import write_atomic

#: Name written into, and required in, a compiled file's header.
COMPILED_FORMAT = "traffic-road-network"
#: Version of the compiled layout; bump when array names, dtypes or meanings change.
#: 2 added the name table (``edge_name``, ``edge_ref``, ``edge_flags``, ``name_bytes``,
#: ``name_offsets``); version-1 files still load, without names (same version as before).
#: 3 added ``geom_osm_node`` (OSM node id of every geometry point, 8 B per point); files of
#: versions 1 and 2 load with -1 there (unknown), and keep their version.
COMPILED_FORMAT_VERSION = 3
#: Older layouts this program still reads.
_READABLE_FORMAT_VERSIONS = (1, 2, 3)
_HEADER = "header.json"

#: ``progress(stage, fraction)``: a loader reports its stage name and 0..1 progress.
ProgressCallback = Callable[[str, float], None]

#: What :func:`load_network` accepts, for error messages.
ACCEPTED_FORMATS = (
    "compiled network (.net/.npz, written by save_network)",
    "OpenStreetMap .osm.pbf / .osm / .osm.bz2",
    "GeoJSON FeatureCollection (.geojson/.json)",
    "DIMACS .gr[.gz] with its .co[.gz] beside it",
)

_ARRAY_DTYPES: dict[str, str] = {
    "node_lat": "f8", "node_lon": "f8", "node_osm_id": "i8",
    "edge_src": "i4", "edge_dst": "i4", "edge_length_m": "f8", "edge_speed_kph": "f8",
    "edge_road_class": "i1", "edge_oneway": "b1", "edge_osm_way": "i8",
    "edge_osm_from": "i8", "edge_osm_to": "i8", "edge_reversed": "b1", "edge_key": "i8",
    "geom_offsets": "i8", "geom_lat": "f8", "geom_lon": "f8",
    "out_first": "i4", "out_edge": "i4", "in_first": "i4", "in_edge": "i4",
    "turn_from_edge": "i4", "turn_via_node": "i4", "turn_to_edge": "i4", "turn_kind": "i1",
    "edge_name": "i4", "edge_ref": "i4", "edge_flags": "u1", "name_bytes": "u1",
    "name_offsets": "i8", "geom_osm_node": "i8",
}


def save_network(net: RoadNetwork, path: str | os.PathLike[str]) -> Path:
    """Write ``net`` to ``path`` in the compiled format, atomically.

    The archive is written to a temporary file in the same directory, flushed to disk
    (``fsync``) and renamed over ``path``, so a reader never sees a half-written network
    and a failed write leaves any previous file in place. Returns the path written.
    Uncompressed on purpose: loading is then a plain read, about 0.1 s for 87 MB.
    """
    path = Path(path)
    arrays = net.arrays()
    header = {
        "format": COMPILED_FORMAT,
        "format_version": COMPILED_FORMAT_VERSION,
        "name": net.name,
        "version": net.version,
        "arrays": {k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()},
    }

    write_atomic(path, lambda fh: write_array_archive(fh, header, arrays))
    return path


#: Alignment (bytes) of every array's data in files written by :func:`write_array_archive`.
ARRAY_ALIGN = 64
#: ZIP extra-field id of the padding record (the id Android's zipalign uses).
_PAD_EXTRA_ID = 0xD935
_LOCAL_HEADER = 30  # fixed part of a ZIP local file header
_ZIP64_EXTRA = 20  # the zip64 record zipfile adds to a local header with force_zip64


def write_array_archive(fh: BinaryIO, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``header`` as ``header.json`` and each array as ``<key>.npy`` into an
    uncompressed ZIP on the seekable file ``fh``, each array's data 64-byte aligned.

    The alignment comes from a padding record in each member's local extra field; the
    ``.npy`` header itself is padded to a multiple of 64 bytes by NumPy, so the data starts
    on a boundary and :func:`map_array_archive` can map it in place. Any ZIP reader (and
    ``numpy.load``) still reads the file.
    """
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_HEADER, json.dumps(header, indent=1))
        for key, a in arrays.items():
            name = f"{key}.npy"
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            data_at = zf.start_dir + _LOCAL_HEADER + len(name.encode()) + _ZIP64_EXTRA
            pad = -data_at % ARRAY_ALIGN
            if 0 < pad < 4:  # a record needs 4 bytes of its own
                pad += ARRAY_ALIGN
            if pad:
                info.extra = struct.pack("<HH", _PAD_EXTRA_ID, pad - 4) + bytes(pad - 4)
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)


def map_array_archive(path: str | os.PathLike[str]) -> tuple[zipfile.ZipFile, dict[str, np.ndarray]]:
    """Map every ``.npy`` member of an uncompressed ZIP read-only; returns the archive
    (open, for its header; close it) and the arrays by key (member name without ``.npy``).

    Members whose data is aligned for their dtype become read-only views of one shared
    ``mmap`` of the file (no copy; pages are loaded on first touch and shared with every
    other process mapping the file). Compressed, Fortran-ordered or misaligned members
    (files written before :func:`write_array_archive` aligned them) are read into memory.
    CRC-32s are not checked for mapped members (that would read the whole file).

    Raises ``ValueError`` / ``zipfile.BadZipFile`` / ``OSError`` on a malformed file.
    """
    path = Path(path)
    zf = zipfile.ZipFile(path)
    try:
        with path.open("rb") as fh:
            mm = _mmap.mmap(fh.fileno(), 0, access=_mmap.ACCESS_READ)
            arrays = {}
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    key = info.filename[:-4]
                    arrays[key] = _mapped_member(zf, info, fh, mm)
    except BaseException:
        zf.close()
        raise
    return zf, arrays


def _mapped_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, fh: BinaryIO,
                   mm: _mmap.mmap) -> np.ndarray:
    """One member as a view of ``mm`` when it can be, else read (see map_array_archive)."""
    if info.compress_type == zipfile.ZIP_STORED:
        local = mm[info.header_offset:info.header_offset + _LOCAL_HEADER]
        if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
            raise ValueError(f"member {info.filename}: bad local header")
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        start = info.header_offset + _LOCAL_HEADER + n_name + n_extra
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        data = fh.tell()
        count = int(np.prod(shape, dtype=np.int64))
        end = data + count * dtype.itemsize
        if end - start != info.file_size or end > len(mm):
            raise ValueError(f"member {info.filename}: sizes disagree (cut short?)")
        if not fortran and not dtype.hasobject and data % max(dtype.alignment, 1) == 0:
            return np.frombuffer(mm, dtype=dtype, count=count, offset=data).reshape(shape)
    with zf.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


class MappedRoadNetwork(RoadNetwork):
    """A :class:`RoadNetwork` whose arrays map a compiled file, and which pickles as that
    file's path and version instead of its arrays.

    Made by :func:`load_compiled` with ``mmap=True, pickle_by_path=True``. Unpickling maps
    the same file again (:func:`open_mapped`), so a network handed to Ray actors on the same
    machine costs one page-cache copy for all of them rather than an object-store copy.
    Only for processes that see the same file system: unpickling raises
    :class:`NetworkFormatError` when the file is gone or now holds another version.
    """

    __slots__ = ("source",)

    def __reduce_ex__(self, protocol):  # type: ignore[no-untyped-def]
        source = getattr(self, "source", None)
        if source is None:  # e.g. made by dataclasses.replace: pickle the arrays
            return super().__reduce_ex__(protocol)
        return (open_mapped, (source, self.version))


def open_mapped(path: str, version: str) -> MappedRoadNetwork:
    """Map the compiled network at ``path`` (what a pickled :class:`MappedRoadNetwork`
    becomes); raises :class:`NetworkFormatError` unless it still holds ``version``."""
    net = load_compiled(path, mmap=True, pickle_by_path=True)
    if net.version != version:
        raise NetworkFormatError(
            f"{path}: now holds network version {net.version}, not {version} as when it was "
            "shared; replace a served network through PUT /v1/network, not on disk")
    return net  # type: ignore[return-value]


def load_compiled(path: str | os.PathLike[str], *, verify: bool = False,
                  mmap: bool = False, pickle_by_path: bool = False) -> RoadNetwork:
    """Read a network written by :func:`save_network`.

    Checks the header (format name and version, the array list, dtypes and consistent
    lengths) and each member's CRC-32. With ``verify=True`` it also recomputes the content
    hash and requires it to equal the recorded version (catches a file whose arrays were
    rewritten with fresh CRCs; costs about as much as the read itself).

    With ``mmap=True`` the arrays are read-only views of a shared mapping of the file
    (:func:`map_array_archive`): loading costs O(1) in the network's size and the pages
    are shared by every process that maps the same file. CRC-32s of mapped members are not
    checked then (use ``verify=True`` to check the content hash). Replace the file only by
    renaming a new one over it (as :func:`save_network` does), never by rewriting it in
    place, while a process maps it. Arrays pickle as copies (a Ray argument carries the
    data) unless ``pickle_by_path`` is also set: then the result is a
    :class:`MappedRoadNetwork`, which pickles as the file's path (same machine only).

    Raises
    ------
    NetworkFileNotFoundError
        ``path`` does not exist.
    NetworkFormatError
        The file is not a compiled network, is of an unsupported format version, is cut
        short or corrupt; the message names the file.
    """
    path = Path(path)
    _require_file(path)
    try:
        if mmap:
            zf, mapped = map_array_archive(path)
            with zf:
                header = _read_header(zf, path)
            arrays = {key: mapped[key] for key in _ARRAY_DTYPES if key in mapped
                      or not _optional(key, header)}
        else:
            with zipfile.ZipFile(path) as zf:
                header = _read_header(zf, path)
                arrays = {}
                members = set(zf.namelist())
                for key in _ARRAY_DTYPES:
                    if f"{key}.npy" not in members and _optional(key, header):
                        continue
                    with zf.open(f"{key}.npy") as member:
                        arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    except NetworkFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, EOFError,
            OSError) as exc:
        raise NetworkFormatError(
            f"{path}: not a readable compiled network (truncated or corrupt?): {exc}"
        ) from exc
    if any(key not in arrays for key in NAME_ARRAYS):  # a version-1 file: no names
        arrays.update(empty_name_arrays(arrays["edge_src"].size))
    if "geom_osm_node" not in arrays:  # before version 3: OSM node ids of points unknown
        arrays["geom_osm_node"] = np.full(arrays["geom_lat"].size, -1, dtype=np.int64)
    _check_arrays(arrays, path)
    recorded = header.get("version")
    if not isinstance(recorded, str) or not recorded:
        raise NetworkFormatError(f"{path}: the compiled header records no version")
    net = assemble_network(arrays, name=str(header.get("name", "")),
                           version=None if verify else recorded)
    if net.version != recorded:
        raise NetworkFormatError(
            f"{path}: content does not match its recorded version {header.get('version')!r} "
            f"(got {net.version}): the file is corrupt"
        )
    if mmap and pickle_by_path:
        mapped = MappedRoadNetwork(**{f.name: getattr(net, f.name) for f in fields(net)})
        object.__setattr__(mapped, "source", str(Path(path).resolve()))
        return mapped
    return net


def read_compiled_header(path: str | os.PathLike[str]) -> dict:
    """The header of a compiled network (name, ``version``, ``arrays``: key -> [dtype, shape])
    without reading any array; raises :class:`NetworkFormatError` as :func:`load_compiled`."""
    path = Path(path)
    _require_file(path)
    try:
        with zipfile.ZipFile(path) as zf:
            return _read_header(zf, path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise NetworkFormatError(f"{path}: not a readable compiled network: {exc}") from exc


def load_network(
    path: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    co_path: str | os.PathLike[str] | None = None,
    mmap: bool = False,
    pickle_by_path: bool = False,
) -> RoadNetwork:
    """Load a network from any supported file, recognising the format by its content.

    ZIP magic -> compiled network; a PBF ``OSMHeader`` block, XML, or bzip2 -> OpenStreetMap
    (through :func:`graph.osm.load_osm`); JSON starting with ``{`` -> GeoJSON; a DIMACS
    ``p sp`` file (plain or gzip) -> DIMACS, with the coordinates from ``co_path`` or found
    beside it (:func:`graph.dimacs.find_coordinates`).

    Parameters
    ----------
    path
        The file to load.
    progress
        Called as ``progress(stage, fraction)`` during long loads (OSM import).
    co_path
        DIMACS coordinates, when not beside the ``.gr`` file under the usual name.
    mmap
        Map a compiled network's arrays read-only instead of reading them
        (:func:`load_compiled`); other formats are parsed into memory regardless.
    pickle_by_path
        With ``mmap``, a compiled network pickles as its path (:class:`MappedRoadNetwork`).

    Raises
    ------
    NetworkFileNotFoundError
        ``path`` does not exist.
    NetworkFormatError
        The content is none of the accepted formats (the message lists them), or the
        chosen loader rejects it.
    """
    path = Path(path)
    _require_file(path)
    kind = detect_format(path)
    if progress is not None and kind != "osm":
        progress(f"read {kind}", 0.0)
    if kind == "compiled":
        net = load_compiled(path, mmap=mmap, pickle_by_path=pickle_by_path)
    elif kind == "osm":
        from graph.osm import load_osm

        net = load_osm(path, progress=progress)
    elif kind == "geojson":
        from graph.geojson import load_geojson

        net = load_geojson(path)
    else:
        from graph.dimacs import find_coordinates, load_dimacs

        net = load_dimacs(path, co_path if co_path is not None else find_coordinates(path))
    if progress is not None:
        progress("done", 1.0)
    return net


def detect_format(path: str | os.PathLike[str]) -> str:
    """Return ``"compiled"``, ``"osm"``, ``"geojson"`` or ``"dimacs"`` for a file's content.

    Raises
    ------
    NetworkFormatError
        The content is none of them; the message lists the accepted formats.
    """
    path = Path(path)
    _require_file(path)
    with path.open("rb") as fh:
        head = fh.read(4096)
    name = path.name.lower()
    if head.startswith(b"PK\x03\x04"):
        return "compiled"
    if head.startswith(b"BZh") or b"OSMHeader" in head[:64]:
        return "osm"
    if head.startswith(b"\x1f\x8b"):
        head = _gunzip_head(path)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<"):
        if b"<osm" in text:
            return "osm"
    elif text.startswith(b"{"):
        return "geojson"
    elif text.startswith((b"c", b"p sp")) and (b"p sp " in text or ".gr" in name):
        return "dimacs"
    if not head:
        what = "the file is empty"
    else:
        what = "its content matches none of them"
    raise NetworkFormatError(
        f"{path}: not a road network file ({what}); accepted formats: "
        + "; ".join(ACCEPTED_FORMATS)
    )


def _gunzip_head(path: Path) -> bytes:
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as fh:
            return fh.read(4096)
    except (OSError, EOFError, zlib.error):
        return b""


def _read_header(zf: zipfile.ZipFile, path: Path) -> dict:
    try:
        header = json.loads(zf.read(_HEADER))
    except KeyError as exc:
        raise NetworkFormatError(
            f"{path}: a ZIP archive but not a compiled network (no {_HEADER})"
        ) from exc
    except json.JSONDecodeError as exc:
        raise NetworkFormatError(f"{path}: the compiled header is not valid JSON") from exc
    if not isinstance(header, dict) or header.get("format") != COMPILED_FORMAT:
        raise NetworkFormatError(f"{path}: a ZIP archive but not a compiled network")
    if header.get("format_version") not in _READABLE_FORMAT_VERSIONS:
        raise NetworkFormatError(
            f"{path}: compiled format version {header.get('format_version')!r} is not "
            f"supported (this program reads version {COMPILED_FORMAT_VERSION}); re-import it"
        )
    return header


def _check_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Cheap structural checks: dtypes, 1-D, and lengths that agree (O(1) each)."""
    for key, dtype in _ARRAY_DTYPES.items():
        a = arrays[key]
        if a.dtype != np.dtype(dtype) or a.ndim != 1:
            raise NetworkFormatError(f"{path}: array {key} has dtype {a.dtype} / shape {a.shape}")
    n, m = arrays["node_lat"].size, arrays["edge_src"].size
    offsets = arrays["geom_offsets"]
    r, g = arrays["turn_from_edge"].size, int(offsets[-1]) if offsets.size else 0
    name_off = arrays["name_offsets"]
    k, s = name_off.size - 1, int(name_off[-1]) if name_off.size else 0
    sizes = (
        (n, ("node_lon", "node_osm_id")),
        (m, ("edge_dst", "edge_length_m", "edge_speed_kph", "edge_road_class", "edge_oneway",
            "edge_osm_way", "edge_osm_from", "edge_osm_to", "edge_reversed", "edge_key",
            "out_edge", "in_edge", "edge_name", "edge_ref", "edge_flags")),
        (n + 1, ("out_first", "in_first")),
        (m + 1, ("geom_offsets",)),
        (g, ("geom_lat", "geom_lon", "geom_osm_node")),
        (r, ("turn_via_node", "turn_to_edge", "turn_kind")),
        (s, ("name_bytes",)),
    )
    if k < 0:
        raise NetworkFormatError(f"{path}: array name_offsets is empty (needs k + 1 entries)")
    for size, keys in sizes:
        for key in keys:
            if arrays[key].size != size:
                raise NetworkFormatError(
                    f"{path}: array {key} has {arrays[key].size} entries, expected {size}"
                )


def _optional(key: str, header: dict) -> bool:
    """Whether array ``key`` may be absent: the name arrays in a version-1 file,
    ``geom_osm_node`` in a file before version 3."""
    if key == "geom_osm_node":
        return header.get("format_version") in (1, 2)
    return key in NAME_ARRAYS and header.get("format_version") == 1


def _require_file(path: Path) -> None:
    if not path.exists():
        raise NetworkFileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise NetworkFileNotFoundError(f"{path}: is a directory, not a network file")
