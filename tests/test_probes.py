"""Probe schema coercion and per-row validation: one named miniature per reason code."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from traffic.errors import ProbeSchemaError, ProbeValidationError
from traffic.probes import (
    PROBE_SCHEMA,
    REASONS,
    ProbeValidationConfig,
    VehicleLastSeen,
    coerce_probes,
    probes_from_csv,
    probes_from_records,
    validate_probes,
)

# Central Copenhagen, roughly.
BBOX = (12.50, 55.65, 12.62, 55.70)
NOW_S = 1_700_000_000.0
CONFIG = ProbeValidationConfig()


def _probe(vehicle_id: str = "car1", t: float = NOW_S - 60, lat: float = 55.676,
           lon: float = 12.568, **extra: float) -> dict:
    return {"vehicle_id": vehicle_id, "t": t, "lat": lat, "lon": lon, **extra}


def _batch(*rows: dict) -> pl.DataFrame:
    return probes_from_records(list(rows))


def _reasons(df: pl.DataFrame, last_seen: VehicleLastSeen | None = None) -> list[str]:
    result = validate_probes(df, config=CONFIG, now_s=NOW_S, bbox=BBOX, last_seen=last_seen)
    assert result.reasons["row"].to_list() == list(range(df.height))
    assert sum(result.counts.values()) == df.height
    return result.reasons["reason"].to_list()


@pytest.fixture
def single_probe() -> pl.DataFrame:
    return _batch(_probe())


@pytest.fixture
def empty_batch() -> pl.DataFrame:
    return probes_from_records([])


@pytest.fixture
def probe_nan_lat() -> pl.DataFrame:
    return _batch(_probe(lat=float("nan")))


@pytest.fixture
def duplicate_vehicle_t() -> pl.DataFrame:
    return _batch(_probe(t=NOW_S - 30), _probe(t=NOW_S - 30, lat=55.6761))


@pytest.fixture
def out_of_order_t() -> pl.DataFrame:
    return _batch(_probe(t=NOW_S - 100))


@pytest.fixture
def teleport() -> pl.DataFrame:
    # 0.0009 deg lat is ~100 m per 10 s (fine); the third point jumps ~4.5 km in 10 s.
    return _batch(
        _probe(t=NOW_S - 40, lat=55.6700), _probe(t=NOW_S - 30, lat=55.6709),
        _probe(t=NOW_S - 20, lat=55.7100), _probe(t=NOW_S - 10, lat=55.6718),
    )


def test_validate_probes_single_ok(single_probe):
    result = validate_probes(single_probe, config=CONFIG, now_s=NOW_S, bbox=BBOX)
    assert result.counts["ok"] == 1
    assert result.accepted.columns == list(PROBE_SCHEMA) + ["row"]


def test_validate_probes_empty(empty_batch):
    result = validate_probes(empty_batch, config=CONFIG, now_s=NOW_S, bbox=BBOX,
                             last_seen=VehicleLastSeen())
    assert result.accepted.height == 0 and result.reasons.height == 0
    assert set(result.counts) == set(REASONS) and sum(result.counts.values()) == 0


def test_validate_probes_nan_lat(probe_nan_lat):
    assert _reasons(probe_nan_lat) == ["nan_value"]


def test_validate_probes_missing_field():
    df = _batch(_probe(), {"vehicle_id": None, "t": NOW_S, "lat": 55.67, "lon": 12.56},
                {"vehicle_id": "", "t": NOW_S, "lat": 55.67, "lon": 12.56},
                {"vehicle_id": "x", "t": None, "lat": 55.67, "lon": 12.56})
    assert _reasons(df) == ["ok", "missing_field", "missing_field", "missing_field"]


def test_validate_probes_coordinates_out_of_range():
    df = _batch(_probe(lat=91.0), _probe(lon=-181.0), _probe(lat=55.0, lon=12.56))
    assert _reasons(df) == ["lat_out_of_range", "lon_out_of_range", "outside_network"]


def test_validate_probes_bbox_margin_accepts_near_points():
    # 0.03 deg of latitude is ~3.3 km, inside the 5 km margin.
    assert _reasons(_batch(_probe(lat=BBOX[3] + 0.03))) == ["ok"]
    result = validate_probes(_batch(_probe(lat=0.0, lon=0.0)), config=CONFIG, now_s=NOW_S,
                             bbox=None)
    assert result.counts["ok"] == 1


def test_validate_probes_future():
    df = _batch(_probe(t=NOW_S + 60), _probe(vehicle_id="b", t=NOW_S + 600))
    assert _reasons(df) == ["ok", "future_timestamp"]


def test_validate_probes_optional_fields():
    df = _batch(_probe(speed_mps=-1.0), _probe(vehicle_id="b", heading_deg=400.0),
                _probe(vehicle_id="c", accuracy_m=-5.0), _probe(vehicle_id="d", speed_mps=12.0,
                                                               heading_deg=90.0, accuracy_m=8.0))
    assert _reasons(df) == ["negative_speed", "bad_heading", "bad_accuracy", "ok"]


def test_validate_probes_optional_nan_is_not_reported():
    df = _batch(_probe(speed_mps=float("nan")))
    assert df["speed_mps"].null_count() == 1
    assert _reasons(df) == ["ok"]


def test_validate_probes_duplicate_vehicle_t(duplicate_vehicle_t):
    assert _reasons(duplicate_vehicle_t) == ["ok", "duplicate"]


def test_validate_probes_duplicate_other_vehicle_is_fine():
    assert _reasons(_batch(_probe(), _probe(vehicle_id="other"))) == ["ok", "ok"]


def test_validate_probes_out_of_order_t(out_of_order_t):
    last_seen = VehicleLastSeen()
    _reasons(_batch(_probe(t=NOW_S - 50)), last_seen)
    assert _reasons(out_of_order_t, last_seen) == ["out_of_order"]


def test_validate_probes_teleport(teleport):
    # Only the outlier goes; the point after it is judged against the last accepted one.
    assert _reasons(teleport) == ["ok", "ok", "impossible_jump", "ok"]


def test_validate_probes_teleport_against_last_seen():
    last_seen = VehicleLastSeen()
    _reasons(_batch(_probe(t=NOW_S - 50, lat=55.67)), last_seen)
    df = _batch(_probe(t=NOW_S - 40, lat=55.69), _probe(t=NOW_S - 30, lat=55.6705))
    assert _reasons(df, last_seen) == ["impossible_jump", "ok"]


def test_validate_probes_jump_tolerance_for_noise():
    # 40 m apart half a second later: within the 50 m noise allowance.
    df = _batch(_probe(t=NOW_S - 10.5, lat=55.6760), _probe(t=NOW_S - 10, lat=55.67636))
    assert _reasons(df) == ["ok", "ok"]


def test_validate_probes_repost_changes_nothing():
    last_seen = VehicleLastSeen()
    df = _batch(*[_probe(t=NOW_S - 100 + 10 * i, lat=55.67 + 0.0005 * i) for i in range(5)],
                _probe(vehicle_id="b"))
    first = _reasons(df, last_seen)
    assert first == ["ok"] * 6
    state = last_seen.last.clone()
    assert _reasons(df, last_seen) == ["duplicate"] * 6
    assert last_seen.last.equals(state)


def test_validate_probes_accepted_sorted_and_unsorted_input():
    df = _batch(_probe(vehicle_id="b", t=NOW_S - 5), _probe(t=NOW_S - 5), _probe(t=NOW_S - 15))
    result = validate_probes(df, config=CONFIG, now_s=NOW_S, bbox=BBOX)
    assert result.accepted.select("vehicle_id", "t").rows() == [
        ("b", NOW_S - 5), ("car1", NOW_S - 15), ("car1", NOW_S - 5)]
    assert result.accepted["row"].to_list() == [0, 2, 1]


def test_validate_probes_first_failure_wins_and_counts():
    df = _batch(_probe(lat=float("nan"), t=NOW_S + 1e6), _probe(lat=95.0, t=NOW_S + 1e6))
    result = validate_probes(df, config=CONFIG, now_s=NOW_S, bbox=BBOX)
    assert result.reasons["reason"].to_list() == ["nan_value", "lat_out_of_range"]
    assert result.counts["nan_value"] == 1 and result.counts["lat_out_of_range"] == 1
    assert result.rejected.height == 2


def test_validate_probes_random_batch_every_row_has_reason():
    rng = np.random.default_rng(7)
    n = 2000
    df = pl.DataFrame({
        "vehicle_id": rng.integers(0, 50, n).astype(str),
        "t": NOW_S - rng.integers(0, 600, n).astype(float),
        "lat": 55.675 + rng.normal(0, 0.02, n),
        "lon": 12.56 + rng.normal(0, 0.03, n),
    })
    result = validate_probes(df, config=CONFIG, now_s=NOW_S, bbox=BBOX)
    assert result.reasons.height == n and set(result.reasons["reason"]) <= set(REASONS)
    assert result.accepted.height == result.counts["ok"]
    assert not result.accepted.select("vehicle_id", "t").is_duplicated().any()


def test_validate_probes_invalid_now():
    with pytest.raises(ProbeValidationError, match="now_s"):
        validate_probes(_batch(_probe()), config=CONFIG, now_s=float("nan"), bbox=BBOX)


def test_probe_validation_config_invalid_value():
    with pytest.raises(ProbeValidationError, match="max_speed_mps"):
        ProbeValidationConfig(max_speed_mps=-1.0)


def test_coerce_probes_missing_column():
    with pytest.raises(ProbeSchemaError, match=r"missing required column\(s\) \['lon'\]"):
        coerce_probes(pl.DataFrame({"vehicle_id": ["a"], "t": [1.0], "lat": [55.0]}))


def test_coerce_probes_wrong_type():
    df = pl.DataFrame({"vehicle_id": ["a"], "t": [1.0], "lat": ["north"], "lon": [12.0]})
    with pytest.raises(ProbeSchemaError, match="`lat` must be numeric; got String"):
        coerce_probes(df)


def test_coerce_probes_integer_ids_and_times():
    df = coerce_probes(pl.DataFrame({"vehicle_id": [7], "t": [5], "lat": [55], "lon": [12]}))
    assert df.schema == pl.Schema(PROBE_SCHEMA)
    assert df["vehicle_id"].to_list() == ["7"]


def test_probes_from_records_invalid_type():
    with pytest.raises(ProbeSchemaError, match="lat"):
        probes_from_records([{"vehicle_id": "a", "t": 1.0, "lat": "x", "lon": 12.0}])


def test_probes_from_csv_bytes_and_path(tmp_path):
    text = b"vehicle_id,t,lat,lon,speed_mps\n17,1.5,55.6,12.5,3.0\nb,2.5,55.7,12.6,\n"
    df = probes_from_csv(text)
    assert df["vehicle_id"].to_list() == ["17", "b"]
    assert df["speed_mps"].to_list() == [3.0, None]
    path = tmp_path / "probes.csv"
    path.write_bytes(text)
    assert probes_from_csv(path).equals(df)


def test_probes_from_csv_missing_column():
    with pytest.raises(ProbeSchemaError, match="missing required"):
        probes_from_csv(b"vehicle_id,t,lat\na,1,55\n")


def test_probes_from_csv_wrong_type():
    with pytest.raises(ProbeSchemaError, match="`t` must be numeric"):
        probes_from_csv(b"vehicle_id,t,lat,lon\na,noon,55,12\n")
