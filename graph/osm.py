"""OpenStreetMap import: a car :class:`~graph.network.RoadNetwork` from ``.osm.pbf`` / ``.osm``.

The file is read once through pyosmium (libosmium's reader; node locations are cached in C++
and attached to the ways), keeping only the raw arrays of the ways the car profile in
:mod:`graph.osm_profile` accepts. Splitting ways at junctions, building edge geometry and
mapping turn restrictions to edge pairs are then array operations over all ways at once.
Each edge keeps its way's ``name`` and ``ref`` (indices into the network's string table) and
flags (``junction=roundabout|circular``, ``toll``, ``route=ferry``); car ferries are imported
as ways of class ``unknown`` with the ferry flag and a speed from their ``duration``.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import osmium

from graph.errors import NetworkFileNotFoundError, NetworkFormatError, NoDrivableRoadError
from graph.network import (
    TURN_NO,
    TURN_ONLY,
    RoadNetwork,
    build_network,
    haversine_m,
    index_strings,
)
from graph.osm_profile import CarProfile, WayAttributes, ferry_speed_kph

__all__ = ["OsmImportStats", "load_osm", "load_osm_with_stats", "split_ways"]

log = logging.getLogger(__name__)

#: ``progress(stage, fraction)``: ``fraction`` is the share of the whole import done (0..1).
ProgressCallback = Callable[[str, float], None]

_UNDEFINED_COORDINATE = 2147483647  # libosmium's fixed-point value for "no location"
_COORD_SCALE = 1e-7  # libosmium stores degrees * 10^7 as int32
_OSM_SUFFIXES = (".osm.pbf", ".osm.bz2", ".osm.gz", ".osm", ".pbf")


@dataclass(frozen=True, slots=True)
class OsmImportStats:
    """Counts from one OSM import, for logs and the CLI.

    ``restrictions_skipped`` maps a reason to a count: ``via_way`` (via member is a way, not
    supported), ``missing_member`` (a member way or node is not in the network: absent from
    the extract, or not a car road), ``ambiguous`` (the from/to way does not start or end at
    the via node, so no single edge is meant), ``not_for_cars`` (no ``restriction`` or
    ``restriction:motorcar`` tag, an ``except`` that names motor cars, or an unknown kind),
    ``malformed`` (members missing or in the wrong roles).
    """

    highway_ways: int
    ways_kept: int
    ways_with_missing_nodes: int
    missing_node_refs: int
    restrictions_read: int
    restrictions_kept: int
    restrictions_skipped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Raw:
    """What the reader collects: flat Python lists, turned into arrays once at the end."""

    way_id: list[int] = field(default_factory=list)
    way_len: list[int] = field(default_factory=list)
    way_attr: list[tuple[int, bool, bool, float, float]] = field(default_factory=list)
    way_name: list[str | None] = field(default_factory=list)  # OSM name, per kept way
    way_ref: list[str | None] = field(default_factory=list)  # OSM ref, per kept way
    way_flags: list[int] = field(default_factory=list)  # EDGE_* bits, per kept way
    # Kept ferries whose speed comes from their duration: (way index, duration s)
    ferry_duration: list[tuple[int, float]] = field(default_factory=list)
    ref: list[int] = field(default_factory=list)
    x: list[int] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    # (kind, from way ids, via node id, to way ids), one per supported restriction relation
    restrictions: list[tuple[int, list[int], int, list[int]]] = field(default_factory=list)
    highway_ways: int = 0
    restrictions_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def load_osm(
    path: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    country_speeds: Mapping[str, float] | None = None,
) -> RoadNetwork:
    """Import a car road network from an OSM file (``.osm.pbf``, ``.osm``, ``.osm.gz|.bz2``).

    Ways are kept or dropped by :class:`graph.osm_profile.CarProfile` (drivable highway
    classes, access, oneway and maxspeed rules). Each kept way is split at every node another
    kept way also uses (or that it uses twice) and at its ends; each piece is one edge, two for
    a two-way road, with the intermediate nodes kept as geometry in the direction of travel.
    Network nodes are those junctions and ends only. Edge length is the sum of great-circle
    segment lengths (m). Nodes missing from the extract split the way at the gap. Turn
    restrictions (``type=restriction``, via a node) become edge pairs; others are counted and
    skipped (see :func:`load_osm_with_stats`).

    Runs in one pass over the file; the splitting is vectorised, so Liechtenstein (3 MB PBF)
    imports in well under a second.

    Parameters
    ----------
    path
        The OSM file. Its format is detected from its first bytes, not its name.
    progress
        Called now and then as ``progress(stage, fraction)`` with the share of the import done.
    country_speeds
        Extra ``{"XX:context": km/h}`` entries for ``maxspeed=XX:context`` values.

    Returns
    -------
    RoadNetwork
        Named after the file (without its OSM suffixes).

    Raises
    ------
    NetworkFileNotFoundError
        The file does not exist or cannot be read.
    NetworkFormatError
        The file is not OSM data, is truncated or corrupt, or has coordinates out of range.
    NoDrivableRoadError
        The file holds no road a car may drive on.
    """
    net, _ = load_osm_with_stats(path, progress=progress, country_speeds=country_speeds)
    return net


def load_osm_with_stats(
    path: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    country_speeds: Mapping[str, float] | None = None,
) -> tuple[RoadNetwork, OsmImportStats]:
    """Like :func:`load_osm`, and also return the import's :class:`OsmImportStats`."""
    path = Path(path)
    source = str(path)
    report = progress or (lambda stage, fraction: None)
    osm_file = _open_osm_file(path, source)
    report("read", 0.0)
    raw = _read(osm_file, CarProfile(country_speeds=country_speeds), source)
    report("split", 0.6)
    if not raw.way_id:
        raise NoDrivableRoadError(
            f"{source}: no road a car may drive on ({raw.highway_ways} highway ways read, "
            "none passes the car profile)"
        )
    net, stats = _assemble(raw, path, source, report)
    report("done", 1.0)
    log.info("%s: %d nodes, %d edges, %s", source, net.n_nodes, net.n_edges, stats)
    return net, stats


