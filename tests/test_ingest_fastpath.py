"""The ingest fast paths: JSON body parsing (orjson with a stdlib fallback) and the
append-only memory of accepted pairs in ``VehicleLastSeen``, checked against the plain
semantics they replace."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from api.errors import ApiError
from api.routes.probes import parse_probe_body
from traffic.probes import ProbeValidationConfig, VehicleLastSeen, validate_probes

NOW_S = 1_700_000_000.0
BBOX = (12.5, 55.6, 12.7, 55.75)


def test_parse_probe_body_matches_stdlib_records():
    rng = np.random.default_rng(0)
    recs = [{"vehicle_id": f"v{i % 7}", "t": NOW_S + i, "lat": float(55.6 + rng.random() / 10),
             "lon": float(12.5 + rng.random() / 10), "speed_mps": float(rng.random() * 20)}
            for i in range(200)]
    df = parse_probe_body(json.dumps({"probes": recs}).encode(), "application/json",
                          max_probes=10_000)
    assert df["vehicle_id"].to_list() == [r["vehicle_id"] for r in recs]
    assert df["lat"].to_list() == [r["lat"] for r in recs]
    assert df["heading_deg"].null_count() == 200


def test_parse_probe_body_nan_literal_falls_back_to_stdlib():
    body = b'{"probes": [{"vehicle_id": "a", "t": 1700000000, "lat": NaN, "lon": 12.6}]}'
    df = parse_probe_body(body, "application/json", max_probes=10)
    assert df.height == 1 and np.isnan(df["lat"][0])
    res = validate_probes(df, config=ProbeValidationConfig(), now_s=NOW_S, bbox=BBOX)
    assert res.reasons["reason"].to_list() == ["nan_value"]


def test_parse_probe_body_invalid_json_is_400():
    with pytest.raises(ApiError) as err:
        parse_probe_body(b'{"probes": [', "application/json", max_probes=10)
    assert err.value.status_code == 400


def test_vehicle_last_seen_repost_after_many_batches_is_duplicate():
    seen = VehicleLastSeen(horizon_s=3600)
    cfg = ProbeValidationConfig()
    batches = [pl.DataFrame({"vehicle_id": ["a", "b"], "t": [NOW_S + 5.0 * k] * 2,
                             "lat": [55.67, 55.68], "lon": [12.56, 12.57]}) for k in range(50)]
    for b in batches:
        assert validate_probes(b, config=cfg, now_s=NOW_S + 300, bbox=BBOX,
                               last_seen=seen).accepted.height == 2
    again = pl.concat([batches[3], batches[40]])
    res = validate_probes(again, config=cfg, now_s=NOW_S + 300, bbox=BBOX, last_seen=seen)
    assert res.reasons["reason"].to_list() == ["duplicate"] * 4
    # An unseen time before the vehicle's last accepted point is out of order.
    late = batches[3].with_columns(pl.col("t") + 1.0)
    res = validate_probes(late, config=cfg, now_s=NOW_S + 300, bbox=BBOX, last_seen=seen)
    assert res.reasons["reason"].to_list() == ["out_of_order"] * 2
    assert seen.seen_pairs().height == 100


def test_vehicle_last_seen_forgets_pairs_past_the_horizon():
    seen = VehicleLastSeen(horizon_s=100)
    for k in range(10):
        seen.update(pl.DataFrame({"vehicle_id": ["a"], "t": [NOW_S + 60.0 * k],
                                  "lat": [55.67], "lon": [12.56]}))
    kept = seen.seen_pairs()["t"].to_numpy()
    assert kept.min() >= NOW_S + 60.0 * 9 - 100 and kept.max() == NOW_S + 540
