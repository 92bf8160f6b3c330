"""``traffic serve``: run the live service (pipeline + HTTP API) on a network.

Imports the network (compiled, ``.osm.pbf``/OSM XML, GeoJSON), starts the pipeline on Ray
(local, or ``--ray-address``) or in process (``--no-ray``), serves the API with uvicorn, and
optionally feeds it from a probe file (``--replay``) or the simulator (``--simulate N``).
Ctrl-C stops the server, the source and the workers cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` parser."""
    p = sub.add_parser("serve", help="run the live traffic service (API + pipeline)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", required=True, help="network file (compiled, .osm.pbf, GeoJSON)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000,
                   help="TCP port (default 8000); 0 takes a free one, printed in the ready line")
    p.add_argument("--clock", choices=("wall", "event"), default=None,
                   help="wall: live (default); event: time follows the probes (default with --replay)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--replay", metavar="FILE", help="replay a probe file (CSV/Parquet) in event time")
    src.add_argument("--simulate", metavar="N", type=int, help="simulate N probe vehicles")
    p.add_argument("--speed", default="1", help="replay speed: event s per wall s, or `max`")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster")
    p.add_argument("--no-ray", action="store_true", help="run every stage in this process")
    p.add_argument("--data-dir", default="data/run", help="state, caches and uploads (created)")
    p.add_argument("--max-memory-gb", type=float, default=None, metavar="GB",
                   help="refuse a network whose estimated serving footprint (all processes) "
                        "exceeds GB (default: 80%% of the memory available to this process, "
                        "cgroup limits included)")
    p.add_argument("--ingest", type=int, default=1, help="ingest partitions (actors)")
    p.add_argument("--router-replicas", type=int, default=0,
                   help="router actors (0: one router in the API process)")
    p.add_argument("--estimator-shards", type=int, default=1, metavar="N",
                   help="split the estimator and its profiles by segment over N actors "
                        "(default 1: one estimator)")
    p.add_argument("--refresh-s", type=float, default=1.0, help="estimator publication interval")
    p.add_argument("--idle-flush-s", type=float, default=60.0,
                   help="flush a vehicle silent for this long (event s)")
    p.add_argument("--snapshot-every", type=parse_duration, default=60.0, metavar="DURATION",
                   help="write congestion snapshots into DATA_DIR/snapshots every DURATION of "
                        "event time (seconds, or with s/m/h/d; 0 turns them off; default 60 s)")
    p.add_argument("--snapshot-retention", type=parse_duration, default=7 * 86400.0,
                   metavar="DURATION", help="delete snapshots older than DURATION of event time "
                                            "(0 keeps all; default 7d)")
    p.add_argument("--checkpoint-every", type=parse_duration, default=300.0, metavar="DURATION",
                   help="checkpoint every stage (matchers keep held points) when the clock crosses a "
                        "multiple of DURATION (default 5m); the probe log is replayed after it")
    p.add_argument("--checkpoint-min-gap", type=parse_duration, default=0.0, metavar="DURATION",
                   help="... and at least DURATION of wall time has passed since the last one "
                        "(fast --clock event replays cross event-time boundaries every few wall "
                        "seconds; replay decides from the logged wall stamps; default 0: off)")
    p.add_argument("--probe-retention", type=parse_duration, default=7 * 86400.0,
                   metavar="DURATION", help="delete logged (pseudonymised) probes after "
                                            "DURATION (default 7d)")
    p.add_argument("--no-wal", action="store_true",
                   help="no probe log or checkpoints (acknowledged probes are lost on a crash)")
    p.add_argument("--timezone", default="UTC", metavar="ZONE",
                   help="IANA time zone of the learned time-of-week profile's bins (default UTC; "
                        "e.g. Europe/Copenhagen); the profile lives in DATA_DIR/profiles")
    p.add_argument("--profile-save-every", type=parse_duration, default=300.0, metavar="DURATION",
                   help="save the learned profile every DURATION of the clock (and at exit; "
                        "0: only at exit; default 5m)")
    p.add_argument("--upload-timeout", type=parse_duration, default=300.0, metavar="DURATION",
                   help="a network upload's import and preparation may take this long before "
                        "it is stopped and the job fails with `timeout` (default 300 s)")
    p.add_argument("--max-upload-gb", type=parse_upload_gb, default=None, metavar="GB",
                   help="largest network file `PUT /v1/network` accepts, in GB (1e9 bytes; "
                        "default 0.5 GiB); a compiled network takes about 140 B per edge, so "
                        "11.7M edges need about 1.7")
    p.add_argument("--api-keys", metavar="FILE", default=None,
                   help="API keys, one `key:role` per line (roles: reader, probe-writer, "
                        "network-admin); merged with TRAFFIC_API_KEYS=key:role,...; none: open")
    p.add_argument("--protect-reads", action="store_true",
                   help="reads need a key with role `reader` too")
    p.add_argument("--rate-per-s", type=float, default=None,
                   help="requests/s per API key (per client address when open); default: no limit")
    p.set_defaults(func=run)


