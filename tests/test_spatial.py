"""graph.spatial: candidate search and snapping, against brute force and known answers."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from conftest import shared_file
from graph import NoCandidateError, build_network, haversine_m
from graph.spatial import (
    build_spatial_index,
    candidates,
    nearest_edges,
    snap_points,
)


@pytest.fixture
def l_shaped_pair():
    """One two-way road: north 111 m from (55.0, 12.0), then east ~128 m; both directions."""
    return build_network(
        node_lat=[55.0, 55.001], node_lon=[12.0, 12.002],
        edge_src=[0, 1], edge_dst=[1, 0], edge_speed_kph=[50, 50],
        geom_offsets=[0, 3, 6],
        geom_lat=[55.0, 55.001, 55.001, 55.001, 55.001, 55.0],
        geom_lon=[12.0, 12.0, 12.002, 12.002, 12.0, 12.0],
    )


def _random_grid(seed: int, n: int = 8):
    """An n x n grid of two-way streets ~100 m apart, jittered, with bent geometry."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    lat = 55.0 + ii.ravel() * 0.0009 + rng.normal(0, 0.00005, n * n)
    lon = 12.0 + jj.ravel() * 0.0016 + rng.normal(0, 0.00005, n * n)
    idx = np.arange(n * n).reshape(n, n)
    pairs = np.concatenate([
        np.column_stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()]),
        np.column_stack([idx[:-1, :].ravel(), idx[1:, :].ravel()]),
    ])
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    # A bent midpoint per road, the same for both directions.
    mid_lat = (lat[pairs[:, 0]] + lat[pairs[:, 1]]) / 2 + rng.normal(0, 0.0001, len(pairs))
    mid_lon = (lon[pairs[:, 0]] + lon[pairs[:, 1]]) / 2 + rng.normal(0, 0.0001, len(pairs))
    mid_lat, mid_lon = np.concatenate([mid_lat, mid_lat]), np.concatenate([mid_lon, mid_lon])
    g_lat = np.column_stack([lat[src], mid_lat, lat[dst]]).ravel()
    g_lon = np.column_stack([lon[src], mid_lon, lon[dst]]).ravel()
    return build_network(
        node_lat=lat, node_lon=lon, edge_src=src, edge_dst=dst,
        edge_speed_kph=np.full(len(src), 40.0),
        geom_offsets=np.arange(0, 3 * len(src) + 1, 3), geom_lat=g_lat, geom_lon=g_lon,
        edge_osm_way=np.concatenate([np.arange(len(pairs)), np.arange(len(pairs))]),
        edge_reversed=np.r_[np.zeros(len(pairs), bool), np.ones(len(pairs), bool)],
    )


def test_candidates_known_offsets(l_shaped_pair):
    idx = build_spatial_index(l_shaped_pair)
    length = l_shaped_pair.edge_length_m[0]
    pi, ei, d, off = candidates(idx, [55.0005], [12.0], radius_m=20)
    assert pi.tolist() == [0, 0]
    assert sorted(ei.tolist()) == [0, 1]
    np.testing.assert_allclose(d, 0.0, atol=1e-6)
    first_leg = haversine_m(55.0, 12.0, 55.001, 12.0)
    by_edge = dict(zip(ei.tolist(), off.tolist()))
    assert by_edge[0] == pytest.approx(first_leg / 2, rel=1e-6)
    assert by_edge[1] == pytest.approx(length - first_leg / 2, rel=1e-6)


def test_candidates_offsets_end_at_edge_length(l_shaped_pair):
    idx = build_spatial_index(l_shaped_pair)
    pi, ei, d, off = candidates(idx, [55.001, 55.0], [12.002, 12.0], radius_m=5)
    got = {(int(p), int(e)): o for p, e, o in zip(pi, ei, off)}
    length = l_shaped_pair.edge_length_m[0]
    assert got[(0, 0)] == pytest.approx(length, rel=1e-9)
    assert got[(0, 1)] == pytest.approx(0.0, abs=1e-9)
    assert got[(1, 0)] == pytest.approx(0.0, abs=1e-9)
    assert got[(1, 1)] == pytest.approx(length, rel=1e-9)


