"""Each stage's state_dict / load_state_dict: a restored stage continues exactly as the
original would have (the checkpoint interface of workers/state.py relies on it)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from common import scenario_batches
from conftest import shared_file
from graph.io import load_network
from traffic.probes import VehicleLastSeen
from workers.ingest import IngestCore

pytestmark = pytest.mark.shared_data


def test_vehicle_last_seen_round_trip_empty_and_chunked():
    empty = VehicleLastSeen(horizon_s=100.0)
    again = VehicleLastSeen(horizon_s=100.0)
    again.load_state_dict(empty.state_dict())
    assert len(again) == 0 and again.seen_pairs().height == 0
    seen = VehicleLastSeen(horizon_s=100.0)
    for t0 in (0.0, 50.0, 120.0):
        seen.update(pl.DataFrame({"vehicle_id": ["a", "b"], "t": [t0, t0 + 1],
                                  "lat": [1.0, 2.0], "lon": [3.0, 4.0]}))
    state = seen.state_dict()
    assert state["chunk_len"].tolist() == [2, 2]  # the first chunk is past the horizon
    restored = VehicleLastSeen(horizon_s=100.0)
    restored.load_state_dict(state)
    assert restored.last.equals(seen.last)
    assert restored.seen_pairs().equals(seen.seen_pairs())
    with pytest.raises(ValueError, match="version 9"):
        restored.load_state_dict({**state, "version": 9})


@pytest.fixture(scope="module")
def net():
    return load_network(shared_file("scenario_kbh/network.osm.pbf"))


def _run(core: IngestCore, batches: list[pl.DataFrame]) -> list:
    out = []
    for b in batches:
        now = float(b["t"].max())
        reply = core.ingest(b, now_s=now)
        out.append((reply.accepted, reply.n_matched,
                    None if reply.batch is None else
                    tuple(np.asarray(getattr(reply.batch, c)).copy() for c in
                          ("edge", "t_enter_s", "t_exit_s", "pace_s_per_m", "weight"))))
    return out


def test_ingest_core_restored_mid_stream_continues_bit_for_bit(net):
    batches = scenario_batches(shared_file("scenario_kbh/probes.parquet"), span_s=600.0,
                               step_s=15.0)
    whole = IngestCore(net)
    ref = _run(whole, batches)
    first = IngestCore(net)
    _run(first, batches[:20])
    assert first.stats()["pending"] > 0 and first.extractor.open_count() > 0
    restored = IngestCore(net)
    restored.load_state_dict(first.state_dict())
    got = _run(restored, batches[20:])
    assert len(got) == len(ref[20:])
    for (a1, n1, t1), (a2, n2, t2) in zip(got, ref[20:], strict=True):
        assert (a1, n1) == (a2, n2)
        assert (t1 is None) == (t2 is None)
        if t1 is not None:
            for x, y in zip(t1, t2, strict=True):
                np.testing.assert_array_equal(x, y)
    assert restored.stats()["pending"] == whole.stats()["pending"]
    with pytest.raises(ValueError, match="state version 7"):
        restored.load_state_dict({"version": 7})
