"""Spatial index over edge geometry: find the roads near GPS points, in batches.

Geometry is projected once to a local equirectangular plane in metres around the network's
centre and exploded into straight segments, which a uniform grid indexes: segments are cut into
pieces no longer than ``piece_m`` and each piece is registered in the one cell holding its
midpoint (CSR arrays: cell -> segment ids, cells numbered row by row). A query widens each
point's square of side ``2 * radius`` by the largest piece half-extent, so that every segment
within the radius is found, reads the grid rows that square covers (one contiguous CSR range
per row), and keeps the segments whose exact distance, computed with NumPy for all points of a
batch at once, is within the radius; projecting the points onto those segments gives the
position along the edge. Positions are scaled so that an edge's end lies at exactly
``net.edge_length_m`` (great-circle metres), whatever the projection's distortion.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from graph.errors import NoCandidateError
from graph.network import EARTH_RADIUS_M, RoadNetwork, haversine_m

#: Default maximum distance (m) from a point to the road it snaps to.
DEFAULT_SNAP_RADIUS_M = 200.0

#: Default grid cell side and longest registered piece of a segment (m).
DEFAULT_CELL_M = 25.0

#: Grid cells an index may always allocate (the cell side grows beyond ``cell_m`` to stay
#: under the limit, :func:`grid_cell_limit`).
MAX_GRID_CELLS = 1 << 22

#: Above :data:`MAX_GRID_CELLS`, cells allowed per segment: the grid's offsets then cost at most
#: 2 B per segment against the ~56 B each segment's own arrays take.
GRID_CELLS_PER_SEGMENT = 0.5

#: Hard ceiling on grid cells (256 MiB of int32 offsets).
GRID_CELLS_CEILING = 1 << 26

#: Most (point, grid row) ranges one query step expands; larger batches are cut into steps.
_MAX_ROWS_PER_STEP = 1 << 20


@dataclass(frozen=True, slots=True, eq=False)
class SpatialIndex:
    """Segments of every directed edge in a local metric projection, and their grid.

    ``seg_edge[s]`` is the edge a segment belongs to; ``seg_start_m[s]`` the distance along
    that edge (m) where the segment starts; ``seg_scale[s]`` converts projected metres along
    the segment into metres of ``edge_length_m``. The grid has ``grid_nx * grid_ny`` square
    cells of side ``cell_m`` from ``(grid_x0, grid_y0)``; cell ``c = row * grid_nx + col``
    holds segments ``cell_seg[cell_start[c]:cell_start[c + 1]]``, the segments with a piece
    whose midpoint lies in the cell; a piece reaches at most ``reach_x_m`` / ``reach_y_m``
    from its midpoint along each axis.
    """

    network_version: str
    lat0: float
    lon0: float
    kx_m_per_deg: float
    ky_m_per_deg: float
    seg_edge: np.ndarray  # int32[s]
    seg_x0: np.ndarray  # float64[s], projected metres
    seg_y0: np.ndarray
    seg_x1: np.ndarray
    seg_y1: np.ndarray
    seg_start_m: np.ndarray  # float64[s]
    seg_scale: np.ndarray  # float64[s]
    cell_m: float
    grid_x0: float
    grid_y0: float
    grid_nx: int
    grid_ny: int
    reach_x_m: float
    reach_y_m: float
    cell_start: np.ndarray  # int32[grid_nx * grid_ny + 1] (int64 past 2**31 entries)
    cell_seg: np.ndarray  # int32[registrations]

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays, in bytes."""
        arrays = (self.seg_edge, self.seg_x0, self.seg_y0, self.seg_x1, self.seg_y1,
                  self.seg_start_m, self.seg_scale, self.cell_start, self.cell_seg)
        return int(sum(a.nbytes for a in arrays))

    def project(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project degrees to the index's local plane, in metres."""
        x = (np.asarray(lon, dtype=np.float64) - self.lon0) * self.kx_m_per_deg
        y = (np.asarray(lat, dtype=np.float64) - self.lat0) * self.ky_m_per_deg
        return x, y

    def unproject(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`project`: metres in the local plane back to ``(lat, lon)``."""
        return np.asarray(y) / self.ky_m_per_deg + self.lat0, np.asarray(x) / self.kx_m_per_deg + self.lon0


#: Name written into, and required in, a saved spatial index's header.
SPATIAL_FORMAT = "traffic-spatial-index"
#: Version of the saved layout; bump when fields, dtypes or their meaning change.
SPATIAL_FORMAT_VERSION = 1
_SPATIAL_ARRAYS = ("seg_edge", "seg_x0", "seg_y0", "seg_x1", "seg_y1", "seg_start_m", "seg_scale",
                   "cell_start", "cell_seg")


def save_spatial_index(index: SpatialIndex, path: str | os.PathLike[str]) -> Path:
    """Write ``index`` to ``path`` atomically: an uncompressed ZIP whose ``header.json``
    holds the format, its version, the network version and the scalar fields, and whose
    ``.npy`` members (64-byte aligned) hold the arrays, so :func:`load_spatial_index` can
    map them. Returns the path written."""
    from graph.io import write_array_archive
    from storage import write_atomic

    path = Path(path)
    scalars = {f.name: getattr(index, f.name) for f in fields(SpatialIndex)
               if f.name not in _SPATIAL_ARRAYS}
    header = {"format": SPATIAL_FORMAT, "format_version": SPATIAL_FORMAT_VERSION, **scalars}
    arrays = {k: getattr(index, k) for k in _SPATIAL_ARRAYS}
    write_atomic(path, lambda fh: write_array_archive(fh, header, arrays))
    return path


def load_spatial_index(path: str | os.PathLike[str], *, mmap: bool = True) -> SpatialIndex:
    """Read an index written by :func:`save_spatial_index`; with ``mmap`` (default) its
    arrays are read-only views of a shared mapping of the file (no copy, O(1) to load).

    Raises
    ------
    ValueError
        The file is not a saved spatial index, is of another format version, or is cut
        short; the message names the file and both versions where they differ.
    """
    import zipfile

    from graph.io import map_array_archive

    path = Path(path)
    try:
        if mmap:
            zf, arrays = map_array_archive(path)
            with zf:
                header = json.loads(zf.read("header.json"))
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in _SPATIAL_ARRAYS}
            with zipfile.ZipFile(path) as zf:
                header = json.loads(zf.read("header.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable spatial index: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != SPATIAL_FORMAT:
        raise ValueError(f"{path}: not a saved spatial index")
    if header.get("format_version") != SPATIAL_FORMAT_VERSION:
        raise ValueError(f"{path}: spatial index format version {header.get('format_version')!r}; "
                         f"this program reads version {SPATIAL_FORMAT_VERSION}")
    missing = [k for k in _SPATIAL_ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: spatial index lacks arrays {missing}")
    scalars = {f.name: header[f.name] for f in fields(SpatialIndex) if f.name not in _SPATIAL_ARRAYS}
    for a in arrays.values():
        a.setflags(write=False)
    return SpatialIndex(**scalars, **{k: arrays[k] for k in _SPATIAL_ARRAYS})


#: Segments handled per chunk while building: bounds the build's temporaries (about 100 B
#: per segment of a chunk) whatever the network's size.
BUILD_CHUNK_SEGMENTS = 1 << 19


def build_spatial_index(
    net: RoadNetwork, *, cell_m: float = DEFAULT_CELL_M, piece_m: float | None = None,
    chunk: int = BUILD_CHUNK_SEGMENTS,
) -> SpatialIndex:
    """Explode edge geometry into segments and grid them; O(points log points).

    Memory: the index itself (about 60 B per segment) plus temporaries of ``chunk``
    segments at a time and one sort of the (cell, segment) keys (16 B per piece): a network
    swap at country scale prepares the new network beside the serving one.

    Parameters
    ----------
    cell_m
        Grid cell side (m). Grows when the network's extent would need more than
        :data:`MAX_GRID_CELLS` cells.
    piece_m
        Longest piece (m) a segment is registered by (default: the cell side); long segments
        are registered once per piece, so a query's margin stays half a piece.
    chunk
        Segments per chunk of the build (the result does not depend on it).
    """
    if not (np.isfinite(cell_m) and cell_m > 0):
        raise ValueError(f"`cell_m` must be a positive number of metres; got {cell_m!r}")
    if piece_m is not None and not (np.isfinite(piece_m) and piece_m > 0):
        raise ValueError(f"`piece_m` must be a positive number of metres; got {piece_m!r}")
    chunk = max(int(chunk), 1)
    min_lon, min_lat, max_lon, max_lat = net.bbox
    lat0, lon0 = (min_lat + max_lat) / 2, (min_lon + max_lon) / 2
    ky = np.pi * EARTH_RADIUS_M / 180.0
    kx = ky * float(np.cos(np.radians(lat0)))
    glat, glon = net.geom_lat, net.geom_lon

    # Segment i joins points keep[i] and keep[i] + 1: every point but each edge's last.
    n_seg_e = np.maximum(np.diff(net.geom_offsets) - 1, 0)
    seg_edge = np.repeat(np.arange(net.n_edges, dtype=np.int32), n_seg_e)
    first_seg = np.cumsum(n_seg_e) - n_seg_e
    n_seg = int(seg_edge.size)
    x0, y0, x1, y1 = (np.empty(n_seg) for _ in range(4))
    proj_len, true_len = np.empty(n_seg), np.empty(n_seg)
    for lo in range(0, n_seg, chunk):
        hi = min(lo + chunk, n_seg)
        e = seg_edge[lo:hi]
        keep = net.geom_offsets[:-1][e] + (np.arange(lo, hi) - first_seg[e])
        x0[lo:hi] = (glon[keep] - lon0) * kx
        y0[lo:hi] = (glat[keep] - lat0) * ky
        x1[lo:hi] = (glon[keep + 1] - lon0) * kx
        y1[lo:hi] = (glat[keep + 1] - lat0) * ky
        proj_len[lo:hi] = np.hypot(x1[lo:hi] - x0[lo:hi], y1[lo:hi] - y0[lo:hi])
        true_len[lo:hi] = haversine_m(glat[keep], glon[keep], glat[keep + 1], glon[keep + 1])

    # Positions along an edge are measured in great-circle metres per segment (as the edge's
    # length is), then scaled so the edge ends exactly at edge_length_m.
    edge_true_len = np.bincount(seg_edge, weights=true_len, minlength=net.n_edges)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale_e = np.where(edge_true_len > 0, net.edge_length_m / edge_true_len, 1.0)
    del edge_true_len
    seg_scale = proj_len  # filled in place, chunk by chunk
    seg_len_m = true_len
    for lo in range(0, n_seg, chunk):
        hi = min(lo + chunk, n_seg)
        se = scale_e[seg_edge[lo:hi]]
        with np.errstate(divide="ignore", invalid="ignore"):
            seg_scale[lo:hi] = np.where(proj_len[lo:hi] > 0, true_len[lo:hi] / proj_len[lo:hi],
                                        1.0) * se
        seg_len_m[lo:hi] = true_len[lo:hi] * se
    del scale_e
    cum = np.cumsum(seg_len_m) - seg_len_m
    del seg_len_m, true_len
    seg_start_m = cum - cum[first_seg[seg_edge]]
    del cum

    grid = _build_grid(x0, y0, x1, y1, cell_m=cell_m, piece_m=piece_m, chunk=chunk)
    return SpatialIndex(
        network_version=net.version, lat0=lat0, lon0=lon0, kx_m_per_deg=kx, ky_m_per_deg=ky,
        seg_edge=seg_edge, seg_x0=x0, seg_y0=y0, seg_x1=x1, seg_y1=y1,
        seg_start_m=seg_start_m, seg_scale=seg_scale, **grid,
    )


def grid_cell_limit(n_segments: int) -> int:
    """Most grid cells an index over ``n_segments`` segments allocates.

    A fixed cap made a country's cells wide: at 26M edges (the 6 x 6 tiling of New York) 4M
    cells are 350 m across, and a probe's candidate search then scans every segment of the
    cells within its radius. Matching New York with cells of 330 m, 166 m and 59 m ran
    validate+match+traversals at 34.8k, 45.3k and 51.9k probes/s. So the limit grows with
    the segments, at :data:`GRID_CELLS_PER_SEGMENT`, between :data:`MAX_GRID_CELLS` and
    :data:`GRID_CELLS_CEILING`.
    """
    return int(min(max(MAX_GRID_CELLS, int(n_segments * GRID_CELLS_PER_SEGMENT)),
                   GRID_CELLS_CEILING))


def _build_grid(
    x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, *, cell_m: float,
    piece_m: float | None, chunk: int = BUILD_CHUNK_SEGMENTS,
) -> dict:
    """Cut segments into pieces of at most ``piece_m``, register each piece in the cell of its
    midpoint, and return the grid fields of :class:`SpatialIndex` (``chunk`` segments at a
    time; one sort of all (cell, segment) keys at the end)."""
    n_seg = x0.shape[0]
    if n_seg:
        gx0 = float(min(x0.min(), x1.min()))
        gy0 = float(min(y0.min(), y1.min()))
        wx = float(max(x0.max(), x1.max())) - gx0
        wy = float(max(y0.max(), y1.max())) - gy0
    else:
        gx0 = gy0 = wx = wy = 0.0
    # Widen the cells when the extent would need too many of them.
    limit = grid_cell_limit(n_seg)
    cell = max(float(cell_m), float(np.sqrt((wx + 1.0) * (wy + 1.0) / limit)))
    nx, ny = int(wx // cell) + 1, int(wy // cell) + 1
    while nx * ny > limit:
        cell *= 1.25
        nx, ny = int(wx // cell) + 1, int(wy // cell) + 1
    piece = cell if piece_m is None else float(piece_m)
    stride = max(n_seg, 1)
    pairs: list[np.ndarray] = []
    reach_x = reach_y = 0.0
    for lo in range(0, n_seg, chunk):
        hi = min(lo + chunk, n_seg)
        dx, dy = x1[lo:hi] - x0[lo:hi], y1[lo:hi] - y0[lo:hi]
        n_piece = np.maximum(np.ceil(np.hypot(dx, dy) / piece), 1.0).astype(np.int64)
        local = np.repeat(np.arange(hi - lo, dtype=np.int64), n_piece)
        first = np.cumsum(n_piece) - n_piece
        i = np.arange(local.size) - np.repeat(first, n_piece)
        t = (i + 0.5) / n_piece[local]
        mx = x0[lo:hi][local] + t * dx[local]
        my = y0[lo:hi][local] + t * dy[local]
        col = np.clip(((mx - gx0) // cell).astype(np.int64), 0, nx - 1)
        row = np.clip(((my - gy0) // cell).astype(np.int64), 0, ny - 1)
        pairs.append(np.unique((row * nx + col) * stride + (local + lo)))
        reach_x = max(reach_x, float((np.abs(dx) / n_piece).max(initial=0.0)) / 2)
        reach_y = max(reach_y, float((np.abs(dy) / n_piece).max(initial=0.0)) / 2)
    # One entry per (cell, segment), sorted by cell.
    pair = np.unique(np.concatenate(pairs)) if pairs else np.zeros(0, dtype=np.int64)
    del pairs
    cell_of = pair // stride
    cell_start = np.searchsorted(cell_of, np.arange(nx * ny + 1))
    del cell_of
    return dict(cell_m=cell, grid_x0=gx0, grid_y0=gy0, grid_nx=nx, grid_ny=ny,
                reach_x_m=reach_x, reach_y_m=reach_y,
                cell_start=cell_start.astype(np.int32 if pair.size < 2**31 else np.int64),
                cell_seg=(pair % stride).astype(np.int32))


def candidates(
    index: SpatialIndex,
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    radius_m: float,
    k: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Find every edge within ``radius_m`` of each point, nearest first.

    Returns ``(point_idx, edge_idx, dist_m, offset_m)``, 1-D arrays of equal length sorted by
    point then distance (then edge id): for each point, each edge near it once, at the nearest
    position on that edge (on the first segment of the edge, where several are equally near); ``offset_m`` is the distance along the edge from its start (m, in
    ``edge_length_m`` units). With ``k``, at most ``k`` edges per point are kept.

    Examples
    --------
    >>> # pi, ei, d, off = candidates(idx, lat, lon, radius_m=50.0, k=8)
    >>> # net.edge_length_m[ei] gives the lengths of the candidate edges.
    """
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    if lat.shape != lon.shape or lat.ndim != 1:
        raise ValueError(f"`lat` and `lon` must be 1-D arrays of equal length; got {lat.shape} and {lon.shape}")
    if not (np.isfinite(radius_m) and radius_m > 0):
        raise ValueError(f"`radius_m` must be a positive number of metres; got {radius_m!r}")
    if k is not None and k < 1:
        raise ValueError(f"`k` must be at least 1; got {k!r}")
    px, py = index.project(lat, lon)
    pi, si, dist, along = _near_segments(index, px, py, float(radius_m))

    # Nearest segment per (point, edge): a segment's id orders it by edge and along the edge,
    # so sorting by (point, segment) groups each point's edges; the first segment at the
    # group's least distance wins.
    order = np.argsort(pi * max(index.seg_edge.size, 1) + si)
    pi, si, dist, along = pi[order], si[order], dist[order], along[order]
    edge = index.seg_edge[si]
    start = np.ones(pi.shape, dtype=bool)
    start[1:] = (pi[1:] != pi[:-1]) | (edge[1:] != edge[:-1])
    group = np.cumsum(start) - 1
    least = np.minimum.reduceat(dist, np.flatnonzero(start)) if pi.size else dist
    at_least = np.flatnonzero(dist == least[group])
    win = at_least[np.r_[True, group[at_least[1:]] != group[at_least[:-1]]]] if at_least.size else at_least
    pi, si, edge, dist, along = pi[win], si[win], edge[win], dist[win], along[win]
    offset = index.seg_start_m[si] + along * index.seg_scale[si]
    # Then nearest edges per point; the sort is stable, so equal distances keep edge order.
    order = np.lexsort((dist, pi))
    pi, edge, dist, offset = pi[order], edge[order], dist[order], offset[order]
    if k is not None and pi.size:
        rank = np.arange(pi.size) - np.searchsorted(pi, pi)
        sel = rank < k
        pi, edge, dist, offset = pi[sel], edge[sel], dist[sel], offset[sel]
    return pi.astype(np.int64), edge.astype(np.int32), dist, offset


def nearest_edges(
    index: SpatialIndex,
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    max_distance_m: float = DEFAULT_SNAP_RADIUS_M,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Snap each point to its nearest edge within ``max_distance_m``.

    Returns ``(edge_idx, dist_m, offset_m)`` with one entry per point; ``edge_idx`` is ``-1``
    (and the others NaN) where no road is that near. Of the two directed edges of a two-way
    road either may be returned; the router considers both directions.
    """
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    pi, ei, d, off = candidates(index, lat, lon, radius_m=max_distance_m, k=1)
    edge = np.full(lat.shape, -1, dtype=np.int32)
    dist = np.full(lat.shape, np.nan)
    offset = np.full(lat.shape, np.nan)
    edge[pi], dist[pi], offset[pi] = ei, d, off
    return edge, dist, offset


def snap_points(
    index: SpatialIndex,
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    max_distance_m: float = DEFAULT_SNAP_RADIUS_M,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`nearest_edges`, but raise :class:`NoCandidateError` naming the first point
    that has no road within ``max_distance_m``."""
    edge, dist, offset = nearest_edges(index, lat, lon, max_distance_m=max_distance_m)
    missing = np.flatnonzero(edge < 0)
    if missing.size:
        i = int(missing[0])
        la, lo = np.atleast_1d(lat)[i], np.atleast_1d(lon)[i]
        raise NoCandidateError(
            f"no drivable road within {max_distance_m:g} m of point {i} "
            f"(lat={float(la):.6f}, lon={float(lo):.6f})"
        )
    return edge, dist, offset


def _near_segments(
    index: SpatialIndex, px: np.ndarray, py: np.ndarray, radius_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (point, segment) pair within ``radius_m``: ``(point, segment, dist_m, along_m)``
    sorted by point (a segment may appear more than once for a point when several of its
    pieces are near). Points that are not finite have none."""
    finite = np.flatnonzero(np.isfinite(px) & np.isfinite(py))
    c, nx, ny = index.cell_m, index.grid_nx, index.grid_ny
    pad_x = radius_m + index.reach_x_m + 1e-6 * (1.0 + radius_m)
    pad_y = radius_m + index.reach_y_m + 1e-6 * (1.0 + radius_m)
    fx, fy = px[finite], py[finite]
    col0 = np.clip(np.floor((fx - pad_x - index.grid_x0) / c), 0, nx)
    col1 = np.clip(np.floor((fx + pad_x - index.grid_x0) / c), -1, nx - 1)
    row0 = np.clip(np.floor((fy - pad_y - index.grid_y0) / c), 0, ny)
    row1 = np.clip(np.floor((fy + pad_y - index.grid_y0) / c), -1, ny - 1)
    n_rows = np.where(col1 >= col0, np.maximum(row1 - row0 + 1, 0), 0).astype(np.int64)
    # Cut big batches (or huge radii) into steps so the expanded arrays stay bounded.
    ends = np.cumsum(n_rows)
    cuts = np.searchsorted(ends, np.arange(_MAX_ROWS_PER_STEP, int(ends[-1]) if ends.size else 0,
                                           _MAX_ROWS_PER_STEP), side="right")
    parts = []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, finite.size]):
        if b <= a:
            continue
        k = n_rows[a:b]
        pt = np.repeat(np.arange(a, b), k)
        row = (row0[pt] + np.arange(pt.size) - np.repeat(np.cumsum(k) - k, k)).astype(np.int64)
        lo = index.cell_start[row * nx + col0[pt].astype(np.int64)]
        hi = index.cell_start[row * nx + col1[pt].astype(np.int64) + 1]
        cnt = hi - lo
        has = cnt > 0
        pt, lo, cnt = pt[has], lo[has], cnt[has]
        pt = np.repeat(pt, cnt)
        si = index.cell_seg[np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(pt.size)]
        qx, qy = fx[pt], fy[pt]
        dist, along = _project_on_segments(index, si, qx, qy)
        near = dist <= radius_m
        parts.append((finite[pt[near]], si[near], dist[near], along[near]))
    if not parts:
        z = np.zeros(0)
        return np.zeros(0, np.int64), np.zeros(0, np.int32), z, z
    return tuple(np.concatenate(x) for x in zip(*parts))  # type: ignore[return-value]


def _project_on_segments(
    index: SpatialIndex, si: np.ndarray, px: np.ndarray, py: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from points to segments ``si`` and the projected metres along each segment."""
    x0, y0 = index.seg_x0[si], index.seg_y0[si]
    dx, dy = index.seg_x1[si] - x0, index.seg_y1[si] - y0
    len2 = dx * dx + dy * dy
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(len2 > 0, ((px - x0) * dx + (py - y0) * dy) / len2, 0.0)
    t = np.clip(t, 0.0, 1.0)
    qx, qy = x0 + t * dx, y0 + t * dy
    return np.hypot(px - qx, py - qy), t * np.sqrt(len2)


def segments_in_box(spatial: SpatialIndex, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Distinct segment ids registered in the grid cells that can hold a piece of a segment
    meeting the box ``[x0, x1] x [y0, y1]`` (projected metres): a superset of the segments
    meeting it, found in O(cells and segments under the box), independent of network size."""
    c, nx, ny = spatial.cell_m, spatial.grid_nx, spatial.grid_ny
    pad_x, pad_y = spatial.reach_x_m + 1e-6, spatial.reach_y_m + 1e-6
    col0 = max(0, int(np.floor((x0 - pad_x - spatial.grid_x0) / c)))
    col1 = min(nx - 1, int(np.floor((x1 + pad_x - spatial.grid_x0) / c)))
    row0 = max(0, int(np.floor((y0 - pad_y - spatial.grid_y0) / c)))
    row1 = min(ny - 1, int(np.floor((y1 + pad_y - spatial.grid_y0) / c)))
    if col1 < col0 or row1 < row0:
        return np.zeros(0, dtype=np.int64)
    rows = np.arange(row0, row1 + 1, dtype=np.int64)
    lo = np.asarray(spatial.cell_start[rows * nx + col0], dtype=np.int64)
    hi = np.asarray(spatial.cell_start[rows * nx + col1 + 1], dtype=np.int64)
    cnt = hi - lo
    idx = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
    return np.unique(spatial.cell_seg[idx])


def edges_in_box(spatial: SpatialIndex, minlon: float, minlat: float, maxlon: float,
                 maxlat: float) -> np.ndarray:
    """Sorted distinct ids of the edges with a geometry segment whose bounding box meets the
    box (degrees, boundary included).

    Every edge that enters the box is in; an edge that only passes near a corner may be too
    (its segment's box meets the box), as with a per-edge bounding-box test, but a long
    edge whose polyline merely surrounds the box is not. Costs O(segments under the box),
    whatever the network's size (the grid rows under it, then one vectorized test).
    """
    x0, y0 = spatial.project(np.array([minlat]), np.array([minlon]))
    x1, y1 = spatial.project(np.array([maxlat]), np.array([maxlon]))
    x0, y0, x1, y1 = float(x0[0]), float(y0[0]), float(x1[0]), float(y1[0])
    seg = segments_in_box(spatial, x0, y0, x1, y1)
    if seg.size == 0:
        return np.zeros(0, dtype=np.int64)
    sx0, sy0, sx1, sy1 = (a[seg] for a in (spatial.seg_x0, spatial.seg_y0, spatial.seg_x1,
                                           spatial.seg_y1))
    meets = ((np.maximum(sx0, sx1) >= x0) & (np.minimum(sx0, sx1) <= x1)
             & (np.maximum(sy0, sy1) >= y0) & (np.minimum(sy0, sy1) <= y1))
    return np.unique(np.asarray(spatial.seg_edge[seg[meets]], dtype=np.int64))
