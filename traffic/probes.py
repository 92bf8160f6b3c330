"""Probe batches: the column schema, coercion from records/CSV, and per-row validation.

A probe is one GPS fix ``vehicle_id, t, lat, lon[, speed_mps, heading_deg, accuracy_m]``
(``t`` in unix seconds). :func:`validate_probes` gives every input row either ``ok`` or a
reason code, so nothing is dropped without a counted reason, and it works across batches
through :class:`VehicleLastSeen`: a re-posted batch is all ``duplicate``/``out_of_order`` and
changes nothing. Everything is vectorised with polars/NumPy (no per-row Python loop).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from graph.network import haversine_m
from traffic.errors import ProbeSchemaError, ProbeValidationError

#: Required columns and their dtypes.
REQUIRED_COLUMNS: dict[str, Any] = {
    "vehicle_id": pl.Utf8,
    "t": pl.Float64,
    "lat": pl.Float64,
    "lon": pl.Float64,
}
#: Optional columns (nullable) and their dtypes.
OPTIONAL_COLUMNS: dict[str, Any] = {
    "speed_mps": pl.Float64,
    "heading_deg": pl.Float64,
    "accuracy_m": pl.Float64,
}
PROBE_SCHEMA: dict[str, Any] = {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}

#: Every reason code, in the order checks are applied (the first failing check wins).
REASONS: tuple[str, ...] = (
    "ok",
    "missing_field",
    "nan_value",
    "lat_out_of_range",
    "lon_out_of_range",
    "outside_network",
    "future_timestamp",
    "negative_speed",
    "bad_heading",
    "bad_accuracy",
    "duplicate",
    "out_of_order",
    "impossible_jump",
)

_M_PER_DEG_LAT = 111_320.0


@dataclass(frozen=True, slots=True)
class ProbeValidationConfig:
    """Bounds applied by :func:`validate_probes`.

    Attributes
    ----------
    max_future_skew_s
        A probe more than this many seconds after ``now_s`` is ``future_timestamp``.
    max_speed_mps
        Implied speed (distance over time from the vehicle's previous accepted point, less
        ``jump_tolerance_m``) above which a point is an ``impossible_jump``.
    jump_tolerance_m
        GPS noise allowance subtracted from the jump distance, so two noisy fixes a fraction
        of a second apart are not a teleport.
    bbox_margin_m
        How far outside the network's bbox a point may lie before it is ``outside_network``.
    max_reported_speed_mps
        A reported ``speed_mps`` above this (or below 0) is ``negative_speed``/invalid.
    max_accuracy_m
        A reported ``accuracy_m`` above this (or below 0) is ``bad_accuracy``.
    duplicate_horizon_s
        How long accepted ``(vehicle_id, t)`` pairs are remembered for cross-batch duplicate
        detection (older re-posts are still rejected, as ``out_of_order``).
    max_jump_passes
        Bound on the vectorised passes of the jump check (each pass settles the first jump
        of every vehicle); rows still flagged after the last pass are rejected together.
    """

    max_future_skew_s: float = 120.0
    max_speed_mps: float = 70.0
    jump_tolerance_m: float = 50.0
    bbox_margin_m: float = 5000.0
    max_reported_speed_mps: float = 120.0
    max_accuracy_m: float = 1000.0
    duplicate_horizon_s: float = 3600.0
    max_jump_passes: int = 8

    def __post_init__(self) -> None:
        for name in ("max_future_skew_s", "max_speed_mps", "bbox_margin_m", "max_accuracy_m",
                     "duplicate_horizon_s", "max_reported_speed_mps", "jump_tolerance_m"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ProbeValidationError(f"`{name}` must be a finite number >= 0; got {value!r}")
        if self.max_jump_passes < 1:
            raise ProbeValidationError(
                f"`max_jump_passes` must be >= 1; got {self.max_jump_passes!r}")


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """Outcome of :func:`validate_probes`.

    Attributes
    ----------
    accepted
        The accepted rows in the probe schema plus ``row`` (input row index, int64), sorted by
        ``(vehicle_id, t)``.
    reasons
        One row per input row: ``row`` (int64) and ``reason`` (a code from :data:`REASONS`).
    counts
        Number of input rows per reason code (every code present, zeros included).
    """

    accepted: pl.DataFrame
    reasons: pl.DataFrame
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> pl.DataFrame:
        """Rows whose reason is not ``ok`` (``row``, ``reason``)."""
        return self.reasons.filter(pl.col("reason") != "ok")


class VehicleLastSeen:
    """Per-vehicle state carried between batches: the last accepted ``(t, lat, lon)``.

    Also remembers the accepted ``(vehicle_id, t)`` pairs of the last ``horizon_s`` seconds
    (event time), so an exact re-post of an accepted probe is reported as ``duplicate``;
    anything older than a vehicle's last accepted time is ``out_of_order``.
    """

    def __init__(self, *, horizon_s: float = 3600.0) -> None:
        self.horizon_s = float(horizon_s)
        self._last = pl.DataFrame(
            schema={"vehicle_id": pl.Utf8, "last_t": pl.Float64,
                    "last_lat": pl.Float64, "last_lon": pl.Float64})
        # Accepted (vehicle_id, t) pairs as append-only chunks, one per update, with each
        # chunk's newest t: pruning drops whole chunks, so an update costs O(batch), not
        # O(history). Accepted pairs are unique by construction (a repeat is rejected), so
        # the chunks need no de-duplication.
        self._recent_chunks: list[tuple[float, pl.DataFrame]] = []
        self._recent_max_t = -np.inf

    def __len__(self) -> int:
        return self._last.height

    @property
    def last(self) -> pl.DataFrame:
        """``vehicle_id, last_t, last_lat, last_lon`` of every vehicle seen (a copy-free view)."""
        return self._last

    def active(self, t_s: float, window_s: float) -> int:
        """Vehicles whose last accepted probe is at or after ``t_s - window_s`` (s): the probe
        vehicles on the road at ``t_s``. O(vehicles seen), vectorised."""
        return int((self._last["last_t"] >= float(t_s) - float(window_s)).sum())

    def seen_pairs(self) -> pl.DataFrame:
        """Remembered accepted ``(vehicle_id, t)`` pairs."""
        if not self._recent_chunks:
            return pl.DataFrame(schema={"vehicle_id": pl.Utf8, "t": pl.Float64})
        if len(self._recent_chunks) > 1:  # compact, so repeated calls stay cheap
            merged = pl.concat([c for _, c in self._recent_chunks], rechunk=True)
            self._recent_chunks = [(self._recent_max_t, merged)]
        return self._recent_chunks[0][1]

    #: Version of :meth:`state_dict`'s contents.
    STATE_VERSION = 1

    def state_dict(self) -> dict[str, Any]:
        """The dedupe memory as arrays (a copy).

        Version 1: ``version``; ``last_vid`` (str), ``last_t`` (s), ``last_lat``,
        ``last_lon`` (degrees): each vehicle's last accepted point; ``pair_vid``, ``pair_t``:
        the accepted ``(vehicle_id, t)`` pairs remembered within the horizon, as the chunks
        ``chunk_len`` long with newest times ``chunk_max_t`` (pruning drops whole chunks, so
        keeping them keeps what a restored memory forgets, and when); ``recent_max_t``.
        """
        last, chunks = self._last, self._recent_chunks
        pairs = (pl.concat([c for _, c in chunks], rechunk=True) if chunks
                 else pl.DataFrame(schema={"vehicle_id": pl.Utf8, "t": pl.Float64}))
        return {
            "version": self.STATE_VERSION,
            "last_vid": np.asarray(last["vehicle_id"].fill_null("").to_list(), dtype=np.str_),
            "last_t": last["last_t"].to_numpy().astype(np.float64),
            "last_lat": last["last_lat"].to_numpy().astype(np.float64),
            "last_lon": last["last_lon"].to_numpy().astype(np.float64),
            "pair_vid": np.asarray(pairs["vehicle_id"].fill_null("").to_list(), dtype=np.str_),
            "pair_t": pairs["t"].to_numpy().astype(np.float64),
            "chunk_len": np.asarray([c.height for _, c in chunks], dtype=np.int64),
            "chunk_max_t": np.asarray([m for m, _ in chunks], dtype=np.float64),
            "recent_max_t": float(self._recent_max_t),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (a state without ``version`` is read as 1:
        checkpoints of the first format stored the same arrays)."""
        version = state.get("version", 1)
        if version != self.STATE_VERSION:
            raise ValueError(f"vehicle dedupe state has version {version!r}; this code reads "
                             f"{self.STATE_VERSION}")

        def vids(key: str) -> pl.Series:
            return pl.Series(np.asarray(state[key]).tolist(), dtype=pl.Utf8)

        self._last = pl.DataFrame({
            "vehicle_id": vids("last_vid"),
            "last_t": np.asarray(state["last_t"], dtype=np.float64),
            "last_lat": np.asarray(state["last_lat"], dtype=np.float64),
            "last_lon": np.asarray(state["last_lon"], dtype=np.float64)})
        pairs = pl.DataFrame({"vehicle_id": vids("pair_vid"),
                              "t": np.asarray(state["pair_t"], dtype=np.float64)})
        self._recent_chunks, self._recent_max_t = [], -np.inf
        if "chunk_len" in state:  # the pairs as the chunks they were remembered in
            ends = np.cumsum(np.asarray(state["chunk_len"], dtype=np.int64)).tolist()
            starts = [0, *ends[:-1]][:len(ends)]
            self._recent_chunks = [
                (float(m), pairs.slice(a, b - a))
                for m, a, b in zip(np.asarray(state["chunk_max_t"]).tolist(), starts, ends,
                                   strict=True)]
            self._recent_max_t = float(state["recent_max_t"])
        elif pairs.height:  # first-format checkpoints: one chunk
            max_t = float(pairs["t"].max())  # type: ignore[arg-type]
            self._recent_chunks, self._recent_max_t = [(max_t, pairs)], max_t

    def update(self, accepted: pl.DataFrame) -> None:
        """Record accepted probes (any order); keeps each vehicle's latest point."""
        if accepted.height == 0:
            return
        latest = (
            accepted.sort(["vehicle_id", "t"])
            .group_by("vehicle_id", maintain_order=True)
            .agg(pl.col("t").last().alias("last_t"), pl.col("lat").last().alias("last_lat"),
                 pl.col("lon").last().alias("last_lon"))
        )
        merged = pl.concat([self._last, latest]).sort(["vehicle_id", "last_t"])
        self._last = merged.group_by("vehicle_id", maintain_order=True).last()
        chunk = accepted.select("vehicle_id", "t")
        chunk_max_t = float(chunk["t"].max())  # type: ignore[arg-type]
        self._recent_max_t = max(self._recent_max_t, chunk_max_t)
        cutoff = self._recent_max_t - self.horizon_s
        # A chunk whose newest pair is past the horizon goes whole; a straddling chunk stays
        # (remembering a little longer than the horizon is harmless).
        self._recent_chunks = [(m, c) for m, c in self._recent_chunks if m >= cutoff]
        self._recent_chunks.append((chunk_max_t, chunk))


