"""`traffic network`: import road networks, summarise them, export them as GeoJSON.

    traffic network import SRC -o OUT [--largest-scc] [--co COORDS]
    traffic network info NET [--json]
    traffic network export NET --geojson OUT
    traffic network prepare NET [--data-dir DIR] [--force]

SRC and NET may be any format :func:`graph.io.load_network` reads (compiled, OSM PBF/XML,
GeoJSON, DIMACS). Errors reach the frame in :mod:`cli`, which prints one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from graph.io import ProgressCallback


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `network` parser and its `import`, `info` and `export` sub-commands."""
    p = sub.add_parser("network", help="import, inspect and export road networks")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    imp = actions.add_parser(
        "import", help="load a network (OSM, GeoJSON, DIMACS, compiled) and save it compiled"
    )
    imp.add_argument("src", help="the source file")
    imp.add_argument("-o", "--output", required=True, help="compiled network to write")
    imp.add_argument("--largest-scc", action="store_true",
                     help="keep only the largest strongly connected component")
    imp.add_argument("--co", default=None, help="DIMACS coordinates (default: found beside SRC)")
    imp.set_defaults(func=_import)

    info = actions.add_parser("info", help="print a network's summary")
    info.add_argument("net", help="a compiled network or any loadable source")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_info)

    exp = actions.add_parser("export", help="write a network as GeoJSON")
    exp.add_argument("net", help="a compiled network or any loadable source")
    exp.add_argument("--geojson", required=True, help="GeoJSON file to write")
    exp.set_defaults(func=_export)

    prep = actions.add_parser(
        "prepare", help="write the artifacts serving derives from a network (CCH order, "
                        "spatial index) so `traffic serve` starts without building them")
    prep.add_argument("net", help="the network (best compiled: `traffic network import`)")
    prep.add_argument("--data-dir", default="data/run",
                      help="where the artifacts go when NET's folder is not writable "
                           "(DATA_DIR/prepared/<file name>; default data/run, as serve)")
    prep.add_argument("--force", action="store_true", help="rebuild every artifact")
    prep.set_defaults(func=_prepare)


def _import(args: argparse.Namespace) -> int:
    from graph.connectivity import keep_largest_scc, network_summary
    from graph.io import load_network, save_network

    with _progress_bar(f"import {Path(args.src).name}") as progress:
        net = load_network(args.src, progress=progress, co_path=args.co)
    if args.largest_scc:
        net = keep_largest_scc(net)
    out = save_network(net, args.output)
    s = network_summary(net)
    print(
        f"{out}: {s['nodes']} nodes, {s['edges']} edges, {s['road_km']:.1f} km of road, "
        f"{s['largest_scc_share']:.1%} in the largest SCC, "
        f"{s['turn_restrictions']} turn restrictions, version {s['version']}"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from graph.connectivity import network_summary
    from graph.io import load_network

    summary = network_summary(load_network(args.net))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_format_summary(summary))
    return 0


def _export(args: argparse.Namespace) -> int:
    from graph.geojson import export_geojson
    from graph.io import load_network

    net = load_network(args.net)
    out = export_geojson(net, args.geojson)
    print(f"{out}: {net.n_edges} features (one per directed edge), version {net.version}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import logging
    import time

    from graph.artifacts import artifacts_dir, prepare_artifacts
    from graph.io import load_network

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    net = load_network(args.net, mmap=True)
    directory = artifacts_dir(args.net, args.data_dir)
    with _progress_bar(f"prepare {Path(args.net).name}") as progress:
        spent = prepare_artifacts(net, directory, force=args.force, progress=progress)
    built = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in spent.items())
    print(f"{directory}: network {net.version} ({net.n_edges} edges) "
          + (f"prepared ({built}; {time.perf_counter() - t0:.1f} s in all)" if spent
             else "already prepared (nothing to do)"))
    return 0


def _format_summary(s: dict[str, Any]) -> str:
    bbox = ", ".join(f"{v:.5f}" for v in s["bbox"])
    lines = [
        f"name               {s['name'] or '(unnamed)'}",
        f"version            {s['version']}",
        f"nodes              {s['nodes']}",
        f"edges              {s['edges']} directed ({s['oneway_edges']} one-way)",
        f"turn restrictions  {s['turn_restrictions']}",
        f"bbox               {bbox}  (min lon, min lat, max lon, max lat)",
        f"largest SCC        {s['largest_scc_share']:.2%} of nodes",
        f"road km            {s['road_km']:.1f} (two-way roads once; "
        f"{s['directed_km']:.1f} km of directed edges)",
    ]
    for cls, km in sorted(s["road_km_by_class"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {cls:<17}{km:10.1f} km")
    return "\n".join(lines)


@contextmanager
def _progress_bar(description: str) -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr (only when it is a terminal) driven by ``progress(stage, f)``."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=description, unit="%", file=sys.stderr, disable=None,
               leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")

    def progress(stage: str, fraction: float) -> None:
        bar.set_description_str(f"{description} ({stage})", refresh=False)
        bar.update(max(0, round(100 * min(max(fraction, 0.0), 1.0)) - bar.n))

    try:
        yield progress
    finally:
        bar.close()
