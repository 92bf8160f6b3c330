"""Turn-by-turn steps (graph.steps): exact manoeuvre lists on a hand-made map, the
instruction templates, sums over random routes on a real network, and the HTTP/CLI paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file
from fastapi.testclient import TestClient

from api.app import create_app
from api.schemas import RouteOut
from api.settings import Settings
from graph.errors import NoRouteError
from graph.network import RoadNetwork
from graph.osm import load_osm
from graph.router import Router
from graph.steps import MODIFIERS, STEP_TYPES, instruction, modifier_for, route_steps
from workers.router import RouterCore
from workers.services import LocalServices, PipelineConfig

NAV = Path(__file__).parent / "data" / "osm_navigation.osm"


def _ll(x: float, y: float) -> tuple[float, float]:
    """Map units of tests/data/osm_navigation.osm to (lat, lon)."""
    return (1 + y / 1000, 1 + x / 1000)


@pytest.fixture(scope="module")
def nav() -> RoadNetwork:
    return load_osm(NAV)


@pytest.fixture(scope="module")
def router(nav: RoadNetwork):
    r = Router(nav, query_threads=1)
    yield r
    r.close()


def _summary(steps: list[dict]) -> list[tuple]:
    return [(s["maneuver"]["type"], s["maneuver"]["modifier"], s["maneuver"]["exit"],
             s["name"], s["ref"], s["instruction"]) for s in steps]


def _check_sums(route, steps: list[dict]) -> None:
    assert sum(s["distance_m"] for s in steps) == pytest.approx(route.distance_m, abs=1.0)
    assert sum(s["duration_s"] for s in steps) == pytest.approx(route.duration_s, abs=0.5)


# Each case: origin, destination (map units) and the exact step list.
CASES = {
    "street_turn_and_roundabout_2nd_exit": ((0.5, 0), (4, 7.5), [
        ("depart", None, None, "Mannerheimintie", None, "Head east on Mannerheimintie"),
        # No step at node 2 (way split, same name) nor at 5 (crossing Kaivokatu straight).
        ("turn", "left", None, "Aleksanterinkatu", None, "Turn left onto Aleksanterinkatu"),
        # The one-way Tulotie entry between Ring I and Pohjoinen is not an exit.
        ("roundabout", "straight", 2, "Pohjoinen", None,
         "At the roundabout, take the 2nd exit onto Pohjoinen"),
        ("arrive", None, None, "Pohjoinen", None, "You have arrived at your destination"),
    ]),
    "roundabout_3rd_exit": ((4, 3), (1.5, 5), [
        ("depart", None, None, "Aleksanterinkatu", None, "Head north on Aleksanterinkatu"),
        ("roundabout", "left", 3, "Läntinen", None,
         "At the roundabout, take the 3rd exit onto Läntinen"),
        ("arrive", None, None, "Läntinen", None, "You have arrived at your destination"),
    ]),
    "motorway_ramps_fork_right_end_of_road": ((4, 3), (18, 0), [
        ("depart", None, None, "Aleksanterinkatu", None, "Head north on Aleksanterinkatu"),
        ("roundabout", "right", 1, "Ring I", None,
         "At the roundabout, take the 1st exit onto Ring I"),
        # No step at node 20 (Ring I split in two ways).
        ("on ramp", "slight right", None, None, None, "Take the ramp on the right"),
        ("merge", "slight left", None, None, "E 18", "Merge left onto E 18"),
        ("off ramp", "slight right", None, None, None, "Take the exit on the right"),
        ("fork", "slight right", None, None, None, "Keep right at the fork"),
        ("end of road", "right", None, "Kehä III", "50",
         "At the end of the road, turn right onto Kehä III (50)"),
        ("arrive", None, None, "Kehä III", "50", "You have arrived at your destination"),
    ]),
    "fork_left_new_name": ((4, 3), (20.5, 2.8), [
        ("depart", None, None, "Aleksanterinkatu", None, "Head north on Aleksanterinkatu"),
        ("roundabout", "right", 1, "Ring I", None,
         "At the roundabout, take the 1st exit onto Ring I"),
        ("on ramp", "slight right", None, None, None, "Take the ramp on the right"),
        ("merge", "slight left", None, None, "E 18", "Merge left onto E 18"),
        ("off ramp", "slight right", None, None, None, "Take the exit on the right"),
        ("fork", "slight left", None, None, None, "Keep left at the fork"),
        ("new name", "straight", None, "Itäväylä", None, "Continue onto Itäväylä"),
        ("arrive", None, None, "Itäväylä", None, "You have arrived at your destination"),
    ]),
    "end_of_road_left_from_the_stem": ((4, 1.5), (5, 0.05), [
        ("depart", None, None, "Aleksanterinkatu", None, "Head south on Aleksanterinkatu"),
        ("end of road", "left", None, "Mannerheimintie", None,
         "At the end of the road, turn left onto Mannerheimintie"),
        ("arrive", None, None, "Mannerheimintie", None, "You have arrived at your destination"),
    ]),
    "two_turns_at_a_t_and_a_crossing": ((6, 0.05), (5, 2.05), [
        ("depart", None, None, "Mannerheimintie", None, "Head west on Mannerheimintie"),
        ("turn", "right", None, "Aleksanterinkatu", None, "Turn right onto Aleksanterinkatu"),
        ("turn", "right", None, "Kaivokatu", None, "Turn right onto Kaivokatu"),
        ("arrive", None, None, "Kaivokatu", None, "You have arrived at your destination"),
    ]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_route_steps_exact_manoeuvres(nav: RoadNetwork, router: Router, case: str) -> None:
    a, b, expected = CASES[case]
    route = router.route(_ll(*a), _ll(*b))
    steps = route_steps(nav, route)
    assert _summary(steps) == expected
    _check_sums(route, steps)


def test_route_steps_geometry_joins_into_the_route(nav: RoadNetwork, router: Router) -> None:
    route = router.route(_ll(4, 3), _ll(18, 0))
    steps = route_steps(nav, route)
    joined = steps[0]["geometry"]["coordinates"]
    for s in steps[1:-1]:
        coords = s["geometry"]["coordinates"]
        assert coords[0] == joined[-1] == s["maneuver"]["location"]
        joined += coords[1:]
    assert joined == np.column_stack([route.lon, route.lat]).tolist()
    end = [float(route.lon[-1]), float(route.lat[-1])]
    assert steps[-1]["geometry"]["coordinates"] == [end, end]
    assert steps[-1]["distance_m"] == 0 and steps[-1]["duration_s"] == 0
    assert steps[0]["maneuver"]["location"] == [float(route.lon[0]), float(route.lat[0])]


def test_route_steps_on_one_edge(nav: RoadNetwork, router: Router) -> None:
    route = router.route(_ll(0.5, 0), _ll(1.5, 0))
    steps = route_steps(nav, route)
    assert [s["maneuver"]["type"] for s in steps] == ["depart", "arrive"]
    assert steps[0]["distance_m"] == pytest.approx(route.distance_m)
    assert steps[0]["instruction"] == "Head east on Mannerheimintie"


def test_route_steps_durations_follow_live_times(nav: RoadNetwork) -> None:
    """With a slow motorway, the merge step (on E 18) takes its share of the live time."""
    core = RouterCore(nav)
    tt = nav.edge_freeflow_time_s.copy()
    motorway = np.flatnonzero(nav.edge_ref == nav.edge_ref[np.flatnonzero(nav.edge_ref >= 0)[0]])
    tt[motorway] *= 10
    core.update(1, 100.0, tt)
    out = core.route(_ll(4, 3), _ll(18, 0), steps=True)
    steps = out["legs"][0]["steps"]
    merge = next(s for s in steps if s["maneuver"]["type"] == "merge")
    edges_m = [e for e in motorway if nav.edge_osm_way[e] == 300 and nav.edge_src[e] != 0]
    assert merge["duration_s"] == pytest.approx(float(tt[edges_m].min()), rel=1e-6)
    assert sum(s["duration_s"] for s in steps) == pytest.approx(out["duration_s"], abs=0.5)
    assert out["legs"][0]["duration_s"] == out["duration_s"]
    assert "legs" not in core.route(_ll(4, 3), _ll(18, 0))
    core.router.close()


@pytest.mark.parametrize("delta, modifier", [
    (0, "straight"), (20, "straight"), (-20, "straight"), (20.5, "slight right"),
    (-45, "slight left"), (46, "right"), (-120, "left"), (121, "sharp right"),
    (-179.9, "sharp left"), (180, "sharp right"),
])
def test_modifier_for_thresholds(delta: float, modifier: str) -> None:
    assert modifier_for(delta) == modifier


@pytest.mark.parametrize("args, kwargs, text", [
    (("depart", None), {"bearing_after": 0}, "Head north"),
    (("depart", None), {"bearing_after": 200, "name": "Ring I"}, "Head south on Ring I"),
    (("turn", "sharp left"), {}, "Turn sharp left"),
    (("turn", "straight"), {"name": "A"}, "Go straight onto A"),
    (("turn", "uturn"), {}, "Make a U-turn"),
    (("continue", "slight right"), {"ref": "E 18"}, "Continue slight right on E 18"),
    (("new name", "straight"), {}, "Continue"),
    (("merge", "slight right"), {}, "Merge right"),
    (("merge", "straight"), {"ref": "E 18"}, "Merge onto E 18"),
    (("on ramp", "straight"), {}, "Take the ramp"),
    (("on ramp", "slight left"), {"name": "X"}, "Take the ramp on the left onto X"),
    (("off ramp", "right"), {}, "Take the exit on the right"),
    (("fork", "straight"), {}, "Keep straight at the fork"),
    (("end of road", "left"), {}, "At the end of the road, turn left"),
    (("roundabout", "right"), {"exit": 11}, "At the roundabout, take the 11th exit"),
    (("roundabout", "right"), {"exit": 22, "name": "B"}, "At the roundabout, take the 22nd exit onto B"),
    (("roundabout", None), {}, "Enter the roundabout"),
])
def test_instruction_templates(args: tuple, kwargs: dict, text: str) -> None:
    assert instruction(*args, **kwargs) == text


def test_instruction_invalid_value() -> None:
    with pytest.raises(ValueError, match="unknown step type 'jump'"):
        instruction("jump", None)


@pytest.mark.shared_data
def test_route_steps_real_network_sums() -> None:
    """Random routes on Liechtenstein: step distances and durations add up to the route's
    (1 m / 0.5 s), geometries join into the route's, types and modifiers are OSRM's."""
    net = load_osm(shared_file("osm/liechtenstein-latest.osm.pbf"))
    core = RouterCore(net)
    rng = np.random.default_rng(11)
    tt = net.edge_freeflow_time_s * rng.uniform(1.0, 3.0, net.n_edges)
    core.update(1, 0.0, tt)
    lat0, lon0, lat1, lon1 = net.bbox[1], net.bbox[0], net.bbox[3], net.bbox[2]
    done = 0
    kinds: set[str] = set()
    for _ in range(60):
        a = net.n_nodes and rng.integers(net.n_nodes, size=2)
        pa = (float(net.node_lat[a[0]]) + 1e-4, float(net.node_lon[a[0]]))
        pb = (float(net.node_lat[a[1]]), float(net.node_lon[a[1]]) + 1e-4)
        try:
            out = core.route(pa, pb, steps=True)
        except NoRouteError:
            continue
        steps = out["legs"][0]["steps"]
        assert sum(s["distance_m"] for s in steps) == pytest.approx(out["distance_m"], abs=1.0)
        assert sum(s["duration_s"] for s in steps) == pytest.approx(out["duration_s"], abs=0.5)
        joined = steps[0]["geometry"]["coordinates"]
        for s in steps[1:-1]:
            joined += s["geometry"]["coordinates"][1:]
        assert joined == out["geometry"]["coordinates"]
        assert steps[0]["maneuver"]["type"] == "depart" and steps[-1]["maneuver"]["type"] == "arrive"
        for s in steps:
            m = s["maneuver"]
            assert m["type"] in STEP_TYPES and (m["modifier"] is None or m["modifier"] in MODIFIERS)
            assert (m["exit"] is None) or (m["type"] == "roundabout" and m["exit"] >= 1)
            assert s["distance_m"] >= 0 and s["duration_s"] >= 0
            kinds.add(m["type"])
        RouteOut.model_validate(out)
        done += 1
    core.router.close()
    assert done >= 40
    assert {"turn", "depart", "arrive"} <= kinds
    assert lat0 < lat1 and lon0 < lon1


@pytest.fixture(scope="module")
def client(nav: RoadNetwork):
    services = LocalServices(nav, PipelineConfig(clock="event", n_ingest=1))
    with TestClient(create_app(services, Settings(clock="event"))) as c:
        yield c


def test_get_route_steps(client: TestClient) -> None:
    q = {"from": "1.003,1.004", "to": "1.0,1.018"}
    plain = client.get("/v1/route", params=q)
    assert plain.status_code == 200 and "legs" not in plain.json()
    r = client.get("/v1/route", params={**q, "steps": "true"})
    assert r.status_code == 200
    body = r.json()
    RouteOut.model_validate(body)
    (leg,) = body["legs"]
    assert [s["instruction"] for s in leg["steps"]] == [
        "Head north on Aleksanterinkatu",
        "At the roundabout, take the 1st exit onto Ring I",
        "Take the ramp on the right",
        "Merge left onto E 18",
        "Take the exit on the right",
        "Keep right at the fork",
        "At the end of the road, turn right onto Kehä III (50)",
        "You have arrived at your destination",
    ]
    assert leg["distance_m"] == body["distance_m"] == pytest.approx(plain.json()["distance_m"])
    assert leg["steps"][1]["maneuver"]["exit"] == 1


def test_get_route_steps_invalid_value(client: TestClient) -> None:
    r = client.get("/v1/route", params={"from": "1.003,1.004", "to": "1.0,1.018",
                                        "steps": "maybe"})
    assert r.status_code == 422
    assert "steps" in r.text


def test_cli_route_steps_prints_instructions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cli", "route", str(NAV), "--from", "1.003,1.004",
         "--to", "1.0,1.018", "--steps"], check=False, capture_output=True, text=True,
        timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].strip() == "1. Head north on Aleksanterinkatu  (111 m)"
    assert lines[2].strip().startswith("2. At the roundabout, take the 1st exit onto Ring I")
    assert lines[-1].strip() == "8. You have arrived at your destination"
