"""Named miniatures and helpers shared by several test modules."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from graph.network import ROAD_CLASS_INDEX, RoadNetwork, build_network


def three_edges_with_detour() -> RoadNetwork:
    """Three nodes on lat 55.0 at lon 12.0, 12.2, 12.4; edge keys 100, 200, 300.

    Edge 100 (0 -> 1, primary) and edge 200 (1 -> 2, residential) run along the line; edge
    300 (0 -> 2, primary) is a long detour via (12.5, 55.5).
    """
    return build_network(
        node_lat=[55.0, 55.0, 55.0], node_lon=[12.0, 12.2, 12.4],
        edge_src=[0, 1, 0], edge_dst=[1, 2, 2], edge_speed_kph=[50, 50, 30],
        geom_offsets=[0, 2, 4, 7], geom_lat=[55.0, 55.0, 55.0, 55.0, 55.0, 55.5, 55.0],
        geom_lon=[12.0, 12.2, 12.2, 12.4, 12.0, 12.5, 12.4],
        edge_road_class=[ROAD_CLASS_INDEX["primary"], ROAD_CLASS_INDEX["residential"],
                         ROAD_CLASS_INDEX["primary"]],
        edge_key=[100, 200, 300],
    )


def wait_job(client, job_id: str, timeout_s: float = 60.0) -> dict:
    """Poll ``GET /v1/network/jobs/{job_id}`` until the job is done or failed."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        job = client.get(f"/v1/network/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def scenario_batches(probes_path: Path, *, span_s: float, step_s: float) -> list[pl.DataFrame]:
    """The first ``span_s`` event seconds of a probe file, cut into ``step_s`` batches in
    time order (each batch: ``lo <= t < lo + step_s``)."""
    df = pl.read_parquet(probes_path).sort("t")
    t0 = float(df["t"].min())
    edges = np.arange(t0, t0 + span_s + 1e-9, step_s)
    return [df.filter((pl.col("t") >= lo) & (pl.col("t") < hi))
            for lo, hi in zip(edges[:-1], edges[1:])]


@contextmanager
def served(app: Any, *, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a thread; yield its base URL (``http://127.0.0.1:PORT``).

    The listening socket is bound here, before uvicorn starts, so nothing (a Ray worker taking
    free ports) can take the port in between; a server that fails to start fails the test.
    """
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + start_timeout_s
    try:
        while not srv.started:
            if not th.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"uvicorn did not start on port {port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(timeout=10)
        sock.close()


_SERVING = re.compile(rb"serving on (http://\S+)")


def serve_url(proc: subprocess.Popen, log_path: Path, timeout_s: float = 120.0) -> str:
    """The URL a ``traffic serve`` subprocess prints once it listens (``--port 0`` picks a
    free port in the server itself); fails if the process exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _SERVING.search(log_path.read_bytes())
        if found:
            return found.group(1).decode()
        if proc.poll() is not None:
            raise AssertionError(f"traffic serve exited with {proc.returncode}: "
                                 f"{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"traffic serve printed no URL in {timeout_s} s (log: {log_path})")


def kbh_services_after(seconds: float = 1200.0) -> Any:
    """A ``LocalServices`` on scenario_kbh (event clock, one ingest partition) that has
    ingested the scenario's first ``seconds`` of probes and flushed: real estimator state
    with a forecast model (needs ../shared/data; the caller closes it)."""
    from conftest import shared_file

    from graph.io import load_network
    from workers.services import LocalServices, PipelineConfig

    net = load_network(shared_file("scenario_kbh/network.osm.pbf"))
    svc = LocalServices(net, PipelineConfig(clock="event", n_ingest=1))
    df = pl.read_parquet(shared_file("scenario_kbh/probes.parquet")).sort("t")
    df = df.filter(pl.col("t") < df["t"].min() + seconds)
    for part in df.iter_slices(20_000):
        svc.ingest(part)
    svc.flush()
    return svc


def kbh_module_fixtures(seconds: float = 1200.0) -> tuple[Any, Any]:
    """Module-scoped ``services`` (:func:`kbh_services_after`, closed at the end) and
    ``client`` (a ``TestClient`` over the app on it, event clock) fixtures, for a test
    module to bind: ``services, client = kbh_module_fixtures()``."""
    import pytest
    from fastapi.testclient import TestClient

    @pytest.fixture(scope="module")
    def services() -> Any:
        svc = kbh_services_after(seconds)
        yield svc
        svc.close()

    @pytest.fixture(scope="module")
    def client(services: Any) -> Any:
        from api.app import create_app
        from api.settings import Settings

        with TestClient(create_app(services, Settings(clock="event"))) as c:
            yield c

    return services, client
