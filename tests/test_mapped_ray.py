"""A network mapped from a compiled file reaches Ray actors as its path (graph.io.MappedRoadNetwork):
each actor maps the file itself, and a restarted actor maps it again."""

from __future__ import annotations

import os
import time

import pytest
from common import three_edges_with_detour

from graph.io import load_compiled, save_network


@pytest.mark.slow
def test_mapped_network_reaches_restarted_actor_by_path(ray_local, tmp_path):
    ray = ray_local

    class Holder:  # defined here: cloudpickle ships it by value (tests/ is not importable there)
        def __init__(self, net) -> None:
            self.net = net

        def info(self) -> tuple[str, str, int, bool]:
            return (type(self.net).__name__, self.net.version, os.getpid(),
                    bool(self.net.edge_src.flags.writeable))

    net = three_edges_with_detour()
    path = save_network(net, tmp_path / "t.net")
    ref = ray.put(load_compiled(path, mmap=True, pickle_by_path=True))
    holder = ray.remote(Holder).options(max_restarts=1, num_cpus=0).remote(ref)
    name, version, pid, writable = ray.get(holder.info.remote(), timeout=60)
    assert (name, version, writable) == ("MappedRoadNetwork", net.version, False)
    ray.kill(holder, no_restart=False)
    deadline = time.monotonic() + 60
    new_pid = pid
    while new_pid == pid:  # ray.kill takes effect asynchronously
        assert time.monotonic() < deadline, "the actor did not restart within 60 s"
        try:
            name, version, new_pid, _ = ray.get(holder.info.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            pass
        time.sleep(0.5)
    assert (name, version) == ("MappedRoadNetwork", net.version) and new_pid != pid
    ray.kill(holder, no_restart=True)
