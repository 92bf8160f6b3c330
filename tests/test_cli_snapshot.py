"""`traffic snapshot export|list`: real files in, real files out, one-line errors."""

from __future__ import annotations

import io
import json

import polars as pl
import pyarrow.ipc
import pytest
from polars.testing import assert_frame_equal

from common import three_edges_with_detour
from cli import main
from graph.io import save_network
from traffic.snapshots import SnapshotStore, validate_snapshot_frame

T0 = 1767225600.0  # 2026-01-01T00:00:00Z


def _frame(ratio: float) -> pl.DataFrame:
    return validate_snapshot_frame(pl.DataFrame({
        "key": [100, 200, 300], "speed_mps": [10 * ratio] * 3, "freeflow_mps": [10.0] * 3,
        "ratio": [ratio] * 3, "confidence": [0.5, 0.6, 0.7], "observations": [1, 2, 3],
        "last_update_t": [T0, None, T0],
    }))


@pytest.fixture
def data(tmp_path):
    store = SnapshotStore(tmp_path / "snaps")
    store.write(_frame(0.9), t_s=T0 + 60, network_version="v1")
    store.write(_frame(0.4), t_s=T0 + 8 * 3600 + 15 * 60, network_version="v1")
    net_path = save_network(three_edges_with_detour(), tmp_path / "net.tnet")
    return tmp_path, net_path


def test_export_parquet_bbox(data, capsys):
    tmp, net_path = data
    out = tmp / "out.parquet"
    rc = main(["snapshot", "export", "--data-dir", str(tmp / "snaps"), "--at", "2026-01-01T08:20:00Z",
               "--bbox", "12.05,54.9,12.15,55.1", "--network", str(net_path), "-o", str(out)])
    assert rc == 0
    assert "wrote 2 edges of the snapshot at 2026-01-01T08:15:00.000Z" in capsys.readouterr().out
    assert_frame_equal(pl.read_parquet(out), _frame(0.4).filter(pl.col("key").is_in([100, 300])))


def test_export_unix_time_no_bbox_csv(data):
    tmp, _ = data
    out = tmp / "out.csv"
    assert main(["snapshot", "export", "--data-dir", str(tmp / "snaps"), "--at", str(int(T0 + 3600)),
                 "-o", str(out)]) == 0
    assert_frame_equal(pl.read_csv(out, schema=_frame(0.9).schema), _frame(0.9))


def test_export_arrow_and_geojson(data):
    tmp, net_path = data
    arrow, geo = tmp / "out.arrow", tmp / "out.geojson"
    common = ["snapshot", "export", "--data-dir", str(tmp / "snaps"), "--at", str(T0 + 61),
              "--network", str(net_path), "--road-class", "residential"]
    assert main([*common, "-o", str(arrow)]) == 0
    table = pyarrow.ipc.open_file(io.BytesIO(arrow.read_bytes())).read_all()
    assert pl.from_arrow(table)["key"].to_list() == [200]
    assert main([*common, "-o", str(geo)]) == 0
    fc = json.loads(geo.read_text())
    assert [f["properties"]["key"] for f in fc["features"]] == [200]
    assert fc["features"][0]["properties"]["as_of"] == T0 + 60 and fc["network_version"] == "v1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--at", "2025-12-31T23:00:00Z"], "no snapshot at or before 2025-12-31T23:00:00Z"),
        (["--at", "yesterday"], "time 'yesterday' is neither unix seconds nor ISO 8601"),
        (["--at", str(T0 + 100), "--bbox", "1,2,3"], "must be four finite numbers"),
        (["--at", str(T0 + 100), "--bbox", "12.3,55,12.1,56", "--network", "NET"], "minlon must be <= maxlon"),
        (["--at", str(T0 + 100), "--bbox", "12,55,12.1,56"], "need --network"),
        (["--at", str(T0 + 100), "--road-class", "highway", "--network", "NET"], "unknown road class"),
    ],
)
def test_export_errors(data, capsys, extra, message):
    tmp, net_path = data
    extra = [str(net_path) if x == "NET" else x for x in extra]
    out = tmp / "out.parquet"
    rc = main(["snapshot", "export", "--data-dir", str(tmp / "snaps"), *extra, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_export_bad_suffix_and_missing_dir(data, capsys):
    tmp, _ = data
    assert main(["snapshot", "export", "--data-dir", str(tmp / "snaps"), "--at", str(T0 + 100),
                 "-o", str(tmp / "out.xlsx")]) == 2
    assert "unknown suffix '.xlsx'" in capsys.readouterr().err
    assert main(["snapshot", "export", "--data-dir", str(tmp / "nope"), "--at", str(T0 + 100),
                 "-o", str(tmp / "o.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_list_range(data, capsys):
    tmp, _ = data
    assert main(["snapshot", "list", "--data-dir", str(tmp / "snaps"), "--from", "2026-01-01T01:00"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{T0 + 29700:.3f}\t2026-01-01T08:15:00.000Z\tv1"]
