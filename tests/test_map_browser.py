"""The live map page in a real headless browser (Debian's chromium driven by Playwright).

The app is served by uvicorn on a free localhost port over in-process services that folded
the SUMO scenario's probes up to its peak, so congestion exists. The browser loads ``/``,
the test checks the colours drawn (the page's state and the canvas pixels), clicks a road,
then clicks two points in route mode and waits for the ETA. A screenshot goes under
``tmp_path``.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import polars as pl
import pytest

from conftest import shared_file

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
A = (55.68176, 12.55832)  # Gyldenløvesgade, where the scenario's incident is
B = (55.67970, 12.56335)
#: The page's colour of each ratio class (api/static/map.js), and of roads without data.
RATIO_COLOURS = {"#2e9d47", "#e0b81f", "#f07c1e", "#d7301f"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    import uvicorn

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
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(services, Settings(clock="event")),
                                        host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(timeout=10)
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

    # The legend and the refresh: a second load comes by itself within a few seconds.
    assert page.locator("#legend .swatch").count() == 5
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