def http_settings(args: argparse.Namespace, clock: str) -> Any:
    """The API settings from the arguments and ``TRAFFIC_API_KEYS`` (read only here)."""
    import os

    from api.security import load_api_keys
    from api.settings import Settings

    keys = load_api_keys(env_value=os.environ.get("TRAFFIC_API_KEYS"),
                         file=getattr(args, "api_keys", None))
    upload_gb = getattr(args, "max_upload_gb", None)
    extra = {} if upload_gb is None else {"max_upload_bytes": int(upload_gb * 1e9)}
    return Settings(clock=clock, api_keys=keys,
                    protect_reads=bool(getattr(args, "protect_reads", False)),
                    rate_per_s=getattr(args, "rate_per_s", None), **extra)


#: Largest ``--max-upload-gb``: the upload is written to the data dir before it is imported.
MAX_UPLOAD_GB = 1000.0


def parse_upload_gb(value: str) -> float:
    """``--max-upload-gb``: a finite number of GB, > 0 and at most :data:`MAX_UPLOAD_GB`."""
    try:
        gb = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of GB (e.g. 2); got {value!r}") from None
    if not 0 < gb <= MAX_UPLOAD_GB:
        raise argparse.ArgumentTypeError(
            f"must be > 0 and at most {MAX_UPLOAD_GB:g} GB; got {value!r}")
    return gb


def parse_duration(value: str) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"6h"``, ``"7d"`` -> seconds (>= 0)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = value.strip().lower()
    scale = units.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if scale is not None else text) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"duration must be seconds or a number with s/m/h/d (e.g. 7d); got {value!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"duration must be a finite number >= 0; got {value!r}")
    return seconds


def parse_speed(value: str) -> float | None:
    """``"max"`` -> ``None`` (unpaced); else a positive float."""
    if value == "max":
        return None
    speed = float(value)
    if not speed > 0:
        raise ValueError(f"--speed must be > 0 or `max`; got {value!r}")
    return speed


def build_services(args: argparse.Namespace, net: Any, clock: str) -> Any:
    """The pipeline the arguments ask for (Ray or in process)."""
    from dataclasses import replace

    from workers.ingest import IngestConfig
    from workers.services import LocalServices, PipelineConfig, load_profile

    data_dir = Path(args.data_dir)
    cfg = PipelineConfig(
        clock=clock, n_ingest=args.ingest, refresh_s=args.refresh_s,
        router_replicas=0 if args.no_ray else args.router_replicas,
        cache_dir=str(getattr(args, "artifacts_dir", None) or data_dir / "cache"),
        data_dir=str(data_dir),
        ingest=replace(IngestConfig(), idle_flush_s=args.idle_flush_s),
        snapshot_every_s=getattr(args, "snapshot_every", 60.0) or None,
        snapshot_retention_s=getattr(args, "snapshot_retention", 7 * 86400.0) or None,
        durability=durability_config(args),
        upload_timeout_s=getattr(args, "upload_timeout", 300.0) or 300.0,
        profile_save_every_s=getattr(args, "profile_save_every", 300.0) or None,
        estimator_shards=getattr(args, "estimator_shards", 1),
    )
    prior = load_profile(net, data_dir, timezone=getattr(args, "timezone", "UTC"))
    if args.no_ray:
        return LocalServices(net, cfg, prior=prior)
    from workers.pipeline import RayPipeline

    return RayPipeline(net, cfg, ray_address=args.ray_address, prior=prior)


