"""A ``--data-dir`` written by the first durable release is read by this one.

The fixture ``tests/data/datadir_v1`` was written by that release (see its README): a
checkpoint of pipeline state version 1 (taken after flushing the matchers), the probe log
after it and a dense profile file. Recovery must load all three; a checkpoint of a version
this code does not know is refused with a message naming both versions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import shared_file
from graph.io import load_network
from traffic.checkpoints import CheckpointStore
from traffic.wal import LogPosition
from workers.durability import DurabilityConfig
from workers.services import LocalServices, PipelineConfig, load_profile

FIXTURE = Path(__file__).parent / "data" / "datadir_v1"
KEY = "key-of-the-old-release-01"
OLD_STATUS = {"received": 3024, "accepted": 3024, "applied": 2854, "pending": 170,
              "unmatched": 0}


@pytest.fixture(scope="module")
def net():
    return load_network(shared_file("scenario_li/network.osm.pbf"))


def _config(data_dir: Path) -> PipelineConfig:
    return PipelineConfig(clock="event", n_ingest=2, refresh_s=60.0, data_dir=str(data_dir),
                          snapshot_every_s=None,
                          durability=DurabilityConfig(str(data_dir), checkpoint_every_s=120.0,
                                                      keep_checkpoints=1, pseudonym_key=KEY))


@pytest.mark.shared_data
def test_data_dir_of_the_first_release_recovers(net, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(FIXTURE, data_dir)
    profile = load_profile(net, data_dir)  # the dense file, migrated
    assert profile.n_entries > 0
    svc = LocalServices(net, _config(data_dir), prior=profile)
    try:
        assert svc.durability.replayed_batches > 0  # the log after the old checkpoint
        st = svc.status()["probes"]
        assert {k: st[k] for k in OLD_STATUS} == OLD_STATUS
        svc.flush()
        st = svc.status()["probes"]
        assert st["pending"] == 0 and st["accepted"] == st["applied"] + st["unmatched"] == 3024
        svc.checkpoint_now()  # written in the current version
        assert svc.estimator.save_profile()
    finally:
        svc.close()
    again = LocalServices(net, _config(data_dir), prior=load_profile(net, data_dir))
    try:
        assert again.durability.replayed_batches == 0
        assert again.status()["probes"] == st
    finally:
        again.close()


@pytest.mark.shared_data
def test_checkpoint_of_an_unknown_version_is_refused_naming_both(net, tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save({"version": 99, "facade.watermark_t": None}, log_position=LogPosition.start())
    with pytest.raises(ValueError, match=r"version 99; this code reads versions 1, 2"):
        LocalServices(net, _config(tmp_path))
