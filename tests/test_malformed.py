"""Malformed network files through ``PUT /v1/network``: a clear error each, serving untouched."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from common import wait_job
from conftest import TEST_DATA, shared_file
from graph.errors import NetworkFormatError
from graph.io import load_network
from workers.services import LocalServices, PipelineConfig

MALFORMED = TEST_DATA / "malformed"
CASES = {
    "wrong_magic.osm.pbf": "truncated, corrupt or malformed OSM data (PBF error",
    "huge_coordinates.osm": "wrong format for coordinate: '-1234.5'",
    "exponent_coordinates.osm": "coordinate out of range: lat='1e300'",
    "nan_coordinates.osm": "wrong format for coordinate: 'nan'",
    "empty_geometry.geojson": "feature 0 has no coordinates",
    "zero_length_edge.geojson": "feature 0 has a line with fewer than two distinct positions",
    "nan_speed.geojson": "feature 0 has a speed of nan km/h; must be > 0",
    "huge_coordinates.geojson": "feature 0 has coordinates out of range at position 0",
    "truncated.geojson": "not JSON (Unterminated string",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    net = load_network(TEST_DATA / "osm_split.osm")
    svc = LocalServices(net, PipelineConfig(data_dir=str(tmp_path_factory.mktemp("data"))))
    with TestClient(create_app(svc, Settings())) as c:
        yield c, net.version


def _put_and_wait(c, body: bytes) -> dict:
    r = c.put("/v1/network", content=body, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    return wait_job(c, r.json()["id"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_put_network_malformed_file_clear_error(served, name):
    c, version = served
    job = _put_and_wait(c, (MALFORMED / name).read_bytes())
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "invalid_network"
    assert CASES[name] in job["error"]["message"]
    assert c.get("/v1/network").json()["version"] == version
    assert c.get("/v1/route", params={"from": "55.6,12.501", "to": "55.6,12.503"}
                 ).status_code == 200


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_network_malformed_file_raises_format_error(name):
    with pytest.raises(NetworkFormatError):
        load_network(MALFORMED / name)


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_put_network_truncated_pbf(served, fraction):
    data = shared_file("osm/kbh.osm.pbf").read_bytes()
    c, version = served
    job = _put_and_wait(c, data[: int(len(data) * fraction)])
    assert job["state"] == "failed" and job["error"]["code"] == "invalid_network", job
    assert "truncated, corrupt or malformed OSM data" in job["error"]["message"]
    assert c.get("/v1/network").json()["version"] == version
