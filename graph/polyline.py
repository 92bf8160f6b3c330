"""Google's encoded polyline format (precision 5 or 6) for route geometries.

Each coordinate is rounded to ``10**precision`` units, differenced from the previous point
(latitude first, then longitude), zig-zag encoded (``v << 1``, inverted when negative) and
written in 5-bit chunks, least significant first, each ``+ 63`` and ``| 0x20`` when more
chunks follow. ``polyline6`` (OSRM's ``geometries=polyline6``) is precision 6.
"""

from __future__ import annotations

import numpy as np

__all__ = ["decode_polyline", "encode_polyline"]


def encode_polyline(lat: np.ndarray, lon: np.ndarray, *, precision: int = 6) -> str:
    """Encode a polyline of ``lat``/``lon`` (degrees) as a Google encoded polyline string.

    Examples
    --------
    >>> encode_polyline(np.array([38.5, 40.7, 43.252]), np.array([-120.2, -120.95, -126.453]),
    ...                 precision=5)
    '_p~iF~ps|U_ulLnnqC_mqNvxq`@'
    >>> encode_polyline(np.array([]), np.array([]))
    ''
    """
    scale = 10.0 ** int(precision)
    la = np.round(np.asarray(lat, dtype=np.float64) * scale).astype(np.int64)
    lo = np.round(np.asarray(lon, dtype=np.float64) * scale).astype(np.int64)
    if la.shape != lo.shape or la.ndim != 1:
        raise ValueError(f"lat and lon must be 1-D of equal length; got {la.shape}, {lo.shape}")
    d = np.empty(2 * la.size, dtype=np.int64)
    d[0::2] = np.diff(la, prepend=0)
    d[1::2] = np.diff(lo, prepend=0)
    out: list[str] = []
    for v in d.tolist():
        v = ~(v << 1) if v < 0 else v << 1
        while v >= 0x20:
            out.append(chr((0x20 | (v & 0x1F)) + 63))
            v >>= 5
        out.append(chr(v + 63))
    return "".join(out)


def decode_polyline(text: str, *, precision: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Decode a Google encoded polyline into ``(lat, lon)`` arrays (degrees).

    Raises ``ValueError`` on a truncated string or an odd number of values.
    """
    values: list[int] = []
    shift = acc = 0
    for ch in text:
        b = ord(ch) - 63
        if not 0 <= b < 64:
            raise ValueError(f"not an encoded polyline character: {ch!r}")
        acc |= (b & 0x1F) << shift
        shift += 5
        if b < 0x20:
            values.append(~(acc >> 1) if acc & 1 else acc >> 1)
            shift = acc = 0
    if shift or len(values) % 2:
        raise ValueError("truncated encoded polyline")
    v = np.cumsum(np.asarray(values, dtype=np.int64).reshape(-1, 2), axis=0) / 10.0 ** int(precision)
    return v[:, 0], v[:, 1]
