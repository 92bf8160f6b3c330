"""DIMACS 9th challenge shortest-path graphs (``.gr`` arcs + ``.co`` coordinates) as networks.

The format (http://www.dis.uniroma1.it/challenge9, "File formats"): comment lines start with
``c``; ``p sp N M`` announces N nodes and M arcs; ``a U V W`` is an arc from node U to node V
(ids ``1..N``) with integer weight W. The coordinate file has ``p aux sp co N`` and
``v ID X Y`` lines, X the longitude and Y the latitude in millionths of a degree. Both may
be gzip-compressed (detected by content).

The challenge publishes two weightings of the same USA road graphs: ``USA-road-d`` (distance,
in units of 0.1 m: the weights are ten times the great-circle length between the end
nodes) and ``USA-road-t`` (travel time). The challenge's TIGER/Line notes define the travel
time as the great-circle distance divided by an average speed that depends on the road
category, "in a unit that does not correspond to any usual unit". In the files the
distance/time ratio takes four values (0.4, 0.6, 0.8, 1.0 per 0.1 m), so we read one
time unit as :data:`DIMACS_TIME_UNIT_S` = 0.0036 s, which turns those four categories into
40, 60, 80 and 100 km/h. Pass ``time_unit_s`` to choose another reading.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from graph.errors import NetworkFileNotFoundError, NetworkFormatError, NoDrivableRoadError
from graph.network import RoadNetwork, build_network, haversine_m

#: Seconds per DIMACS ``USA-road-t`` weight unit (see the module docstring).
DIMACS_TIME_UNIT_S = 0.0036
#: Metres per DIMACS ``USA-road-d`` weight unit.
DIMACS_DISTANCE_UNIT_M = 0.1
#: Shortest edge length we store (m): DIMACS end nodes can coincide, and a zero length
#: would make the free-flow speed that reproduces the file's travel time zero.
MIN_EDGE_LENGTH_M = 0.1
#: Free-flow speed (km/h) for distance-weighted graphs, which carry no time.
DISTANCE_GRAPH_SPEED_KPH = 50.0

Weighting = Literal["auto", "time", "distance"]


def load_dimacs(
    gr_path: str | os.PathLike[str],
    co_path: str | os.PathLike[str],
    *,
    weighting: Weighting = "auto",
    time_unit_s: float = DIMACS_TIME_UNIT_S,
    name: str | None = None,
) -> RoadNetwork:
    """Load a DIMACS ``.gr`` arc file and its ``.co`` coordinates as a :class:`RoadNetwork`.

    Parallel arcs (same tail and head) collapse to one edge carrying the smallest weight
    (NY: 733,846 arcs -> 730,100 edges). Self-loops are dropped. Each edge is a straight
    line between its end nodes; its length is the great-circle distance (at least
    ``MIN_EDGE_LENGTH_M``). For a travel-time graph the free-flow speed is set so that
    ``length_m / speed`` equals the file's time (``weight * time_unit_s``); for a distance
    graph the length is the file's weight (0.1 m units) and the speed is
    ``DISTANCE_GRAPH_SPEED_KPH``. An edge is one-way when the reverse arc is absent. Node
    "OSM ids" are the DIMACS ids (1-based), so edge keys derive from the (u, v) ids and stay
    stable across imports.

    Parsing uses polars' multi-threaded CSV reader on the decompressed bytes: about 0.2 s
    per 700k arcs, plus the model build.

    Parameters
    ----------
    gr_path, co_path
        The arc file and the coordinate file (plain or gzip).
    weighting
        ``"time"``, ``"distance"``, or ``"auto"``: time when the file's header comments
        or name say ``-t`` (``USA-road-t``), distance when they say ``-d``, else time.
    time_unit_s
        Seconds per weight unit of a travel-time graph.
    name
        Network name; default the arc file's name without ``.gr[.gz]``.

    Raises
    ------
    NetworkFileNotFoundError
        A file does not exist.
    NetworkFormatError
        A file is not in the DIMACS format, counts disagree with the ``p`` line, an arc
        names a node without coordinates, or a weight is not positive.
    NoDrivableRoadError
        The graph has no arc.
    """
    gr_path, co_path = Path(gr_path), Path(co_path)
    gr_text = _read_text(gr_path)
    co_text = _read_text(co_path)
    n_declared, m_declared, header = _problem_line(gr_text, gr_path, "sp")
    n_co, _, _ = _problem_line(co_text, co_path, "aux")
    arcs = _records(gr_text, gr_path, "a", m_declared)
    coords = _records(co_text, co_path, "v", n_co)
    u, v, w = arcs
    ids, x, y = coords

    n = n_declared
    if n_co != n:
        raise NetworkFormatError(f"{co_path}: has {n_co} nodes but {gr_path} declares {n}")
    if not np.array_equal(np.sort(ids), np.arange(1, n + 1)):
        raise NetworkFormatError(f"{co_path}: node ids must be exactly 1..{n}, each once")
    if u.size == 0:
        raise NoDrivableRoadError(f"{gr_path}: the graph has no arc")
    bad = (u < 1) | (u > n) | (v < 1) | (v > n)
    if bad.any():
        i = int(np.argmax(bad))
        raise NetworkFormatError(
            f"{gr_path}: arc {i + 1} ({u[i]} -> {v[i]}) names a node outside 1..{n}"
        )
    if (w <= 0).any():
        i = int(np.argmax(w <= 0))
        raise NetworkFormatError(f"{gr_path}: arc {i + 1} has weight {w[i]}; weights must be > 0")

    lon = np.empty(n, dtype=np.float64)
    lat = np.empty(n, dtype=np.float64)
    lon[ids - 1] = x / 1e6
    lat[ids - 1] = y / 1e6

    src, dst, weight = _collapse_parallel(u - 1, v - 1, w, n)
    is_time = _is_time_graph(weighting, gr_path, header)
    geo_m = haversine_m(lat[src], lon[src], lat[dst], lon[dst])
    if is_time:
        length_m = np.maximum(geo_m, MIN_EDGE_LENGTH_M)
        speed_kph = length_m / (weight * time_unit_s) * 3.6
    else:
        length_m = np.maximum(weight * DIMACS_DISTANCE_UNIT_M, MIN_EDGE_LENGTH_M)
        speed_kph = np.full(src.shape, DISTANCE_GRAPH_SPEED_KPH)

    return build_network(
        node_lat=lat,
        node_lon=lon,
        node_osm_id=np.arange(1, n + 1, dtype=np.int64),
        edge_src=src,
        edge_dst=dst,
        edge_length_m=length_m,
        edge_speed_kph=speed_kph,
        edge_oneway=~_has_reverse(src, dst, n),
        name=name if name is not None else _stem(gr_path),
        source=str(gr_path),
    )


def find_coordinates(gr_path: str | os.PathLike[str]) -> Path:
    """Find the ``.co`` file beside a ``.gr`` file.

    Tries the same stem with ``.gr`` replaced by ``.co`` and, for the challenge's naming
    (``USA-road-t.NY.gr.gz``), the distance graph's coordinates (``USA-road-d.NY.co.gz``),
    each with and without ``.gz``.

    Raises
    ------
    NetworkFileNotFoundError
        None of the candidates exists.
    """
    gr_path = Path(gr_path)
    stem = _stem(gr_path)
    stems = [stem]
    swapped = re.sub(r"-([td])(?=\.|$)", lambda m: "-d" if m.group(1) == "t" else "-t", stem)
    if swapped != stem:
        stems.append(swapped)
    candidates = [gr_path.with_name(s + ext) for s in stems for ext in (".co.gz", ".co")]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(c.name for c in candidates)
    raise NetworkFileNotFoundError(
        f"{gr_path}: no DIMACS coordinate file beside it (tried {tried}); pass the .co path"
    )


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".gz", ".gr", ".co"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


def _read_text(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise NetworkFileNotFoundError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise NetworkFileNotFoundError(f"{path}: is a directory, not a DIMACS file") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise NetworkFormatError(f"{path}: gzip data is corrupt or cut short ({exc})") from exc
    return raw


def _problem_line(text: bytes, path: Path, kind: str) -> tuple[int, int, bytes]:
    """Return ``(n, m, header_comments)`` from the ``p`` line (m is 0 for ``.co``)."""
    pos = 0
    while pos < len(text):
        end = text.find(b"\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end].strip()
        if line and not line.startswith(b"c"):
            parts = line.split()
            if kind == "sp" and len(parts) == 4 and parts[:2] == [b"p", b"sp"]:
                return _ints(parts[2:], path) + (text[:pos],)
            if kind == "aux" and len(parts) == 5 and parts[:4] == [b"p", b"aux", b"sp", b"co"]:
                return _ints(parts[4:], path) + (0, text[:pos])
            want = "p sp N M" if kind == "sp" else "p aux sp co N"
            raise NetworkFormatError(
                f"{path}: not a DIMACS {'arc' if kind == 'sp' else 'coordinate'} file: "
                f"the first non-comment line must be '{want}', got {line[:60]!r}"
            )
        pos = end + 1
    raise NetworkFormatError(f"{path}: not a DIMACS file: no 'p' problem line")


def _ints(parts: list[bytes], path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in parts)
    except ValueError as exc:
        raise NetworkFormatError(f"{path}: the 'p' line holds a non-integer count") from exc


def _records(text: bytes, path: Path, tag: str, expected: int) -> tuple[np.ndarray, ...]:
    """Parse every ``tag X Y Z`` line after the ``p`` line into three int64 arrays."""
    start = text.find(b"\n" + tag.encode() + b" ")
    if start < 0:
        if expected:
            raise NetworkFormatError(f"{path}: declares {expected} records but has no '{tag}' line")
        return tuple(np.zeros(0, dtype=np.int64) for _ in range(3))
    try:
        df = pl.read_csv(
            io.BytesIO(text[start + 1:]),
            separator=" ",
            has_header=False,
            comment_prefix="c",
            schema={"tag": pl.String, "x": pl.Int64, "y": pl.Int64, "z": pl.Int64},
            truncate_ragged_lines=False,
        )
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise NetworkFormatError(
            f"{path}: a '{tag}' line is malformed (expected '{tag} <int> <int> <int>'): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    tags = df["tag"]
    if tags.null_count() or (tags != tag).any() or any(df[c].null_count() for c in "xyz"):
        raise NetworkFormatError(
            f"{path}: expected only '{tag} <int> <int> <int>' lines after the 'p' line"
        )
    if df.height != expected:
        raise NetworkFormatError(
            f"{path}: the 'p' line declares {expected} records but the file has {df.height} "
            "(cut short?)"
        )
    return tuple(df[c].to_numpy() for c in "xyz")


def _collapse_parallel(
    src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop self-loops; keep one arc per (src, dst) with the smallest weight, sorted by pair."""
    keep = src != dst
    src, dst, weight = src[keep], dst[keep], weight[keep]
    pair = src * n + dst
    order = np.lexsort((weight, pair))
    pair, weight = pair[order], weight[order]
    first = np.ones(pair.shape, dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    pair, weight = pair[first], weight[first]
    return (pair // n).astype(np.int32), (pair % n).astype(np.int32), weight.astype(np.float64)


def _has_reverse(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    pair = src.astype(np.int64) * n + dst
    reverse = dst.astype(np.int64) * n + src
    return np.isin(reverse, pair, assume_unique=True)


def _is_time_graph(weighting: Weighting, gr_path: Path, header: bytes) -> bool:
    if weighting not in ("auto", "time", "distance"):
        raise ValueError(f"weighting must be 'auto', 'time' or 'distance'; got {weighting!r}")
    if weighting != "auto":
        return weighting == "time"
    hint = header.decode("ascii", "replace").lower()
    for text in (hint, gr_path.name.lower()):
        if "road-t" in text or "-t." in text:
            return True
        if "road-d" in text or "-d." in text:
            return False
    return True