def coerce_probes(df: pl.DataFrame, *, source: str = "probes") -> pl.DataFrame:
    """Return ``df`` with the probe schema's columns and dtypes (optional ones added as null).

    Integer and float columns are cast to Float64; ``vehicle_id`` may be a string or an
    integer column (cast to string). NaN in an optional column means "not reported" and
    becomes null. Extra columns are dropped.

    Raises
    ------
    ProbeSchemaError
        When a required column is missing or a column has a type that cannot be coerced
        (names the column, its dtype and ``source``).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ProbeSchemaError(
            f"{source}: missing required column(s) {missing}; got columns {df.columns}")
    exprs = []
    for name, dtype in PROBE_SCHEMA.items():
        if name not in df.columns:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        have = df.schema[name]
        if name == "vehicle_id":
            if not (have == pl.Utf8 or have.is_integer() or have == pl.Null):
                raise ProbeSchemaError(
                    f"{source}: column `vehicle_id` must be a string; got {have}")
            exprs.append(pl.col(name).cast(pl.Utf8))
            continue
        if not (have.is_numeric() or have == pl.Null):
            raise ProbeSchemaError(f"{source}: column `{name}` must be numeric; got {have}")
        col = pl.col(name).cast(pl.Float64)
        if name in OPTIONAL_COLUMNS:
            col = pl.when(col.is_nan()).then(None).otherwise(col)
        exprs.append(col.alias(name))
    return df.select(exprs)


def probes_from_records(records: list[dict[str, Any]], *, source: str = "records") -> pl.DataFrame:
    """Build a probe batch from a list of dicts (JSON bodies); see :func:`coerce_probes`.

    Raises
    ------
    ProbeSchemaError
        When a required key is missing everywhere, or values of a column mix types that
        cannot be one column (e.g. a string ``lat``).
    """
    if not records:
        return pl.DataFrame(schema=PROBE_SCHEMA)
    try:
        df = pl.DataFrame(records, infer_schema_length=None, strict=False)
    except (TypeError, ValueError, pl.exceptions.PolarsError) as err:
        raise ProbeSchemaError(f"{source}: records do not form a table: {err}") from err
    return coerce_probes(df, source=source)


def probes_from_csv(path_or_bytes: str | Path | bytes, *, source: str | None = None) -> pl.DataFrame:
    """Read a probe batch from a CSV file path or CSV bytes; see :func:`coerce_probes`.

    Raises
    ------
    ProbeSchemaError
        When the CSV cannot be parsed, lacks a required column, or a numeric column holds
        text.
    """
    name = source or (str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else "csv bytes")
    data: Any = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    overrides = {"vehicle_id": pl.Utf8}
    try:
        df = pl.read_csv(data, schema_overrides=overrides, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:
        raise ProbeSchemaError(f"{name}: not a readable probe CSV: {err}") from err
    return coerce_probes(df, source=name)


def validate_probes(
    df: pl.DataFrame,
    *,
    config: ProbeValidationConfig,
    now_s: float,
    bbox: tuple[float, float, float, float] | None,
    last_seen: VehicleLastSeen | None = None,
    commit: bool = True,
) -> ValidationResult:
    """Validate a probe batch row by row and return the accepted rows plus a reason per row.

    Checks, in order (the first failure is a row's reason): required field null or empty
    (``missing_field``), non-finite ``t/lat/lon`` (``nan_value``), ``lat`` outside [-90, 90],
    ``lon`` outside [-180, 180], outside ``bbox`` widened by ``config.bbox_margin_m``
    (``outside_network``), ``t > now_s + max_future_skew_s`` (``future_timestamp``),
    reported speed < 0 or above ``max_reported_speed_mps`` (``negative_speed``), heading
    outside [0, 360] (``bad_heading``), accuracy < 0 or above ``max_accuracy_m``
    (``bad_accuracy``); then, among rows that pass, repeats of ``(vehicle_id, t)`` within the
    batch or already accepted earlier (``duplicate``; the first occurrence in row order
    wins), points older than the vehicle's last accepted time (``out_of_order``), and points
    whose implied speed from the vehicle's previous *accepted* point exceeds
    ``max_speed_mps`` (``impossible_jump``). The jump check runs in vectorised passes; each
    pass rejects only the first offending point of each vehicle, so one outlier does not
    also condemn the good point after it.

    Parameters
    ----------
    df
        A probe batch (see :func:`coerce_probes`; it is coerced here too).
    config
        Bounds.
    now_s
        The current time in unix seconds (event time when replaying).
    bbox
        ``(min_lon, min_lat, max_lon, max_lat)`` of the network, or ``None`` to skip.
    last_seen
        Per-vehicle state from earlier batches; when given and ``commit`` is true, the
        accepted rows are recorded in it.
    commit
        Whether to record accepted rows in ``last_seen``.

    Returns
    -------
    ValidationResult

    Raises
    ------
    ProbeSchemaError
        When ``df`` lacks required columns or has uncoercible types.
    ProbeValidationError
        When ``now_s`` is not finite.
    """
    if not np.isfinite(now_s):
        raise ProbeValidationError(f"`now_s` must be a finite unix time; got {now_s!r}")
    probes = coerce_probes(df).with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    reason = _row_reasons(probes, config=config, now_s=now_s, bbox=bbox)
    probes = probes.with_columns(reason.alias("reason"))
    probes = _sequence_reasons(probes, config=config, last_seen=last_seen)
    reasons = probes.select("row", "reason").sort("row")
    accepted = (
        probes.filter(pl.col("reason") == "ok").drop("reason")
        .select(list(PROBE_SCHEMA) + ["row"]).sort(["vehicle_id", "t"])
    )
    counted = dict(reasons.group_by("reason").len().iter_rows())
    counts = {code: int(counted.get(code, 0)) for code in REASONS}
    if last_seen is not None and commit:
        last_seen.update(accepted)
    return ValidationResult(accepted=accepted, reasons=reasons, counts=counts)


def _row_reasons(
    probes: pl.DataFrame, *, config: ProbeValidationConfig, now_s: float,
    bbox: tuple[float, float, float, float] | None,
) -> pl.Series:
    t, lat, lon = pl.col("t"), pl.col("lat"), pl.col("lon")
    missing = (pl.col("vehicle_id").is_null() | (pl.col("vehicle_id").str.len_bytes() == 0)
               | t.is_null() | lat.is_null() | lon.is_null())
    nonfinite = ~(t.is_finite() & lat.is_finite() & lon.is_finite())
    if bbox is None:
        outside = pl.lit(False)
    else:
        min_lon, min_lat, max_lon, max_lat = bbox
        dlat = config.bbox_margin_m / _M_PER_DEG_LAT
        mid = np.radians(min(max(abs(min_lat), abs(max_lat)), 89.0))
        dlon = config.bbox_margin_m / (_M_PER_DEG_LAT * max(np.cos(mid), 1e-6))
        outside = ((lat < min_lat - dlat) | (lat > max_lat + dlat)
                   | (lon < min_lon - dlon) | (lon > max_lon + dlon))
    speed, heading, acc = pl.col("speed_mps"), pl.col("heading_deg"), pl.col("accuracy_m")
    chain = (
        pl.when(missing).then(pl.lit("missing_field"))
        .when(nonfinite).then(pl.lit("nan_value"))
        .when((lat < -90) | (lat > 90)).then(pl.lit("lat_out_of_range"))
        .when((lon < -180) | (lon > 180)).then(pl.lit("lon_out_of_range"))
        .when(outside).then(pl.lit("outside_network"))
        .when(t > now_s + config.max_future_skew_s).then(pl.lit("future_timestamp"))
        .when(speed.is_not_null() & (~speed.is_finite() | (speed < 0)
                                     | (speed > config.max_reported_speed_mps)))
        .then(pl.lit("negative_speed"))
        .when(heading.is_not_null() & (~heading.is_finite() | (heading < 0) | (heading > 360)))
        .then(pl.lit("bad_heading"))
        .when(acc.is_not_null() & (~acc.is_finite() | (acc < 0) | (acc > config.max_accuracy_m)))
        .then(pl.lit("bad_accuracy"))
        .otherwise(pl.lit("ok"))
    )
    return probes.select(chain.alias("reason")).to_series()


def _sequence_reasons(
    probes: pl.DataFrame, *, config: ProbeValidationConfig, last_seen: VehicleLastSeen | None,
) -> pl.DataFrame:
    """Mark duplicates, out-of-order points and impossible jumps among the rows still ``ok``."""
    ok = pl.col("reason") == "ok"
    # Within the batch, the first occurrence (row order) of a (vehicle_id, t) pair wins.
    first_ok_row = (pl.when(ok).then(pl.col("row")).otherwise(None)
                    .min().over(["vehicle_id", "t"]))
    probes = probes.with_columns(
        pl.when(ok & (pl.col("row") != first_ok_row)).then(pl.lit("duplicate"))
        .otherwise(pl.col("reason")).alias("reason"))
    if last_seen is not None and len(last_seen):
        probes = probes.join(last_seen.last, on="vehicle_id", how="left")
        # Only a point at or before its vehicle's last accepted time can repeat an earlier
        # accepted pair; look just those up in the remembered pairs (in an event-ordered
        # stream there are none, so the history is not touched).
        stale = probes.filter(ok & (pl.col("t") <= pl.col("last_t")))
        if stale.height:
            repeats = stale.join(last_seen.seen_pairs(), on=["vehicle_id", "t"], how="semi")
            dup_rows = repeats["row"]
        else:
            dup_rows = pl.Series("row", [], dtype=pl.Int64)
        probes = probes.with_columns(
            pl.when(ok & pl.col("row").is_in(dup_rows.implode())).then(pl.lit("duplicate"))
            .when(ok & (pl.col("t") <= pl.col("last_t"))).then(pl.lit("out_of_order"))
            .otherwise(pl.col("reason")).alias("reason")
        )
    else:
        probes = probes.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("last_t"),
            pl.lit(None, dtype=pl.Float64).alias("last_lat"),
            pl.lit(None, dtype=pl.Float64).alias("last_lon"))
    return _jump_reasons(probes, config=config)


def _jump_reasons(probes: pl.DataFrame, *, config: ProbeValidationConfig) -> pl.DataFrame:
    """Reject impossible jumps in passes; each pass rejects each vehicle's first offender."""
    cand = probes.filter(pl.col("reason") == "ok").sort(["vehicle_id", "t"])
    n = cand.height
    rejected = np.zeros(n, dtype=bool)
    if n:
        vid = cand["vehicle_id"].to_numpy()
        t = cand["t"].to_numpy()
        lat, lon = cand["lat"].to_numpy(), cand["lon"].to_numpy()
        last_t = cand["last_t"].fill_null(np.nan).to_numpy()
        last_lat = cand["last_lat"].fill_null(np.nan).to_numpy()
        last_lon = cand["last_lon"].fill_null(np.nan).to_numpy()
        new_vehicle = np.ones(n, dtype=bool)
        new_vehicle[1:] = vid[1:] != vid[:-1]
        group = np.cumsum(new_vehicle) - 1
        for pass_no in range(config.max_jump_passes):
            flagged = _flag_jumps(t, lat, lon, last_t, last_lat, last_lon, group,
                                  rejected, config=config)
            if not flagged.any():
                break
            if pass_no == config.max_jump_passes - 1:
                rejected |= flagged
                break
            # Only each vehicle's first flagged point is certainly a jump from an accepted one.
            idx = np.flatnonzero(flagged)
            first_of_group = np.ones(idx.size, dtype=bool)
            first_of_group[1:] = group[idx[1:]] != group[idx[:-1]]
            rejected[idx[first_of_group]] = True
    jumps = cand.select("row").with_columns(pl.Series("_jump", rejected))
    out = probes.join(jumps, on="row", how="left").with_columns(
        pl.when(pl.col("_jump").fill_null(False)).then(pl.lit("impossible_jump"))
        .otherwise(pl.col("reason")).alias("reason"))
    return out.drop("_jump", "last_t", "last_lat", "last_lon").sort("row")


def _flag_jumps(
    t: np.ndarray, lat: np.ndarray, lon: np.ndarray, last_t: np.ndarray, last_lat: np.ndarray,
    last_lon: np.ndarray, group: np.ndarray, rejected: np.ndarray, *,
    config: ProbeValidationConfig,
) -> np.ndarray:
    """Flag kept points whose implied speed from the previous kept point is too high."""
    keep = np.flatnonzero(~rejected)
    kt, klat, klon, kg = t[keep], lat[keep], lon[keep], group[keep]
    prev_t, prev_lat, prev_lon = last_t[keep].copy(), last_lat[keep].copy(), last_lon[keep].copy()
    same = np.zeros(keep.size, dtype=bool)
    same[1:] = kg[1:] == kg[:-1]
    inner = np.flatnonzero(same)
    prev_t[inner], prev_lat[inner], prev_lon[inner] = kt[inner - 1], klat[inner - 1], klon[inner - 1]
    has_prev = np.isfinite(prev_t)
    dist_m = np.where(has_prev, haversine_m(prev_lat, prev_lon, klat, klon), 0.0)
    dt_s = np.where(has_prev, kt - prev_t, 1.0)
    excess_m = np.maximum(dist_m - config.jump_tolerance_m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bad = has_prev & (excess_m > config.max_speed_mps * np.maximum(dt_s, 0.0))
    flagged = np.zeros(t.shape, dtype=bool)
    flagged[keep[bad]] = True
    return flagged
