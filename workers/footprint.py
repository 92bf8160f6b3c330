"""How much memory serving a network takes, estimated from its size before it is loaded,
and how much memory this process may use (cgroup limits included).

``traffic serve`` refuses a network whose estimate exceeds ``--max-memory-gb`` (default 80%
of :func:`available_memory_bytes`) instead of being killed for memory mid-serve. The
constants are bytes per directed edge (or node, geometry point) per component, measured by
``benchmarks/scale.py`` on tiled New York (K=1 and K=2, 2-core machine; see BENCHMARKS.md,
"scale"); fixed costs are per process. The estimate is an upper bound of the steady state
with an empty profile (K=1: 1.5 GB estimated, 1.37 GB measured; K=2: 2.7 GB estimated,
2.23 GB measured, the difference mostly profile metrics not yet held); a profile learned
over weeks adds up to 10 B per observed (edge, bin).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# -- per element (bytes), from the array layouts ---------------------------------------------
#: Compiled network: per node (lat, lon, OSM id, two CSR offsets).
NETWORK_B_PER_NODE = 32
#: Compiled network: per directed edge (13 edge arrays, geometry offset, name/ref indices
#: and flags of compiled format 2); DIMACS New York measures 128 B per edge in all.
NETWORK_B_PER_EDGE = 92
#: Compiled network and spatial index: per geometry point (lat, lon; segment arrays).
NETWORK_B_PER_POINT = 16
#: Spatial index: per segment (7 arrays, 52 B) plus grid registrations (4 B each, about 3
#: per segment at the 25 m default cell): measured 61-76 B per segment.
SPATIAL_B_PER_SEGMENT = 66

# -- per directed edge (bytes), measured (benchmarks/scale.py, K=1 and K=2) ----------------
#: One router process's CCH contraction from the saved order (RoutingKit, node-based):
#: measured 63-64 B per edge.
CCH_B_PER_EDGE = 65
#: One customized metric (RoutingKit weights on the CCH arcs, our float64 times and uint32
#: ms per edge): measured 28 B per edge.
METRIC_B_PER_EDGE = 30
#: Metrics a router holds at most: the live one and the one being customized, plus its
#: profile metrics (``graph.router.Router(profile_cache=4)``, filled by departure-time
#: queries). An upper bound: a router without profile queries holds 1-2.
METRICS_PER_ROUTER = 2 + 4
#: Router arrays besides the hierarchy: free-flow times (8 B per edge) and positions along
#: edges per geometry point (8 B per point, :data:`ROUTER_B_PER_POINT`).
ROUTER_B_PER_EDGE = 8
ROUTER_B_PER_POINT = 8
#: Estimator state and publication buffers (CPU): measured 29-49 B per edge.
ESTIMATOR_B_PER_EDGE = 50
#: Matcher: traversal extractor and ingest arrays (measured 20-21 B per edge at start),
#: the route distances' node-wide scratch (16 B per node) and their cache, bounded at
#: ``graph.route_distances.DEFAULT_MAX_ENTRIES`` x 12 B (48 MB) per ingest process.
MATCHER_B_PER_EDGE = 20
MATCHER_B_PER_NODE = 16
MATCHER_CACHE_B = 48_000_000

# -- fixed per process (bytes), measured ------------------------------------------------------
#: The API process with our imports (NumPy, Polars, RoutingKit, FastAPI/uvicorn, Ray client).
PROCESS_FIXED_B = 250 * 2**20
#: One Ray actor process (interpreter, imports, core worker): 130-160 MiB measured.
RAY_ACTOR_FIXED_B = 150 * 2**20
#: Ray's own processes (GCS, raylet, dashboard and runtime-env agents, two idle workers):
#: 460-470 MiB measured, whatever the network.
RAY_BASE_B = 470 * 2**20


@dataclass(frozen=True, slots=True)
class Footprint:
    """Estimated steady-state bytes by component (all processes of one machine)."""

    parts: dict[str, int]

    @property
    def total_bytes(self) -> int:
        """Sum over the components."""
        return int(sum(self.parts.values()))

    def summary(self) -> str:
        """``"network 0.1 GB, spatial index 0.1 GB, ..."`` (the larger parts first)."""
        items = sorted(self.parts.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in items)


def estimate_footprint(
    n_nodes: int, n_edges: int, n_points: int, *, router_processes: int = 1,
    ingest_processes: int = 1, ray: bool = True, network_copies: int = 1,
) -> Footprint:
    """Estimate the serving footprint of a network of this size (an upper bound).

    Read-only arrays (network, spatial index) are counted once per machine: every process
    maps the same files. The CCH contraction and its metrics are counted once per router
    process (RoutingKit cannot share them), the matcher once per ingest process.

    Parameters
    ----------
    n_nodes, n_edges, n_points
        Nodes, directed edges and geometry points (``len(net.geom_lat)``).
    router_processes
        Processes holding a router (the API process counts when it routes itself).
    ingest_processes
        Ingest partitions.
    ray
        Whether the stages run as Ray actors (else all in one process).
    network_copies
        Copies of the network's arrays per machine: 1 when every process maps the file,
        2 when Ray actors get it through the object store (``--ray-address``).

    Examples
    --------
    >>> f = estimate_footprint(264_346, 730_100, 1_460_200)
    >>> 1.0e9 < f.total_bytes < 2.0e9
    True
    """
    for name, v in (("n_nodes", n_nodes), ("n_edges", n_edges), ("n_points", n_points),
                    ("router_processes", router_processes), ("ingest_processes", ingest_processes),
                    ("network_copies", network_copies)):
        if v < 0:
            raise ValueError(f"`{name}` must be >= 0; got {v}")
    segments = max(n_points - n_edges, 0)
    network = NETWORK_B_PER_NODE * n_nodes + NETWORK_B_PER_EDGE * n_edges + NETWORK_B_PER_POINT * n_points
    actors = 1 + ingest_processes + max(router_processes - 1, 0) if ray else 0
    router = (CCH_B_PER_EDGE + METRICS_PER_ROUTER * METRIC_B_PER_EDGE + ROUTER_B_PER_EDGE) * n_edges \
        + ROUTER_B_PER_POINT * n_points
    matcher = MATCHER_B_PER_EDGE * n_edges + MATCHER_B_PER_NODE * n_nodes + MATCHER_CACHE_B
    parts = {
        "network": network * max(network_copies, 1),
        "spatial index": SPATIAL_B_PER_SEGMENT * segments,
        "routers (CCH, metrics)": router_processes * router,
        "estimator": ESTIMATOR_B_PER_EDGE * n_edges,
        "matcher": ingest_processes * matcher,
        "processes": PROCESS_FIXED_B + (actors * RAY_ACTOR_FIXED_B + RAY_BASE_B if ray else 0),
    }
    return Footprint({k: int(v) for k, v in parts.items()})


def network_sizes(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """``(n_nodes, n_edges, n_points)`` from a compiled network's header (nothing loaded);
    ``None`` for other formats (they are sized once parsed)."""
    from graph.io import detect_format, read_compiled_header

    if detect_format(path) != "compiled":
        return None
    arrays = read_compiled_header(path)["arrays"]
    return (int(arrays["node_lat"][1][0]), int(arrays["edge_src"][1][0]),
            int(arrays["geom_lat"][1][0]))


def available_memory_bytes(*, cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
                           meminfo: str | os.PathLike[str] = "/proc/meminfo") -> int:
    """Memory this process may use: the cgroup limit (v2 ``memory.max``, else v1
    ``memory/memory.limit_in_bytes``) when set, capped by ``MemAvailable`` (else
    ``MemTotal``) of ``/proc/meminfo``."""
    root = Path(cgroup_root)
    limit = None
    for candidate in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        if text and text != "max" and text.isdigit() and int(text) < 2**60:
            limit = int(text)
            break
    info = {}
    try:
        for line in Path(meminfo).read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip():
                info[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    system = info.get("MemAvailable", info.get("MemTotal"))
    values = [v for v in (limit, system) if v]
    if not values:
        return 2**63 - 1  # nothing readable: no limit known
    return min(values)
