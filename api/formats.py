"""Output formats of congestion answers: GeoJSON, Parquet, Arrow IPC and CSV.

Used by the HTTP routes (``GET /v1/congestion``) and by ``traffic snapshot export``. Each
function takes a snapshot-shaped polars frame (see ``traffic.snapshots.SNAPSHOT_COLUMNS``)
and returns a JSON-ready dict or the encoded bytes; nothing here reads or writes files.
"""

from __future__ import annotations

import io

import numpy as np
import polars as pl

from graph.network import RoadNetwork
from traffic.errors import SnapshotSchemaError

__all__ = ["MEDIA_TYPES", "to_arrow_ipc_bytes", "to_csv_bytes", "to_geojson", "to_parquet_bytes"]

#: Media type of each output format of :func:`to_geojson` and the ``to_*_bytes`` functions.
MEDIA_TYPES: dict[str, str] = {
    "geojson": "application/geo+json",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
    "csv": "text/csv",
}

_FEATURE_PROPERTIES = ("key", "speed_mps", "freeflow_mps", "ratio", "confidence", "observations")
#: Extra per-edge properties while closures or slowdowns are in force.
_OVERRIDE_PROPERTIES = ("closed", "override_factor")


def to_geojson(net: RoadNetwork, df: pl.DataFrame, *, as_of_t_s: float | None = None,
               network_version: str | None = None) -> dict:
    """Congestion answer as a GeoJSON FeatureCollection: one LineString per edge.

    Each feature's properties are ``key, speed_mps, freeflow_mps, ratio, confidence,
    observations`` and ``as_of`` (``as_of_t_s``, unix s; else the row's ``t`` column when
    the frame has one; else null). The estimator's live frame (``edge_key``) is accepted as
    is. Coordinates are ``[lon, lat]`` in the direction of travel.
    Rows whose key is not in ``net`` cannot be drawn: they are left out and counted in the
    collection's foreign member ``missing_keys``. NaN becomes null (JSON has no NaN).
    """
    if "key" not in df.columns and "edge_key" in df.columns:
        df = df.rename({"edge_key": "key"})  # the estimator's live frame
    missing = [c for c in _FEATURE_PROPERTIES if c not in df.columns]
    if missing:
        raise SnapshotSchemaError(f"to_geojson needs columns {list(_FEATURE_PROPERTIES)}; missing {missing}")
    edge = net.edge_index_of_keys(df["key"].to_numpy())
    found = edge >= 0
    sub = df.filter(pl.Series(found))
    edge = edge[found]
    if as_of_t_s is not None:
        as_of = [float(as_of_t_s)] * sub.height
    elif "t" in sub.columns:
        as_of = sub["t"].to_list()
    else:
        as_of = [None] * sub.height
    # Closures in force add `closed` and `override_factor` (workers' Queries.congestion).
    names = [*_FEATURE_PROPERTIES, *(c for c in _OVERRIDE_PROPERTIES if c in sub.columns)]
    props = {c: sub[c].fill_nan(None).to_list() if sub[c].dtype.is_float() else sub[c].to_list()
             for c in names}
    # Gather every chosen edge's points in one go, then cut them per feature.
    starts, ends = net.geom_offsets[edge], net.geom_offsets[edge + 1]
    counts = ends - starts
    idx = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
    coords = np.column_stack([net.geom_lon[idx], net.geom_lat[idx]]).tolist()
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": coords[bounds[i]:bounds[i + 1]]},
            "properties": {**{c: props[c][i] for c in names}, "as_of": as_of[i]},
        }
        for i in range(sub.height)
    ]
    out: dict = {"type": "FeatureCollection", "features": features,
                 "missing_keys": int((~found).sum())}
    if as_of_t_s is not None:
        out["as_of"] = float(as_of_t_s)
    if network_version is not None:
        out["network_version"] = network_version
    return out


def to_parquet_bytes(df: pl.DataFrame) -> bytes:
    """The frame as a Parquet file (zstd), in memory."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd")
    return buf.getvalue()


def to_arrow_ipc_bytes(df: pl.DataFrame, *, stream: bool = True) -> bytes:
    """The frame as Arrow IPC: the streaming format (``MEDIA_TYPES["arrow"]``) by default,
    the random-access file format with ``stream=False``."""
    buf = io.BytesIO()
    if stream:
        df.write_ipc_stream(buf)
    else:
        df.write_ipc(buf)
    return buf.getvalue()


def to_csv_bytes(df: pl.DataFrame) -> bytes:
    """The frame as UTF-8 CSV with a header row."""
    buf = io.BytesIO()
    df.write_csv(buf)
    return buf.getvalue()
