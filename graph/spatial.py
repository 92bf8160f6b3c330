"""Spatial index over edge geometry: find the roads near GPS points, in batches.

Geometry is projected once to a local equirectangular plane in metres around the network's
centre and exploded into straight segments, which a shapely ``STRtree`` indexes. A query asks
the tree for every segment within the radius (GEOS does the exact distance test in C), then
projects the points onto those segments with NumPy to get the distance to the road and the
position along the edge. Positions are scaled so that an edge's end lies at exactly
``net.edge_length_m`` (great-circle metres), whatever the projection's distortion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from graph.errors import NoCandidateError
from graph.network import EARTH_RADIUS_M, RoadNetwork, haversine_m

#: Default maximum distance (m) from a point to the road it snaps to.
DEFAULT_SNAP_RADIUS_M = 200.0


@dataclass(frozen=True, slots=True, eq=False)
class SpatialIndex:
    """Segments of every directed edge in a local metric projection, and their STRtree.

    ``seg_edge[s]`` is the edge a segment belongs to; ``seg_start_m[s]`` the distance along
    that edge (m) where the segment starts; ``seg_scale[s]`` converts projected metres along
    the segment into metres of ``edge_length_m``.
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
    tree: shapely.STRtree

    def project(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project degrees to the index's local plane, in metres."""
        x = (np.asarray(lon, dtype=np.float64) - self.lon0) * self.kx_m_per_deg
        y = (np.asarray(lat, dtype=np.float64) - self.lat0) * self.ky_m_per_deg
        return x, y

    def unproject(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`project`: metres in the local plane back to ``(lat, lon)``."""
        return np.asarray(y) / self.ky_m_per_deg + self.lat0, np.asarray(x) / self.kx_m_per_deg + self.lon0


def build_spatial_index(net: RoadNetwork) -> SpatialIndex:
    """Explode edge geometry into segments and index them; O(points log points).

    Takes about a second per million segments on one core.
    """
    min_lon, min_lat, max_lon, max_lat = net.bbox
    lat0, lon0 = (min_lat + max_lat) / 2, (min_lon + max_lon) / 2
    ky = np.pi * EARTH_RADIUS_M / 180.0
    kx = ky * float(np.cos(np.radians(lat0)))
    x = (net.geom_lon - lon0) * kx
    y = (net.geom_lat - lat0) * ky

    n_pts = np.diff(net.geom_offsets)
    owner = np.repeat(np.arange(net.n_edges, dtype=np.int32), n_pts)
    # Segment i joins points i and i+1 when both belong to the same edge.
    keep = np.flatnonzero(owner[:-1] == owner[1:]) if owner.size > 1 else np.zeros(0, np.int64)
    seg_edge = owner[keep]
    x0, y0, x1, y1 = x[keep], y[keep], x[keep + 1], y[keep + 1]
    proj_len = np.hypot(x1 - x0, y1 - y0)

    # Positions along an edge are measured in great-circle metres per segment (as the edge's
    # length is), then scaled so the edge ends exactly at edge_length_m.
    true_len = haversine_m(net.geom_lat[keep], net.geom_lon[keep], net.geom_lat[keep + 1], net.geom_lon[keep + 1])
    edge_true_len = np.bincount(seg_edge, weights=true_len, minlength=net.n_edges)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale_e = np.where(edge_true_len > 0, net.edge_length_m / edge_true_len, 1.0)
        seg_scale = np.where(proj_len > 0, true_len / proj_len, 1.0) * scale_e[seg_edge]
    seg_len_m = true_len * scale_e[seg_edge]
    cum = np.cumsum(seg_len_m) - seg_len_m
    edge_first_seg = np.searchsorted(seg_edge, seg_edge)
    seg_start_m = cum - cum[edge_first_seg]

    lines = shapely.linestrings(np.stack([np.column_stack([x0, y0]), np.column_stack([x1, y1])], axis=1))
    return SpatialIndex(
        network_version=net.version, lat0=lat0, lon0=lon0, kx_m_per_deg=kx, ky_m_per_deg=ky,
        seg_edge=seg_edge, seg_x0=x0, seg_y0=y0, seg_x1=x1, seg_y1=y1,
        seg_start_m=seg_start_m, seg_scale=seg_scale,
        tree=shapely.STRtree(lines),
    )


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
    point then distance: for each point, each edge near it once, at the nearest position on
    that edge; ``offset_m`` is the distance along the edge from its start (m, in
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
    finite = np.isfinite(px) & np.isfinite(py)
    points = shapely.points(np.where(finite, px, 0.0), np.where(finite, py, 0.0))
    pi, si = index.tree.query(points, predicate="dwithin", distance=radius_m)
    keep = finite[pi]
    pi, si = pi[keep], si[keep]

    dist, along = _project_on_segments(index, si, px[pi], py[pi])
    edge = index.seg_edge[si]
    offset = index.seg_start_m[si] + along * index.seg_scale[si]

    # Nearest segment per (point, edge), then nearest edges per point.
    order = np.lexsort((dist, edge, pi))
    pi, edge, dist, offset = pi[order], edge[order], dist[order], offset[order]
    first = np.ones(pi.shape, dtype=bool)
    first[1:] = (pi[1:] != pi[:-1]) | (edge[1:] != edge[:-1])
    pi, edge, dist, offset = pi[first], edge[first], dist[first], offset[first]
    order = np.lexsort((edge, dist, pi))
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
