"""Pick NumPy or CuPy for a set of arrays, and move arrays to the host; CuPy is optional."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

import numpy


def cupy_or_none() -> ModuleType | None:
    """Return the ``cupy`` module when it can be imported, else ``None`` (imported lazily)."""
    try:
        return importlib.import_module("cupy")
    except ImportError:
        return None


def gpu_available() -> bool:
    """True when CuPy imports *and* sees a usable CUDA device (checked once per process).

    CuPy may be installed where no GPU is (``make install`` brings it for the NVRTC compile
    check): there ``import cupy`` works and ``cupy.cuda.runtime.getDeviceCount()`` raises
    ``CUDARuntimeError`` (no driver, ``cudaErrorInsufficientDriver``), which counts as no
    GPU. Code that picks ``cupy`` for computing asks this, never only whether it imports.
    """
    return _gpu_available()


@functools.cache
def _gpu_available() -> bool:
    try:
        cp = cupy_or_none()
        return cp is not None and int(cp.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # CUDARuntimeError without a driver; any CUDA library mismatch
        return False


def is_cupy(xp: ModuleType) -> bool:
    """True when ``xp`` is the CuPy module (checked by name, so CuPy is never imported here)."""
    return getattr(xp, "__name__", "") == "cupy"


def array_module(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Only imports CuPy when an argument's type lives in the ``cupy`` package, so CPU-only
    installations never pay for (or fail on) the import.
    """
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            cp = cupy_or_none()
            if cp is not None:
                return cp
    return numpy


def to_host(a: Any) -> numpy.ndarray:
    """Return ``a`` as a NumPy array; copies from the device (and synchronizes) for CuPy."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return numpy.asarray(a)


def to_device(a: Any, xp: ModuleType, dtype: Any = None) -> Any:
    """Return ``a`` as an ``xp`` array of ``dtype`` (C-contiguous); no copy when already so."""
    out = xp.ascontiguousarray(xp.asarray(a), dtype=dtype)
    return out
