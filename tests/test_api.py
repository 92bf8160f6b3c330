"""HTTP API over in-process services (no Ray): status codes, error codes and messages."""

from __future__ import annotations


import polars as pl
import pytest

from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import get_services
from api.settings import Settings
from graph.io import load_network
from common import wait_job
from conftest import TEST_DATA, shared_file
from workers.services import LocalServices, Overloaded, PipelineConfig

A = "55.68176,12.55832"  # Gyldenløvesgade, central Copenhagen
B = "55.67970,12.56335"


@pytest.fixture(scope="module")
def services():
    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    return LocalServices(net, PipelineConfig(clock="event", n_ingest=2))


@pytest.fixture(scope="module")
def probes():
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    return df.filter(pl.col("t") < df["t"].min() + 400)


@pytest.fixture()
def client(services):
    app = create_app(services, Settings(clock="event", max_table_cells=4))
    with TestClient(app) as c:
        yield c


def test_route_ok(client, services):
    r = client.get("/v1/route", params={"from": A, "to": B})
    assert r.status_code == 200
    body = r.json()
    assert body["duration_s"] > 0 and body["distance_m"] > 100
    assert body["freeflow_duration_s"] > 0
    assert body["geometry"]["type"] == "LineString" and len(body["geometry"]["coordinates"]) >= 2
    assert body["network_version"] == services.net.version
    assert body["basis"] == "live"
    assert all(isinstance(k, int) for k in body["edges"])


def test_route_depart_at_iso_and_unix_agree(client):
    a = client.get("/v1/route", params={"from": A, "to": B, "depart_at": "2026-01-01T08:00:00Z"})
    b = client.get("/v1/route", params={"from": A, "to": B, "depart_at": "1767254400"})
    assert a.status_code == b.status_code == 200
    assert a.json()["duration_s"] == b.json()["duration_s"]


def test_route_invalid_value_bad_from(client):
    r = client.get("/v1/route", params={"from": "55.68,x", "to": B})
    assert r.status_code == 422
    assert r.json() == {"code": "invalid_value", "details": None,
                        "message": "`from` must be `lat,lon` in degrees; got '55.68,x'"}


def test_route_invalid_value_lat_range(client):
    r = client.get("/v1/route", params={"from": "91,12.5", "to": B})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_value")
    assert r.json()["message"] == "`from` latitude must be within [-90, 90]; got 91.0"


def test_route_missing_parameter(client):
    r = client.get("/v1/route", params={"to": B})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_value")
    assert r.json()["message"] == "`from`: Field required"


