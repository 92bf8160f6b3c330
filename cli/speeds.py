"""``traffic speeds import FILE --url URL`` / ``traffic speeds export OUT --url URL``: OSRM
segment-speed files to and from a running server (``POST /v1/speeds``, ``GET /v1/speeds.csv``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `speeds` parser and its `import` and `export` commands."""
    p = sub.add_parser("speeds", help="speed feeds (OSRM segment-speed CSV) in and out")
    cmds = p.add_subparsers(dest="speeds_command", required=True, metavar="ACTION")
    imp = cmds.add_parser("import", help="post a segment-speed CSV to a running server")
    imp.add_argument("file", help="from_osm_node_id,to_osm_node_id,speed_kmh[,rate] lines")
    exp = cmds.add_parser("export", help="write the server's live speeds as a segment-speed CSV")
    exp.add_argument("file", help="where to write (`-`: standard output)")
    for q in (imp, exp):
        q.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
        q.add_argument("--api-key", default=os.environ.get("TRAFFIC_API_KEY"),
                       help="bearer key (role probe-writer to import; default $TRAFFIC_API_KEY)")
        q.add_argument("--timeout-s", type=float, default=300.0, help="request timeout")
    imp.set_defaults(func=run_import)
    exp.set_defaults(func=run_export)


def _headers(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def run_import(args: argparse.Namespace) -> int:
    """Post the file; print the server's answer (rejected lines with their reasons)."""
    import httpx

    data = Path(args.file).read_bytes()
    r = httpx.post(args.url.rstrip("/") + "/v1/speeds", content=data,
                   headers={"Content-Type": "text/csv", **_headers(args)},
                   timeout=args.timeout_s)
    if r.status_code != 202:
        raise ValueError(f"the server answered {r.status_code}: {r.text[:500]}")
    ans = r.json()
    for item in ans["rejected"][:20]:
        print(f"row {item['row']}: {item['reason']}", file=sys.stderr)
    print(json.dumps({k: v for k, v in ans.items() if k != "rejected"}
                     | {"rejected": len(ans["rejected"])}))
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Fetch ``/v1/speeds.csv`` and write it."""
    import httpx

    r = httpx.get(args.url.rstrip("/") + "/v1/speeds.csv", headers=_headers(args),
                  timeout=args.timeout_s)
    if r.status_code != 200:
        raise ValueError(f"the server answered {r.status_code}: {r.text[:500]}")
    if args.file == "-":
        sys.stdout.buffer.write(r.content)
    else:
        Path(args.file).write_bytes(r.content)
    return 0
