"""API keys and roles: each role on each endpoint, 401 vs 403, open mode, keys never echoed."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.security import ApiKeyConfigError, KeyRing, load_api_keys, parse_api_keys
from api.settings import Settings
from asgi_driver import asgi_request
from conftest import TEST_DATA
from graph.io import load_network
from workers.services import LocalServices, PipelineConfig

KEYS = ("r-key:reader,w-key:probe-writer,a-key:network-admin,"
        "multi-key:reader,multi-key:probe-writer")
RING = parse_api_keys(KEYS, source="test", separator=",")
AUTH = {name: {"Authorization": f"Bearer {name}-key"} for name in ("r", "w", "a", "multi")}
PROBES = {"probes": [{"vehicle_id": "v", "t": 1767225600.0, "lat": 55.68, "lon": 12.56}]}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    net = load_network(TEST_DATA / "osm_split.osm")
    return LocalServices(net, PipelineConfig(clock="event",
                                             data_dir=str(tmp_path_factory.mktemp("data"))))


def _client(services, **kw):
    return TestClient(create_app(services, Settings(clock="event", api_keys=RING, **kw)))


def _write(c, endpoint, headers):
    if endpoint == "probes":
        return c.post("/v1/probes", json=PROBES, headers=headers)
    return c.put("/v1/network", content=b"not a network", headers=headers)


@pytest.mark.parametrize(("who", "endpoint", "status"), [
    (None, "probes", 401), ("r", "probes", 403), ("w", "probes", 202), ("a", "probes", 403),
    ("multi", "probes", 202),
    (None, "network", 401), ("r", "network", 403), ("w", "network", 403), ("a", "network", 202),
    ("multi", "network", 403),
])
def test_auth_write_roles(services, who, endpoint, status):
    with _client(services) as c:
        r = _write(c, endpoint, AUTH.get(who, {}))
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["code"] == "unauthorized"
    if status == 403:
        assert "www-authenticate" not in r.headers
        role = "probe-writer" if endpoint == "probes" else "network-admin"
        assert r.json() == {"code": "forbidden", "details": None,
                            "message": f"this API key lacks role `{role}`, which this "
                                       "endpoint needs"}


@pytest.mark.parametrize(("who", "status"), [(None, 401), ("w", 403), ("a", 403), ("r", 200),
                                             ("multi", 200)])
@pytest.mark.parametrize("read", ["network", "status", "table"])
def test_auth_protected_reads(services, who, status, read):
    with _client(services, protect_reads=True) as c:
        h = AUTH.get(who, {})
        if read == "table":
            r = c.post("/v1/table", json={"sources": [[55.0, 12.0]],
                                          "destinations": [[55.0, 12.0]]}, headers=h)
            ok = (200, 422)  # answered (no road near the point), not refused
        else:
            r = c.get(f"/v1/{read}", headers=h)
            ok = (200,)
    assert (r.status_code in ok) if status == 200 else (r.status_code == status), r.text


def test_auth_reads_open_by_default_and_health_always(services):
    with _client(services) as c:
        assert c.get("/v1/network").status_code == 200
    with _client(services, protect_reads=True) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Basic dXNlcjpwdw==", "w-key",
                                    "Bearer w-key extra", "Bearer W-KEY"])
def test_auth_malformed_or_unknown_is_401(services, header):
    with _client(services) as c:
        r = c.post("/v1/probes", json=PROBES, headers={"Authorization": header})
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert "KEY" not in r.text.upper().replace("API KEY", "").replace("A KEY", "")


def test_auth_open_mode_warns_and_allows(services, caplog):
    with caplog.at_level(logging.WARNING, logger="api.security"):
        with TestClient(create_app(services, Settings(clock="event"))) as c:
            assert c.post("/v1/probes", json={"probes": []}).status_code == 202
    assert any("no API keys configured" in rec.getMessage() for rec in caplog.records)


def test_auth_no_warning_with_keys(services, caplog):
    with caplog.at_level(logging.WARNING, logger="api.security"):
        with _client(services):
            pass
    assert not any("no API keys" in rec.getMessage() for rec in caplog.records)


def test_auth_keys_never_logged_or_echoed(services, caplog):
    with caplog.at_level(logging.DEBUG):
        with _client(services) as c:
            r1 = c.post("/v1/probes", json=PROBES, headers={"Authorization": "Bearer secret-xyz"})
            r2 = c.put("/v1/network", content=b"x", headers=AUTH["w"])
            metrics = c.get("/metrics").text
    assert "secret-xyz" not in r1.text and "w-key" not in r2.text
    assert "w-key" not in metrics and "secret-xyz" not in metrics
    assert not any("secret-xyz" in rec.getMessage() or "w-key" in rec.getMessage()
                   for rec in caplog.records)


def test_auth_huge_body_refused_unread(services):
    # 1 GiB offered in 1 MiB chunks, no credentials: answered 401 without pulling a chunk.
    app = create_app(services, Settings(clock="event", api_keys=RING))
    chunks = (b"\0" * (1 << 20) for _ in range(1024))
    for path, method in (("/v1/network", "PUT"), ("/v1/probes", "POST")):
        res = asgi_request(app, method, path, chunks=chunks,
                           headers={"content-type": "application/octet-stream"})
        assert res.status == 401 and res.consumed_bytes == 0
    # A known key without the role: 403, still unread.
    res = asgi_request(app, "PUT", "/v1/network", chunks=chunks, headers=AUTH["w"])
    assert res.status == 403 and res.consumed_bytes == 0


def test_auth_body_read_once_authorised(services):
    # The control for the test above: with the role, the same driver's body is read.
    app = create_app(services, Settings(clock="event", api_keys=RING))
    res = asgi_request(app, "POST", "/v1/probes", chunks=[b'{"probes": []}'],
                       headers={**AUTH["w"], "content-type": "application/json"})
    assert res.status == 202 and res.consumed_bytes == 14


def test_parse_api_keys_roles_comments_and_errors(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# admins\nadm:network-admin  # ops\n\nadm:reader\nw:probe-writer\n")
    ring = load_api_keys(file=f, env_value="w:reader,z:reader")
    assert len(ring.digests) == 3
    assert ring.roles[ring.identify("adm")] == {"network-admin", "reader"}
    assert ring.roles[ring.identify("w")] == {"probe-writer", "reader"}
    assert ring.identify("nope") is None and ring.identify("") is None
    assert KeyRing().open and not ring.open
    with pytest.raises(ApiKeyConfigError, match=r"^test: entry 2 has unknown role 'admin'"):
        parse_api_keys("a:reader\nb:admin", source="test")
    with pytest.raises(ApiKeyConfigError, match=r"^test: entry 1 must be `key:role`$"):
        parse_api_keys("secret-without-role", source="test")
    with pytest.raises(ApiKeyConfigError) as err:
        parse_api_keys("sekrit:root", source="test")
    assert "sekrit" not in str(err.value)
    with pytest.raises(ApiKeyConfigError, match="cannot read"):
        load_api_keys(file=tmp_path / "missing")


def test_http_settings_reads_env_and_file(tmp_path, monkeypatch):
    import argparse

    from cli.serve import http_settings

    f = tmp_path / "keys"
    f.write_text("adm:network-admin\n")
    monkeypatch.setenv("TRAFFIC_API_KEYS", "w:probe-writer")
    args = argparse.Namespace(api_keys=str(f), protect_reads=True, rate_per_s=5.0)
    s = http_settings(args, "wall")
    assert s.protect_reads and s.rate_per_s == 5.0
    assert s.api_keys.roles[s.api_keys.identify("adm")] == {"network-admin"}
    assert s.api_keys.roles[s.api_keys.identify("w")] == {"probe-writer"}
    monkeypatch.delenv("TRAFFIC_API_KEYS")
    args = argparse.Namespace(api_keys=None, protect_reads=False, rate_per_s=None)
    assert http_settings(args, "wall").api_keys.open