def _open_osm_file(path: Path, source: str) -> osmium.io.File:
    """Check the file exists and holds OSM data; return it with its format set."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise NetworkFileNotFoundError(
            f"{source}: cannot read the network file ({exc.strerror})"
        ) from exc
    if not head:
        raise NetworkFormatError(f"{source}: the file is empty; expected OSM PBF or OSM XML data")
    compression = ""
    if head[:2] == b"\x1f\x8b":
        compression = ".gz"
        head = _decompressed_head(gzip.open, path, source)
    elif head[:3] == b"BZh":
        compression = ".bz2"
        head = _decompressed_head(bz2.open, path, source)
    if b"OSMHeader" in head[:32]:
        fmt = "pbf"
    elif b"<osm" in head and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        fmt = "osm"
    else:
        hint = " (it looks like JSON/GeoJSON)" if head.lstrip()[:1] in (b"{", b"[") else ""
        raise NetworkFormatError(
            f"{source}: not an OSM file{hint}; expected OSM PBF (.osm.pbf) or OSM XML (.osm)"
        )
    if fmt == "pbf" and compression:
        raise NetworkFormatError(f"{source}: a compressed PBF file is not supported; decompress it")
    if fmt == "osm":
        opener = {".gz": gzip.open, ".bz2": bz2.open}.get(compression, open)
        check_xml_coordinate_exponents(opener, path, source)
    return osmium.io.File(source, fmt + compression)


# A lat/lon attribute written with an exponent (`lat="1e300"`). libosmium reads a mantissa
# with an exponent of three or more digits as 0 without an error, which would put the node
# on the equator; `check_xml_coordinate_exponents` catches those before libosmium reads.
_EXPONENT_COORDINATE = re.compile(rb"""\b(lat|lon)\s*=\s*["']([^"'<>]{0,64}[eE][^"'<>]{0,64})["']""")
_SCAN_CHUNK = 8 * 2**20
_SCAN_OVERLAP = 256


