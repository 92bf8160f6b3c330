"""One duration everywhere (issue 14): with a real forecast model (estimator state from folded
scenario_kbh traversals), the same trip has the same ``duration_s`` as a plain route, with
steps, annotations, alternatives, an exclusion that keeps its path, and over the OSRM facade;
steps, annotations and via legs sum to it; each figure is ordered ``p10 <= duration <= p90``.
Isochrones are time-dependent on the same per-edge forecast; tables say they are live."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from common import kbh_module_fixtures

from graph.isochrone import reach_times
from graph.navigation import plan_route, route_edge_shares
from graph.steps import route_steps

pytestmark = pytest.mark.shared_data

A = (55.68176, 12.55832)  # Gyldenløvesgade, central Copenhagen
B = (55.67970, 12.56335)
C = (55.69000, 12.58000)  # A -> C has an alternative on kbh
VIA = (55.6785, 12.5700)
TOL_S = 1e-6


def _q(p: tuple[float, float]) -> str:
    return f"{p[0]},{p[1]}"


services, client = kbh_module_fixtures(1200.0)


@pytest.fixture()
def live_duration(services):
    """``duration_s`` of a plain route on the live weights (the model set aside)."""
    core = services.router

    def run(a, b, **kw):
        eta, core._eta = core._eta, None
        try:
            return core.route(a, b, **kw)
        finally:
            core._eta = eta
    return run


def _ordered(r: dict) -> None:
    assert r["basis"] == "forecast"
    assert 0 < r["duration_p10_s"] <= r["duration_s"] <= r["duration_p90_s"]


def _route(client, a, b, **params):
    resp = client.get("/v1/route", params={"from": _q(a), "to": _q(b), **params})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.parametrize("a,b", [(A, B), (A, C)])
def test_same_duration_plain_steps_annotations_alternatives(client, live_duration, a, b):
    plain = _route(client, a, b)
    _ordered(plain)
    live = live_duration(a, b)["duration_s"]
    # The forecast moves this trip: the assertions below would see a live figure.
    assert abs(plain["duration_s"] - live) > 0.05
    steps = _route(client, a, b, steps="true")
    ann = _route(client, a, b, annotations="true")
    alt = _route(client, a, b, alternatives=1)
    for r in (steps, ann, alt):
        _ordered(r)
        assert r["edges"] == plain["edges"]
        assert r["duration_s"] == pytest.approx(plain["duration_s"], abs=TOL_S)
        assert r["duration_p10_s"] == pytest.approx(plain["duration_p10_s"], abs=TOL_S)
        assert r["duration_p90_s"] == pytest.approx(plain["duration_p90_s"], abs=TOL_S)
    (leg,) = steps["legs"]
    assert leg["duration_s"] == pytest.approx(plain["duration_s"], abs=TOL_S)
    assert sum(s["duration_s"] for s in leg["steps"]) == pytest.approx(plain["duration_s"],
                                                                       abs=TOL_S)
    d = np.asarray(ann["annotations"]["duration_s"])
    assert d.sum() == pytest.approx(plain["duration_s"], abs=TOL_S)
    assert (d >= 0).all() and d.size == len(plain["edges"])


def test_alternatives_annotations_are_forecast(client, services):
    body = _route(client, A, C, alternatives=1, annotations="true")
    assert body["alternatives"], "A -> C has an alternative on kbh"
    tt = services.router._travel_times(None)
    idx = {int(k): i for i, k in enumerate(services.net.edge_key)}
    for alt in body["alternatives"]:
        _ordered(alt)
        d = np.asarray(alt["annotations"]["duration_s"])
        assert d.sum() == pytest.approx(alt["duration_s"], abs=TOL_S)
        # Driven time over live time of the whole edges between the ends: the forecast
        # factor, not 1 (the live times).
        edges = np.array([idx[k] for k in alt["edges"]])
        factor = d[1:-1] / tt[edges[1:-1]]
        assert np.abs(factor - 1.0).max() > 1e-3


def test_alternatives_match_route_eta(client, services):
    """Each alternative's figures are route_eta over its edges with their driven shares,
    departing at the departure (not after the main route), corrected by the router's learned
    optimism for its own ETA (tests/test_route_bias_product.py)."""
    core = services.router
    plan = plan_route(core.router, [A, C], max_snap_m=200.0, alternatives=1)
    assert plan.alternatives
    body = _route(client, A, C, alternatives=1)
    model, tt = core._eta, core._travel_times(None)
    for lg, alt in zip(plan.alternatives, body["alternatives"]):
        e = lg.route.edge_ids
        d, lo, hi, _ = model.route_eta(e, tt[e], depart_in_s=0.0, share=lg.edge_share)
        f = alt["eta_correction"]
        assert f == pytest.approx(core.eta_correction(d), rel=1e-12)
        assert alt["duration_s"] == pytest.approx(d * f, abs=TOL_S)
        assert alt["duration_p10_s"] == pytest.approx(lo * f, abs=TOL_S)
        assert alt["duration_p90_s"] == pytest.approx(hi * f, abs=TOL_S)


def test_plain_route_counts_partial_edges_by_share(services):
    """The plain route's ETA is route_eta with the driven shares of its end edges (not the
    whole edges scaled by the route's share of them), the same as its legs' (both corrected
    by the router's learned optimism)."""
    core = services.router
    model, tt = core._eta, core._travel_times(None)
    for b in (B, C, VIA):
        plan = plan_route(core.router, [A, b], max_snap_m=200.0)
        (leg,) = plan.legs
        res = core.router.route(A, b)
        np.testing.assert_array_equal(res.edge_ids, leg.route.edge_ids)
        np.testing.assert_allclose(route_edge_shares(core.router, res), leg.edge_share,
                                   rtol=0, atol=1e-9)
        e = leg.route.edge_ids
        d, lo, hi, _ = model.route_eta(e, tt[e], share=leg.edge_share)
        out = core.route(A, b)
        f = out["eta_correction"]
        assert f == pytest.approx(core.eta_correction(d), rel=1e-12)
        assert out["duration_s"] == pytest.approx(d * f, abs=TOL_S)
        assert (out["duration_p10_s"], out["duration_p90_s"]) == pytest.approx((lo * f, hi * f),
                                                                               abs=TOL_S)


def test_via_legs_sum_and_chain(client, services):
    body = _route(client, A, C, via=_q(VIA), steps="true", annotations="true")
    _ordered(body)
    legs = body["legs"]
    assert len(legs) == 2
    assert sum(lg["duration_s"] for lg in legs) == pytest.approx(body["duration_s"], abs=TOL_S)
    for lg in legs:
        assert sum(s["duration_s"] for s in lg["steps"]) == pytest.approx(lg["duration_s"],
                                                                          abs=TOL_S)
    assert sum(body["annotations"]["duration_s"]) == pytest.approx(body["duration_s"],
                                                                   abs=TOL_S)
    # The second leg departs when the first arrives: its own forecast from that moment.
    core = services.router
    model, tt = core._eta, core._travel_times(None)
    plan = plan_route(core.router, [A, VIA, C], max_snap_m=200.0)
    second = plan.legs[1]
    e = second.route.edge_ids
    # Driven on the forecast before the one correction of the whole route's ETA (below).
    f = body["eta_correction"]
    later = model.route_eta(e, tt[e], depart_in_s=legs[0]["duration_s"] / f,
                            share=second.edge_share)[0]
    now = model.route_eta(e, tt[e], depart_in_s=0.0, share=second.edge_share)[0]
    assert abs(later - now) > 0.01  # the departure matters on this trend
    assert legs[1]["duration_s"] == pytest.approx(later * f, abs=0.01)
    # Without the via point's legs the same edges would not give these figures.
    plain_via = _route(client, A, C, via=_q(VIA))
    assert plain_via["duration_s"] == pytest.approx(body["duration_s"], abs=TOL_S)


def test_exclude_keeping_the_path_keeps_the_duration(client):
    plain = _route(client, A, B)
    for params in ({"exclude": "motorway"}, {"exclude": "motorway", "steps": "true"},
                   {"exclude": "ferry", "annotations": "true"}):
        r = _route(client, A, B, **params)
        assert r["edges"] == plain["edges"]
        _ordered(r)
        assert r["duration_s"] == pytest.approx(plain["duration_s"], abs=TOL_S)
        assert r["duration_p90_s"] == pytest.approx(plain["duration_p90_s"], abs=TOL_S)
    body = client.post("/v1/route", json={"from": list(A), "to": list(B),
                                          "exclude": ["motorway"]}).json()
    assert body["duration_s"] == pytest.approx(plain["duration_s"], abs=TOL_S)


def test_osrm_facade_answers_the_forecast(client):
    plain = _route(client, A, C)
    r = client.get(f"/route/v1/driving/{A[1]},{A[0]};{C[1]},{C[0]}",
                   params={"steps": "true", "annotations": "duration,distance",
                           "alternatives": "true"}).json()
    assert r["code"] == "Ok"
    main = r["routes"][0]
    assert main["duration"] == pytest.approx(plain["duration_s"], abs=TOL_S)
    (leg,) = main["legs"]
    assert leg["duration"] == pytest.approx(plain["duration_s"], abs=TOL_S)
    assert sum(s["duration"] for s in leg["steps"]) == pytest.approx(plain["duration_s"],
                                                                     abs=TOL_S)
    assert sum(leg["annotation"]["duration"]) == pytest.approx(plain["duration_s"], abs=TOL_S)
    alt = _route(client, A, C, alternatives=1)["alternatives"]
    assert len(r["routes"]) == 1 + len(alt)
    for got, want in zip(r["routes"][1:], alt):
        assert got["duration"] == pytest.approx(want["duration_s"], abs=TOL_S)


def test_route_steps_take_edge_durations(services):
    core = services.router
    (leg,) = plan_route(core.router, [A, C], max_snap_m=200.0).legs
    secs = np.linspace(1.0, 2.0, leg.route.edge_ids.size)
    steps = route_steps(services.net, replace(leg.route, duration_s=float(secs.sum())),
                        edge_duration_s=secs)
    assert sum(s["duration_s"] for s in steps) == pytest.approx(secs.sum(), abs=1e-9)
    assert steps[0]["duration_s"] > 0 and steps[-1]["duration_s"] == 0.0
    with pytest.raises(ValueError, match="one finite time"):
        route_steps(services.net, leg.route, edge_duration_s=secs[:-1])


def test_isochrone_on_the_forecast(services, live_duration):
    core = services.router
    fc = core.isochrone(A, [5, 10])
    assert fc["basis"] == "forecast"
    eta, core._eta = core._eta, None
    try:
        live = core.isochrone(A, [5, 10])
    finally:
        core._eta = eta
    assert live["basis"] == "live"
    a_fc = [f["properties"]["area_km2"] for f in fc["features"]]
    a_live = [f["properties"]["area_km2"] for f in live["features"]]
    assert a_fc != a_live  # this trend slows kbh down: the forecast reaches less
    assert core.isochrone(A, [5], reverse=True)["basis"] == "live"
    # A flat trend (all slopes 0, no lag correction) forecasts the live times exactly.
    flat = replace(eta, slope_per_s=np.zeros_like(eta.slope_per_s), pool_slope_per_s=0.0)
    core._eta = flat
    try:
        same = core.isochrone(A, [5, 10])
    finally:
        core._eta = eta
    assert same["basis"] == "forecast"
    assert [f["properties"]["area_km2"] for f in same["features"]] == a_live


def test_forecast_reach_times_follow_route_eta(services):
    """The time-dependent search reaches the route's last junction no later than the
    forecast ETA along the route (it finds the fastest forecast path), and later than the
    static search there (the trend rises)."""
    core, net = services.router, services.net
    model, tt = core._eta, core._travel_times(None)
    (leg,) = plan_route(core.router, [A, C], max_snap_m=200.0).legs
    e = leg.route.edge_ids
    _, _, _, ftt = model.route_eta(e, tt[e], share=leg.edge_share)
    seed = np.array([net.edge_dst[e[0]]])
    want = float(ftt[1:-1].sum())  # from the end of the first edge to the last edge's start
    seed_s = np.array([float(ftt[0])])
    fc = reach_times(net, tt, seed, seed_s, 3600.0, forecast=model)
    static = reach_times(net, tt, seed, np.array([float(tt[e[0]] * leg.edge_share[0])]),
                         3600.0)
    v = int(net.edge_src[e[-1]])
    assert fc[v] <= float(ftt[0]) + want + 1e-6
    assert fc[v] >= float(ftt[0]) + want - 0.02 * want  # a near-fastest forecast path
    assert fc[v] > static[v] + 1.0
    with pytest.raises(ValueError, match="forward only"):
        reach_times(net, tt, seed, seed_s, 60.0, reverse=True, forecast=model)


def test_table_says_live(client):
    body = client.post("/v1/table", json={"sources": [list(A)],
                                          "destinations": [list(B), list(C)]}).json()
    assert body["basis"] == "live"
