"""An uploaded network serves from a mapped compiled file kept under ``networks/``, not from a
private copy; the file of the network it replaces goes after the next swap."""

from __future__ import annotations

import pickle

import numpy as np
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from common import wait_job
from conftest import TEST_DATA
from graph.io import MappedRoadNetwork, load_network
from workers.network_jobs import import_in_child
from workers.services import LocalServices, PipelineConfig


def test_import_in_child_keep_as_maps_the_compiled_file(tmp_path):
    src = TEST_DATA / "osm_restrictions.osm"
    kept = tmp_path / "networks" / "x.net"
    net = import_in_child(src, timeout_s=120.0, keep_as=kept, by_path=True)
    assert kept.exists() and net.version == load_network(src).version
    assert isinstance(net, MappedRoadNetwork)
    assert not net.edge_src.flags.writeable  # a read-only view of the mapping, not a copy
    assert len(pickle.dumps(net)) < 1000  # pickles as its path
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(net)).edge_dst, net.edge_dst)


def test_swapped_network_file_kept_then_replaced(tmp_path):
    svc = LocalServices(load_network(TEST_DATA / "osm_split.osm"),
                        PipelineConfig(data_dir=str(tmp_path)))
    networks = tmp_path / "networks"
    with TestClient(create_app(svc, Settings())) as c:
        for name in ("osm_restrictions.osm", "osm_split.osm"):
            body = (TEST_DATA / name).read_bytes()
            job = wait_job(c, c.put("/v1/network", content=body).json()["id"])
            assert job["state"] == "done", job
            assert [p.name for p in networks.iterdir()] == [f"{job['id']}.net"]
            assert svc.net.version == job["network_version"]
            assert not svc.net.edge_src.flags.writeable
        bad = wait_job(c, c.put("/v1/network", content=b"not a network").json()["id"])
        assert bad["state"] == "failed"
        assert [p.name for p in networks.iterdir()] == [f"{job['id']}.net"]
