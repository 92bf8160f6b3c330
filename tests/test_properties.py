"""Property tests (hypothesis): the probe validator and the OSM XML / GeoJSON loaders.

The validator gives every input row exactly one reason, accepts only rows that satisfy
every rule, and loses nothing. The loaders, fed random small documents (valid or mangled),
either return a network whose invariants hold or raise ``NetworkError``, never anything else.

The examples are derandomized so that CI is reproducible. To explore further, run with
``TRAFFIC_PROPERTY_RANDOM=1`` (fresh random examples each run) and
``TRAFFIC_PROPERTY_EXAMPLES=N`` (default 150 per test).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.errors import NetworkError
from graph.geojson import load_geojson
from graph.osm import load_osm
from traffic.probes import (
    REASONS,
    ProbeValidationConfig,
    VehicleLastSeen,
    validate_probes,
)

NOW_S = 1_767_225_600.0
BBOX = (12.50, 55.60, 12.60, 55.70)
CFG = ProbeValidationConfig()
SETTINGS = settings(max_examples=int(os.environ.get("TRAFFIC_PROPERTY_EXAMPLES", "150")),
                    derandomize=os.environ.get("TRAFFIC_PROPERTY_RANDOM") != "1",
                    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

weird_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1.0, max_value=400.0),
    st.none(),
)
probe_row = st.fixed_dictionaries({
    "vehicle_id": st.one_of(st.sampled_from(["a", "b", "c", ""]), st.none()),
    "t": st.one_of(st.floats(NOW_S - 600, NOW_S + 600).map(lambda x: round(x, 1)),
                   st.sampled_from([NOW_S, NOW_S + 1.0, math.nan, math.inf]), st.none()),
    "lat": st.one_of(st.floats(55.55, 55.75), st.sampled_from([91.0, -90.5, math.nan]),
                     st.none()),
    "lon": st.one_of(st.floats(12.45, 12.65), st.sampled_from([181.0, math.inf]), st.none()),
    "speed_mps": weird_float,
    "heading_deg": weird_float,
    "accuracy_m": st.one_of(weird_float, st.floats(900.0, 2000.0)),
})


def _frame(rows):
    return pl.DataFrame(rows, schema={"vehicle_id": pl.Utf8, "t": pl.Float64, "lat": pl.Float64,
                                      "lon": pl.Float64, "speed_mps": pl.Float64,
                                      "heading_deg": pl.Float64, "accuracy_m": pl.Float64})


def _check_accepted_rules(acc: pl.DataFrame) -> None:
    assert acc["vehicle_id"].null_count() == 0 and (acc["vehicle_id"].str.len_chars() > 0).all()
    for col in ("t", "lat", "lon"):
        assert np.isfinite(acc[col].to_numpy()).all(), col
    lat, lon = acc["lat"].to_numpy(), acc["lon"].to_numpy()
    assert ((lat >= -90) & (lat <= 90) & (lon >= -180) & (lon <= 180)).all()
    margin_deg = CFG.bbox_margin_m / 111_320.0 * 2  # generous: lon degrees are shorter
    assert ((lon >= BBOX[0] - margin_deg) & (lon <= BBOX[2] + margin_deg)).all()
    assert ((lat >= BBOX[1] - margin_deg) & (lat <= BBOX[3] + margin_deg)).all()
    assert (acc["t"].to_numpy() <= NOW_S + CFG.max_future_skew_s).all()
    sp, hd, ac = (acc[c].to_numpy() for c in ("speed_mps", "heading_deg", "accuracy_m"))
    assert np.all(np.isnan(sp) | ((sp >= 0) & (sp <= CFG.max_reported_speed_mps)))
    assert np.all(np.isnan(hd) | ((hd >= 0) & (hd <= 360)))
    assert np.all(np.isnan(ac) | ((ac >= 0) & (ac <= CFG.max_accuracy_m)))
    assert acc.select("vehicle_id", "t").is_unique().all()


@SETTINGS
@given(batches=st.lists(st.lists(probe_row, max_size=30), min_size=1, max_size=3))
def test_validate_probes_one_reason_per_row_nothing_lost(batches):
    last_seen = VehicleLastSeen()
    accepted_all = []
    for rows in batches:
        df = _frame(rows)
        res = validate_probes(df, config=CFG, now_s=NOW_S, bbox=BBOX, last_seen=last_seen)
        # Exactly one reason per input row, every row present once.
        assert res.reasons["row"].to_list() == list(range(df.height))
        assert set(res.reasons["reason"].to_list()) <= set(REASONS)
        assert sum(res.counts.values()) == df.height
        # Nothing lost: accepted + rejected = input, and the accepted rows are the `ok` ones.
        assert res.accepted.height + res.rejected.height == df.height
        assert res.accepted.height == res.counts["ok"]
        ok_rows = res.reasons.filter(pl.col("reason") == "ok")["row"].sort().to_list()
        assert sorted(res.accepted["row"].to_list()) == ok_rows
        _check_accepted_rules(res.accepted)
        accepted_all.append(res.accepted.drop("row"))
    # Across batches too, no (vehicle, t) is accepted twice and time never goes back.
    everything = pl.concat(accepted_all)
    assert everything.select("vehicle_id", "t").is_unique().all()


# -- loaders -------------------------------------------------------------------------------

def _check_network(net) -> None:
    n, m = net.n_nodes, net.n_edges
    assert n >= 1 and m >= 1  # one node: a single closed way, a loop from its end to itself
    assert net.out_first.shape == (n + 1,) and net.in_first.shape == (n + 1,)
    assert net.out_first[0] == 0 and net.out_first[-1] == m and np.all(np.diff(net.out_first) >= 0)
    assert np.all((net.edge_src >= 0) & (net.edge_src < n))
    assert np.all((net.edge_dst >= 0) & (net.edge_dst < n))
    assert np.array_equal(np.sort(net.out_edge), np.arange(m))
    assert np.all(np.isfinite(net.edge_length_m)) and np.all(net.edge_length_m >= 0)
    assert np.all(np.isfinite(net.edge_speed_kph)) and np.all(net.edge_speed_kph > 0)
    assert np.all(np.abs(net.node_lat) <= 90) and np.all(np.abs(net.node_lon) <= 180)
    assert net.geom_offsets.shape == (m + 1,) and net.geom_offsets[-1] == net.geom_lat.size
    assert np.all(np.diff(net.geom_offsets) >= 2)
    assert len(np.unique(net.edge_key)) == m
    assert net.version


coord = st.one_of(st.floats(55.60, 55.61), st.sampled_from([55.6, 55.6, 1e308, -95.0]),
                  st.just(float("nan")))
lon_coord = st.one_of(st.floats(12.50, 12.51), st.sampled_from([12.5, 12.5, 200.0]))
highway = st.sampled_from(["residential", "primary", "footway", "motorway", "bogus", ""])
maxspeed = st.sampled_from([None, "50", "NaN", "-5", "inf", "30 mph", "1e400", "none"])


@st.composite
def osm_documents(draw):
    n_nodes = draw(st.integers(0, 8))
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="test">']
    for i in range(1, n_nodes + 1):
        lines.append(f'  <node id="{i}" lat="{draw(coord)!r}" lon="{draw(lon_coord)!r}"/>')
    for w in range(draw(st.integers(0, 4))):
        refs = draw(st.lists(st.integers(1, n_nodes + 2), min_size=0, max_size=6))
        tags = [f'<tag k="highway" v="{draw(highway)}"/>']
        ms = draw(maxspeed)
        if ms is not None:
            tags.append(f'<tag k="maxspeed" v="{ms}"/>')
        if draw(st.booleans()):
            tags.append('<tag k="oneway" v="yes"/>')
        nds = "".join(f'<nd ref="{r}"/>' for r in refs)
        lines.append(f'  <way id="{100 + w}">{nds}{"".join(tags)}</way>')
    lines.append("</osm>")
    text = "\n".join(lines)
    if draw(st.booleans()):  # mangle: truncate or splice garbage
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "<<>>", "\x00\xff", "&bogus;", "</way>"]))
    return text


def _load_or_network_error(loader, text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"doc{suffix}"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            net = loader(path)
        except NetworkError:
            return
        _check_network(net)


@SETTINGS
@given(text=osm_documents())
def test_load_osm_random_documents_load_or_network_error(text):
    _load_or_network_error(load_osm, text, ".osm")


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=5)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=8)
position = st.one_of(
    st.tuples(lon_coord, coord.filter(lambda x: not math.isnan(x))).map(list),
    st.tuples(st.floats(allow_nan=False), st.floats(allow_nan=False)).map(list),
    json_value,
)


@st.composite
def geojson_documents(draw):
    features = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["LineString", "MultiLineString", "Point", "Polygon", 7]))
        coords = draw(st.lists(position, max_size=5))
        if kind == "MultiLineString":
            coords = [coords]
        props = {"highway": draw(highway), "maxspeed": draw(maxspeed),
                 "oneway": draw(st.sampled_from(["yes", "-1", "no", 3, None]))}
        feature = {"type": "Feature", "geometry": {"type": kind, "coordinates": coords},
                   "properties": props}
        if draw(st.integers(0, 9)) == 0:
            feature = draw(json_value)
        features.append(feature)
    doc = {"type": draw(st.sampled_from(["FeatureCollection", "Feature", "Nope"])),
           "features": features}
    text = json.dumps(doc, allow_nan=True)
    if draw(st.integers(0, 4)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


@SETTINGS
@given(text=geojson_documents())
def test_load_geojson_random_documents_load_or_network_error(text):
    _load_or_network_error(load_geojson, text, ".geojson")
