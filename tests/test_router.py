"""Router: snapping, routes with geometry between snapped positions, tables, metric swaps."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import shared_file
from graph.dijkstra import shortest_route_between_positions
from graph.errors import NoCandidateError, NoRouteError
from graph.network import banned_turns, build_network, haversine_m
from graph.router import Router
from graph.spatial import nearest_edges


@pytest.fixture(scope="module")
def kbh():
    from graph.io import load_network

    net = load_network(shared_file("osm/kbh.osm.pbf"))
    return net, Router(net)


def _street():
    """A straight two-way street 0-1-2 along the equator (~111 m per 0.001 deg), plus a
    one-way loop back from 2 to 0 through node 3 to the south."""
    lat = np.array([0.0, 0.0, 0.0, -0.001])
    lon = np.array([0.0, 0.001, 0.002, 0.001])
    src = np.array([0, 1, 1, 2, 2, 3])
    dst = np.array([1, 0, 2, 1, 3, 0])
    oneway = np.array([False, False, False, False, True, True])
    net = build_network(node_lat=lat, node_lon=lon, edge_src=src, edge_dst=dst,
                        edge_speed_kph=np.full(6, 36.0), edge_oneway=oneway, edge_key=np.arange(6) + 100)
    return net, Router(net)


def _polyline_m(lat, lon):
    return float(haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:]).sum())


def test_route_same_edge_ahead_drives_the_piece_between():
    net, r = _street()
    route = r.route((0.00001, 0.0002), (0.00001, 0.0008))
    assert route.edge_ids.tolist() == [0]
    L = net.edge_length_m[0]
    assert route.distance_m == pytest.approx(0.6 * L, rel=1e-6)
    assert route.duration_s == pytest.approx(0.6 * L / 10.0, rel=1e-6)
    assert route.lon[0] == pytest.approx(0.0002) and route.lon[-1] == pytest.approx(0.0008)
    assert route.lat[0] == 0.0 and route.lat[-1] == 0.0


def test_route_same_edge_behind_uses_the_other_direction():
    net, r = _street()
    route = r.route((0.0, 0.0008), (0.0, 0.0002))
    assert route.edge_ids.tolist() == [1]  # the reverse edge of the two-way street
    assert route.distance_m == pytest.approx(0.6 * net.edge_length_m[1], rel=1e-6)
    assert route.lon.tolist() == pytest.approx([0.0008, 0.0002])


def test_route_across_edges_starts_and_ends_at_snapped_points():
    net, r = _street()
    route = r.route((0.0001, 0.0005), (0.0, 0.0015))
    assert route.edge_ids.tolist() == [0, 2]
    assert route.lat[0] == pytest.approx(0.0, abs=1e-12) and route.lon[0] == pytest.approx(0.0005)
    assert route.lon[-1] == pytest.approx(0.0015)
    assert route.lon.tolist() == pytest.approx([0.0005, 0.001, 0.0015])
    assert route.distance_m == pytest.approx(_polyline_m(route.lat, route.lon), rel=1e-6)
    assert route.to_json()["edges"] == [100, 102]


def test_route_unreachable_raises_no_route():
    lat, lon = np.array([0.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.001, 0.003, 0.004])
    net = build_network(node_lat=lat, node_lon=lon, edge_src=np.array([0, 2]), edge_dst=np.array([1, 3]),
                        edge_speed_kph=np.full(2, 30.0))
    r = Router(net)
    with pytest.raises(NoRouteError, match="no route"):
        r.route((0.0, 0.0005), (0.0, 0.0035))


def test_route_far_point_raises_no_candidate():
    _, r = _street()
    with pytest.raises(NoCandidateError, match="destination"):
        r.route((0.0, 0.0005), (0.5, 0.5))


def test_route_nodes_gives_full_edges():
    net, r = _street()
    route = r.route_nodes(0, 2)
    assert route.edge_ids.tolist() == [0, 2]
    assert route.lon.tolist() == pytest.approx([0.0, 0.001, 0.002])
    assert route.distance_m == pytest.approx(net.edge_length_m[[0, 2]].sum())
    assert r.route_nodes(1, 1).edge_ids.size == 0


def test_customize_swaps_weights_and_version():
    net, r = _street()
    assert r.weights_version == "freeflow"
    before = r.route_nodes(2, 0)
    slow = net.edge_freeflow_time_s.copy()
    slow[[3, 1]] *= 10  # the two-way street back to 0 gets slow: take the one-way loop
    r.customize(slow, "w1")
    after = r.route_nodes(2, 0)
    assert before.edge_ids.tolist() == [3, 1] and after.edge_ids.tolist() == [4, 5]
    assert after.weights_version == "w1" and after.duration_s == pytest.approx(slow[[4, 5]].sum())
    assert after.freeflow_duration_s == pytest.approx(net.edge_freeflow_time_s[[4, 5]].sum())


def test_customize_while_querying_from_threads(kbh):
    net, r = kbh
    rng = np.random.default_rng(3)
    pairs = rng.integers(0, net.n_nodes, (200, 2))
    errors: list[BaseException] = []

    def worker():
        try:
            for s, t in pairs:
                try:
                    route = r.route_nodes(int(s), int(t))
                except NoRouteError:
                    continue
                assert route.weights_version in {"freeflow", "a", "b"}
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for th in threads:
        th.start()
    for k, v in enumerate(("a", "b")):
        r.customize(net.edge_freeflow_time_s * (1.5 + k), v)
    for th in threads:
        th.join()
    r.customize(net.edge_freeflow_time_s, "freeflow")
    assert not errors, errors[0]


def test_route_matches_reference_on_kbh(kbh):
    net, r = kbh
    bt = banned_turns(net)
    rng = np.random.default_rng(7)
    min_lon, min_lat, max_lon, max_lat = net.bbox
    lat = rng.uniform(min_lat, max_lat, 160)
    lon = rng.uniform(min_lon, max_lon, 160)
    edge, dist, off = nearest_edges(r.spatial, lat, lon, max_distance_m=200)
    ok = np.flatnonzero(edge >= 0)[:120]
    checked = 0
    for i, j in zip(ok[0::2], ok[1::2]):
        try:
            route = r.route((lat[i], lon[i]), (lat[j], lon[j]))
        except NoRouteError:
            continue
        checked += 1
        # Starts and ends at the snapped points, as far from the query points as the snap said.
        assert haversine_m(lat[i], lon[i], route.lat[0], route.lon[0]) == pytest.approx(dist[i], abs=0.5)
        assert haversine_m(lat[j], lon[j], route.lat[-1], route.lon[-1]) == pytest.approx(dist[j], abs=0.5)
        e = route.edge_ids
        assert np.all(net.edge_dst[e[:-1]] == net.edge_src[e[1:]])
        assert route.distance_m == pytest.approx(_polyline_m(route.lat, route.lon), rel=1e-3, abs=0.5)
        # The reference from the same snapped positions (first and last edges of the route).
        w = net.edge_freeflow_time_s
        fs = _fraction(net, r, e[0], route.lat[0], route.lon[0])
        ft = _fraction(net, r, e[-1], route.lat[-1], route.lon[-1])
        ref_d, ref_e = shortest_route_between_positions(net, w, int(e[0]), fs, int(e[-1]), ft, banned_turns=bt)
        assert route.duration_s <= ref_d + 0.5e-3 * (len(e) + len(ref_e)) + 1e-6
    assert checked > 40


def _fraction(net, r, edge, lat, lon):
    _, _, off = nearest_edges(r.spatial, np.array([lat]), np.array([lon]), max_distance_m=5)
    from graph.spatial import candidates

    pi, ei, d, off = candidates(r.spatial, np.array([lat]), np.array([lon]), radius_m=1.0)
    return float(off[ei == edge][0] / net.edge_length_m[edge])


def test_table_matches_routes_on_kbh(kbh):
    net, r = kbh
    rng = np.random.default_rng(11)
    min_lon, min_lat, max_lon, max_lat = net.bbox
    pts = np.column_stack([rng.uniform(min_lat, max_lat, 60), rng.uniform(min_lon, max_lon, 60)])
    edge, _, _ = nearest_edges(r.spatial, pts[:, 0], pts[:, 1], max_distance_m=200)
    pts = pts[edge >= 0][:16]
    src, dst = pts[:8], pts[8:]
    table = r.table(src, dst)
    assert table.shape == (8, len(dst))
    for i in range(8):
        for j in range(len(dst)):
            try:
                d = r.route(tuple(src[i]), tuple(dst[j])).duration_s
            except NoRouteError:
                d = np.inf
            if np.isinf(d):
                assert np.isinf(table[i, j])
            else:
                assert table[i, j] == pytest.approx(d, abs=0.05)


def test_table_rejects_far_points():
    _, r = _street()
    with pytest.raises(NoCandidateError, match="point 1"):
        r.table(np.array([[0.0, 0.0005]]), np.array([[0.0, 0.0005], [1.0, 1.0]]))


def test_table_many_to_one_matches_one_to_many(kbh):
    net, r = kbh
    rng = np.random.default_rng(12)
    min_lon, min_lat, max_lon, max_lat = net.bbox
    pts = np.column_stack([rng.uniform(min_lat, max_lat, 80), rng.uniform(min_lon, max_lon, 80)])
    edge, _, _ = nearest_edges(r.spatial, pts[:, 0], pts[:, 1], max_distance_m=200)
    pts = pts[edge >= 0][:15]
    wide = r.table(pts[:3], pts[3:])  # 3 x 12: one-to-many sweeps from the sources
    tall = r.table(pts[3:], pts[:3])  # 12 x 3: many-to-one sweeps towards the destinations
    for i in range(3):
        for j in range(3, len(pts)):
            try:
                d = r.route(tuple(pts[i]), tuple(pts[j])).duration_s
            except NoRouteError:
                d = np.inf
            assert wide[i, j - 3] == pytest.approx(d, abs=0.05)
            try:
                d = r.route(tuple(pts[j]), tuple(pts[i])).duration_s
            except NoRouteError:
                d = np.inf
            assert tall[j - 3, i] == pytest.approx(d, abs=0.05)


def test_customize_profile_routes_on_the_profile_and_evicts():
    net, r = _street()
    slow = net.edge_freeflow_time_s.copy()
    slow[[3, 1]] *= 10
    r.customize_profile(("bin", 32), slow, "profile:32")
    assert r.has_profile(("bin", 32))
    live, prof = r.route_nodes(2, 0), r.route(
        (0.0, 0.0019), (0.0, 0.0001), profile=("bin", 32))
    assert live.edge_ids.tolist() == [3, 1] and live.weights_version == "freeflow"
    assert prof.weights_version == "profile:32" and prof.edge_ids.tolist()[1:-1] == [4, 5]
    assert r.table(np.array([[0.0, 0.0019]]), np.array([[0.0, 0.0001]]), profile=("bin", 32))[0, 0] \
        == pytest.approx(prof.duration_s, abs=1e-2)
    for k in range(6):  # profile_cache=4: the oldest go
        r.customize_profile(k, net.edge_freeflow_time_s, f"p{k}")
    assert not r.has_profile(("bin", 32)) and r.has_profile(5) and not r.has_profile(1)
    with pytest.raises(KeyError, match="not customized"):
        r.route((0.0, 0.0019), (0.0, 0.0001), profile=("bin", 32))


def _capture_unraisable(monkeypatch):
    import sys

    caught: list = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: caught.append(repr(u.exc_value)))
    return caught


def test_router_created_and_dropped_across_threads_raises_nothing(kbh, monkeypatch):
    import gc

    net, shared = kbh
    caught = _capture_unraisable(monkeypatch)
    routers: list = []
    errors: list = []
    made = threading.Barrier(3)

    def make_and_query(seed):
        try:
            router = Router(net, index=shared.index, spatial=shared.spatial)
            routers.append(router)
            made.wait()
            rng = np.random.default_rng(seed)
            for k in range(3):  # every thread queries every router, and re-customizes its own
                for other in list(routers):
                    for s, t in rng.integers(0, net.n_nodes, (10, 2)):
                        try:
                            other.route_nodes(int(s), int(t))
                        except NoRouteError:
                            pass
                router.customize(net.edge_freeflow_time_s * (1 + k), f"v{k}")
                router.customize_profile(k, net.edge_freeflow_time_s, f"p{k}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=make_and_query, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]
    pools = [r._threads for r in routers]
    # Drop one router here (the main thread) and two from other threads.
    del routers[0]
    droppers = [threading.Thread(target=routers.pop) for _ in range(2)]
    for th in droppers:
        th.start()
        th.join()
    gc.collect()
    for pool in pools:
        for th in pool._threads:
            th.join(5)
        assert pool.alive() == 0
    gc.collect()
    assert caught == []


def test_recustomizing_does_not_accumulate_metrics(kbh, monkeypatch):
    import weakref

    net, shared = kbh
    caught = _capture_unraisable(monkeypatch)
    r = Router(net, index=shared.index, spatial=shared.spatial, profile_cache=2)
    rng = np.random.default_rng(5)
    stop = threading.Event()

    def load():
        while not stop.is_set():
            s, t = rng.integers(0, net.n_nodes, 2)
            try:
                r.route_nodes(int(s), int(t))
            except NoRouteError:
                pass

    # Weak references, not gc.get_objects(): that list would hold the pool threads' query
    # objects too, and free one on this thread when a pool thread retires it meanwhile.
    made = [weakref.ref(r._metric)]
    th = threading.Thread(target=load)
    th.start()
    for k in range(50):
        r.customize(net.edge_freeflow_time_s * rng.uniform(1, 2, net.n_edges), f"v{k}")
        made.append(weakref.ref(r._metric))
        r.customize_profile(k % 5, net.edge_freeflow_time_s, f"p{k}")
        made.append(weakref.ref(r._profiles[k % 5]))
    stop.set()
    th.join()

    def live_metrics():  # distinct metrics still alive (the router reuses its two buffers)
        return len({id(m) for m in (ref() for ref in made) if m is not None})

    # Idle pool threads drop query objects of replaced metrics within idle_check_s (0.5 s).
    deadline = time.monotonic() + 5.0
    while live_metrics() > 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    # 52 metrics were made (two live-weight buffers, reused, and 50 profiles); leaking would
    # leave them all. The router keeps its live and idle metrics and two profiles; on a
    # loaded machine a pool thread may still hold one replaced profile until it next wakes,
    # so allow one per thread beyond those.
    slack = r._threads.n_threads
    for cache in r._threads._state.caches.values():
        assert len(cache) <= 3 + 1
    assert live_metrics() <= 4 + slack
    assert r.fallbacks == 0  # the pool threads let the idle metric go when asked
    r.close()
    assert r._threads.alive() == 0
    with pytest.raises(RuntimeError, match="closed"):
        r.route_nodes(0, 1)
    assert caught == []


def test_snap_two_radii_match_one_full_search(kbh):
    from graph.router import FIRST_SNAP_M, SNAP_TIE_M
    from graph.spatial import candidates

    net, r = kbh
    rng = np.random.default_rng(21)
    min_lon, min_lat, max_lon, max_lat = net.bbox
    lat, lon = rng.uniform(min_lat, max_lat, 400), rng.uniform(min_lon, max_lon, 400)
    pi, _, _, _ = candidates(r.spatial, lat, lon, radius_m=150.0, k=16)
    ok = np.unique(pi)  # points with a road within 150 m
    lat, lon = lat[ok], lon[ok]
    pi, ei, dist, off = candidates(r.spatial, lat, lon, radius_m=150.0, k=16)
    first = np.searchsorted(pi, pi)
    keep = dist <= dist[first] + SNAP_TIE_M
    far = np.unique(pi[dist[first] > FIRST_SNAP_M])
    assert far.size > 10  # the test covers points only the second radius finds
    got = r._snap(lat, lon, 150.0)
    np.testing.assert_array_equal(got[0], pi[keep])
    np.testing.assert_array_equal(got[1], ei[keep])
    np.testing.assert_allclose(got[2], off[keep])


def test_route_on_caller_matches_query_threads_and_retires_lazily(kbh, monkeypatch):
    from graph.query_threads import CallerQueries

    net, shared = kbh
    caught = _capture_unraisable(monkeypatch)
    r = Router(net, index=shared.index, spatial=shared.spatial)
    mine = CallerQueries()
    rng = np.random.default_rng(11)
    lo, la = net.node_lon, net.node_lat
    done = 0
    for k in range(3):
        for s, t in rng.integers(0, net.n_nodes, (20, 2)):
            a, b = (float(la[s]), float(lo[s])), (float(la[t]), float(lo[t]))
            try:
                ref = r.route(a, b)
            except NoRouteError:
                with pytest.raises(NoRouteError):
                    r.route(a, b, on_caller=True, caller_queries=mine)
                continue
            for got in (r.route(a, b, on_caller=True, caller_queries=mine),
                        r.route(a, b, on_caller=True)):  # a query object per call
                assert got.duration_s == ref.duration_s
                assert got.edge_ids.tolist() == ref.edge_ids.tolist()
                assert got.weights_version == ref.weights_version == (f"v{k - 1}" if k else "freeflow")
            done += 1
        # Only the current metric's query object is kept: the replaced one goes on next use.
        assert len(mine) == 1
        r.customize(net.edge_freeflow_time_s * (1 + k), f"v{k}")
        assert len(mine) == 1
    assert done > 20
    # Another thread gets no cache (it would make its own query objects), and may not close it.
    seen: list = []
    th = threading.Thread(target=lambda: seen.append(mine.for_metrics(r._threads.retained)))
    th.start()
    th.join()
    assert seen == [None]
    with pytest.raises(RuntimeError, match="thread that made it"):
        err: list = []
        th = threading.Thread(target=lambda: err.append(_raises(mine.close)))
        th.start()
        th.join()
        raise err[0]
    mine.close()
    assert len(mine) == 0 and mine.for_metrics(r._threads.retained) is None
    r.close()
    import gc

    gc.collect()
    assert caught == []


def _raises(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - returned to the test
        return exc
    return AssertionError("did not raise")