def test_candidates_match_brute_force_on_random_grid():
    net = _random_grid(seed=3)
    idx = build_spatial_index(net)
    rng = np.random.default_rng(7)
    lat = rng.uniform(55.0, 55.0063, 300)
    lon = rng.uniform(12.0, 12.0112, 300)
    pi, ei, d, _ = candidates(idx, lat, lon, radius_m=60)

    # Brute force: distance from each point to each edge polyline in the same projection.
    lines = shapely.linestrings(
        [np.column_stack(idx.project(*net.edge_geometry(e))) for e in range(net.n_edges)]
    )
    px, py = idx.project(lat, lon)
    dist = shapely.distance(shapely.points(px, py)[:, None], lines[None, :])
    want = {(int(p), int(e)) for p, e in zip(*np.nonzero(dist <= 60))}
    assert set(zip(pi.tolist(), ei.tolist())) == want
    np.testing.assert_allclose(d, dist[pi, ei], rtol=1e-9, atol=1e-6)
    # Sorted by point, then distance.
    assert np.all(np.diff(pi) >= 0)
    same = pi[1:] == pi[:-1]
    assert np.all(d[1:][same] >= d[:-1][same])


def test_candidates_k_keeps_nearest():
    net = _random_grid(seed=5)
    idx = build_spatial_index(net)
    lat, lon = np.array([55.002, 55.004]), np.array([12.004, 12.006])
    pi_all, ei_all, d_all, _ = candidates(idx, lat, lon, radius_m=150)
    pi, ei, d, _ = candidates(idx, lat, lon, radius_m=150, k=3)
    for p in (0, 1):
        assert d[pi == p].tolist() == d_all[pi_all == p][:3].tolist()


def test_candidates_empty():
    net = _random_grid(seed=1, n=3)
    idx = build_spatial_index(net)
    pi, ei, d, off = candidates(idx, np.array([]), np.array([]), radius_m=50)
    assert pi.size == ei.size == d.size == off.size == 0


def test_candidates_nan_point_has_no_candidates():
    net = _random_grid(seed=1, n=3)
    idx = build_spatial_index(net)
    pi, _, _, _ = candidates(idx, [np.nan, net.node_lat[0]], [12.0, net.node_lon[0]], radius_m=50)
    assert set(pi.tolist()) == {1}


@pytest.mark.parametrize("kwargs, match", [
    (dict(radius_m=0), "radius_m"),
    (dict(radius_m=float("nan")), "radius_m"),
    (dict(radius_m=10, k=0), "`k`"),
])
def test_candidates_invalid_value(kwargs, match):
    idx = build_spatial_index(_random_grid(seed=1, n=3))
    with pytest.raises(ValueError, match=match):
        candidates(idx, [55.0], [12.0], **kwargs)


def test_candidates_invalid_shape():
    idx = build_spatial_index(_random_grid(seed=1, n=3))
    with pytest.raises(ValueError, match="equal length"):
        candidates(idx, [55.0, 55.1], [12.0], radius_m=10)


def test_nearest_edges_far_point_is_minus_one(l_shaped_pair):
    idx = build_spatial_index(l_shaped_pair)
    edge, dist, off = nearest_edges(idx, [55.0005, 56.0], [12.0001, 12.0])
    assert edge[0] in (0, 1) and edge[1] == -1
    assert dist[0] == pytest.approx(haversine_m(55.0005, 12.0, 55.0005, 12.0001), rel=1e-3)
    assert np.isnan(dist[1]) and np.isnan(off[1])


def test_snap_points_raises_naming_the_point(l_shaped_pair):
    idx = build_spatial_index(l_shaped_pair)
    with pytest.raises(NoCandidateError, match=r"within 200 m of point 1 \(lat=56\.000000"):
        snap_points(idx, [55.0005, 56.0], [12.0, 12.0])


def _strtree_candidates(idx, lat, lon, radius_m):
    """Reference: every (point, edge) within ``radius_m`` through a shapely STRtree over the
    index's segments (GEOS ``dwithin``), nearest segment per pair."""
    lines = shapely.linestrings(np.stack([np.column_stack([idx.seg_x0, idx.seg_y0]),
                                          np.column_stack([idx.seg_x1, idx.seg_y1])], axis=1))
    tree = shapely.STRtree(lines)
    px, py = idx.project(lat, lon)
    pi, si = tree.query(shapely.points(px, py), predicate="dwithin", distance=radius_m)
    d = shapely.distance(shapely.points(px[pi], py[pi]), lines[si])
    best: dict[tuple[int, int], float] = {}
    for p, e, dd in zip(pi.tolist(), idx.seg_edge[si].tolist(), d.tolist()):
        best[(p, e)] = min(dd, best.get((p, e), np.inf))
    return best


