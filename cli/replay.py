"""``traffic replay FILE``: post a recorded probe file to a running server, in event time."""

from __future__ import annotations

import argparse
import sys
import threading
import time


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `replay` parser."""
    p = sub.add_parser("replay", help="replay a probe file (CSV/Parquet) into a running server")
    p.add_argument("file", help="probe file: .parquet, .csv or .csv.gz")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
    p.add_argument("--speed", default="max", help="event s per wall s, or `max` (default)")
    p.add_argument("--batch-s", type=float, default=1.0, help="event seconds per request")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Send every probe; print the totals; returns the exit status."""
    from cli.serve import parse_speed
    from workers.sources import event_batches, http_sink, read_probe_file, run_paced

    speed = parse_speed(args.speed)
    df = read_probe_file(args.file)
    sink = http_sink(args.url)
    totals = {"accepted": 0, "rejected": 0}

    def counting(batch):  # type: ignore[no-untyped-def]
        ack = sink(batch)
        totals["accepted"] += int(ack["accepted"])
        totals["rejected"] += len(ack["rejected"])
        return ack

    t0 = time.perf_counter()
    sent = run_paced(event_batches(df, batch_s=args.batch_s), counting, speed=speed,
                     stop=threading.Event())
    dt = time.perf_counter() - t0
    print(f"traffic replay: sent {sent} probes in {dt:.1f} s ({sent / max(dt, 1e-9):.0f}/s); "
          f"accepted {totals['accepted']}, rejected {totals['rejected']}", file=sys.stderr)
    return 0
