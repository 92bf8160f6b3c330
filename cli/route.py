"""`traffic route`: the fastest route between two points on a network, on free-flow times.

    traffic route NET --from LAT,LON --to LAT,LON [--steps] [--json] [--max-snap-m M]
                  [--cache-dir DIR]

NET is anything :func:`graph.io.load_network` reads. ``--json`` prints the fields of the HTTP
route answer. ``--steps`` prints the turn-by-turn instructions after the summary, one a line
with the distance to drive after each (with ``--json``: the answer gets ``legs``). Errors (a point far from every road, no route, a bad file) reach the frame in
:mod:`cli`, which prints one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import json

from graph.spatial import DEFAULT_SNAP_RADIUS_M


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `route` parser."""
    p = sub.add_parser("route", help="fastest route between two points (free-flow travel times)")
    p.add_argument("net", help="a compiled network or any loadable source (OSM, GeoJSON, DIMACS)")
    p.add_argument("--from", dest="origin", required=True, type=_latlon, metavar="LAT,LON",
                   help="origin in degrees")
    p.add_argument("--to", dest="destination", required=True, type=_latlon, metavar="LAT,LON",
                   help="destination in degrees")
    p.add_argument("--json", action="store_true", help="print the HTTP answer's fields as JSON")
    p.add_argument("--steps", action="store_true",
                   help="print turn-by-turn instructions (with --json: add `legs`)")
    p.add_argument("--max-snap-m", type=float, default=DEFAULT_SNAP_RADIUS_M,
                   help=f"how far a point may lie from a road (m, default {DEFAULT_SNAP_RADIUS_M:g})")
    p.add_argument("--cache-dir", default=None,
                   help="cache the routing index's node order here (per network version)")
    p.set_defaults(func=_route)


def _latlon(text: str) -> tuple[float, float]:
    from api.params import ParameterError, parse_latlon

    try:
        return parse_latlon(text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(f"expected LAT,LON: {exc}") from None


def _route(args: argparse.Namespace) -> int:
    from graph.io import load_network
    from graph.router import Router

    net = load_network(args.net)
    router = Router(net, cache_dir=args.cache_dir)
    route = router.route(args.origin, args.destination, max_snap_m=args.max_snap_m)
    legs = None
    if args.steps:
        from graph.steps import route_legs

        legs = route_legs(net, route)
    if args.json:
        out = route.to_json()
        if legs is not None:
            out["legs"] = legs
        print(json.dumps(out))
    else:
        print(
            f"{route.duration_s:.1f} s ({route.duration_s / 60:.1f} min), "
            f"{route.distance_m / 1000:.2f} km, {route.edge_ids.size} edges, "
            f"free-flow {route.freeflow_duration_s:.1f} s; network {route.network_version}, "
            f"weights {route.weights_version}"
        )
        for n, step in enumerate(legs[0]["steps"] if legs else [], start=1):
            print(f"{n:3d}. {step['instruction']}"
                  + (f"  ({_distance(step['distance_m'])})" if step["distance_m"] > 0 else ""))
    return 0


def _distance(m: float) -> str:
    return f"{m / 1000:.1f} km" if m >= 1000 else f"{m:.0f} m"
