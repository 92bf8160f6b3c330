"""The road network model: immutable arrays of nodes, directed edges, geometry and CSR indexes.

Every other stage (snapping, matching, estimation, routing, snapshots) reads these arrays.
Inside the project nodes and edges are dense ``0..n-1`` ids; OSM ids are kept in arrays for
import/export, and each edge carries a *stable key* derived from its OSM way, its end nodes
and its direction, so speed history survives a re-import where the road did not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from graph.errors import NetworkFormatError

EARTH_RADIUS_M = 6_371_008.8

#: Road classes, by index into this tuple (``RoadNetwork.edge_road_class``).
ROAD_CLASSES: tuple[str, ...] = (
    "motorway",
    "trunk",
    "primary",
    "secondary",
    "tertiary",
    "unclassified",
    "residential",
    "living_street",
    "service",
    "motorway_link",
    "trunk_link",
    "primary_link",
    "secondary_link",
    "tertiary_link",
    "road",
    "unknown",
)
ROAD_CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(ROAD_CLASSES)}

#: Free-flow speed (km/h) used when a way has no usable ``maxspeed``.
DEFAULT_SPEED_KPH: dict[str, float] = {
    "motorway": 110.0,
    "trunk": 90.0,
    "primary": 70.0,
    "secondary": 60.0,
    "tertiary": 50.0,
    "unclassified": 40.0,
    "residential": 30.0,
    "living_street": 10.0,
    "service": 20.0,
    "motorway_link": 60.0,
    "trunk_link": 50.0,
    "primary_link": 45.0,
    "secondary_link": 40.0,
    "tertiary_link": 35.0,
    "road": 40.0,
    "unknown": 40.0,
}

#: Turn restriction kinds (``RoadNetwork.turn_kind``).
TURN_NO = 0
TURN_ONLY = 1

#: Bits of ``RoadNetwork.edge_flags``: the edge is part of a roundabout
#: (``junction=roundabout|circular``), a toll road (``toll=yes``), a ferry (``route=ferry``).
EDGE_ROUNDABOUT = 1
EDGE_TOLL = 2
EDGE_FERRY = 4
#: ``edge_name`` / ``edge_ref`` value of an edge without one.
NO_NAME = -1

#: The name-table arrays: optional in the input (all "no name"), and left out of the content
#: hash while a network has no names and no flags, so networks without them (DIMACS, files
#: written before names existed) keep the version they always had.
NAME_ARRAYS: tuple[str, ...] = ("edge_name", "edge_ref", "edge_flags", "name_bytes", "name_offsets")

_INT32 = np.int32
_INT64 = np.int64
_F64 = np.float64


@dataclass(frozen=True, slots=True, eq=False)
class RoadNetwork:
    """A directed car road network as immutable NumPy arrays.

    Nodes are junctions and dead ends (``n`` of them); edges are directed road segments between
    them (``m`` of them); a two-way road is two edges. Edge geometry is stored in the direction
    of travel, endpoints included, as ``geom_offsets`` (``int64[m + 1]``) into ``geom_lat`` /
    ``geom_lon``. ``out_first``/``out_edge`` and ``in_first``/``in_edge`` are CSR indexes
    (RoutingKit's ``first_out`` idiom): the edges leaving node ``v`` are
    ``out_edge[out_first[v]:out_first[v + 1]]``.

    Turn restrictions are kept as edge pairs through a via node: ``turn_kind[i]`` is
    ``TURN_NO`` (the turn ``turn_from_edge[i] -> turn_to_edge[i]`` is forbidden) or
    ``TURN_ONLY`` (from that edge, only that turn is allowed). Use
    :func:`graph.network.banned_turns` for the expanded list of forbidden pairs.

    Street names and route numbers live in one string table for the whole network (each
    distinct string once, sorted): string ``i`` is the UTF-8 bytes
    ``name_bytes[name_offsets[i]:name_offsets[i + 1]]``. ``edge_name`` / ``edge_ref`` index
    it (:data:`NO_NAME` where the road has none); ``edge_flags`` holds :data:`EDGE_ROUNDABOUT`,
    :data:`EDGE_TOLL` and :data:`EDGE_FERRY` bits. That is 9 bytes per edge plus the distinct
    strings (a country has ~10^5 of them for ~10^7 edges). Read them with :meth:`string` /
    :meth:`edge_name_str` / :meth:`edge_ref_str`.

    ``geom_osm_node`` (aligned with ``geom_lat``/``geom_lon``) is the OSM node id of every
    geometry point, ``-1`` where unknown (DIMACS, GeoJSON, files written before format 3).
    External speed feeds keyed by consecutive OSM node pairs (OSRM's segment-speed files)
    map onto parts of an edge through it. It costs 8 bytes per geometry point: 8 x (points
    per edge) bytes per edge (about 30 B/edge on an OSM extract, 16 B/edge on DIMACS).

    Build one with :func:`build_network`, which validates the arrays, derives the indexes,
    the stable edge keys and the content hash ``version``; the arrays are read-only.
    """

    node_lat: np.ndarray  # float64[n]
    node_lon: np.ndarray  # float64[n]
    node_osm_id: np.ndarray  # int64[n]; -1 where unknown
    edge_src: np.ndarray  # int32[m]
    edge_dst: np.ndarray  # int32[m]
    edge_length_m: np.ndarray  # float64[m]
    edge_speed_kph: np.ndarray  # float64[m], free-flow speed
    edge_road_class: np.ndarray  # int8[m], index into ROAD_CLASSES
    edge_oneway: np.ndarray  # bool[m], True where the road is one-way
    edge_osm_way: np.ndarray  # int64[m]; -1 where unknown
    edge_osm_from: np.ndarray  # int64[m], OSM node id at the start
    edge_osm_to: np.ndarray  # int64[m], OSM node id at the end
    edge_reversed: np.ndarray  # bool[m], True where drawn against the way's node order
    edge_key: np.ndarray  # int64[m], stable across imports
    geom_offsets: np.ndarray  # int64[m + 1]
    geom_lat: np.ndarray  # float64[offsets[-1]]
    geom_lon: np.ndarray  # float64[offsets[-1]]
    out_first: np.ndarray  # int32[n + 1]
    out_edge: np.ndarray  # int32[m]
    in_first: np.ndarray  # int32[n + 1]
    in_edge: np.ndarray  # int32[m]
    turn_from_edge: np.ndarray  # int32[r]
    turn_via_node: np.ndarray  # int32[r]
    turn_to_edge: np.ndarray  # int32[r]
    turn_kind: np.ndarray  # int8[r]
    edge_name: np.ndarray  # int32[m], index into the string table; NO_NAME where none
    edge_ref: np.ndarray  # int32[m], index into the string table; NO_NAME where none
    edge_flags: np.ndarray  # uint8[m], EDGE_ROUNDABOUT | EDGE_TOLL | EDGE_FERRY
    name_bytes: np.ndarray  # uint8[s], the UTF-8 strings of the table, concatenated
    name_offsets: np.ndarray  # int64[k + 1], string i is name_bytes[off[i]:off[i + 1]]
    geom_osm_node: np.ndarray  # int64[offsets[-1]], OSM node id of each geometry point; -1 unknown
    name: str = ""
    version: str = field(default="")
    #: ``(edge_key array, order)`` for :meth:`edge_index_of_keys`, filled on first use
    #: (``order`` None when the keys are ascending already); not part of the network.
    _key_order: Any = field(default=None, repr=False, compare=False)

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.node_lat.shape[0])

    @property
    def n_edges(self) -> int:
        """Number of directed edges."""
        return int(self.edge_src.shape[0])

    @property
    def edge_freeflow_mps(self) -> np.ndarray:
        """Free-flow speed of each edge in m/s."""
        return self.edge_speed_kph / 3.6

    @property
    def edge_freeflow_time_s(self) -> np.ndarray:
        """Free-flow travel time of each edge in seconds (length / free-flow speed)."""
        return self.edge_length_m / self.edge_freeflow_mps

    def freeflow_mps_at(self, edges: np.ndarray) -> np.ndarray:
        """Free-flow speed (m/s) of the given edges only: O(len(edges)), where
        :attr:`edge_freeflow_mps` computes every edge's (per request at country scale, that
        is 26M divisions)."""
        return np.asarray(self.edge_speed_kph[edges], dtype=np.float64) / 3.6

    def freeflow_time_s_at(self, edges: np.ndarray) -> np.ndarray:
        """Free-flow travel time (s) of the given edges only (see :meth:`freeflow_mps_at`)."""
        return np.asarray(self.edge_length_m[edges], dtype=np.float64) / self.freeflow_mps_at(edges)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(min_lon, min_lat, max_lon, max_lat)`` of all geometry, in degrees."""
        if self.geom_lat.size == 0:
            return (0.0, 0.0, 0.0, 0.0)
        return (
            float(self.geom_lon.min()),
            float(self.geom_lat.min()),
            float(self.geom_lon.max()),
            float(self.geom_lat.max()),
        )

    def edge_geometry(self, edge: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(lat, lon)`` of one edge's polyline in its direction of travel (views)."""
        a, b = self.geom_offsets[edge], self.geom_offsets[edge + 1]
        return self.geom_lat[a:b], self.geom_lon[a:b]

    def edge_index_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Map stable edge keys to edge ids; ``-1`` where a key is not in this network.

        The key order (an argsort, int32: 4 B per edge) is found once per network and
        kept, not sorted again per call (at 26M edges a sort takes seconds): a few keys
        (a request's) cost a binary search through it, O(len(keys) log m); many keys (a
        network swap's) one pass over the sorted keys."""
        keys = np.asarray(keys, dtype=_INT64)
        edge_key = self.edge_key
        m = len(edge_key)
        if m == 0:
            return np.full(keys.shape, -1, dtype=_INT64)
        cached = self._key_order
        if cached is None or cached[0] is not edge_key:
            order = np.argsort(edge_key, kind="stable").astype(np.int32 if m < 2**31 else _INT64)
            cached = (edge_key, order)
            object.__setattr__(self, "_key_order", cached)
        order = cached[1]
        flat = keys.reshape(-1)
        if flat.size * 16 >= m:
            sorted_keys = edge_key[order]
            pos = np.clip(np.searchsorted(sorted_keys, flat), 0, m - 1)
            found = sorted_keys[pos] == flat
        else:
            lo = np.zeros(flat.size, dtype=_INT64)
            hi = np.full(flat.size, m, dtype=_INT64)
            while True:
                active = lo < hi
                if not active.any():
                    break
                mid = (lo + hi) // 2
                right = edge_key[order[np.minimum(mid, m - 1)]] < flat
                lo = np.where(active & right, mid + 1, lo)
                hi = np.where(active & ~right, mid, hi)
            pos = np.minimum(lo, m - 1)
            found = edge_key[order[pos]] == flat
        return np.where(found, order[pos], -1).astype(_INT64).reshape(keys.shape)

    @property
    def n_strings(self) -> int:
        """Number of distinct strings (names and refs) in the string table."""
        return int(self.name_offsets.shape[0]) - 1

    def string(self, index: int) -> str | None:
        """String ``index`` of the table; ``None`` for :data:`NO_NAME` (or any negative)."""
        if index < 0:
            return None
        a, b = self.name_offsets[index], self.name_offsets[index + 1]
        return self.name_bytes[a:b].tobytes().decode("utf-8")

    def edge_name_str(self, edge: int) -> str | None:
        """The street name of ``edge`` (OSM ``name``), or ``None``."""
        return self.string(int(self.edge_name[edge]))

    def edge_ref_str(self, edge: int) -> str | None:
        """The route number of ``edge`` (OSM ``ref``, e.g. ``"E 45"``), or ``None``."""
        return self.string(int(self.edge_ref[edge]))

    def arrays(self) -> dict[str, np.ndarray]:
        """All array fields by name (for serialisation)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }


def haversine_m(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (vectorised)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def polyline_lengths_m(
    geom_offsets: np.ndarray, geom_lat: np.ndarray, geom_lon: np.ndarray
) -> np.ndarray:
    """Sum of great-circle segment lengths of each polyline in an offsets/coords layout (m)."""
    seg = haversine_m(geom_lat[:-1], geom_lon[:-1], geom_lat[1:], geom_lon[1:])
    # A segment belongs to polyline i when both its points lie in [off[i], off[i+1]).
    owner = np.repeat(np.arange(len(geom_offsets) - 1), np.diff(geom_offsets))
    same = owner[:-1] == owner[1:] if owner.size > 1 else np.zeros(0, dtype=bool)
    return np.bincount(owner[:-1][same], weights=seg[same], minlength=len(geom_offsets) - 1)


def stable_edge_keys(
    osm_way: np.ndarray, osm_from: np.ndarray, osm_to: np.ndarray, reversed_: np.ndarray
) -> np.ndarray:
    """Derive int64 edge keys from (OSM way id, OSM end node ids, direction).

    The key is a 63-bit mix (splitmix64) of the four values, so it is the same for the same
    road piece in two imports, whatever the dense ids. Non-negative, so it survives CSV and
    JSON round trips as a plain integer.
    """
    with np.errstate(over="ignore"):
        h = np.asarray(osm_way, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for part in (osm_from, osm_to, np.asarray(reversed_, dtype=np.uint64)):
            h = _splitmix64(h ^ np.asarray(part, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(1)).astype(_INT64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def csr_index(n: int, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(first, item)``: items grouped by ``key`` in ``0..n-1`` (stable), as CSR."""
    item = np.argsort(key, kind="stable").astype(_INT32)
    counts = np.bincount(key, minlength=n)
    first = np.zeros(n + 1, dtype=_INT32)
    np.cumsum(counts, out=first[1:])
    return first, item


def build_network(
    *,
    node_lat: np.ndarray,
    node_lon: np.ndarray,
    edge_src: np.ndarray,
    edge_dst: np.ndarray,
    edge_speed_kph: np.ndarray,
    geom_offsets: np.ndarray | None = None,
    geom_lat: np.ndarray | None = None,
    geom_lon: np.ndarray | None = None,
    edge_length_m: np.ndarray | None = None,
    edge_road_class: np.ndarray | None = None,
    edge_oneway: np.ndarray | None = None,
    node_osm_id: np.ndarray | None = None,
    edge_osm_way: np.ndarray | None = None,
    edge_reversed: np.ndarray | None = None,
    edge_key: np.ndarray | None = None,
    turn_from_edge: np.ndarray | None = None,
    turn_via_node: np.ndarray | None = None,
    turn_to_edge: np.ndarray | None = None,
    turn_kind: np.ndarray | None = None,
    edge_name: np.ndarray | None = None,
    edge_ref: np.ndarray | None = None,
    edge_flags: np.ndarray | None = None,
    strings: Sequence[str] | None = None,
    geom_osm_node: np.ndarray | None = None,
    name: str = "",
    source: str = "<arrays>",
) -> RoadNetwork:
    """Validate raw arrays and assemble a :class:`RoadNetwork`.

    Missing optional arrays get defaults: straight-line geometry between the end nodes,
    length from the geometry (sum of great-circle segment lengths, m), road class
    ``unknown``, node OSM ids ``0..n-1``, way ids ``-1``, no turn restrictions, no names
    and no flags. Edge keys are derived from OSM ids unless given (DIMACS and GeoJSON loaders
    pass their own). ``edge_name``/``edge_ref`` index ``strings`` (``-1``: none); the
    network's string table keeps the strings used, once each, sorted, so the same names give
    the same arrays (and version) whatever order a loader met them in.

    Raises
    ------
    NetworkFormatError
        When arrays disagree in length, ids are out of range, coordinates are not finite or
        out of range, speeds are not positive, or lengths are negative. ``source`` names the
        input in the message.
    """
    node_lat = np.ascontiguousarray(node_lat, dtype=_F64)
    node_lon = np.ascontiguousarray(node_lon, dtype=_F64)
    n = node_lat.shape[0]
    edge_src = np.ascontiguousarray(edge_src, dtype=_INT32)
    edge_dst = np.ascontiguousarray(edge_dst, dtype=_INT32)
    m = edge_src.shape[0]
    _check(node_lon.shape == (n,), source, "node_lon and node_lat differ in length")
    _check(edge_dst.shape == (m,), source, "edge_dst and edge_src differ in length")
    _check_coords(node_lat, node_lon, source, "node")
    if m:
        bad = (edge_src < 0) | (edge_src >= n) | (edge_dst < 0) | (edge_dst >= n)
        _check(not bad.any(), source, f"edge {int(np.argmax(bad))} refers to a node outside 0..{n - 1}")

    if geom_offsets is None:
        geom_offsets = np.arange(0, 2 * m + 1, 2, dtype=_INT64)
        geom_lat = np.column_stack([node_lat[edge_src], node_lat[edge_dst]]).ravel()
        geom_lon = np.column_stack([node_lon[edge_src], node_lon[edge_dst]]).ravel()
    geom_offsets = np.ascontiguousarray(geom_offsets, dtype=_INT64)
    geom_lat = np.ascontiguousarray(geom_lat, dtype=_F64)
    geom_lon = np.ascontiguousarray(geom_lon, dtype=_F64)
    _check(geom_offsets.shape == (m + 1,), source, "geom_offsets must have one entry per edge plus one")
    _check(
        m == 0 or (geom_offsets[0] == 0 and np.all(np.diff(geom_offsets) >= 2)),
        source,
        "every edge geometry needs at least two points",
    )
    _check(geom_lat.shape == geom_lon.shape == (int(geom_offsets[-1]),), source,
           "geometry coordinate arrays do not match geom_offsets")
    _check_coords(geom_lat, geom_lon, source, "geometry point")
    geom_osm_node = _default(geom_osm_node, geom_lat.shape[0], -1, _INT64)
    _check(geom_osm_node.shape == geom_lat.shape, source,
           "geom_osm_node must have one entry per geometry point")

    if edge_length_m is None:
        edge_length_m = polyline_lengths_m(geom_offsets, geom_lat, geom_lon)
    edge_length_m = np.ascontiguousarray(edge_length_m, dtype=_F64)
    _check(edge_length_m.shape == (m,), source, "edge_length_m must have one entry per edge")
    _check(bool(np.all(np.isfinite(edge_length_m) & (edge_length_m >= 0))), source,
           "edge lengths must be finite and >= 0 m")

    edge_speed_kph = np.ascontiguousarray(edge_speed_kph, dtype=_F64)
    _check(edge_speed_kph.shape == (m,), source, "edge_speed_kph must have one entry per edge")
    _check(bool(np.all(np.isfinite(edge_speed_kph) & (edge_speed_kph > 0))), source,
           "free-flow speeds must be finite and > 0 km/h")

    road_class = _default(edge_road_class, m, ROAD_CLASS_INDEX["unknown"], np.int8)
    _check(bool(np.all((road_class >= 0) & (road_class < len(ROAD_CLASSES)))), source,
           "edge_road_class holds an unknown class index")
    oneway = _default(edge_oneway, m, False, np.bool_)
    node_osm_id = (
        np.arange(n, dtype=_INT64) if node_osm_id is None
        else np.ascontiguousarray(node_osm_id, dtype=_INT64)
    )
    _check(node_osm_id.shape == (n,), source, "node_osm_id must have one entry per node")
    osm_way = _default(edge_osm_way, m, -1, _INT64)
    reversed_ = _default(edge_reversed, m, False, np.bool_)
    osm_from, osm_to = node_osm_id[edge_src], node_osm_id[edge_dst]
    if edge_key is None:
        edge_key = stable_edge_keys(osm_way, osm_from, osm_to, reversed_)
    edge_key = np.ascontiguousarray(edge_key, dtype=_INT64)
    _check(edge_key.shape == (m,), source, "edge_key must have one entry per edge")
    if m:
        uniq, counts = np.unique(edge_key, return_counts=True)
        _check(uniq.shape[0] == m, source,
               f"edge key {int(uniq[np.argmax(counts)])} is not unique (duplicate road pieces)")

    turns = _turn_arrays(turn_from_edge, turn_via_node, turn_to_edge, turn_kind, n, m, source)
    names = _name_arrays(edge_name, edge_ref, edge_flags, strings, m, source)

    out_first, out_edge = csr_index(n, edge_src)
    in_first, in_edge = csr_index(n, edge_dst)
    arrays = dict(
        node_lat=node_lat, node_lon=node_lon, node_osm_id=node_osm_id,
        edge_src=edge_src, edge_dst=edge_dst, edge_length_m=edge_length_m,
        edge_speed_kph=edge_speed_kph, edge_road_class=road_class, edge_oneway=oneway,
        edge_osm_way=osm_way, edge_osm_from=np.ascontiguousarray(osm_from),
        edge_osm_to=np.ascontiguousarray(osm_to), edge_reversed=reversed_, edge_key=edge_key,
        geom_offsets=geom_offsets, geom_lat=geom_lat, geom_lon=geom_lon,
        out_first=out_first, out_edge=out_edge, in_first=in_first, in_edge=in_edge,
        **turns, **names, geom_osm_node=geom_osm_node,
    )
    return assemble_network(arrays, name=name)


def assemble_network(
    arrays: dict[str, np.ndarray], *, name: str = "", version: str | None = None
) -> RoadNetwork:
    """Freeze already-validated arrays into a :class:`RoadNetwork` and stamp its version.

    Used by :func:`build_network` and by the compiled-format loader (which trusts its own
    checksummed files). The arrays are made read-only. ``version``, when given, is taken
    as the content hash instead of recomputing it (about 0.1 s per 90 MB); only pass one
    that was computed from these very arrays (the compiled loader's CRC-checked header).
    """
    for key, a in empty_name_arrays(arrays["edge_src"].shape[0]).items():
        arrays.setdefault(key, a)
    if "geom_osm_node" not in arrays:
        arrays["geom_osm_node"] = np.full(arrays["geom_lat"].shape[0], -1, dtype=_INT64)
    for a in arrays.values():
        a.setflags(write=False)
    if version is None:
        version = content_version(arrays)
    return RoadNetwork(**arrays, name=name, version=version)


def content_version(arrays: dict[str, np.ndarray]) -> str:
    """Hash of every array's name, dtype, shape and bytes: the network's version (16 hex).

    The :data:`NAME_ARRAYS` are left out while they hold nothing (no string, no flag), so a
    network without names has the version it had before names were part of the model;
    likewise ``geom_osm_node`` while every entry is -1 (DIMACS, GeoJSON, older files).
    """
    h = hashlib.blake2b(digest_size=8)
    skip: tuple[str, ...] = () if has_names(arrays) else NAME_ARRAYS
    osm_nodes = arrays.get("geom_osm_node")
    if osm_nodes is None or not bool((osm_nodes != -1).any()):
        skip = (*skip, "geom_osm_node")
    for key in sorted(arrays):
        if key in skip:
            continue
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def has_names(arrays: dict[str, np.ndarray]) -> bool:
    """Whether network arrays hold any string or edge flag (see :data:`NAME_ARRAYS`)."""
    offsets = arrays.get("name_offsets")
    flags = arrays.get("edge_flags")
    return bool((offsets is not None and offsets.shape[0] > 1)
                or (flags is not None and flags.any()))


def empty_name_arrays(m: int) -> dict[str, np.ndarray]:
    """The :data:`NAME_ARRAYS` of ``m`` edges without names or flags."""
    return dict(
        edge_name=np.full(m, NO_NAME, dtype=_INT32), edge_ref=np.full(m, NO_NAME, dtype=_INT32),
        edge_flags=np.zeros(m, dtype=np.uint8), name_bytes=np.zeros(0, dtype=np.uint8),
        name_offsets=np.zeros(1, dtype=_INT64),
    )


def network_strings(net: RoadNetwork) -> list[str]:
    """The string table of ``net`` as Python strings (index ``i`` is ``net.string(i)``)."""
    data = net.name_bytes.tobytes()
    off = net.name_offsets.tolist()
    return [data[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:])]


def index_strings(values: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """``(index int32[len(values)], table)``: each value's position in ``table`` (-1: None
    or empty). For loaders: pass the index as ``edge_name``/``edge_ref`` and the table as
    ``strings`` to :func:`build_network`."""
    table: dict[str, int] = {}
    index = np.fromiter(
        (table.setdefault(v, len(table)) if v else NO_NAME for v in values),
        dtype=_INT32, count=len(values))
    return index, list(table)


def _name_arrays(
    edge_name: np.ndarray | None, edge_ref: np.ndarray | None, edge_flags: np.ndarray | None,
    strings: Sequence[str] | None, m: int, source: str,
) -> dict[str, np.ndarray]:
    """Validate per-edge string indices and flags; build the canonical (sorted) table."""
    name = _default(edge_name, m, NO_NAME, _INT32)
    ref = _default(edge_ref, m, NO_NAME, _INT32)
    flags = _default(edge_flags, m, 0, np.uint8)
    table = list(strings or ())
    k = len(table)
    _check(name.shape == ref.shape == flags.shape == (m,), source,
           "edge_name, edge_ref and edge_flags must have one entry per edge")
    for label, a in (("edge_name", name), ("edge_ref", ref)):
        _check(bool(np.all((a >= NO_NAME) & (a < k))), source,
               f"{label} refers to a string outside the table of {k}")
    _check(bool(np.all(flags < 8)), source, "edge_flags holds unknown bits (known: 1, 2, 4)")
    used = np.unique(np.concatenate([name[name >= 0], ref[ref >= 0]]))
    used_strs = [str(table[i]) for i in used.tolist()]
    uniq = sorted(set(used_strs))
    pos = {s: i for i, s in enumerate(uniq)}
    remap = np.full(k + 1, NO_NAME, dtype=_INT32)  # the last slot maps NO_NAME to itself
    remap[used] = np.fromiter((pos[s] for s in used_strs), dtype=_INT32, count=len(used_strs))
    encoded = [s.encode("utf-8") for s in uniq]
    offsets = np.zeros(len(encoded) + 1, dtype=_INT64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return dict(
        edge_name=remap[name], edge_ref=remap[ref], edge_flags=flags,
        name_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
        name_offsets=offsets,
    )


def banned_turns(net: RoadNetwork) -> tuple[np.ndarray, np.ndarray]:
    """Expand turn restrictions into forbidden ``(from_edge, to_edge)`` pairs.

    A ``TURN_NO`` restriction forbids its own pair; a ``TURN_ONLY`` restriction forbids
    every other edge leaving the via node from that from-edge (U-turns included).
    Returns two int32 arrays of equal length, sorted and without duplicates.
    """
    frm: list[np.ndarray] = [net.turn_from_edge[net.turn_kind == TURN_NO]]
    to: list[np.ndarray] = [net.turn_to_edge[net.turn_kind == TURN_NO]]
    for i in np.flatnonzero(net.turn_kind == TURN_ONLY):
        via = net.turn_via_node[i]
        outs = net.out_edge[net.out_first[via]:net.out_first[via + 1]]
        others = outs[outs != net.turn_to_edge[i]]
        frm.append(np.full(others.shape, net.turn_from_edge[i], dtype=_INT32))
        to.append(others.astype(_INT32))
    pairs = np.unique(
        np.column_stack([np.concatenate(frm), np.concatenate(to)]).astype(_INT64), axis=0
    ) if sum(len(f) for f in frm) else np.zeros((0, 2), dtype=_INT64)
    return pairs[:, 0].astype(_INT32), pairs[:, 1].astype(_INT32)


def _turn_arrays(
    frm: np.ndarray | None, via: np.ndarray | None, to: np.ndarray | None,
    kind: np.ndarray | None, n: int, m: int, source: str,
) -> dict[str, np.ndarray]:
    frm_a = np.ascontiguousarray(frm if frm is not None else [], dtype=_INT32)
    r = frm_a.shape[0]
    via_a = np.ascontiguousarray(via if via is not None else [], dtype=_INT32)
    to_a = np.ascontiguousarray(to if to is not None else [], dtype=_INT32)
    kind_a = np.ascontiguousarray(kind if kind is not None else [], dtype=np.int8)
    _check(via_a.shape == to_a.shape == kind_a.shape == (r,), source,
           "turn restriction arrays differ in length")
    if r:
        _check(bool(np.all((frm_a >= 0) & (frm_a < m) & (to_a >= 0) & (to_a < m))), source,
               "a turn restriction refers to an edge that does not exist")
        _check(bool(np.all((via_a >= 0) & (via_a < n))), source,
               "a turn restriction refers to a via node that does not exist")
        _check(bool(np.all(np.isin(kind_a, (TURN_NO, TURN_ONLY)))), source,
               "turn_kind must be TURN_NO (0) or TURN_ONLY (1)")
    return dict(turn_from_edge=frm_a, turn_via_node=via_a, turn_to_edge=to_a, turn_kind=kind_a)


def _default(a: np.ndarray | None, m: int, fill: object, dtype: type) -> np.ndarray:
    if a is None:
        return np.full(m, fill, dtype=dtype)
    return np.ascontiguousarray(a, dtype=dtype)


def _check(ok: bool, source: str, message: str) -> None:
    if not ok:
        raise NetworkFormatError(f"{source}: {message}")


def _check_coords(lat: np.ndarray, lon: np.ndarray, source: str, what: str) -> None:
    bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad.any():
        i = int(np.argmax(bad))
        raise NetworkFormatError(
            f"{source}: {what} {i} has coordinates out of range "
            f"(lat={lat[i]!r}, lon={lon[i]!r}; lat must be within [-90, 90], lon within [-180, 180])"
        )
