"""Prepared artifacts (graph/artifacts.py), mapped compiled networks and spatial indexes
(graph/io.py, graph/spatial.py) and `traffic network prepare`."""

from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest
from common import three_edges_with_detour
from test_cli_network import traffic
from test_io import assert_same_network, square_network

from graph.artifacts import (
    ARTIFACT_FORMAT_VERSION,
    artifact_status,
    artifacts_dir,
    prepare_artifacts,
    prepared_files,
    prepared_indexes,
    spatial_index_for,
)
from graph.io import ARRAY_ALIGN, load_compiled, map_array_archive, save_network
from graph.spatial import build_spatial_index, candidates, load_spatial_index, save_spatial_index


def _same_candidates(a, b, net) -> None:
    lat = np.array([55.0, 55.0005, 55.001, np.nan])
    lon = np.array([12.0005, 12.0011, 12.0, 12.0])
    for x, y in zip(candidates(a, lat, lon, radius_m=80.0), candidates(b, lat, lon, radius_m=80.0)):
        np.testing.assert_array_equal(x, y)


def test_save_network_aligns_every_array(tmp_path):
    path = save_network(square_network(), tmp_path / "sq.net")
    zf, arrays = map_array_archive(path)
    zf.close()
    for key, a in arrays.items():
        assert isinstance(a.base, np.ndarray) or a.size == 0, key  # a view, not a read copy
        assert a.ctypes.data % ARRAY_ALIGN == 0 or a.size == 0, key
    # Any ZIP reader and numpy.load still read it.
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["edge_src"], square_network().edge_src)


def test_load_compiled_mmap_same_network_read_only(tmp_path):
    net = square_network()
    path = save_network(net, tmp_path / "sq.net")
    mapped = load_compiled(path, mmap=True)
    assert_same_network(net, mapped)
    assert not mapped.edge_length_m.flags.writeable
    with pytest.raises(ValueError):
        mapped.edge_length_m[0] = 1.0
    assert load_compiled(path, mmap=True, verify=True).version == net.version


def test_load_compiled_mmap_reads_old_unaligned_file(tmp_path):
    # The layout before alignment: plain members, data wherever it falls.
    net = square_network()
    path = tmp_path / "old.net"
    header = {"format": "traffic-road-network", "format_version": 1, "name": net.name,
              "version": net.version,
              "arrays": {k: [a.dtype.str, list(a.shape)] for k, a in net.arrays().items()}}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("header.json", json.dumps(header))
        for key, a in net.arrays().items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)
    assert_same_network(net, load_compiled(path, mmap=True))
    assert_same_network(net, load_compiled(path))


def test_spatial_index_save_load_mmap(tmp_path):
    net = three_edges_with_detour()
    index = build_spatial_index(net)
    path = save_spatial_index(index, tmp_path / "x.idx")
    mapped = load_spatial_index(path)
    assert not mapped.seg_x0.flags.writeable and mapped.network_version == net.version
    assert mapped.grid_nx == index.grid_nx and mapped.cell_m == index.cell_m
    _same_candidates(index, mapped, net)
    _same_candidates(index, load_spatial_index(path, mmap=False), net)


def test_load_spatial_index_invalid_value(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable spatial index"):
        load_spatial_index(bad)


def test_artifacts_dir_beside_or_data_dir(tmp_path):
    net_path = tmp_path / "n.net"
    assert artifacts_dir(net_path, None) == tmp_path / "n.net.prepared"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if not __import__("os").access(ro, __import__("os").W_OK):  # root ignores modes
            assert artifacts_dir(ro / "n.net", tmp_path / "d") == tmp_path / "d" / "prepared" / "n.net"
            with pytest.raises(ValueError, match="not writable"):
                artifacts_dir(ro / "n.net", None)
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("make", [three_edges_with_detour, square_network], ids=["node", "turn"])
def test_prepare_artifacts_then_load(tmp_path, make):
    net = make()
    spent = prepare_artifacts(net, tmp_path)
    assert set(spent) == {"cch_order", "spatial"}
    assert artifact_status(net, tmp_path) == {"cch_order": "ok", "spatial": "ok"}
    assert prepare_artifacts(net, tmp_path) == {}  # nothing to do the second time
    spatial, cch = prepared_indexes(net, tmp_path)
    assert not spatial.seg_edge.flags.writeable  # mapped
    assert cch.order_s == 0.0 and cch.network_version == net.version  # order read, not computed
    _same_candidates(build_spatial_index(net), spatial, net)


def test_prepare_artifacts_stale_format_rebuilt_with_warning(tmp_path, caplog):
    net = three_edges_with_detour()
    prepare_artifacts(net, tmp_path)
    files = prepared_files(net, tmp_path)
    manifest = json.loads(files.manifest.read_text())
    manifest["format_version"] = ARTIFACT_FORMAT_VERSION + 1
    files.manifest.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="graph.artifacts"):
        spent = prepare_artifacts(net, tmp_path)
    assert set(spent) == {"cch_order", "spatial"}
    assert "stale" in caplog.text and f"version {ARTIFACT_FORMAT_VERSION + 1}" in caplog.text
    assert artifact_status(net, tmp_path) == {"cch_order": "ok", "spatial": "ok"}


def test_spatial_index_for_other_network_file_rebuilt_with_warning(tmp_path, caplog):
    net = three_edges_with_detour()
    files = prepared_files(net, tmp_path)
    save_spatial_index(build_spatial_index(square_network()), files.spatial)  # wrong network
    with caplog.at_level(logging.WARNING, logger="graph.artifacts"):
        index = spatial_index_for(net, tmp_path)
    assert index.network_version == net.version
    assert "not " + net.version in caplog.text or "building" in caplog.text


def test_spatial_index_for_none_builds_in_memory():
    net = three_edges_with_detour()
    assert spatial_index_for(net, None).seg_edge.flags.writeable


def test_cli_network_prepare(tmp_path):
    path = save_network(three_edges_with_detour(), tmp_path / "t.net")
    first = traffic("network", "prepare", str(path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "prepared" in first.stdout and str(tmp_path / "t.net.prepared") in first.stdout
    second = traffic("network", "prepare", str(path), cwd=tmp_path)
    assert second.returncode == 0 and "already prepared" in second.stdout
    forced = traffic("network", "prepare", str(path), "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "cch order" in forced.stdout


def test_mapped_network_pickles_by_path(tmp_path):
    import dataclasses
    import pickle

    from graph.errors import NetworkFormatError
    from graph.io import MappedRoadNetwork

    net = square_network()
    path = save_network(net, tmp_path / "sq.net")
    mapped = load_compiled(path, mmap=True, pickle_by_path=True)
    assert isinstance(mapped, MappedRoadNetwork)
    blob = pickle.dumps(mapped, protocol=5)
    assert len(blob) < 500  # the path and version, not the arrays
    back = pickle.loads(blob)
    assert_same_network(net, back)
    assert not back.edge_src.flags.writeable
    # A copy made by dataclasses.replace has no source: it pickles its arrays.
    renamed = dataclasses.replace(mapped, name="other")
    assert pickle.loads(pickle.dumps(renamed)).name == "other"
    # The file replaced by another network: unpickling refuses, naming both versions.
    save_network(three_edges_with_detour(), path)
    with pytest.raises(NetworkFormatError, match=net.version):
        pickle.loads(blob)
    assert type(load_compiled(path, mmap=True)) is not MappedRoadNetwork
