"""Request limits: 413 before reading, chunked cut-off, 408 for slow bodies, 429 per key."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.limits import TokenBuckets
from api.security import parse_api_keys
from api.settings import Settings
from asgi_driver import asgi_request
from conftest import TEST_DATA
from graph.io import load_network
from workers.services import LocalServices, PipelineConfig

MIB = 1 << 20


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    net = load_network(TEST_DATA / "osm_split.osm")
    return LocalServices(net, PipelineConfig(clock="event",
                                             data_dir=str(tmp_path_factory.mktemp("data"))))


def _shape(res):
    body = res.json()
    assert set(body) == {"code", "message", "details"}
    return body


@pytest.mark.parametrize(("method", "path", "limit"), [
    ("POST", "/v1/probes", 16 * MIB), ("POST", "/v1/table", 1 * MIB),
    ("PUT", "/v1/network", 512 * MIB), ("POST", "/v1/elsewhere", 64 * MIB)])
def test_limits_content_length_413_before_reading(services, method, path, limit):
    app = create_app(services, Settings(clock="event"))
    chunks = (b"x" * MIB for _ in range(10_000))
    res = asgi_request(app, method, path, chunks=chunks,
                       headers={"content-length": str(limit + 1)})
    assert res.status == 413 and res.consumed_bytes == 0
    assert _shape(res) == {"code": "too_big", "details": {"max_bytes": limit},
                           "message": f"request body of {limit + 1} bytes is above the "
                                      f"limit of {limit} bytes"}


def test_limits_chunked_body_cut_off_at_limit(services):
    app = create_app(services, Settings(clock="event", max_probe_body_bytes=3 * MIB))
    chunks = (b" " * MIB for _ in range(100))
    res = asgi_request(app, "POST", "/v1/probes", chunks=chunks,
                       headers={"content-type": "application/json"})
    assert res.status == 413 and _shape(res)["code"] == "too_big"
    assert res.consumed_bytes == 4 * MIB  # the chunk that crossed the limit, no more


def test_limits_chunked_upload_cut_off_leaves_no_file(services):
    app = create_app(services, Settings(clock="event", max_upload_bytes=2 * MIB))
    before = set(os.listdir(services.upload_dir()))
    res = asgi_request(app, "PUT", "/v1/network", chunks=(b"x" * MIB for _ in range(50)))
    assert res.status == 413 and _shape(res)["code"] == "too_big"
    assert res.consumed_bytes == 3 * MIB
    assert set(os.listdir(services.upload_dir())) == before


def test_limits_slow_body_408(services):
    # 2 s for the whole body: the slow client (a chunk every 0.5 s) gets at most 4 chunks in;
    # the prompt one has ample margin even on a loaded machine.
    app = create_app(services, Settings(clock="event", body_timeout_s=2.0))
    res = asgi_request(app, "PUT", "/v1/network", chunks=[b"x"] * 20, delay_s=0.5)
    assert res.status == 408
    assert _shape(res)["code"] == "request_timeout"
    assert res.chunks_pulled < 5
    # A body sent promptly is taken.
    res = asgi_request(app, "POST", "/v1/probes", chunks=[b'{"probes"', b": []}"], delay_s=0.05,
                       headers={"content-type": "application/json"})
    assert res.status == 202


def test_limits_batch_and_table_size_413(services):
    with TestClient(create_app(services, Settings(clock="event", max_probes_per_request=3,
                                                  max_table_cells=1))) as c:
        one = {"vehicle_id": "a", "t": 1.0, "lat": 55.0, "lon": 12.0}
        r = c.post("/v1/probes", json={"probes": [one] * 4})
        assert (r.status_code, _shape(r)["code"]) == (413, "too_big")
        r = c.post("/v1/table", json={"sources": [[55.0, 12.0]] * 2,
                                      "destinations": [[55.0, 12.0]]})
        assert (r.status_code, _shape(r)["code"]) == (413, "too_big")


def test_limits_rate_429_per_key_with_retry_after(services, monkeypatch):
    import types

    import api.limits

    # Frozen clock: no refill between requests, however slow the machine (Retry-After exact).
    monkeypatch.setattr(api.limits, "time", types.SimpleNamespace(monotonic=lambda: 1000.0))
    ring = parse_api_keys("a:reader,b:reader", source="test", separator=",")
    settings = Settings(clock="event", api_keys=ring, rate_per_s=0.5, rate_burst=2)
    with TestClient(create_app(services, settings)) as c:
        a, b = {"Authorization": "Bearer a"}, {"Authorization": "Bearer b"}
        assert [c.get("/v1/network", headers=a).status_code for _ in range(2)] == [200, 200]
        r = c.get("/v1/network", headers=a)
        assert r.status_code == 429 and _shape(r)["code"] == "too_many_requests"
        assert r.headers["retry-after"] == "2"
        assert c.get("/v1/network", headers=b).status_code == 200  # its own bucket
        assert c.get("/healthz", headers=a).status_code == 200  # never limited


def test_limits_rate_off_by_default(services):
    with TestClient(create_app(services, Settings(clock="event"))) as c:
        assert {c.get("/v1/network").status_code for _ in range(50)} == {200}


def test_token_buckets_refill_and_bound():
    b = TokenBuckets(rate_per_s=2.0, burst=1, max_buckets=2)
    assert b.take("x", 0.0) == 0.0
    assert b.take("x", 0.0) == pytest.approx(0.5)
    assert b.take("x", 0.5) == 0.0  # refilled one token in 0.5 s
    b.take("y", 1.0)
    b.take("z", 1.0)
    assert len(b._buckets) == 2 and "x" not in b._buckets
