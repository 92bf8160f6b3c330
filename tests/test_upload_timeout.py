"""Network uploads import in a child process with a time limit; past it the child is killed."""

from __future__ import annotations

import multiprocessing
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from conftest import TEST_DATA, shared_file
from graph.errors import NetworkError
from graph.io import load_network
from workers.network_jobs import ImportTimeout, import_in_child
from workers.services import LocalServices, PipelineConfig


def _wait(svc, job_id, timeout_s=60.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        job = svc.job(job_id)
        if job.state in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_import_in_child_times_out_and_kills(tmp_path):
    src = tmp_path / "kbh.osm.pbf"
    shutil.copy(shared_file("osm/kbh.osm.pbf"), src)
    t0 = time.perf_counter()
    with pytest.raises(ImportTimeout, match="longer than the 0.2 s limit"):
        import_in_child(src, timeout_s=0.2)
    assert time.perf_counter() - t0 < 10.0
    assert multiprocessing.active_children() == []  # the child is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kbh.osm.pbf"]  # no compiled left


def test_import_in_child_returns_the_same_network(tmp_path):
    src = TEST_DATA / "osm_restrictions.osm"
    net = import_in_child(src, timeout_s=120.0, cache_dir=str(tmp_path / "cache"))
    assert net.version == load_network(src).version
    assert list((tmp_path / "cache").iterdir())  # the child prepared the routing index


def test_import_in_child_reports_bad_file(tmp_path):
    bad = tmp_path / "bad.osm"
    bad.write_text("not a network")
    with pytest.raises(NetworkError):
        import_in_child(bad, timeout_s=120.0)


def test_network_job_timeout_keeps_serving(tmp_path):
    net = load_network(TEST_DATA / "osm_split.osm")
    svc = LocalServices(net, PipelineConfig(data_dir=str(tmp_path), upload_timeout_s=0.2))
    try:
        upload = tmp_path / "up.osm.pbf"
        shutil.copy(shared_file("osm/kbh.osm.pbf"), upload)
        job = _wait(svc, svc.submit_network(upload).id)
        assert job.state == "failed"
        assert job.error["code"] == "timeout"
        assert "0.2 s limit" in job.error["message"] and "unchanged" in job.error["message"]
        assert svc.net.version == net.version and svc.ready()
        assert not upload.exists()
        with TestClient(create_app(svc, Settings())) as c:
            out = c.get(f"/v1/network/jobs/{job.id}").json()
            assert out["state"] == "failed" and out["error"]["code"] == "timeout"
            assert str(upload) not in out["error"]["message"]
            assert c.get("/v1/network").json()["version"] == net.version
    finally:
        svc.close()