def test_route_invalid_depart_at(client):
    r = client.get("/v1/route", params={"from": A, "to": B, "depart_at": "tomorrow"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_value")
    assert r.json()["message"] == ("`depart_at`: time 'tomorrow' is neither unix seconds nor ISO 8601 "
                                   "(e.g. 2026-01-01T08:15:00Z)")


def test_route_no_segment(client):
    r = client.get("/v1/route", params={"from": "10,10", "to": B})
    assert (r.status_code, r.json()["code"]) == (422, "no_segment")
    assert "no drivable road within 200 m of the origin" in r.json()["message"]


def test_table_ok(client):
    a, b = [float(x) for x in A.split(",")], [float(x) for x in B.split(",")]
    r = client.post("/v1/table", json={"sources": [a, b], "destinations": [b, a]})
    assert r.status_code == 200
    d = r.json()["durations_s"]
    assert len(d) == 2 and len(d[0]) == 2
    assert d[0][1] == pytest.approx(0.0, abs=1e-3) and d[0][0] > 0


def test_table_too_big(client):
    pts = [[55.68, 12.56]] * 3
    r = client.post("/v1/table", json={"sources": pts, "destinations": pts})
    assert (r.status_code, r.json()["code"]) == (413, "too_big")
    assert r.json()["message"].startswith("table of 3 x 3 is above the limits")


def test_table_invalid_value(client):
    r = client.post("/v1/table", json={"sources": [[95.0, 12.0]], "destinations": [[55.68, 12.56]]})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_value")
    assert r.json()["message"] == "`sources[0]` must be [lat, lon] within range; got [95.0, 12.0]"


def test_probes_json_accepts_and_rejects_with_reasons(client, probes):
    batch = probes.head(200).to_dicts()
    batch[3] = {**batch[3], "lat": 123.0}
    batch[7] = {**batch[7], "speed_mps": -5.0}
    r = client.post("/v1/probes", json={"probes": batch})
    assert r.status_code == 202
    assert r.json()["rejected"] == [{"index": 3, "reason": "lat_out_of_range"},
                                    {"index": 7, "reason": "negative_speed"}]
    assert r.json()["accepted"] == 198
    # Re-posting the same batch takes nothing new.
    again = client.post("/v1/probes", json={"probes": batch}).json()
    assert again["accepted"] == 0
    assert {x["reason"] for x in again["rejected"]} >= {"duplicate"}


def test_probes_ndjson_and_csv(client, probes):
    part = probes.slice(200, 100)
    nd = "\n".join(pl.DataFrame(part).write_ndjson().splitlines())
    r = client.post("/v1/probes", content=nd, headers={"content-type": "application/x-ndjson"})
    assert (r.status_code, r.json()["accepted"]) == (202, 100)
    csv = probes.slice(300, 50).write_csv()
    r = client.post("/v1/probes", content=csv, headers={"content-type": "text/csv"})
    assert (r.status_code, r.json()["accepted"]) == (202, 50)


def test_probes_invalid_json(client):
    r = client.post("/v1/probes", content=b"{nope", headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_json")


def test_probes_missing_column(client):
    r = client.post("/v1/probes", json={"probes": [{"vehicle_id": "a", "t": 1.0, "lat": 55.0}]})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_value")
    assert r.json()["message"].startswith("request body: missing required column(s) ['lon']")


def test_probes_not_a_batch(client):
    r = client.post("/v1/probes", json=[1, 2])
    assert (r.status_code, r.json()["code"]) == (422, "invalid_value")
    assert r.json()["message"] == "body must be a JSON object with a `probes` list"


def test_probes_unsupported_media_type(client):
    r = client.post("/v1/probes", content=b"x", headers={"content-type": "image/png"})
    assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")


def test_probes_too_many(client):
    one = {"vehicle_id": "a", "t": 1767225600.0, "lat": 55.68, "lon": 12.56}
    r = client.post("/v1/probes", json={"probes": [one] * 10_001})
    assert (r.status_code, r.json()["code"]) == (413, "too_big")
    assert r.json()["message"] == "a request may carry at most 10000 probes; got 10001"


class _SaturatedServices(LocalServices):
    """The real local services, with every ingest queue full."""

    def ingest(self, probes):
        raise Overloaded("ingest partition(s) [0] are at their queue bound", retry_after_s=2.0)


def test_probes_overloaded_is_503_with_retry_after(services):
    app = create_app(services, Settings())
    sat = _SaturatedServices.__new__(_SaturatedServices)
    app.dependency_overrides[get_services] = lambda: sat
    with TestClient(app) as c:
        r = c.post("/v1/probes", json={"probes": []})
    assert (r.status_code, r.json()["code"]) == (503, "overloaded")
    assert r.headers["retry-after"] == "2"


def test_status_accounting_holds(client):
    st = client.get("/v1/status").json()
    p = st["probes"]
    assert p["received"] == p["accepted"] + p["rejected"]
    assert p["accepted"] == p["applied"] + p["pending"] + p["unmatched"]
    assert st["queues"]["ingest_inflight"] == 0


def test_network_get(client, services):
    r = client.get("/v1/network")
    assert r.status_code == 200
    assert r.json()["version"] == services.net.version
    assert r.json()["n_edges"] == services.net.n_edges


def test_health_ready_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.get("/v1/noop")
    text = client.get("/metrics").text
    assert 'traffic_http_requests_total{method="GET",route="/v1/noop",status="200"}' in text
    assert "traffic_probes_total" in text


def test_unknown_job_404(client):
    r = client.get("/v1/network/jobs/nope")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert r.json()["message"] == "no network job with id 'nope'"


def test_network_put_bad_file_keeps_serving(tmp_path):
    net = load_network(TEST_DATA / "osm_split.osm")
    svc = LocalServices(net, PipelineConfig(data_dir=str(tmp_path)))
    with TestClient(create_app(svc, Settings())) as c:
        r = c.put("/v1/network", content=b"this is not a network")
        assert r.status_code == 202
        job = wait_job(c, r.json()["id"])
        assert job["state"] == "failed" and job["error"]["code"] == "invalid_network"
        assert c.get("/v1/network").json()["version"] == net.version


def test_network_put_swaps(tmp_path):
    net = load_network(TEST_DATA / "osm_split.osm")
    svc = LocalServices(net, PipelineConfig(data_dir=str(tmp_path)))
    new = (TEST_DATA / "osm_restrictions.osm").read_bytes()
    with TestClient(create_app(svc, Settings())) as c:
        r = c.put("/v1/network", content=new)
        job = wait_job(c, r.json()["id"])
        assert job["state"] == "done", job
        assert job["previous_version"] == net.version
        info = c.get("/v1/network").json()
        assert info["version"] == job["network_version"] != net.version
        assert c.get("/v1/status").json()["network_version"] == info["version"]


def test_network_put_empty_body(tmp_path, services):
    with TestClient(create_app(services, Settings())) as c:
        r = c.put("/v1/network", content=b"")
    assert (r.status_code, r.json()["code"]) == (422, "invalid_value")


def test_route_answer_matches_schema_and_runs_on_the_loop_thread(services):
    from api.schemas import RouteOut

    app = create_app(services, Settings(clock="event"))
    with TestClient(app) as c:
        r = c.get("/v1/route", params={"from": A, "to": B})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = RouteOut.model_validate_json(r.content)
        assert body.basis == "live" and body.weights_version == services.router.router.weights_version
        # The loop thread's query objects served it (made there, kept for the live metric).
        assert len(app.state.route_queries) == 1
        ahead = c.get("/v1/route", params={"from": A, "to": B, "depart_at": "2026-01-01T08:00:00Z"})
        assert ahead.status_code == 200
        RouteOut.model_validate_json(ahead.content)
        spec = c.get("/openapi.json").json()
    # Shut down: the lifespan dropped them on the loop thread.
    assert len(app.state.route_queries) == 0
    ok = spec["paths"]["/v1/route"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/RouteOut")
    names = {p["name"] for p in spec["paths"]["/v1/route"]["get"]["parameters"]}
    assert names == {"from", "to", "depart_at", "max_snap_m", "steps", "exclude",
                     "via", "bearing", "bearing_range", "alternatives",
                     "annotations", "geometry_format"}


def test_route_max_snap_out_of_range_is_422(client):
    r = client.get("/v1/route", params={"from": A, "to": B, "max_snap_m": "0"})
    assert r.status_code == 422
    assert set(r.json()) == {"code", "message", "details"}
