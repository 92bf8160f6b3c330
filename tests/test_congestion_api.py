"""Congestion API over in-process services fed the whole SUMO scenario, snapshots on disk.

The module fixture replays every probe of ``scenario_kbh`` through ``LocalServices`` with a
data directory, so the estimator writes a snapshot every 60 s of event time. Before each
ingest call it computes what the estimator would write at the next boundary; those frames
must come back from the API bit for bit, in every format.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import polars as pl
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from conftest import shared_file
from graph.io import load_network
from traffic.errors import NoSnapshotError
from graph.network import ROAD_CLASS_INDEX
from traffic.snapshots import SNAPSHOT_COLUMNS, SnapshotStore, keys_in_bbox
from workers.congestion import CongestionQueries, live_frame
from workers.services import LocalServices, PipelineConfig

INCIDENT_WAYS = [127496112, 127496109]  # Gyldenløvesgade (scenario manifest: incident.edges)
INCIDENT_T = (1767227400.0, 1767228300.0)
INCIDENT_BBOX = "12.555,55.679,12.565,55.683"


class Replay:
    """The services after the replay, and the frames captured at snapshot boundaries."""

    def __init__(self, services: LocalServices, expected: dict[float, pl.DataFrame], t0: float):
        self.services, self.expected, self.t0 = services, expected, t0
        self.net = services.net
        self.bbox = ",".join(repr(v) for v in self.net.bbox)


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Replay:
    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    data_dir = tmp_path_factory.mktemp("congestion")
    services = LocalServices(net, PipelineConfig(clock="event", refresh_s=10.0, data_dir=str(data_dir)))
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    t0 = float(df["t"].min())
    store, expected = services._congestion.store, {}
    for t in np.arange(t0, float(df["t"].max()) + 1.0, 30.0):
        batch = df.filter((pl.col("t") >= t) & (pl.col("t") < t + 30.0))
        if batch.height == 0:
            continue
        # The state a snapshot at the next boundary holds is the state before this fold.
        if len(expected) >= 4:
            services.ingest(batch)
            continue
        # Traversals lag the probes: the next boundary is this minute's or the next one's.
        before = set(store.times().tolist())
        pending = {b: services.estimator.snapshot(b)
                   for b in (np.floor(t / 60.0) * 60.0, np.floor(t / 60.0) * 60.0 + 60.0)}
        services.ingest(batch)
        new = set(store.times().tolist()) - before
        if len(new) == 1 and (b := new.pop()) in pending:
            expected[b] = live_frame(pending[b])
    services.flush()
    assert len(expected) >= 3, "the replay should have crossed snapshot boundaries"
    return Replay(services, expected, t0)


@pytest.fixture(scope="module")
def client(replay):
    # No lifespan: the housekeeping thread stays off, so the live state holds still.
    return TestClient(create_app(replay.services, Settings(clock="event")))


def _read(fmt: str, content: bytes) -> pl.DataFrame:
    if fmt == "parquet":
        return pl.read_parquet(io.BytesIO(content))
    if fmt == "arrow":
        return pl.read_ipc_stream(io.BytesIO(content))
    return pl.read_csv(io.BytesIO(content), schema_overrides={"last_update_t": pl.Float64})


# ---------------------------------------------------------------------- snapshot writing
def test_snapshots_written_every_minute_of_event_time(replay):
    times = replay.services.snapshot_times()
    assert times.size >= 75  # 80 min of probes
    assert np.all(times % 60.0 == 0.0)
    assert np.all(np.diff(times) == 60.0)
    st = replay.services.estimator.stats()
    assert st["snapshots_written"] == times.size and st["snapshot_errors"] == 0
    assert st["last_snapshot_t"] == times[-1]


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "csv"])
def test_congestion_snapshot_round_trip_exact(client, replay, fmt):
    for t, frame in replay.expected.items():
        r = client.get("/v1/congestion", params={"bbox": replay.bbox, "at": str(t), "format": fmt})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(
            {"parquet": "application/vnd.apache.parquet", "arrow": "application/vnd.apache.arrow.stream",
             "csv": "text/csv"}[fmt])
        assert r.headers["x-source"] == "snapshot" and float(r.headers["x-as-of"]) == t
        got = _read(fmt, r.content)
        assert got["as_of"].unique().to_list() == [t]
        assert got.drop("as_of").equals(frame), f"snapshot at {t} differs from the estimator's state"


def test_congestion_snapshot_round_trip_geojson(client, replay):
    t, frame = next(iter(replay.expected.items()))
    r = client.get("/v1/congestion", params={"bbox": replay.bbox, "at": str(t + 59.5)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    body = r.json()
    assert body["type"] == "FeatureCollection" and body["source"] == "snapshot" and body["as_of"] == t
    assert body["network_version"] == replay.net.version and body["missing_keys"] == 0
    props = pl.DataFrame([f["properties"] for f in body["features"]])
    assert [f["id"] for f in body["features"]] == [str(k) for k in props["key"]]
    assert props["as_of"].unique().to_list() == [t]
    cols = [c for c in SNAPSHOT_COLUMNS if c != "last_update_t"]
    assert props.select(cols).equals(frame.select(cols))
    first = body["features"][0]
    e = int(replay.net.edge_index_of_keys(np.array([first["properties"]["key"]]))[0])
    off = replay.net.geom_offsets
    assert first["geometry"]["coordinates"] == np.column_stack(
        [replay.net.geom_lon[off[e]:off[e + 1]], replay.net.geom_lat[off[e]:off[e + 1]]]).tolist()


def test_congestion_at_iso_and_unix_agree(client, replay):
    t = next(iter(replay.expected))
    iso = np.datetime_as_string(np.datetime64(int(t), "s")) + "Z"
    a = client.get("/v1/congestion", params={"bbox": INCIDENT_BBOX, "at": iso, "format": "arrow"})
    b = client.get("/v1/congestion", params={"bbox": INCIDENT_BBOX, "at": str(t), "format": "arrow"})
    assert a.status_code == b.status_code == 200 and a.content == b.content


def test_congestion_live_state(client, replay):
    svc = replay.services
    r = client.get("/v1/congestion", params={"bbox": replay.bbox, "format": "parquet"})
    assert r.status_code == 200 and r.headers["x-source"] == "live"
    assert float(r.headers["x-as-of"]) == svc.estimator.watermark_t
    got = _read("parquet", r.content)
    assert got.drop("as_of").equals(live_frame(svc.estimator.snapshot()))


def _keys_with_a_segment_in(net, box, classes=None) -> list[int]:
    """Brute force: keys of the edges with a geometry segment whose bounding box meets the
    box (the spatial index's answer, computed over every segment)."""
    minlon, minlat, maxlon, maxlat = box
    lat, lon, off = net.geom_lat, net.geom_lon, net.geom_offsets
    j = np.arange(1, lat.size)
    j = j[~np.isin(j, off[:-1])]  # a segment (j - 1, j) ends at every point but an edge's first
    i = j - 1
    meets = ((np.maximum(lon[i], lon[j]) >= minlon) & (np.minimum(lon[i], lon[j]) <= maxlon)
             & (np.maximum(lat[i], lat[j]) >= minlat) & (np.minimum(lat[i], lat[j]) <= maxlat))
    edge = np.searchsorted(off, j, side="right") - 1
    ids = np.unique(edge[meets])
    if classes is not None:
        ids = ids[np.isin(net.edge_road_class[ids], [ROAD_CLASS_INDEX[c] for c in classes])]
    return sorted(net.edge_key[ids].tolist())


def test_congestion_bbox_road_class_and_ratio_filters(client, replay):
    net = replay.net
    box = [float(v) for v in INCIDENT_BBOX.split(",")]
    r = client.get("/v1/congestion", params={"bbox": INCIDENT_BBOX, "format": "arrow"})
    got = _read("arrow", r.content)
    assert sorted(got["key"].to_list()) == _keys_with_a_segment_in(net, box)
    # Every edge whose geometry enters the box is in; only bounding-box neighbours differ.
    assert set(got["key"].to_list()) <= set(keys_in_bbox(net, *box).tolist())
    assert 0 < got.height < net.n_edges
    r = client.get("/v1/congestion", params=[("bbox", INCIDENT_BBOX), ("road_class", "tertiary,residential"),
                                             ("format", "arrow")])
    sub = _read("arrow", r.content)
    assert sorted(sub["key"].to_list()) == _keys_with_a_segment_in(
        net, box, ["tertiary", "residential"])
    r = client.get("/v1/congestion", params={"bbox": INCIDENT_BBOX, "min_ratio": 0.2, "max_ratio": 0.9,
                                             "format": "arrow"})
    cut = _read("arrow", r.content)
    assert cut.height == got.filter((pl.col("ratio") >= 0.2) & (pl.col("ratio") <= 0.9)).height
    assert cut["ratio"].is_between(0.2, 0.9).all()


def test_congestion_format_by_accept_header(client, replay):
    r = client.get("/v1/congestion", params={"bbox": INCIDENT_BBOX}, headers={"Accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0] == ",".join([*SNAPSHOT_COLUMNS, "as_of"])
    r = client.get("/v1/congestion", params={"bbox": INCIDENT_BBOX},
                   headers={"Accept": "application/vnd.apache.arrow.stream"})
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    r = client.get("/v1/congestion", params={"bbox": INCIDENT_BBOX, "format": "geojson"},
                   headers={"Accept": "text/csv"})  # format= wins
    assert r.headers["content-type"] == "application/geo+json"


def test_congestion_no_snapshot_before_the_first(client, replay):
    first = replay.services.snapshot_times()[0]
    r = client.get("/v1/congestion", params={"bbox": replay.bbox, "at": str(first - 1)})
    assert r.status_code == 404
    body = r.json()
    assert body["code"] == "no_snapshot" and body["details"] == {"at": first - 1}
    assert body["message"].startswith("no snapshot at or before 2026-01-01T00:00:59Z")
    assert "the first snapshot is at 2026-01-01T00:01:00Z" in body["message"]


def test_congestion_no_snapshot_without_data_dir():
    with pytest.raises(NoSnapshotError, match="not written by this server"):
        CongestionQueries(None).edge_history(1, 0.0, 1.0, now_s=1.0)
    assert CongestionQueries(None).snapshot_times().size == 0


# ---------------------------------------------------------------------- history and aggregate
def _incident_edges(net):
    return np.flatnonzero(np.isin(net.edge_osm_way, INCIDENT_WAYS))


def test_history_peak_on_incident_edges(client, replay):
    """The incident's slowdown shows in the history of the edges it slowed."""
    lo, hi = INCIDENT_T
    drops = []
    for e in _incident_edges(replay.net):
        key = str(int(replay.net.edge_key[e]))
        r = client.get("/v1/congestion/history", params={"edge": key, "from": str(replay.t0),
                                                         "to": str(replay.t0 + 6000)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["edge"] == key and body["n"] == len(body["series"]["t"]) >= 75
        s = pl.DataFrame(body["series"])
        assert s["t"].is_sorted() and s.columns == ["t", *SNAPSHOT_COLUMNS[1:]]
        before = s.filter(pl.col("t") < replay.t0 + 900)["ratio"].median()
        during = s.filter(pl.col("t").is_between(lo, hi))["ratio"].median()
        drops.append(during / before)
    assert len(drops) == 4
    assert sum(d < 1.0 for d in drops) >= 3, drops
    assert min(drops) < 0.6, drops


def test_history_formats_and_defaults(client, replay):
    key = str(int(replay.net.edge_key[_incident_edges(replay.net)[0]]))
    r = client.get("/v1/congestion/history", params={"edge": key, "format": "parquet"})
    got = _read("parquet", r.content)
    # Default range: the 6 h before the service clock (the newest probe).
    assert got.height == replay.services.snapshot_times().size
    ref = replay.services.edge_history(int(key), replay.t0, replay.t0 + 6000)
    assert got.equals(ref)


def test_aggregate_peak_in_incident_bbox(client, replay):
    r = client.get("/v1/congestion/aggregate", params={
        "bbox": INCIDENT_BBOX, "from": str(replay.t0), "to": str(replay.t0 + 5000), "interval": "10m"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["interval_s"] == 600.0
    s = pl.DataFrame(body["series"])
    assert s.height >= 7 and (s["t_bucket"] % 600 == 0).all()
    t_min = s["t_bucket"][int(s["mean_ratio"].arg_min())]
    peak = json.loads(shared_file("scenario_kbh/manifest.json").read_text())["summary"]["trip_windows"]["peak"]
    assert replay.t0 + peak["depart_window_sim_s"][0] <= t_min <= replay.t0 + 3600
    assert s["mean_ratio"].min() < s["mean_ratio"][0] - 0.03
    r = client.get("/v1/congestion/aggregate", params={
        "bbox": INCIDENT_BBOX, "from": str(replay.t0), "to": str(replay.t0 + 5000), "interval": "600",
        "format": "csv"})
    assert pl.read_csv(io.BytesIO(r.content)).equals(s)


def test_snapshots_list(client, replay):
    r = client.get("/v1/congestion/snapshots", params={"from": str(replay.t0 + 600), "to": str(replay.t0 + 1200)})
    assert r.status_code == 200
    body = r.json()
    assert body["times"] == [replay.t0 - replay.t0 % 60 + 60 * k for k in range(11, 21)]
    assert body["first"] == body["times"][0] and body["now"] == replay.services.now_s()


def test_snapshot_store_prunes_by_retention(tmp_path, replay):
    store = SnapshotStore(tmp_path, retention_s=120.0)
    frame = next(iter(replay.expected.values()))
    for t in (600.0, 660.0, 720.0, 780.0):
        store.write(frame, t_s=t, network_version=replay.net.version)
    assert store.prune(780.0) == 1
    assert store.times().tolist() == [660.0, 720.0, 780.0]


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(("path", "params", "message"), [
    ("/v1/congestion", {"bbox": "1,2,3"},
     "`bbox`: bbox '1,2,3' must be four finite numbers minlon,minlat,maxlon,maxlat"),
    ("/v1/congestion", {"bbox": "13,55,12,56"},
     "`bbox`: bbox '13,55,12,56': minlon must be <= maxlon and minlat <= maxlat"),
    ("/v1/congestion", {"bbox": "12,55,13,91"},
     "`bbox`: bbox '12,55,13,91': lon must be within [-180, 180], lat within [-90, 90]"),
    ("/v1/congestion", {"bbox": INCIDENT_BBOX, "at": "yesterday"},
     "`at`: time 'yesterday' is neither unix seconds nor ISO 8601 (e.g. 2026-01-01T08:15:00Z)"),
    ("/v1/congestion", {"bbox": INCIDENT_BBOX, "at": "1e300"},
     "`at` must be between 1970-01-01 and 9999-12-31 UTC; got '1e300'"),
    ("/v1/congestion", {"bbox": INCIDENT_BBOX, "min_ratio": "-1"},
     "`min_ratio` must be a finite number >= 0; got -1.0"),
    ("/v1/congestion", {"bbox": INCIDENT_BBOX, "format": "xlsx"},
     "`format` must be one of geojson, json, parquet, arrow, csv; got 'xlsx'"),
    ("/v1/congestion", {"bbox": INCIDENT_BBOX, "road_class": "footway"},
     "unknown road class ['footway']; known: "),
    ("/v1/congestion", {}, "`bbox`: Field required"),
    ("/v1/congestion/history", {"edge": "abc"}, "`edge` must be an integer edge key; got 'abc'"),
    ("/v1/congestion/history", {"edge": str(2**64)}, f"`edge` must fit in 64 bits; got '{2**64}'"),
    ("/v1/congestion/history", {"edge": "1", "from": "1767229000", "to": "1767228000"},
     "`from` (1.76723e+09) is after `to` (1.76723e+09)"),
    ("/v1/congestion/aggregate", {"bbox": INCIDENT_BBOX, "interval": "0"},
     "`interval` must be a duration > 0 (seconds, or with s/m/h/d); got '0'"),
    ("/v1/congestion/aggregate", {"bbox": INCIDENT_BBOX, "interval": "1s", "from": "0", "to": "1767229000"},
     "`interval` 1 s over 1.76723e+09 s makes 1767229000 buckets; at most 10000"),
])
def test_congestion_invalid_value(client, path, params, message):
    r = client.get(path, params=params)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "invalid_value"
    assert body["message"].startswith(message)


def test_history_unknown_edge(client):
    r = client.get("/v1/congestion/history", params={"edge": "12345"})
    assert r.status_code == 404
    assert r.json() == {"code": "unknown_edge", "details": None,
                        "message": "`edge` 12345 is not an edge of the serving network and has no history"}


def test_map_page_and_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script src="/map/map.js"></script>' in r.text
    assert "http" not in r.text.replace("http-equiv", "")  # nothing from outside the app
    for name, media in (("map.js", "text/javascript"), ("map.css", "text/css")):
        r = client.get(f"/map/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media)
        assert "https://" not in r.text and "http://" not in r.text
    r = client.get("/map/../app.py")
    assert r.status_code == 404