@pytest.mark.parametrize("radius_m, cell_m", [(50.0, 25.0), (200.0, 25.0), (10.0, 100.0)])
def test_candidates_grid_matches_strtree_kbh(radius_m, cell_m):
    """The grid finds exactly what an STRtree finds on a real network, for radii smaller and
    larger than the cell, with points on and off the roads (and outside the network)."""
    from graph.osm import load_osm

    net = load_osm(shared_file("osm/kbh.osm.pbf"))
    idx = build_spatial_index(net, cell_m=cell_m)
    rng = np.random.default_rng(int(radius_m))
    lo_lon, lo_lat, hi_lon, hi_lat = net.bbox
    n = 400
    e = rng.integers(0, net.n_edges, n)
    on_lat = net.node_lat[net.edge_src[e]] + rng.normal(0, 0.0003, n)
    on_lon = net.node_lon[net.edge_src[e]] + rng.normal(0, 0.0005, n)
    lat = np.r_[on_lat, rng.uniform(lo_lat - 0.01, hi_lat + 0.01, n)]
    lon = np.r_[on_lon, rng.uniform(lo_lon - 0.01, hi_lon + 0.01, n)]
    pi, ei, d, _ = candidates(idx, lat, lon, radius_m=radius_m)
    want = _strtree_candidates(idx, lat, lon, radius_m)
    assert set(zip(pi.tolist(), ei.tolist())) == set(want)
    np.testing.assert_allclose(d, [want[(p, e)] for p, e in zip(pi.tolist(), ei.tolist())],
                               rtol=1e-9, atol=1e-6)
    assert np.all(np.diff(pi) >= 0)


def test_build_spatial_index_long_segments_bounded():
    """A 5 km straight road is registered piece by piece (about length / cell entries), and
    points anywhere along it find it."""
    net = build_network(node_lat=[55.0, 55.045], node_lon=[12.0, 12.0], edge_src=[0, 1],
                        edge_dst=[1, 0], edge_speed_kph=[80, 80])
    idx = build_spatial_index(net, cell_m=25.0)
    assert idx.cell_seg.size <= 2 * (5100 // 25 + 2)
    lat = np.linspace(55.0, 55.045, 50)
    pi, ei, d, _ = candidates(idx, lat, np.full(50, 12.0003), radius_m=25.0)
    assert np.bincount(pi, minlength=50).tolist() == [2] * 50
    np.testing.assert_allclose(d, haversine_m(55.0, 12.0, 55.0, 12.0003), rtol=1e-3)


def test_build_spatial_index_invalid_cell():
    with pytest.raises(ValueError, match="cell_m"):
        build_spatial_index(_random_grid(seed=1, n=3), cell_m=0.0)


@pytest.mark.shared_data
def test_build_in_chunks_gives_the_same_index():
    """The build's chunk size bounds its memory and changes nothing in the result."""
    import dataclasses

    from graph.io import load_network
    from graph.spatial import build_spatial_index

    net = load_network(shared_file("osm/liechtenstein-latest.osm.pbf"))
    whole = build_spatial_index(net, chunk=10**9)
    for chunk in (1, 777):
        part = build_spatial_index(net, chunk=chunk)
        for f in dataclasses.fields(whole):
            a, b = getattr(whole, f.name), getattr(part, f.name)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and np.array_equal(a, b), (chunk, f.name)
            else:
                assert a == b, (chunk, f.name)


def test_grid_cell_limit_grows_with_the_segments_within_bounds():
    from graph.spatial import GRID_CELLS_CEILING, MAX_GRID_CELLS, grid_cell_limit

    assert grid_cell_limit(0) == MAX_GRID_CELLS
    assert grid_cell_limit(730_100) == MAX_GRID_CELLS  # New York keeps its grid
    assert grid_cell_limit(26_287_800) == 13_143_900  # the 6 x 6 tiling gets finer cells
    assert grid_cell_limit(10**10) == GRID_CELLS_CEILING
