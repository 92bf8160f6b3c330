"""Probe sources: file replay in event time and the simulator, feeding a sink (the service
facade in process, or the HTTP API of a running server).

A source cuts a time-ordered probe stream into batches of ``batch_s`` event seconds (at most
``max_rows`` each) and hands them to a sink callable. Pacing: ``speed`` event seconds per
wall second (``None``: as fast as the sink takes them). A sink that is saturated raises
:class:`workers.services.Overloaded`; the source waits ``retry_after_s`` and sends the same
batch again, so nothing is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from traffic.probes import coerce_probes
from workers.services import Overloaded

logger = logging.getLogger(__name__)

Sink = Callable[[pl.DataFrame], Any]


def read_probe_file(path: str | Path) -> pl.DataFrame:
    """Read a probe file (Parquet, CSV or gzipped CSV) in the probe schema, sorted by ``t``.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    traffic.errors.ProbeSchemaError
        When a required column is missing or has a wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"probe file {path} does not exist")
    if path.suffix == ".parquet":
        df = pl.read_parquet(path)
    else:
        df = pl.read_csv(path, schema_overrides={"vehicle_id": pl.Utf8}, infer_schema_length=10_000)
    return coerce_probes(df, source=str(path)).sort("t", maintain_order=True)


def event_batches(
    df: pl.DataFrame, *, batch_s: float = 1.0, max_rows: int = 10_000
) -> Iterator[tuple[float, pl.DataFrame]]:
    """Yield ``(t_end, batch)``: consecutive windows of ``batch_s`` event seconds.

    ``df`` must be sorted by ``t``. A window with more than ``max_rows`` rows is cut into
    several batches with the same ``t_end``.
    """
    if df.height == 0:
        return
    if not batch_s > 0:
        raise ValueError(f"`batch_s` must be > 0; got {batch_s!r}")
    t0 = float(df["t"].min())  # type: ignore[arg-type]
    win = ((df["t"] - t0) // batch_s).cast(pl.Int64)
    for (w,), part in df.with_columns(win.alias("_w")).group_by("_w", maintain_order=True):
        t_end = t0 + (int(w) + 1) * batch_s  # type: ignore[call-overload]
        part = part.drop("_w")
        for start in range(0, part.height, max_rows):
            yield t_end, part.slice(start, max_rows)


def send_with_retry(sink: Sink, batch: pl.DataFrame, *, stop: threading.Event,
                    max_wait_s: float = 5.0) -> Any:
    """Call ``sink(batch)``; on :class:`Overloaded` wait its ``retry_after_s`` and retry."""
    while not stop.is_set():
        try:
            return sink(batch)
        except Overloaded as exc:
            stop.wait(min(max(exc.retry_after_s, 0.01), max_wait_s))
    return None


def run_paced(
    batches: Iterable[tuple[float, pl.DataFrame]], sink: Sink, *,
    speed: float | None, stop: threading.Event, on_batch: Callable[[int], None] | None = None,
) -> int:
    """Send batches, paced to ``speed`` event seconds per wall second; returns probes sent."""
    sent = 0
    wall0 = time.monotonic()
    t_first: float | None = None
    for t_end, batch in batches:
        if stop.is_set():
            break
        if speed is not None:
            t_first = t_end if t_first is None else t_first
            delay = wall0 + (t_end - t_first) / speed - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
        send_with_retry(sink, batch, stop=stop)
        sent += batch.height
        if on_batch is not None:
            on_batch(batch.height)
    return sent


class SourceThread(threading.Thread):
    """Runs a source in the background until it ends or :meth:`stop` is called."""

    def __init__(self, run: Callable[[threading.Event], Any], *, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._run = run
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run(self._stop_event)
        except BaseException as exc:  # reported by the owner; a source must not kill the server
            self.error = exc
            logger.exception("probe source %s failed", self.name)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the source to stop and wait for it."""
        self._stop_event.set()
        self.join(timeout=timeout_s)


def http_sink(url: str, *, timeout_s: float = 30.0) -> Sink:
    """A sink that POSTs batches as JSON to ``{url}/v1/probes``; 503/429 -> :class:`Overloaded`."""
    import httpx

    client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)

    def send(batch: pl.DataFrame) -> Any:
        body = b'{"probes":' + batch.write_json().encode() + b"}"
        r = client.post("/v1/probes", content=body, headers={"content-type": "application/json"})
        if r.status_code in (429, 503):
            raise Overloaded(r.text, retry_after_s=float(r.headers.get("retry-after", "1")))
        r.raise_for_status()
        return r.json()

    return send


def simulated_batches(
    net: Any, *, n_vehicles: int, seed: int = 0, t0_s: float | None = None,
    duration_s: float = 86_400.0, batch_s: float = 1.0,
) -> Iterator[tuple[float, pl.DataFrame]]:
    """Yield ``(t_end, batch)`` from :func:`traffic.simulate.simulate_probes`.

    Starts at ``t0_s`` (default: now, so a wall-clock server takes the probes as live).
    """
    from traffic.simulate import SimConfig, simulate_probes

    t0 = time.time() if t0_s is None else float(t0_s)
    cfg = SimConfig(n_vehicles=n_vehicles, duration_s=duration_s, t0_s=t0, batch_s=batch_s,
                    seed=seed)
    for k, batch in enumerate(simulate_probes(net, cfg)):
        yield t0 + (k + 1) * batch_s, batch