def check_xml_coordinate_exponents(opener: Callable[..., Any], path: Path, source: str) -> None:
    """Raise ``NetworkFormatError`` for an OSM XML coordinate in exponent notation that is
    not a finite number within range (lat within [-90, 90], lon within [-180, 180]).

    Streams the (decompressed) file once in 8 MiB chunks; OSM tools never write exponents,
    so the pattern rarely matches and the scan costs about a regex pass over the file.
    """
    tail = b""
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(_SCAN_CHUNK):
                text = tail + chunk
                for m in _EXPONENT_COORDINATE.finditer(text):
                    _check_exponent_value(m.group(1).decode(), m.group(2), source)
                tail = text[-_SCAN_OVERLAP:]
    except (OSError, EOFError) as exc:
        raise NetworkFormatError(f"{source}: the file cannot be read to the end ({exc})") from exc


def _check_exponent_value(axis: str, raw: bytes, source: str) -> None:
    text = raw.decode("utf-8", "replace")
    limit = 90.0 if axis == "lat" else 180.0
    try:
        value = float(text)
    except ValueError:
        raise NetworkFormatError(f"{source}: wrong format for coordinate: {axis}={text!r}") from None
    if not (abs(value) <= limit):
        raise NetworkFormatError(
            f"{source}: coordinate out of range: {axis}={text!r} ({axis} must be within "
            f"[-{limit:g}, {limit:g}])")


def _decompressed_head(opener: Callable[..., object], path: Path, source: str) -> bytes:
    try:
        with opener(path, "rb") as fh:  # type: ignore[attr-defined]
            return bytes(fh.read(4096))
    except (OSError, EOFError) as exc:
        raise NetworkFormatError(f"{source}: compressed file is corrupt ({exc})") from exc


def _read(osm_file: osmium.io.File, profile: CarProfile, source: str) -> _Raw:
    """One pass: node locations into libosmium's cache, kept ways and restrictions into lists."""
    raw = _Raw()
    processor = (
        osmium.FileProcessor(osm_file)
        .with_locations()
        .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY | osmium.osm.RELATION))
        .with_filter(osmium.filter.KeyFilter("highway", "type", "route"))
    )
    attributes = profile.way_attributes
    try:
        for obj in processor:
            if obj.is_way():
                tags = obj.tags
                if "highway" not in tags:
                    if tags.get("route") != "ferry":
                        continue
                else:
                    raw.highway_ways += 1
                attr = attributes(tags)
                if attr is None:
                    continue
                _add_way(raw, obj, attr)
            else:
                _add_restriction(raw, obj)
    except (RuntimeError, OSError, osmium.InvalidLocationError) as exc:
        # libosmium reports a cut-short, damaged or malformed file as a RuntimeError, and a
        # coordinate it cannot parse (`lat="nan"`) as InvalidLocationError.
        raise NetworkFormatError(
            f"{source}: truncated, corrupt or malformed OSM data ({exc})"
        ) from exc
    return raw


def _add_way(raw: _Raw, way: osmium.osm.Way, attr: WayAttributes) -> None:
    ref, x, y = raw.ref, raw.x, raw.y
    count = 0
    for node in way.nodes:
        loc = node.location
        ref.append(node.ref)
        x.append(loc.x)
        y.append(loc.y)
        count += 1
    tags = way.tags
    if attr.duration_s is not None:
        raw.ferry_duration.append((len(raw.way_id), attr.duration_s))
    raw.way_name.append(tags.get("name"))
    raw.way_ref.append(tags.get("ref"))
    raw.way_flags.append(attr.flags)
    raw.way_id.append(way.id)
    raw.way_len.append(count)
    raw.way_attr.append(
        (
            attr.road_class,
            attr.forward,
            attr.backward,
            attr.speed_forward_kph,
            attr.speed_backward_kph,
        )
    )


