"""The live map page in a real headless browser (Debian's chromium driven by Playwright).

The app is served by uvicorn on a free localhost port over in-process services that folded
the SUMO scenario's probes up to its peak, so congestion exists. The browser loads ``/``,
the test checks the colours drawn (the page's state and the canvas pixels), clicks a road,
then clicks two points in route mode and waits for the ETA, the alternatives and the step
list. A second test zooms in on a two-way street whose directions differ in congestion class
and checks that each direction's colour is drawn on its own right-hand side and that a click on
either line selects that direction. Others put a closure and a slowdown in force over HTTP and
check the closed roads are drawn black and dashed (and listed), and draw isochrones from a
clicked point. Screenshots go under ``tmp_path``.
"""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest
from common import served
from conftest import shared_file

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
A = (55.68176, 12.55832)  # Gyldenløvesgade, where the scenario's incident is
B = (55.67970, 12.56335)
#: The page's colour of each ratio class (api/static/map.js), and of roads without data.
RATIO_COLOURS = {"#2e9d47", "#e0b81f", "#f07c1e", "#d7301f"}


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (CI installs Debian's chromium in .ci/run)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from api.app import create_app
    from api.settings import Settings
    from graph.io import load_network
    from workers.services import LocalServices, PipelineConfig

    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    data_dir = tmp_path_factory.mktemp("map-data")
    services = LocalServices(net, PipelineConfig(clock="event", refresh_s=10.0, data_dir=str(data_dir)))
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    t0 = float(df["t"].min())
    # Up to 40 min in: the rush hour peak and the incident on Gyldenløvesgade.
    for t in np.arange(t0, t0 + 2400.0, 30.0):
        batch = df.filter((pl.col("t") >= t) & (pl.col("t") < t + 30.0))
        if batch.height:
            services.ingest(batch)
    try:
        with served(create_app(services, Settings(clock="event"))) as url:
            yield url
    finally:
        services.close()


def _canvas_colours(page) -> dict[str, int]:
    """Count the canvas pixels of each of the page's ratio colours (exact RGB match)."""
    return page.evaluate("""(palette) => {
        const c = document.getElementById('map');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const want = new Map(palette.map(h => [parseInt(h.slice(1), 16), h]));
        const out = {};
        for (let i = 0; i < d.length; i += 4) {
            const h = want.get((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
            if (h && d[i + 3] === 255) out[h] = (out[h] || 0) + 1;
        }
        return out;
    }""", sorted(RATIO_COLOURS))


def test_map_page_colours_road_click_and_route(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    outside: list[str] = []
    page.on("request", lambda req: None if req.url.startswith(server) else outside.append(req.url))
    page.goto(f"{server}/?refresh=1")
    page.wait_for_function("window.trafficMap && window.trafficMap.loads > 0", timeout=30_000)
    state = page.evaluate("({n: trafficMap.features.length, colours: trafficMap.colorsDrawn,"
                          " source: trafficMap.source, err: trafficMap.lastError})")
    assert state["err"] is None and state["source"] == "live"
    assert state["n"] > 5000  # the whole kbh network is in view at first
    drawn = set(state["colours"]) & RATIO_COLOURS
    assert len(drawn) >= 2, f"roads drawn in only {drawn} once congestion exists"
    pixels = _canvas_colours(page)
    assert sum(1 for n in pixels.values() if n >= 20) >= 2, f"canvas pixels by colour: {pixels}"

    # The legend (5 congestion classes, closed, slowed) and the refresh: a second load comes
    # by itself within a few seconds.
    assert page.locator("#legend .swatch").count() == 7
    loads = page.evaluate("trafficMap.loads")
    page.wait_for_function(f"window.trafficMap.loads > {loads}", timeout=15_000)

    # Click a road: the page's most congested observed road, at the middle of its first segment.
    target = page.evaluate("""() => trafficMap.features.filter(f => f.p.observations > 0)
                                   .sort((a, b) => a.p.ratio - b.p.ratio)[0].id""")
    xy = page.evaluate("""(id) => {
        const f = trafficMap.features.find(f => f.id === id);
        const inv = (y) => (2 * Math.atan(Math.exp(y * Math.PI / 180)) - Math.PI / 2) * 180 / Math.PI;
        const a = trafficMap.lonLatToScreen(f.xy[0], inv(f.xy[1]));
        const b = trafficMap.lonLatToScreen(f.xy[2], inv(f.xy[3]));
        return [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
    }""", target)
    page.mouse.click(*xy)
    page.wait_for_function("window.trafficMap.history !== null", timeout=15_000)
    info = page.inner_text("#info")
    assert "speed" in info and "free-flow speed" in info and "confidence" in info
    assert page.evaluate("trafficMap.history.series.t.length") > 10
    assert page.is_visible("#chart")

    # Route mode: click A, then B; the route is drawn and its ETA shown.
    page.click("#mode-route")
    for lat, lon in (A, B):
        sx, sy = page.evaluate("([lon, lat]) => trafficMap.lonLatToScreen(lon, lat)", [lon, lat])
        page.mouse.click(sx, sy)
    page.wait_for_selector("#eta", timeout=15_000)
    assert page.inner_text("#eta").startswith("ETA ")
    assert "free-flow ETA" in page.inner_text("#route-info")
    route = page.evaluate("({d: trafficMap.route.duration_s, ff: trafficMap.route.freeflow_duration_s,"
                          " n: trafficMap.route.xy.length})")
    assert route["d"] > 0 and route["ff"] > 0 and route["n"] >= 4
    # The step list: the route's instructions, from "Head ..." to the arrival.
    steps = page.locator("#steps li")
    assert page.is_visible("#steps") and steps.count() >= 2
    assert steps.nth(0).inner_text().startswith("Head ")
    assert "arrived" in steps.nth(steps.count() - 1).inner_text()
    assert page.evaluate("trafficMap.steps.length") == steps.count()
    assert _canvas_colours(page)  # still drawn under the route
    page.screenshot(path=str(tmp_path / "map.png"))
    assert (tmp_path / "map.png").stat().st_size > 10_000

    # The time slider: an older snapshot is loaded with `at`.
    page.evaluate("""() => { const s = document.getElementById('slider');
                             s.value = '5'; s.dispatchEvent(new Event('input')); }""")
    page.wait_for_function("window.trafficMap.source === 'snapshot'", timeout=15_000)
    assert page.evaluate("trafficMap.asOf") == page.evaluate("trafficMap.times[5]")

    assert errors == [] and outside == []
    page.close()


def _colour_of(ratio: float) -> str:
    """The page's colour class of an observed road's speed / free-flow ratio (api/static/map.js)."""
    for lo, colour in ((0.85, "#2e9d47"), (0.65, "#e0b81f"), (0.45, "#f07c1e")):
        if ratio >= lo:
            return colour
    return "#d7301f"


#: The directed edges whose reverse is also in view with exactly the reversed geometry (both
#: directions of a two-way street), both observed; with the longest segment of each.
_TWO_WAY_PAIRS_JS = """() => {
    const inv = (y) => (2 * Math.atan(Math.exp(y * Math.PI / 180)) - Math.PI / 2) * 180 / Math.PI;
    const pt = (f, i) => f.xy[2 * i] + ',' + f.xy[2 * i + 1];
    const byEnds = new Map();
    for (const f of trafficMap.features) {
        const k = pt(f, 0) + '|' + pt(f, f.xy.length / 2 - 1);
        byEnds.set(k, (byEnds.get(k) || []).concat([f]));
    }
    const out = [];
    for (const a of trafficMap.features) {
        const n = a.xy.length / 2;
        if (!(a.p.observations > 0) || a.p.ratio === null) continue;
        for (const b of byEnds.get(pt(a, n - 1) + '|' + pt(a, 0)) || []) {
            if (b.id <= a.id || !(b.p.observations > 0) || b.p.ratio === null || b.xy.length !== a.xy.length) continue;
            let same = true;
            for (let i = 0; i < n && same; i++) same = pt(a, i) === pt(b, n - 1 - i);
            if (!same) continue;
            let best = 0, len = -1;
            for (let i = 0; i + 1 < n; i++) {
                const l = Math.hypot(a.xy[2 * i + 2] - a.xy[2 * i], a.xy[2 * i + 3] - a.xy[2 * i + 1]);
                if (l > len) { len = l; best = i; }
            }
            out.push({a: a.id, b: b.id, ra: a.p.ratio, rb: b.p.ratio, len,
                      p0: [a.xy[2 * best], inv(a.xy[2 * best + 1])],
                      p1: [a.xy[2 * best + 2], inv(a.xy[2 * best + 3])]});
        }
    }
    return out;
}"""

#: Canvas colours along the perpendicular through the segment's midpoint, at signed screen
#: distances t (px, positive: right of the direction p0 -> p1).
_ACROSS_JS = """([p0, p1, ts]) => {
    const a = trafficMap.lonLatToScreen(p0[0], p0[1]), b = trafficMap.lonLatToScreen(p1[0], p1[1]);
    const len = Math.hypot(b[0] - a[0], b[1] - a[1]);
    const nx = -(b[1] - a[1]) / len, ny = (b[0] - a[0]) / len;
    const mx = (a[0] + b[0]) / 2, my = (a[1] + b[1]) / 2;
    const c = document.getElementById('map'), dpr = window.devicePixelRatio || 1;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return ts.map((t) => {
        const x = Math.floor((mx + t * nx) * dpr), y = Math.floor((my + t * ny) * dpr);
        const i = 4 * (y * c.width + x);
        const hex = '#' + [d[i], d[i + 1], d[i + 2]].map((v) => v.toString(16).padStart(2, '0')).join('');
        return {t, x: mx + t * nx, y: my + t * ny, hex: d[i + 3] === 255 ? hex : null};
    });
}"""


def test_map_page_draws_both_directions_of_a_two_way_street(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.wait_for_function("window.trafficMap && window.trafficMap.loads > 0", timeout=30_000)
    pairs = [p for p in page.evaluate(_TWO_WAY_PAIRS_JS) if _colour_of(p["ra"]) != _colour_of(p["rb"])]
    assert pairs, "no two-way street whose directions differ in congestion class"
    pair = max(pairs, key=lambda p: p["len"])
    ca, cb = _colour_of(pair["ra"]), _colour_of(pair["rb"])

    # Zoom in on the middle of the pair's longest segment, about 300 px long on screen.
    mid = [(pair["p0"][0] + pair["p1"][0]) / 2, (pair["p0"][1] + pair["p1"][1]) / 2]
    loads = page.evaluate("trafficMap.loads")
    page.evaluate("([lon, lat, s]) => trafficMap.centerOn(lon, lat, s)", [*mid, 300.0 / pair["len"]])
    page.wait_for_function(f"window.trafficMap.loads > {loads}", timeout=15_000)

    ts = [0.5 * k for k in range(-24, 25)]
    across = page.evaluate(_ACROSS_JS, [pair["p0"], pair["p1"], ts])
    right = {s["hex"] for s in across if s["t"] > 0}
    left = {s["hex"] for s in across if s["t"] < 0}
    # Edge a is drawn on its right-hand side, its reverse b on the other side: both colours show.
    assert ca in right and ca not in left, f"{ca} (edge {pair['a']}) across the street: {across}"
    assert cb in left and cb not in right, f"{cb} (edge {pair['b']}) across the street: {across}"
    page.screenshot(path=str(tmp_path / "two_way.png"))

    # A click on either drawn line selects that direction.
    for colour, edge in ((ca, pair["a"]), (cb, pair["b"])):
        hits = [s for s in across if s["hex"] == colour]
        spot = hits[len(hits) // 2]
        page.mouse.click(spot["x"], spot["y"])
        assert page.evaluate("trafficMap.selected && trafficMap.selected.id") == edge
    assert errors == []
    page.close()


def _click_lonlat(page, lat: float, lon: float) -> None:
    sx, sy = page.evaluate("([lon, lat]) => trafficMap.lonLatToScreen(lon, lat)", [lon, lat])
    page.mouse.click(sx, sy)


def _pair_with_alternatives(url: str) -> tuple[tuple[float, float], tuple[float, float], dict]:
    """A pair of points across the network whose route has an alternative (asked over HTTP)."""
    import httpx

    x0, y0, x1, y1 = httpx.get(f"{url}/v1/network").json()["bbox"]
    fr = (0.25, 0.4, 0.6, 0.75)
    points = [(y0 + fy * (y1 - y0), x0 + fx * (x1 - x0)) for fy in fr for fx in fr]
    for a, b in zip(points, points[::-1]):
        if a == b:
            continue
        r = httpx.get(f"{url}/v1/route", params={"from": f"{a[0]},{a[1]}", "to": f"{b[0]},{b[1]}",
                                                 "alternatives": 2, "steps": "true"})
        if r.status_code == 200 and r.json().get("alternatives"):
            return a, b, r.json()
    pytest.fail("no pair of points across the network has an alternative route")


def test_map_page_route_alternatives_and_steps(browser, server, tmp_path):
    a, b, want = _pair_with_alternatives(server)
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.wait_for_function("window.trafficMap && window.trafficMap.loads > 0", timeout=30_000)
    page.click("#mode-route")
    for lat, lon in (a, b):
        _click_lonlat(page, lat, lon)
    page.wait_for_selector("#route-list .route-row", timeout=15_000)
    # The page asks for the points it was clicked at (the pair to within a pixel); near a
    # junction the snapped end can differ from the pair's, so compare with the API's answer
    # for the page's own points.
    import httpx

    (lon_a, lat_a), (lon_b, lat_b) = page.evaluate("trafficMap.routePoints")
    want = httpx.get(f"{server}/v1/route", params={
        "from": f"{lat_a:.6f},{lon_a:.6f}", "to": f"{lat_b:.6f},{lon_b:.6f}",
        "alternatives": 2, "steps": "true"}).json()
    assert want.get("alternatives"), want
    n = 1 + len(want["alternatives"])
    # The main route and each alternative are listed and drawn; the main one is chosen.
    rows = page.locator("#route-list .route-row")
    assert rows.count() == n and page.evaluate("trafficMap.routes.length") == n
    assert "Route" in rows.nth(0).inner_text() and "fastest" in rows.nth(0).inner_text()
    assert "Alternative 1" in rows.nth(1).inner_text()
    assert page.evaluate("trafficMap.routeIndex") == 0
    # The main route solid blue, the alternatives dashed grey-blue: both colours on the canvas.
    px = page.evaluate("""() => {
        const c = document.getElementById('map');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const out = {main: 0, alt: 0};
        for (let i = 0; i < d.length; i += 4) {
            const h = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
            if (h === 0x1f5fbf) out.main++; else if (h === 0x7f8ea6) out.alt++;
        }
        return out;
    }""")
    assert px["main"] > 50 and px["alt"] > 20, px
    # The steps of the main route, as the API gives them.
    texts = [t.strip() for t in page.locator("#steps li .instr").all_inner_texts()]
    assert texts == [s["instruction"] for s in want["legs"][0]["steps"]]
    assert "km" in page.inner_text("#steps") or " m" in page.inner_text("#steps")
    page.screenshot(path=str(tmp_path / "alternatives.png"))
    # Choosing an alternative shows its ETA and its own steps; a step click marks its place.
    rows.nth(1).click()
    alt = want["alternatives"][0]
    assert page.evaluate("trafficMap.routeIndex") == 1
    # (The clicked points are the pair to within a pixel, so the times agree to a few seconds.)
    assert page.evaluate("trafficMap.route.duration_s") == pytest.approx(alt["duration_s"], rel=0.02)
    assert page.inner_text("#eta").startswith("ETA ")
    assert "Alternative 1" in page.inner_text("#route-list .route-row.active")
    alt_texts = [t.strip() for t in page.locator("#steps li .instr").all_inner_texts()]
    assert alt_texts != texts and alt_texts[0].startswith("Head ") and "arrived" in alt_texts[-1]
    page.locator("#steps li").nth(1).click()
    assert page.evaluate("trafficMap.stepFocus") is not None
    assert errors == []
    page.close()


def _count_rgb(page, hexes: list[str]) -> dict[str, int]:
    return page.evaluate("""(hexes) => {
        const c = document.getElementById('map');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const want = new Map(hexes.map(h => [parseInt(h.slice(1), 16), h]));
        const out = Object.fromEntries(hexes.map(h => [h, 0]));
        for (let i = 0; i < d.length; i += 4) {
            const h = want.get((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
            if (h && d[i + 3] === 255) out[h]++;
        }
        return out;
    }""", hexes)


def test_map_page_draws_closed_and_slowed_roads(browser, server, tmp_path):
    import httpx

    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server}/?refresh=1")
    page.wait_for_function("window.trafficMap && window.trafficMap.loads > 0", timeout=30_000)
    assert page.evaluate("trafficMap.closedDrawn") == 0
    # The 12 longest observed roads in view closed, the next 12 slowed down.
    keys = page.evaluate("""() => trafficMap.features.filter(f => f.p.observations > 0)
        .map(f => { let l = 0; for (let i = 2; i < f.xy.length; i += 2) l += Math.hypot(f.xy[i] - f.xy[i - 2], f.xy[i + 1] - f.xy[i - 1]);
                    return [f.id, l]; })
        .sort((a, b) => b[1] - a[1]).slice(0, 24).map(x => x[0])""")
    now = page.evaluate("trafficMap.asOf")
    ids = []
    try:
        for kind, part, extra in (("closure", keys[:12], {}), ("slowdown", keys[12:], {"factor": 3.0})):
            r = httpx.post(f"{server}/v1/closures", json={
                "geometry": {"edge_keys": [int(k) for k in part]}, "kind": kind, "end_t": now + 3600,
                "reason": f"browser test {kind}", **extra})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        loads = page.evaluate("trafficMap.loads")
        page.wait_for_function(f"window.trafficMap.loads > {loads} + 1", timeout=15_000)
        page.wait_for_function("window.trafficMap.closures.length === 2", timeout=15_000)
        state = page.evaluate("""() => ({closed: trafficMap.closedDrawn, slowed: trafficMap.slowedDrawn,
            flagged: trafficMap.features.filter(f => f.p.closed).map(f => f.id)})""")
        assert sorted(state["flagged"]) == sorted(keys[:12])
        assert state["closed"] == 12 and state["slowed"] == 12
        px = _count_rgb(page, ["#111111", "#8e24aa"])
        assert px["#111111"] >= 100 and px["#8e24aa"] >= 50, px
        listed = page.inner_text("#closures")
        assert "Operator closures (2)" in listed and "browser test closure" in listed and "closed" in listed
        page.screenshot(path=str(tmp_path / "closures.png"))
    finally:
        for cid in ids:
            httpx.delete(f"{server}/v1/closures/{cid}")
    loads = page.evaluate("trafficMap.loads")
    page.wait_for_function(f"window.trafficMap.loads > {loads} + 1", timeout=15_000)
    assert page.evaluate("trafficMap.closedDrawn") == 0
    assert errors == []
    page.close()


def test_map_page_draws_isochrones_from_a_clicked_point(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.wait_for_function("window.trafficMap && window.trafficMap.loads > 0", timeout=30_000)
    assert not page.is_visible("#iso-minutes")  # the minutes control shows in isochrone mode only
    page.click("#mode-iso")
    assert page.is_visible("#iso-minutes")
    page.fill("#iso-minutes", "3,6,9")
    _click_lonlat(page, *A)
    page.wait_for_function("window.trafficMap.isochrones !== null || window.trafficMap.isoError !== null",
                           timeout=30_000)
    assert page.evaluate("trafficMap.isoError") is None
    iso = page.evaluate("trafficMap.isochrones.map(c => ({m: c.minutes, a: c.area_km2, n: c.rings.length}))")
    assert [c["m"] for c in iso] == [3, 6, 9]
    assert all(c["n"] >= 1 for c in iso) and iso[0]["a"] < iso[1]["a"] < iso[2]["a"]
    assert page.evaluate("trafficMap.isoDrawn") == 3
    # Each contour's fill shows between the roads; the panel lists minutes and areas.
    px = _count_rgb(page, ["#b59ddb", "#d3c6ec", "#ebe5f6"])
    assert all(n >= 30 for n in px.values()), px
    info = page.inner_text("#iso-info")
    assert "within 3 min" in info and "within 9 min" in info and "km\u00b2" in info
    page.screenshot(path=str(tmp_path / "isochrones.png"))
    page.click("#iso-clear")
    assert page.evaluate("trafficMap.isoDrawn") == 0
    assert errors == []
    page.close()
