"""Fuzz every endpoint from the OpenAPI schema (schemathesis): no 5xx, every 4xx has the shape.

A few hundred cases per endpoint here; ``benchmarks/fuzz.py`` runs 1,000+ and records them.
"""

from __future__ import annotations

import pytest

from api.app import create_app
from api.settings import Settings
from conftest import shared_file
from fuzzing import check_answer, fuzz_app
from graph.io import load_network
from workers.services import LocalServices, PipelineConfig

pytest.importorskip("schemathesis")


def test_check_answer_rejects_what_it_should():
    # The fuzz check itself: it must flag what the API promises never to send.
    assert check_answer(500, b'{"code":"x","message":"y","details":null}',
                        "application/json") is not None
    assert check_answer(422, b'{"detail":"x"}', "application/json") is not None
    assert check_answer(404, b"Not Found", "text/plain") is not None
    assert check_answer(422, b'{"code":"x","message":"y","details":null}',
                        "application/json") is None
    assert check_answer(200, b"anything", "text/csv") is None


@pytest.mark.slow
def test_fuzz_api_no_5xx_and_error_shape(tmp_path):
    net = load_network(shared_file("osm/kbh.osm.pbf"))
    services = LocalServices(net, PipelineConfig(clock="event", data_dir=str(tmp_path)))
    app = create_app(services, Settings(clock="event"))
    reports = fuzz_app(app, max_examples=100, seed=1)
    services.close()
    failures = {name: r.failures for name, r in reports.items() if r.failures}
    assert not failures, failures
    assert reports["POST /v1/probes"].cases >= 200
    assert reports["GET /v1/route"].cases >= 200
    assert all(s < 500 for r in reports.values() for s in r.statuses)
