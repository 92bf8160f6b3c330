"""GeoJSON road networks: import from LineString features, export one feature per directed edge.

Two kinds of input are read:

* Files written by :func:`export_geojson`. Besides the features they carry a top-level
  ``traffic_network`` member (a GeoJSON "foreign member", RFC 7946 section 6.1) with the node
  table (OSM ids and coordinates, in dense-id order) and the turn restrictions, and each
  feature carries its dense end-node ids. Importing such a file rebuilds exactly the
  exported network: same arrays, same ``version``.
* Any other ``FeatureCollection`` of ``LineString``/``MultiLineString`` roads with OSM-like
  properties (``highway``, ``oneway``, ``maxspeed`` or ``maxspeed_kph``, optional
  ``osm_way_id``, ``junction`` and ``key``). Lines are split into edges at junctions with
  the OSM loader's semantics: a vertex is a node where it ends a line or where two or more
  line vertices share it (coordinates rounded to 1e-7 degrees).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from graph.errors import NetworkFileNotFoundError, NetworkFormatError, NoDrivableRoadError
from graph.network import (
    DEFAULT_SPEED_KPH,
    EDGE_FERRY,
    EDGE_ROUNDABOUT,
    EDGE_TOLL,
    ROAD_CLASS_INDEX,
    ROAD_CLASSES,
    RoadNetwork,
    _splitmix64,
    build_network,
    index_strings,
    network_strings,
    stable_edge_keys,
)
from storage import write_atomic

#: Name of the foreign member that makes an exported file re-importable exactly.
EXPORT_MEMBER = "traffic_network"
EXPORT_FORMAT = "traffic-road-network-geojson"
EXPORT_FORMAT_VERSION = 1

_FORWARD, _BACKWARD, _BOTH = 1, 2, 3
_ONEWAY_VALUES: dict[Any, int] = {
    True: _FORWARD, "yes": _FORWARD, "true": _FORWARD, "1": _FORWARD,
    "-1": _BACKWARD, -1: _BACKWARD, "reverse": _BACKWARD,
    False: _BOTH, "no": _BOTH, "false": _BOTH, "0": _BOTH, None: _BOTH,
}
_SPEED_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mph|km/h|kmh|kph)?\s*$")
_MPH_TO_KPH = 1.609344


def load_geojson(path: str | os.PathLike[str], *, name: str | None = None) -> RoadNetwork:
    """Load a road network from a GeoJSON ``FeatureCollection``.

    Features whose ``highway`` is not a car road class (:data:`graph.network.ROAD_CLASSES`,
    e.g. ``footway``) are left out; a missing ``highway`` reads as ``unknown``. ``oneway``
    may be a boolean or ``"yes"``/``"no"``/``"-1"``/``"true"``/``"1"``/``"reverse"``; when
    absent, motorways and ``junction=roundabout`` are one-way. Speed: ``maxspeed_kph``
    (number), else ``maxspeed`` (``"50"``, ``"30 mph"``), else the class default. Edge
    keys: a feature's ``key`` when it yields exactly one edge, else a hash of the edge's
    rounded coordinates in travel order (and ``osm_way_id``). Exactly repeated edges (same
    way, same coordinates, same direction) are kept once.

    Raises
    ------
    NetworkFileNotFoundError
        ``path`` does not exist.
    NetworkFormatError
        Not JSON, not a ``FeatureCollection``, a feature without coordinates, of another
        geometry type, with coordinates out of range or an unknown ``oneway`` value; the
        message names the file and the feature index.
    NoDrivableRoadError
        No feature is a drivable road.
    """
    path = Path(path)
    doc = _read_json(path)
    features = doc.get("features")
    if not isinstance(features, list):
        raise NetworkFormatError(f"{path}: the FeatureCollection has no 'features' list")
    member = doc.get(EXPORT_MEMBER)
    if isinstance(member, dict) and member.get("format") == EXPORT_FORMAT:
        return _load_exported(path, features, member, name)
    return _load_lines(path, features, name if name is not None else _stem(path))


def export_geojson(net: RoadNetwork, path: str | os.PathLike[str]) -> Path:
    """Write ``net`` as a GeoJSON ``FeatureCollection``, one ``LineString`` per directed edge.

    Each feature is drawn in its direction of travel and has properties ``key``,
    ``highway``, ``oneway`` (the road is one-way), ``maxspeed_kph``, ``length_m``,
    ``osm_way_id``, ``osm_from``/``osm_to`` (OSM node ids at its ends), ``reversed``
    (drawn against the way's node order), ``from_node``/``to_node`` (dense node ids) and
    ``directed: true`` (the feature is one direction of travel). The top-level
    ``traffic_network`` member holds the name, version, node table and turn restrictions,
    so :func:`load_geojson` rebuilds the same network and version. Written atomically.
    """
    path = Path(path)
    coords = np.column_stack([net.geom_lon, net.geom_lat]).tolist()
    off = net.geom_offsets.tolist()
    cls = [ROAD_CLASSES[c] for c in net.edge_road_class.tolist()]
    table = network_strings(net) + [None]  # index -1 reads the trailing None
    names = [table[i] for i in net.edge_name.tolist()]
    refs = [table[i] for i in net.edge_ref.tolist()]
    flags = net.edge_flags.tolist()
    cols = zip(
        net.edge_key.tolist(), cls, net.edge_oneway.tolist(), net.edge_speed_kph.tolist(),
        net.edge_length_m.tolist(), net.edge_osm_way.tolist(), net.edge_osm_from.tolist(),
        net.edge_osm_to.tolist(), net.edge_reversed.tolist(), net.edge_src.tolist(),
        net.edge_dst.tolist(), names, refs, flags,
    )
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": coords[off[i]:off[i + 1]]},
            "properties": {
                "key": key, "highway": hw, "oneway": ow, "maxspeed_kph": kph,
                "length_m": length, "osm_way_id": way, "osm_from": a, "osm_to": b,
                "reversed": rev, "from_node": u, "to_node": v, "name": nm, "ref": rf,
                "roundabout": bool(fl & EDGE_ROUNDABOUT), "toll": bool(fl & EDGE_TOLL),
                "ferry": bool(fl & EDGE_FERRY), "directed": True,
            },
        }
        for i, (key, hw, ow, kph, length, way, a, b, rev, u, v, nm, rf, fl) in enumerate(cols)
    ]
    member = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "name": net.name,
        "version": net.version,
        "node_osm_id": net.node_osm_id.tolist(),
        "node_lat": net.node_lat.tolist(),
        "node_lon": net.node_lon.tolist(),
        "turn_from_key": net.edge_key[net.turn_from_edge].tolist(),
        "turn_via_node": net.turn_via_node.tolist(),
        "turn_to_key": net.edge_key[net.turn_to_edge].tolist(),
        "turn_kind": net.turn_kind.tolist(),
    }
    if bool((net.geom_osm_node != -1).any()):  # OSM node id of every geometry point, in order
        member["geom_osm_node"] = net.geom_osm_node.tolist()
    doc = {"type": "FeatureCollection", EXPORT_MEMBER: member, "features": features}
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    write_atomic(path, lambda fh: fh.write(text))
    return path


# ---------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except FileNotFoundError as exc:
        raise NetworkFileNotFoundError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise NetworkFileNotFoundError(f"{path}: is a directory, not a GeoJSON file") from exc
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NetworkFormatError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        got = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise NetworkFormatError(f"{path}: not a GeoJSON FeatureCollection (type is {got!r})")
    return doc


def _line_parts(path: Path, i: int, feature: Any) -> list[np.ndarray]:
    """Return the ``(k, 2)`` lon/lat arrays of a feature's line(s); validate them."""
    geom = feature.get("geometry") if isinstance(feature, dict) else None
    if not isinstance(geom, dict) or geom.get("coordinates") in (None, []):
        raise NetworkFormatError(f"{path}: feature {i} has no coordinates")
    kind = geom.get("type")
    if kind == "LineString":
        parts = [geom["coordinates"]]
    elif kind == "MultiLineString":
        parts = geom["coordinates"]
    else:
        raise NetworkFormatError(
            f"{path}: feature {i} is a {kind!r}; only LineString and MultiLineString are roads"
        )
    out = []
    for part in parts:
        try:
            xy = np.asarray(part, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise NetworkFormatError(
                f"{path}: feature {i} has malformed coordinates (need [lon, lat] numbers)"
            ) from exc
        if xy.ndim != 2 or xy.shape[1] < 2 or xy.shape[0] < 2:
            raise NetworkFormatError(
                f"{path}: feature {i} needs a line of at least two [lon, lat] positions"
            )
        lon, lat = xy[:, 0], xy[:, 1]
        bad = ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
        if bad.any():
            j = int(np.argmax(bad))
            raise NetworkFormatError(
                f"{path}: feature {i} has coordinates out of range at position {j} "
                f"(lon={float(lon[j])!r}, lat={float(lat[j])!r}; lon must be within [-180, 180], "
                "lat within [-90, 90])"
            )
        out.append(xy[:, :2])
    return out


def _props(feature: Any) -> dict[str, Any]:
    props = feature.get("properties") if isinstance(feature, dict) else None
    return props if isinstance(props, dict) else {}


def _load_exported(
    path: Path, features: list[Any], member: dict[str, Any], name: str | None
) -> RoadNetwork:
    if member.get("format_version") != EXPORT_FORMAT_VERSION:
        raise NetworkFormatError(
            f"{path}: {EXPORT_MEMBER} format version {member.get('format_version')!r} "
            f"is not supported (this program reads {EXPORT_FORMAT_VERSION})"
        )
    if not features:
        raise NoDrivableRoadError(f"{path}: the FeatureCollection has no features")
    parts = [_line_parts(path, i, f) for i, f in enumerate(features)]
    props = [_props(f) for f in features]
    need = ("key", "highway", "oneway", "maxspeed_kph", "length_m", "osm_way_id",
            "reversed", "from_node", "to_node")
    for i, (p, part) in enumerate(zip(props, parts)):
        missing = [k for k in need if k not in p]
        if missing or len(part) != 1:
            raise NetworkFormatError(
                f"{path}: feature {i} lacks {', '.join(missing) or 'a single LineString'}, "
                f"which every feature of an exported network ({EXPORT_MEMBER}) has"
            )
    geoms = [q[0] for q in parts]
    sizes = np.array([g.shape[0] for g in geoms], dtype=np.int64)
    offsets = np.zeros(len(geoms) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    xy = np.concatenate(geoms)
    try:
        col = {k: [p[k] for p in props] for k in need}
        road_class = np.array([ROAD_CLASS_INDEX[h] for h in col["highway"]], dtype=np.int8)
        keys = np.array(col["key"], dtype=np.int64)
        turn_from, turn_to = _keys_to_edges(keys, member.get("turn_from_key", []),
                                            member.get("turn_to_key", []))
        arrays = dict(
            node_lat=np.array(member["node_lat"], dtype=np.float64),
            node_lon=np.array(member["node_lon"], dtype=np.float64),
            node_osm_id=np.array(member["node_osm_id"], dtype=np.int64),
            edge_src=np.array(col["from_node"], dtype=np.int64),
            edge_dst=np.array(col["to_node"], dtype=np.int64),
            edge_speed_kph=np.array(col["maxspeed_kph"], dtype=np.float64),
            edge_length_m=np.array(col["length_m"], dtype=np.float64),
            edge_road_class=road_class,
            edge_oneway=np.array(col["oneway"], dtype=bool),
            edge_osm_way=np.array(col["osm_way_id"], dtype=np.int64),
            edge_reversed=np.array(col["reversed"], dtype=bool),
            edge_key=keys,
        )
        if "geom_osm_node" in member:
            arrays["geom_osm_node"] = np.array(member["geom_osm_node"], dtype=np.int64)
        arrays.update(_name_columns(props))
        kept = (turn_from >= 0) & (turn_to >= 0)
        turns = dict(
            turn_from_edge=turn_from[kept],
            turn_via_node=np.array(member.get("turn_via_node", []), dtype=np.int64)[kept],
            turn_to_edge=turn_to[kept],
            turn_kind=np.array(member.get("turn_kind", []), dtype=np.int8)[kept],
        )
    except (KeyError, TypeError, ValueError, OverflowError, IndexError) as exc:
        raise NetworkFormatError(
            f"{path}: the exported network's properties or {EXPORT_MEMBER} table are "
            f"malformed ({type(exc).__name__}: {exc})"
        ) from exc
    return build_network(
        **arrays, **turns,
        geom_offsets=offsets, geom_lon=xy[:, 0], geom_lat=xy[:, 1],
        name=name if name is not None else str(member.get("name", "")),
        source=str(path),
    )


def _keys_to_edges(keys: np.ndarray, from_keys: Any, to_keys: Any) -> tuple[np.ndarray, ...]:
    """Map turn-restriction edge keys to edge ids (``-1`` where the edge is gone)."""
    order = np.argsort(keys, kind="stable")
    out = []
    for want in (np.array(from_keys, dtype=np.int64), np.array(to_keys, dtype=np.int64)):
        if keys.size == 0 or want.size == 0:
            out.append(np.full(want.shape, -1, dtype=np.int64))
            continue
        pos = np.clip(np.searchsorted(keys[order], want), 0, keys.size - 1)
        out.append(np.where(keys[order][pos] == want, order[pos], -1))
    if out[0].shape != out[1].shape:
        raise ValueError("turn_from_key and turn_to_key differ in length")
    return out[0], out[1]


def _load_lines(path: Path, features: list[Any], name: str) -> RoadNetwork:
    """Generic GeoJSON: split lines at junctions into edges (see the module docstring)."""
    lines: list[np.ndarray] = []
    line_attr: list[tuple[int, float, int, int, int, bool, int]] = []
    line_props: list[dict[str, Any]] = []
    for i, feature in enumerate(features):
        props = _props(feature)
        road_class = _road_class(props.get("highway"))
        parts = _line_parts(path, i, feature)  # validate every feature, drivable or not
        if road_class < 0:
            continue
        road_direction = _direction(path, i, props, ROAD_CLASSES[road_class])
        # An exported feature is one direction of travel, whatever its road's oneway says.
        direction = _FORWARD if props.get("directed") is True else road_direction
        speed = _speed_kph(path, i, props, ROAD_CLASSES[road_class])
        way, key = _int_or(props.get("osm_way_id"), -1), _int_or(props.get("key"), -1)
        for part in parts:
            lines.append(part)
            line_props.append(props)
            line_attr.append(
                (road_class, speed, direction, way, key if len(parts) == 1 else -1,
                 road_direction != _BOTH, i)
            )
    if not lines:
        raise NoDrivableRoadError(
            f"{path}: no drivable road: none of its {len(features)} features is a LineString "
            f"with a car highway class ({', '.join(ROAD_CLASSES[:9])}, ...)"
        )
    return _split_and_build(path, lines, line_attr, name, _name_columns(line_props))


def _name_columns(props: list[dict[str, Any]]) -> dict[str, Any]:
    """``edge_name``, ``edge_ref``, ``edge_flags`` and ``strings`` for build_network, one
    entry per item of ``props``: ``name``/``ref`` strings; ``roundabout``, ``toll``, ``ferry``
    booleans as export writes them, or OSM-style ``junction``, ``toll``, ``route``."""
    idx, strings = index_strings([_text(p.get("name")) for p in props]
                                 + [_text(p.get("ref")) for p in props])
    flags = np.fromiter((_flags(p) for p in props), dtype=np.uint8, count=len(props))
    return dict(edge_name=idx[:len(props)], edge_ref=idx[len(props):], edge_flags=flags,
                strings=strings)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    return str(value) or None


def _flags(props: dict[str, Any]) -> int:
    yes = (True, "yes", "true", "1")
    flags = 0
    if props.get("roundabout") is True or props.get("junction") in ("roundabout", "circular"):
        flags |= EDGE_ROUNDABOUT
    if props.get("toll") in yes:
        flags |= EDGE_TOLL
    if props.get("ferry") is True or props.get("route") == "ferry":
        flags |= EDGE_FERRY
    return flags


def _split_and_build(
    path: Path, lines: list[np.ndarray], attr: list[tuple], name: str,
    names: dict[str, Any],
) -> RoadNetwork:
    sizes = np.array([ln.shape[0] for ln in lines], dtype=np.int64)
    xy = np.concatenate(lines)
    line_of = np.repeat(np.arange(len(lines)), sizes)
    code = _coord_code(xy[:, 1], xy[:, 0])
    # Drop repeated consecutive positions inside a line (zero-length segments).
    keep = np.ones(code.shape, dtype=bool)
    keep[1:] = (code[1:] != code[:-1]) | (line_of[1:] != line_of[:-1])
    xy, line_of, code = xy[keep], line_of[keep], code[keep]
    sizes = np.bincount(line_of, minlength=len(lines))
    if (sizes < 2).any():
        feature = attr[int(np.argmax(sizes < 2))][-1]
        raise NetworkFormatError(
            f"{path}: feature {feature} has a line with fewer than two distinct positions"
        )
    starts = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    _, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
    is_node = counts[inverse] >= 2
    is_node[starts[:-1]] = True
    is_node[starts[1:] - 1] = True

    # Pieces run between consecutive node vertices of the same line.
    node_pos = np.flatnonzero(is_node)
    same_line = line_of[node_pos[:-1]] == line_of[node_pos[1:]]
    p_start, p_end = node_pos[:-1][same_line], node_pos[1:][same_line]
    p_line = line_of[p_start]

    node_codes, first_at, node_of_vertex = np.unique(
        code[node_pos], return_index=True, return_inverse=True
    )
    vertex_node = np.full(code.shape, -1, dtype=np.int64)
    vertex_node[node_pos] = node_of_vertex
    node_xy = xy[node_pos[first_at]]

    cls, speed, direction, way, key, oneway, _ = (np.array(c) for c in zip(*attr))
    direction = direction[p_line]
    fwd_piece = np.flatnonzero(direction & _FORWARD)
    bwd_piece = np.flatnonzero(direction & _BACKWARD)
    piece = np.concatenate([fwd_piece, bwd_piece])
    rev = np.concatenate([np.zeros(fwd_piece.size, bool), np.ones(bwd_piece.size, bool)])
    order = np.lexsort((rev, piece))
    piece, rev = piece[order], rev[order]

    a, b = p_start[piece], p_end[piece]
    n_pts = b - a + 1
    offsets = np.zeros(piece.size + 1, dtype=np.int64)
    np.cumsum(n_pts, out=offsets[1:])
    step = np.arange(offsets[-1]) - np.repeat(offsets[:-1], n_pts)
    vertex = np.where(np.repeat(rev, n_pts), np.repeat(b, n_pts) - step, np.repeat(a, n_pts) + step)

    line = p_line[piece]
    edge_way = way.astype(np.int64)[line]
    keys = _derived_keys(code[vertex], offsets, edge_way)
    # A feature's own key names its edge only when the feature is exactly one edge.
    edges_per_line = np.bincount(line, minlength=len(lines))
    given = key.astype(np.int64)[line]
    keys = np.where((edges_per_line[line] == 1) & (given >= 0), given, keys)
    _, unique_at = np.unique(keys, return_index=True)
    e_keep = np.sort(unique_at)  # exact repeats of an edge are kept once

    src = np.where(rev, vertex_node[b], vertex_node[a])[e_keep]
    dst = np.where(rev, vertex_node[a], vertex_node[b])[e_keep]
    geom_idx_off, geom_vertex = _subset_geometry(offsets, vertex, e_keep)
    return build_network(
        node_lat=node_xy[:, 1], node_lon=node_xy[:, 0],
        node_osm_id=np.full(node_codes.size, -1, dtype=np.int64),
        edge_src=src, edge_dst=dst,
        edge_speed_kph=speed.astype(np.float64)[line][e_keep],
        edge_road_class=cls.astype(np.int8)[line][e_keep],
        edge_oneway=oneway.astype(bool)[line][e_keep],
        edge_osm_way=edge_way[e_keep],
        edge_reversed=rev[e_keep],
        edge_key=keys[e_keep],
        edge_name=names["edge_name"][line][e_keep],
        edge_ref=names["edge_ref"][line][e_keep],
        edge_flags=names["edge_flags"][line][e_keep],
        strings=names["strings"],
        geom_offsets=geom_idx_off,
        geom_lat=xy[geom_vertex, 1], geom_lon=xy[geom_vertex, 0],
        name=name, source=str(path),
    )


def _subset_geometry(
    offsets: np.ndarray, vertex: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.diff(offsets)[keep]
    new_off = np.zeros(keep.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=new_off[1:])
    idx = np.repeat(offsets[:-1][keep] - new_off[:-1], sizes) + np.arange(new_off[-1])
    return new_off, vertex[idx]


def _coord_code(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Injective int64 code of a position rounded to 1e-7 degrees."""
    lat_e7 = np.rint(lat * 1e7).astype(np.int64) + 900_000_000
    lon_e7 = np.rint(lon * 1e7).astype(np.int64) + 1_800_000_000
    return (lat_e7 << 32) | lon_e7


def _derived_keys(codes: np.ndarray, offsets: np.ndarray, way: np.ndarray) -> np.ndarray:
    """Order-sensitive hash of each edge's rounded coordinates, mixed with its way id."""
    sizes = np.diff(offsets)
    pos = np.arange(codes.size) - np.repeat(offsets[:-1], sizes)
    with np.errstate(over="ignore"):
        h = _splitmix64(codes.astype(np.uint64) ^ _splitmix64(pos.astype(np.uint64)))
        per_edge = np.add.reduceat(h, offsets[:-1]) if codes.size else h
    return stable_edge_keys(way, per_edge.view(np.int64), sizes, np.zeros(sizes.shape, bool))


# ------------------------------------------------------------------- property parsing


def _road_class(highway: Any) -> int:
    """Index into ROAD_CLASSES, or -1 when the road is not for cars."""
    if isinstance(highway, list):
        highway = highway[0] if highway else None
    if highway is None:
        return ROAD_CLASS_INDEX["unknown"]
    return ROAD_CLASS_INDEX.get(str(highway), -1)


def _int_or(value: Any, default: int) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    return value if ok else default


def _direction(path: Path, i: int, props: dict[str, Any], highway: str) -> int:
    """The road's direction of travel: _FORWARD, _BACKWARD or _BOTH."""
    value = props.get("oneway")
    if value is None:
        implied = highway == "motorway" or props.get("junction") == "roundabout"
        return _FORWARD if implied else _BOTH
    key = value.strip().lower() if isinstance(value, str) else value
    try:
        return _ONEWAY_VALUES[key]
    except (KeyError, TypeError):
        raise NetworkFormatError(
            f"{path}: feature {i} has oneway={value!r}; expected a boolean or "
            "'yes', 'no', '-1', 'true', 'false', '1', '0', 'reverse'"
        ) from None


def _speed_kph(path: Path, i: int, props: dict[str, Any], highway: str) -> float:
    kph = props.get("maxspeed_kph")
    if kph is None:
        kph = _parse_maxspeed(props.get("maxspeed"))
    elif not isinstance(kph, (int, float)) or isinstance(kph, bool):
        raise NetworkFormatError(f"{path}: feature {i} has maxspeed_kph={kph!r}, not a number")
    if kph is None:
        return DEFAULT_SPEED_KPH[highway]
    if not (math.isfinite(kph) and kph > 0):
        raise NetworkFormatError(f"{path}: feature {i} has a speed of {kph!r} km/h; must be > 0")
    return float(kph)


def _parse_maxspeed(value: Any) -> float | None:
    """Km/h from a number or an OSM-style ``"50"``/``"30 mph"``; None when unusable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    if isinstance(value, list):
        value = value[0] if value else None
        return _parse_maxspeed(value)
    match = _SPEED_RE.match(str(value).split(";")[0])
    if not match:
        return None
    speed = float(match.group(1))
    if speed <= 0:
        return None
    return speed * _MPH_TO_KPH if match.group(2) == "mph" else speed


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".geojson", ".json"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name