def _skip(raw: _Raw, reason: str) -> None:
    raw.skipped[reason] = raw.skipped.get(reason, 0) + 1


def _add_restriction(raw: _Raw, rel: osmium.osm.Relation) -> None:
    """Record a car turn restriction relation, or count why it is skipped."""
    tags = rel.tags
    if tags.get("type") not in ("restriction", "restriction:motorcar"):
        return
    raw.restrictions_read += 1
    value = tags.get("restriction:motorcar") or tags.get("restriction")
    exempt = {v.strip() for v in (tags.get("except") or "").split(";")}
    if value is None or exempt & {"motorcar", "motor_vehicle"}:
        return _skip(raw, "not_for_cars")
    value = value.split(";")[0].strip()
    kind = TURN_NO if value.startswith("no_") else TURN_ONLY if value.startswith("only_") else -1
    if kind < 0:
        return _skip(raw, "not_for_cars")
    frm: list[int] = []
    to: list[int] = []
    via_nodes: list[int] = []
    via_ways = 0
    for member in rel.members:
        if member.role == "from" and member.type == "w":
            frm.append(member.ref)
        elif member.role == "to" and member.type == "w":
            to.append(member.ref)
        elif member.role == "via":
            if member.type == "n":
                via_nodes.append(member.ref)
            else:
                via_ways += 1
    if via_ways:
        return _skip(raw, "via_way")
    if len(via_nodes) != 1 or not frm or not to or (kind == TURN_ONLY and len(to) != 1):
        return _skip(raw, "malformed")
    raw.restrictions.append((kind, frm, via_nodes[0], to))


