"""`traffic snapshot` sub-command: list stored congestion snapshots and export one for offline work."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from traffic.errors import SnapshotQueryError

#: Output format by file suffix.
_FORMATS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow", ".ipc": "arrow",
            ".feather": "arrow", ".geojson": "geojson", ".json": "geojson"}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `snapshot` parser with its `export` and `list` actions."""
    p = sub.add_parser("snapshot", help="congestion snapshots: export one, list them")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    ex = actions.add_parser(
        "export", help="write the snapshot at or before a time, optionally cut to a bbox",
        description="Write the nearest snapshot at or before --at to a file; the format "
                    "follows the suffix of -o (.parquet, .csv, .arrow/.ipc/.feather, .geojson). "
                    "A snapshot stores the edges with state; with --network (of the snapshot's "
                    "version) every other edge is written too, as free-flow.",
    )
    ex.add_argument("--data-dir", required=True, type=Path, help="the snapshot dataset directory")
    ex.add_argument("--at", required=True, help="unix seconds or ISO 8601 (UTC when no offset)")
    ex.add_argument("--bbox", help="minlon,minlat,maxlon,maxlat in degrees (needs --network)")
    ex.add_argument("--road-class", action="append",
                    help="keep only this road class (repeatable; needs --network)")
    ex.add_argument("--network", type=Path, help="road network file (any format graph.io reads)")
    ex.add_argument("-o", "--output", required=True, type=Path, help="output file")
    ex.set_defaults(func=_export)

    ls = actions.add_parser("list", help="print the snapshot times in a range, one per line")
    ls.add_argument("--data-dir", required=True, type=Path, help="the snapshot dataset directory")
    ls.add_argument("--from", dest="t_from", help="unix seconds or ISO 8601")
    ls.add_argument("--to", dest="t_to", help="unix seconds or ISO 8601")
    ls.set_defaults(func=_list)


def _export(args: argparse.Namespace) -> int:
    from api.formats import to_arrow_ipc_bytes, to_csv_bytes, to_geojson, to_parquet_bytes
    from api.params import parse_bbox, parse_time
    from traffic.snapshots import SnapshotStore, keys_in_bbox

    fmt = _FORMATS.get(args.output.suffix.lower())
    if fmt is None:
        raise SnapshotQueryError(
            f"output {args.output}: unknown suffix {args.output.suffix!r}; use one of {', '.join(_FORMATS)}"
        )
    t_s = parse_time(args.at)
    bbox = parse_bbox(args.bbox) if args.bbox is not None else None
    needs_network = bbox is not None or args.road_class or fmt == "geojson"
    if needs_network and args.network is None:
        raise SnapshotQueryError("--bbox, --road-class and GeoJSON output need --network")
    if not args.data_dir.is_dir():
        raise FileNotFoundError(f"snapshot data directory {args.data_dir} does not exist")

    net = None
    keys = None
    if needs_network:
        from graph.io import load_network

        net = load_network(args.network)
        if bbox is not None or args.road_class:
            keys = keys_in_bbox(net, *(bbox or (-180.0, -90.0, 180.0, 90.0)), road_class=args.road_class)
    store = SnapshotStore(args.data_dir, retention_s=None)
    ref = store.find(t_s)
    snap_t, df = store.at(t_s, keys=keys)
    if net is not None and ref.network_version == net.version:
        # A stored snapshot lists the edges with state; with the network the others are
        # put back as free-flow rows (traffic.snapshots.fill_absent).
        from traffic.snapshots import fill_absent

        want = np.asarray(net.edge_key if keys is None else keys, dtype=np.int64)
        df = fill_absent(df, want, net.freeflow_mps_at(net.edge_index_of_keys(want)))
    if fmt == "geojson":
        import json

        payload = json.dumps(to_geojson(net, df, as_of_t_s=snap_t, network_version=ref.network_version),
                             allow_nan=False).encode()
    else:
        payload = {"parquet": to_parquet_bytes, "csv": to_csv_bytes,
                   "arrow": lambda d: to_arrow_ipc_bytes(d, stream=False)}[fmt](df)
    from storage import write_atomic

    write_atomic(args.output, lambda fh: fh.write(payload))
    print(f"wrote {df.height} edges of the snapshot at {np.datetime64(int(snap_t * 1000), 'ms')}Z "
          f"(network {ref.network_version}) to {args.output}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from api.params import parse_time
    from traffic.snapshots import SnapshotStore

    if not args.data_dir.is_dir():
        raise FileNotFoundError(f"snapshot data directory {args.data_dir} does not exist")
    t_from = parse_time(args.t_from) if args.t_from is not None else None
    t_to = parse_time(args.t_to) if args.t_to is not None else None
    for ref in SnapshotStore(args.data_dir, retention_s=None).snapshots(t_from, t_to):
        print(f"{ref.t_s:.3f}\t{np.datetime64(int(round(ref.t_s * 1000)), 'ms')}Z\t{ref.network_version}")
    return 0
