"""CPU cost per 1,000 probes of every stage and actor of the sharded Ray pipeline, and the
node count this predicts for 100k and 1M probes/s. Appends a section to BENCHMARKS.md.

Runs :class:`workers.pipeline.RayPipeline` (local Ray, one node) with ``--ingest`` partitions,
``--shards`` estimator shards and one router replica, durable (probe log + checkpoints), the
housekeeping thread publishing as in ``traffic serve``. The ``scenario_kbh`` probes go in
as ``--batch-s`` event-second batches straight to the facade (no HTTP: the API's parse cost
is in the ``benchmarks/ingest.py`` table). After a warm-up (the first 10 % of the batches),
each actor process's CPU time (``time.process_time`` inside it: all its threads, Ray's
included) and the driver's (the facade: probe log, partitioning, fold order, shard split,
publication merge, and Ray's client threads) are read before and after the rest, which is
then flushed and drained.

    .venv/bin/python benchmarks/shards.py [--shards 2] [--ingest 2] [--batch-s 5] [--no-append]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, append_section, machine_description, utc_now

sys.path.insert(0, str(ROOT))
SCENARIO = ROOT.parent / "shared" / "data" / "scenario_kbh"


def _driver_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _actor_cpu_s(handles: list[Any]) -> list[float]:
    import ray

    return ray.get([h.__ray_call__.remote(lambda _core: __import__("time").process_time())
                    for h in handles])


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from graph.io import load_network
    from workers.durability import DurabilityConfig
    from workers.pipeline import RayPipeline
    from workers.services import PipelineConfig

    net = load_network(SCENARIO / "network.osm.pbf")
    df = pl.read_parquet(SCENARIO / "probes.parquet").sort("t", maintain_order=True)
    t0 = float(df["t"].min())
    df = df.with_columns(((pl.col("t") - t0) // args.batch_s).cast(pl.Int64).alias("_b"))
    batches = [g.drop("_b") for _, g in df.group_by("_b", maintain_order=True)]
    warm = max(1, len(batches) // 10)
    data_dir = tempfile.mkdtemp(prefix="bench-shards-")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    cfg = PipelineConfig(clock="event", n_ingest=args.ingest, estimator_shards=args.shards,
                         router_replicas=1, refresh_s=1.0, data_dir=data_dir,
                         snapshot_every_s=None, profile_save_every_s=None,
                         cache_dir=str(Path(data_dir) / "cache"),
                         durability=DurabilityConfig(data_dir, checkpoint_every_s=300.0,
                                                     pseudonym_key="bench-shards-key-0042"))
    pipe = RayPipeline(net, cfg)
    try:
        pipe.start()
        for b in batches[:warm]:
            pipe.ingest(b)
        pipe.drain()
        shards = pipe.estimator_handles()
        actors = {**{f"ingest {p}": a for p, a in enumerate(pipe.ingest_stages)},
                  **{f"estimator shard {s}": h for s, h in enumerate(shards)},
                  "router replica": pipe.router_actors[0]}
        before = pipe.status()
        cpu0, drv0, wall0 = _actor_cpu_s(list(actors.values())), _driver_cpu_s(), time.time()
        for b in batches[warm:]:
            pipe.ingest(b)
        pipe.flush()
        after = pipe.drain()
        wall = time.time() - wall0
        cpu1, drv1 = _actor_cpu_s(list(actors.values())), _driver_cpu_s()
        est0, est1 = before["workers"]["estimator"], after["workers"]["estimator"]
        n_pubs = (est1["publications_full"] + est1["publications_delta"]
                  - est0["publications_full"] - est0["publications_delta"])
    finally:
        pipe.close()
        ray.shutdown()
    probes = after["probes"]["received"] - before["probes"]["received"]
    cpu = {name: b - a for name, a, b in zip(actors, cpu0, cpu1, strict=True)}
    cpu["facade (driver)"] = drv1 - drv0
    return {"probes": probes, "wall_s": wall, "cpu_s": cpu, "publications": n_pubs,
            "edges": net.n_edges, "args": vars(args)}


def _model(res: dict[str, Any], *, cores_per_node: int, utilisation: float) -> str:
    per_k = {k: 1e3 * v / (res["probes"] / 1e3) for k, v in res["cpu_s"].items()}
    ingest = sum(v for k, v in per_k.items() if k.startswith("ingest"))
    est = sum(v for k, v in per_k.items() if k.startswith("estimator"))
    facade = per_k["facade (driver)"]
    router_per_pub_ms = 1e3 * res["cpu_s"]["router replica"] / max(res["publications"], 1)
    usable = cores_per_node * utilisation
    lines = []
    for rate in (100_000, 1_000_000):
        scale = rate / 1e3 / 1e3  # (CPU-ms per 1k probes) * scale = cores
        cores = (ingest + est) * scale
        facade_cores = facade * scale
        nodes = math.ceil((cores + facade_cores) / usable)
        lines.append(f"| {rate:,} | {ingest * scale:.1f} | {est * scale:.1f} | "
                     f"{facade_cores:.1f} | {math.ceil(facade_cores / 0.7)} | {nodes} |")
    return "\n".join([
        (f"Model: cores(R) = R/1000 x (ingest + estimator CPU-ms per 1,000 probes) / 1000, "
        f"packed onto nodes of {cores_per_node} cores at {utilisation:.0%} utilisation "
        f"(the rest for the raylet, the object store and the OS). The facade (probe log, "
        f"fold order, shard split, merge) is one process today, so one facade carries at most "
        f"about {1e6 * 0.7 / facade:,.0f} probes/s at 70 % of a core; the facade column says "
        f"how many a rate needs (several facades, each owning a slice of the vehicles and "
        f"its own log, are not built). Routers are sized by queries, not probes "
        f"(a replica spends {router_per_pub_ms:.1f} CPU-ms per publication it applies, "
        f"about {router_per_pub_ms / 10:.1f} % of a core at one publication per second)."),
        "",
        ("| probes/s | ingest cores | estimator-shard cores | facade cores | facades | "
        "nodes (all three) |"),
        "|---|---|---|---|---|---|",
        *lines,
    ])


def report(res: dict[str, Any], *, cores_per_node: int, utilisation: float) -> str:
    a = res["args"]
    rows = [f"| {k} | {1e3 * v:.0f} | {1e3 * v / (res['probes'] / 1e3):.2f} |"
            for k, v in res["cpu_s"].items()]
    return "\n".join([
        (f"## Sharded estimator: CPU per 1,000 probes per actor "
         f"(`benchmarks/shards.py --shards {a['shards']} --ingest {a['ingest']} "
         f"--batch-s {a['batch_s']}`)"),
        "",
        (f"{utc_now()}; {machine_description()}. scenario_kbh ({res['edges']:,} edges), "
         f"{res['probes']:,} probes measured after a warm-up, {res['wall_s']:.1f} s wall "
         f"({res['probes'] / res['wall_s']:,.0f} probes/s through the facade, event clock, "
         f"durable), {res['publications']} publications (refresh 1 s of event time). "
         f"CPU = process CPU time of each actor (all its threads) and of the driver."),
        "",
        "| stage / actor | CPU-ms | CPU-ms per 1,000 probes |",
        "|---|---|---|",
        *rows,
        "",
        _model(res, cores_per_node=cores_per_node, utilisation=utilisation),
        "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--ingest", type=int, default=2)
    p.add_argument("--batch-s", type=float, default=5.0)
    p.add_argument("--cores-per-node", type=int, default=16)
    p.add_argument("--utilisation", type=float, default=0.7)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    res = run(args)
    text = report(res, cores_per_node=args.cores_per_node, utilisation=args.utilisation)
    print(text)
    if not args.no_append:
        append_section(text)


if __name__ == "__main__":
    main()