def _assemble(
    raw: _Raw, path: Path, source: str, report: ProgressCallback
) -> tuple[RoadNetwork, OsmImportStats]:
    way_len = np.asarray(raw.way_len, dtype=np.int64)
    way_first = np.zeros(way_len.size + 1, dtype=np.int64)
    np.cumsum(way_len, out=way_first[1:])
    ref = np.asarray(raw.ref, dtype=np.int64)
    x = np.asarray(raw.x, dtype=np.int64)
    y = np.asarray(raw.y, dtype=np.int64)
    valid = (x != _UNDEFINED_COORDINATE) & (y != _UNDEFINED_COORDINATE)
    _check_ranges(ref, x, y, valid, source)
    point, piece_way, piece_start, piece_end = split_ways(way_first, ref, valid)
    if piece_way.size == 0:
        raise NoDrivableRoadError(
            f"{source}: no road a car may drive on: {len(raw.way_id)} car ways, but none has "
            f"two nodes with a location in the file ({int((~valid).sum())} of {ref.size} node "
            "references unresolved; are the nodes missing, or stored after the ways?)"
        )
    report("edges", 0.75)

    attr = raw.way_attr
    road_class = np.fromiter((a[0] for a in attr), dtype=np.int8, count=len(attr))
    fwd = np.fromiter((a[1] for a in attr), dtype=bool, count=len(attr))
    bwd = np.fromiter((a[2] for a in attr), dtype=bool, count=len(attr))
    speed_fwd = np.fromiter((a[3] for a in attr), dtype=np.float64, count=len(attr))
    speed_bwd = np.fromiter((a[4] for a in attr), dtype=np.float64, count=len(attr))
    _set_ferry_speeds(raw, way_first, x, y, valid, speed_fwd, speed_bwd)
    way_name, strings = index_strings(raw.way_name + raw.way_ref)
    way_name, way_ref = way_name[:len(raw.way_name)], way_name[len(raw.way_name):]
    way_flags = np.asarray(raw.way_flags, dtype=np.uint8)

    # Two candidate edges per piece (forward, backward), kept where the way allows them.
    n_pieces = piece_way.size
    cand_piece = np.repeat(np.arange(n_pieces), 2)
    cand_rev = np.tile(np.array([False, True]), n_pieces)
    cand_way = piece_way[cand_piece]
    allowed = np.where(cand_rev, bwd[cand_way], fwd[cand_way])
    e_piece, e_rev, e_way = cand_piece[allowed], cand_rev[allowed], cand_way[allowed]
    start, end = piece_start[e_piece], piece_end[e_piece]
    first_pt = np.where(e_rev, end, start)
    last_pt = np.where(e_rev, start, end)

    pt_ref, pt_x, pt_y = ref[point], x[point], y[point]
    node_osm_id, node_first = np.unique(
        np.concatenate([pt_ref[first_pt], pt_ref[last_pt]]), return_index=True
    )
    endpoint_pt = np.concatenate([first_pt, last_pt])[node_first]
    edge_src = np.searchsorted(node_osm_id, pt_ref[first_pt])
    edge_dst = np.searchsorted(node_osm_id, pt_ref[last_pt])

    geom_idx, geom_offsets = _geometry_index(first_pt, last_pt, e_rev)
    way_ids = np.asarray(raw.way_id, dtype=np.int64)
    turns, kept, reasons = _map_restrictions(
        raw.restrictions, way_ids, e_way, edge_src, edge_dst, node_osm_id
    )
    for reason, count in reasons.items():
        raw.skipped[reason] = raw.skipped.get(reason, 0) + count
    report("build", 0.85)
    net = build_network(
        node_lat=pt_y[endpoint_pt] * _COORD_SCALE,
        node_lon=pt_x[endpoint_pt] * _COORD_SCALE,
        node_osm_id=node_osm_id,
        edge_src=edge_src,
        edge_dst=edge_dst,
        edge_speed_kph=np.where(e_rev, speed_bwd[e_way], speed_fwd[e_way]),
        geom_offsets=geom_offsets,
        geom_lat=pt_y[geom_idx] * _COORD_SCALE,
        geom_lon=pt_x[geom_idx] * _COORD_SCALE,
        geom_osm_node=pt_ref[geom_idx],
        edge_road_class=road_class[e_way],
        edge_oneway=fwd[e_way] != bwd[e_way],
        edge_osm_way=way_ids[e_way],
        edge_reversed=e_rev,
        **turns,
        edge_name=way_name[e_way],
        edge_ref=way_ref[e_way],
        edge_flags=way_flags[e_way],
        strings=strings,
        name=_stem(path),
        source=source,
    )
    missing = ~valid
    stats = OsmImportStats(
        highway_ways=raw.highway_ways,
        ways_kept=len(raw.way_id),
        ways_with_missing_nodes=int(
            np.unique(np.searchsorted(way_first, np.flatnonzero(missing), side="right")).size
        ),
        missing_node_refs=int(missing.sum()),
        restrictions_read=raw.restrictions_read,
        restrictions_kept=kept,
        restrictions_skipped=dict(sorted(raw.skipped.items())),
    )
    return net, stats


def _set_ferry_speeds(
    raw: _Raw, way_first: np.ndarray, x: np.ndarray, y: np.ndarray, valid: np.ndarray,
    speed_fwd: np.ndarray, speed_bwd: np.ndarray,
) -> None:
    """Ferries with a ``duration``: speed = the way's length (located nodes) / duration."""
    for w, duration_s in raw.ferry_duration:
        a, b = int(way_first[w]), int(way_first[w + 1])
        ok = valid[a:b]
        lat, lon = y[a:b][ok] * _COORD_SCALE, x[a:b][ok] * _COORD_SCALE
        length = float(haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:]).sum())
        speed_fwd[w] = speed_bwd[w] = ferry_speed_kph(length, duration_s)