def durability_config(args: argparse.Namespace) -> Any:
    """The probe log + checkpoint settings (``TRAFFIC_PSEUDONYM_KEY`` is read only here)."""
    import os

    from workers.durability import DurabilityConfig

    if getattr(args, "no_wal", False):
        return None
    return DurabilityConfig(
        data_dir=str(Path(args.data_dir)),
        checkpoint_every_s=getattr(args, "checkpoint_every", 300.0) or 300.0,
        min_gap_wall_s=getattr(args, "checkpoint_min_gap", 0.0) or 0.0,
        retention_s=getattr(args, "probe_retention", 7 * 86400.0) or 7 * 86400.0,
        pseudonym_key=os.environ.get("TRAFFIC_PSEUDONYM_KEY"),
    )


def _graceful_server(config: Any, services: Any) -> Any:
    """A uvicorn server whose SIGTERM/SIGINT refuse new probe batches at once and exit 0.

    uvicorn re-raises a captured signal after its shutdown, which would kill the process
    before the final flush and checkpoint; the handler here records nothing to re-raise.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            services._draining = True  # new writes get 503 while connections wind down
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

    return _Server(config)


def start_source(args: argparse.Namespace, services: Any, net: Any) -> Any:
    """Start the ``--replay``/``--simulate`` source thread (or return ``None``)."""
    from workers.sources import SourceThread, event_batches, read_probe_file, run_paced

    speed = parse_speed(args.speed)
    if args.replay:
        df = read_probe_file(args.replay)
        return _started(SourceThread(
            lambda stop: (run_paced(event_batches(df), services.ingest, speed=speed, stop=stop),
                          services.flush()),
            name="replay"))
    if args.simulate:
        from workers.sources import simulated_batches

        batches = simulated_batches(net, n_vehicles=args.simulate, seed=0)
        return _started(SourceThread(
            lambda stop: run_paced(batches, services.ingest, speed=speed, stop=stop),
            name="simulate"))
    return None


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6 by the host), for uvicorn.

    Raises ``ValueError`` naming the address when it cannot be bound (in use, no such
    address, no permission, a port outside 0-65535), before anything slow has started.
    Port 0 takes a free port (read it from the socket).
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be within 0-65535 (0: any free port); got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ValueError(f"cannot listen on {host}:{port} ({why}); is another "
                         "server using it? Choose another --port or --host") from None


def check_memory(args: argparse.Namespace, net: Any = None) -> None:
    """Refuse (``ValueError``, one line) a network whose estimated serving footprint exceeds
    ``--max-memory-gb`` (default 80% of the memory available, cgroup limits included).

    Without ``net`` the sizes come from a compiled file's header (nothing is loaded); for
    other formats this returns and is called again once the network is parsed.
    """
    from workers.footprint import available_memory_bytes, estimate_footprint, network_sizes

    if net is None:
        sizes = network_sizes(args.network)
        if sizes is None:
            return
    else:
        sizes = (net.n_nodes, net.n_edges, int(net.geom_lat.size))
    estimate = estimate_footprint(
        *sizes, router_processes=max(1, args.router_replicas), ingest_processes=args.ingest,
        ray=not args.no_ray, network_copies=2 if getattr(args, "ray_address", None) else 1)
    if args.max_memory_gb is not None:
        if not args.max_memory_gb > 0:
            raise ValueError(f"--max-memory-gb must be > 0; got {args.max_memory_gb}")
        limit, why = args.max_memory_gb * 1e9, "--max-memory-gb"
    else:
        limit, why = 0.8 * available_memory_bytes(), "80% of the memory available"
    if estimate.total_bytes > limit:
        raise ValueError(
            f"{args.network}: serving it needs an estimated {estimate.total_bytes / 1e9:.3g} GB "
            f"({sizes[1]} edges: {estimate.summary()}), more than the limit of {limit / 1e9:.3g} GB "
            f"({why}); raise --max-memory-gb or serve a smaller network")
    if net is not None:
        logger.info("estimated serving footprint %.2f GB (limit %.1f GB, %s): %s",
                    estimate.total_bytes / 1e9, limit / 1e9, why, estimate.summary())


def use_prepared_artifacts(args: argparse.Namespace, net: Any) -> Path:
    """The network's artifact directory, with every artifact present: those missing or
    stale are built and saved now (with a warning), so later starts only load them."""
    from graph.artifacts import artifacts_dir, prepare_artifacts

    directory = artifacts_dir(args.network, args.data_dir)
    t0 = time.perf_counter()
    spent = prepare_artifacts(net, directory)
    if spent:
        logger.warning("network %s was not prepared: built %s in %.1f s into %s (run `traffic "
                       "network prepare %s` beforehand to start faster)", net.version,
                       ", ".join(spent), time.perf_counter() - t0, directory, args.network)
    return directory


def _started(thread: Any) -> Any:
    thread.start()
    return thread


def run(args: argparse.Namespace) -> int:
    """Load, start, serve until Ctrl-C; returns the exit status."""
    import uvicorn

    from api.app import create_app
    from graph.io import load_network

    from traffic.native_memory import tune_malloc

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_malloc()  # before the big allocations (see traffic/native_memory.py)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    clock = args.clock or ("event" if args.replay else "wall")
    settings = http_settings(args, clock)  # bad key configuration fails before the load
    # Bound now, before Ray starts: its components take free ports and could take ours.
    listener = listen_socket(args.host, args.port)
    t0 = time.perf_counter()
    check_memory(args)  # from the compiled header, before anything big is loaded
    # Mapped read-only; Ray actors started here (same machine) map the same file instead of
    # receiving the arrays through the object store (graph.io.MappedRoadNetwork).
    net = load_network(args.network, mmap=True,
                       pickle_by_path=not args.no_ray and args.ray_address is None)
    print(f"traffic serve: network {net.name or args.network} ({net.n_nodes} nodes, "
          f"{net.n_edges} edges, version {net.version}) loaded in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    check_memory(args, net)  # other formats are only sized once parsed
    args.artifacts_dir = use_prepared_artifacts(args, net)
    services = build_services(args, net, clock)
    # Not closed by the app: the `finally` below flushes and checkpoints through the workers
    # first, then closes them (closing in the app's shutdown killed the Ray actors too early).
    app = create_app(services, settings, close_services=False)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_keep_alive=int(settings.keep_alive_s),
                            access_log=False)
    server = _graceful_server(config, services)
    source = start_source(args, services, net)
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 literal
    url = f"http://{host}:{listener.getsockname()[1]}"
    print(f"traffic serve: ready in {time.perf_counter() - t0:.1f} s; serving on "
          f"{url}  (API docs: {url}/docs; Ctrl-C stops)", flush=True)
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
        if source is not None:
            source.stop()
        try:
            services.begin_shutdown()  # final checkpoint (held points kept), or a flush
        except Exception:  # still close the workers
            logger.exception("final checkpoint failed")
        services.close()
        if not args.no_ray:
            import ray

            ray.shutdown()
        print("traffic serve: stopped", file=sys.stderr)
    return 0
