"""``PUT /v1/network``: raw or multipart body, generated names only, bad files leave serving."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from common import wait_job
from conftest import TEST_DATA
from graph.io import load_network
from workers.services import LocalServices, PipelineConfig


@pytest.fixture()
def svc(tmp_path):
    net = load_network(TEST_DATA / "osm_split.osm")
    return LocalServices(net, PipelineConfig(data_dir=str(tmp_path)))


def test_put_network_multipart_swaps(svc, tmp_path):
    new = (TEST_DATA / "osm_restrictions.osm").read_bytes()
    old = svc.net.version
    with TestClient(create_app(svc, Settings())) as c:
        r = c.put("/v1/network", files={"file": ("../../etc/evil.osm", new, "text/xml")},
                  data={"note": "ignored"})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["id"])
        assert job["state"] == "done", job
        assert job["previous_version"] == old != job["network_version"]
    assert not (tmp_path.parent / "etc").exists()
    names = os.listdir(svc.upload_dir())
    assert names == []  # the job removes its upload
    assert not any("evil" in n for n in os.listdir(tmp_path))


def test_put_network_multipart_same_as_raw(svc):
    new = (TEST_DATA / "osm_restrictions.osm").read_bytes()
    with TestClient(create_app(svc, Settings())) as c:
        a = wait_job(c, c.put("/v1/network", files={"file": ("x", new)}).json()["id"])
        b = wait_job(c, c.put("/v1/network", content=new,
                               headers={"content-type": "application/octet-stream"}
                               ).json()["id"])
    assert a["network_version"] == b["network_version"]


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"files": {"other": ("x", b"abc")}}, 422, "invalid_value"),
    ({"files": {"file": ("x", b"")}}, 422, "invalid_value"),
    ({"content": b"--zz\r\nbroken", "headers": {"content-type": "multipart/form-data"}},
     400, "bad_request"),
    ({"content": b"--zz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
      "headers": {"content-type": "multipart/form-data; boundary=zz"}}, 422, "invalid_value"),
    ({"content": b"garbage-without-boundary-line",
      "headers": {"content-type": "multipart/form-data; boundary=zz"}}, 400, "bad_request"),
])
def test_put_network_bad_multipart(svc, kwargs, status, code):
    with TestClient(create_app(svc, Settings())) as c:
        r = c.put("/v1/network", **kwargs)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert set(r.json()) == {"code", "message", "details"}
    assert os.listdir(svc.upload_dir()) == []


def test_put_network_multipart_too_big(svc):
    with TestClient(create_app(svc, Settings(max_upload_bytes=1000))) as c:
        r = c.put("/v1/network", files={"file": ("x", b"a" * 5000)})
    assert (r.status_code, r.json()["code"]) == (413, "too_big")
    assert os.listdir(svc.upload_dir()) == []


def test_put_network_job_error_hides_upload_path(svc):
    with TestClient(create_app(svc, Settings())) as c:
        job = wait_job(c, c.put("/v1/network", content=b"not a network").json()["id"])
    assert job["state"] == "failed"
    assert svc.upload_dir() not in job["error"]["message"]
    assert job["error"]["message"].startswith("the uploaded file: not a road network file")