def _check_ranges(
    ref: np.ndarray, x: np.ndarray, y: np.ndarray, valid: np.ndarray, source: str
) -> None:
    bad = valid & ((np.abs(y) > 900_000_000) | (np.abs(x) > 1_800_000_000))
    if bad.any():
        i = int(np.argmax(bad))
        raise NetworkFormatError(
            f"{source}: node {int(ref[i])} has coordinates out of range "
            f"(lat={y[i] * _COORD_SCALE:.7f}, lon={x[i] * _COORD_SCALE:.7f}; "
            "lat must be within [-90, 90], lon within [-180, 180])"
        )


def split_ways(
    way_first: np.ndarray, ref: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ways into pieces between junctions, vectorised over all ways.

    Parameters
    ----------
    way_first
        ``int64[w + 1]`` offsets: way ``i``'s node refs are ``ref[way_first[i]:way_first[i+1]]``.
    ref
        ``int64[p]`` OSM node ids of all ways, concatenated.
    valid
        ``bool[p]``: False where the node has no location (absent from the extract). Such a
        node is dropped and its way is broken at the gap.

    Returns
    -------
    point, piece_way, piece_start, piece_end
        ``point`` indexes the kept positions of ``ref`` (invalid nodes and immediate repeats
        of the same node removed). Piece ``k`` belongs to way ``piece_way[k]`` and runs over
        ``point[piece_start[k]:piece_end[k] + 1]`` (both ends are network nodes). A piece
        ends at every node used twice or more over all ways (a junction, or a way crossing
        itself), at each end of a way and at each gap. When two pieces of one way join the
        same two nodes in the same order, the later one is split once more in its middle (or
        dropped when it has no interior node: it repeats the same segment), so every
        ``(way, from, to, direction)`` is unique, as stable edge keys need.
    """
    point_way = np.repeat(np.arange(way_first.size - 1), np.diff(way_first))
    point = np.flatnonzero(valid)
    pw, pr = point_way[point], ref[point]
    # A chain is a run of located nodes of one way with no gap.
    chain_start = np.ones(point.size, dtype=bool)
    chain_start[1:] = (pw[1:] != pw[:-1]) | (point[1:] != point[:-1] + 1)
    repeat = np.zeros(point.size, dtype=bool)
    repeat[1:] = (pr[1:] == pr[:-1]) & ~chain_start[1:]
    chain = np.cumsum(chain_start) - 1
    point, chain = point[~repeat], chain[~repeat]
    long_enough = np.bincount(chain, minlength=int(chain.max(initial=-1)) + 1)[chain] >= 2
    point, chain = point[long_enough], chain[long_enough]
    pw, pr = point_way[point], ref[point]

    split = np.zeros(point.size, dtype=bool)
    if point.size:
        _, inverse, uses = np.unique(pr, return_inverse=True, return_counts=True)
        split = uses[inverse] >= 2
        split[0] = split[-1] = True
        split[1:] |= chain[1:] != chain[:-1]
        split[:-1] |= chain[:-1] != chain[1:]
    dropped = np.zeros(point.size, dtype=bool)  # piece starting here repeats an earlier one
    while True:
        s = np.flatnonzero(split)
        same_chain = chain[s[:-1]] == chain[s[1:]]
        start, end = s[:-1][same_chain], s[1:][same_chain]
        keep = ~dropped[start]
        start, end = start[keep], end[keep]
        dup = _later_duplicates(pw[start], pr[start], pr[end])
        if not dup.any():
            break
        interior = end[dup] - start[dup] >= 2
        split[(start[dup][interior] + end[dup][interior]) // 2] = True
        dropped[start[dup][~interior]] = True
    return point, pw[start], start, end


def _later_duplicates(way: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of entries whose ``(way, a, b)`` triple already occurred earlier."""
    if way.size < 2:
        return np.zeros(way.size, dtype=bool)
    order = np.lexsort((np.arange(way.size), b, a, way))
    same = (
        (way[order][1:] == way[order][:-1])
        & (a[order][1:] == a[order][:-1])
        & (b[order][1:] == b[order][:-1])
    )
    dup = np.zeros(way.size, dtype=bool)
    dup[order[1:][same]] = True
    return dup


def _geometry_index(
    first_pt: np.ndarray, last_pt: np.ndarray, reverse: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Point indices of every edge's polyline in travel direction, and their offsets."""
    count = np.abs(last_pt - first_pt) + 1
    offsets = np.zeros(count.size + 1, dtype=np.int64)
    np.cumsum(count, out=offsets[1:])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], count)
    step = np.where(reverse, -1, 1)
    return np.repeat(first_pt, count) + np.repeat(step, count) * within, offsets


def _map_restrictions(
    restrictions: list[tuple[int, list[int], int, list[int]]],
    way_ids: np.ndarray,
    e_way: np.ndarray,
    edge_src: np.ndarray,
    edge_dst: np.ndarray,
    node_osm_id: np.ndarray,
) -> tuple[dict[str, np.ndarray], int, dict[str, int]]:
    """Turn (kind, from ways, via node, to ways) relations into edge-pair arrays.

    The from-edge is the edge of the from-way that ends at the via node, the to-edge the edge
    of the to-way that starts there. Looked up in one sorted table keyed by
    ``kept way index * n_nodes + node`` (both dense, so the product fits in int64).
    """
    reasons: dict[str, int] = {}
    n = max(node_osm_id.size, 1)
    way_order = np.argsort(way_ids, kind="stable")
    by_dst_key = e_way.astype(np.int64) * n + edge_dst
    dst_edge = np.argsort(by_dst_key, kind="stable")
    by_dst = by_dst_key[dst_edge]
    by_src_key = e_way.astype(np.int64) * n + edge_src
    src_edge = np.argsort(by_src_key, kind="stable")
    by_src = by_src_key[src_edge]

    def lookup(osm_way: int, via: int, table: np.ndarray, edges: np.ndarray) -> int | str:
        w = int(np.searchsorted(way_ids, osm_way, sorter=way_order))
        if w >= way_ids.size or way_ids[way_order[w]] != osm_way:
            return "missing_member"
        key = int(way_order[w]) * n + via
        lo, hi = np.searchsorted(table, [key, key + 1])
        if hi - lo == 1:
            return int(edges[lo])
        return "missing_member" if hi == lo else "ambiguous"

    frm, vias, to, kinds = [], [], [], []
    kept = 0
    for kind, from_ways, via_osm, to_ways in restrictions:
        v = int(np.searchsorted(node_osm_id, via_osm))
        if v >= node_osm_id.size or node_osm_id[v] != via_osm:
            reasons["missing_member"] = reasons.get("missing_member", 0) + 1
            continue
        pairs = []
        problem = ""
        for fw in from_ways:
            fe = lookup(fw, v, by_dst, dst_edge)
            for tw in to_ways:
                te = lookup(tw, v, by_src, src_edge)
                if isinstance(fe, str) or isinstance(te, str):
                    problem = fe if isinstance(fe, str) else str(te)
                else:
                    pairs.append((fe, te))
        if problem:
            reasons[problem] = reasons.get(problem, 0) + 1
            continue
        kept += 1
        for fe, te in pairs:
            frm.append(fe)
            vias.append(v)
            to.append(te)
            kinds.append(kind)
    arrays = dict(
        turn_from_edge=np.asarray(frm, dtype=np.int32),
        turn_via_node=np.asarray(vias, dtype=np.int32),
        turn_to_edge=np.asarray(to, dtype=np.int32),
        turn_kind=np.asarray(kinds, dtype=np.int8),
    )
    return arrays, kept, reasons


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _OSM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return path.stem
