"""Every CUDA kernel of the estimator compiles with NVRTC for sm_80 (A100) and sm_90 (H100),
on a machine without a GPU: NVRTC is a library, it needs no driver or device.

Needs ``cupy-cuda12x`` (its NVRTC bindings) and ``nvidia-cuda-nvrtc-cu12`` (the library),
both in the ``nvrtc`` extra that ``make install`` brings through ``dev``. Without them the
tests skip with the reason; with ``TRAFFIC_REQUIRE_NVRTC=1`` (set by CI) they fail instead,
so a CI image that lost NVRTC cannot pass by skipping.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
from pathlib import Path

import pytest

from traffic import _kernels

ARCHS = ("sm_80", "sm_90")
REQUIRE_ENV = "TRAFFIC_REQUIRE_NVRTC"


def _preload_wheel_nvrtc() -> None:
    """Load libnvrtc from the ``nvidia-cuda-nvrtc-cu12`` wheel, if installed, globally.

    Recent CuPy finds it by itself; older ones look only on the loader path, which a pip
    wheel is not on. Loading it first (RTLD_GLOBAL) makes CuPy's ``dlopen`` find it.
    """
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    except ImportError:  # no `nvidia` namespace package at all
        return
    if spec is None or not spec.submodule_search_locations:
        return
    for folder in spec.submodule_search_locations:
        for lib in sorted(Path(folder, "lib").glob("libnvrtc.so.*")):
            if re.fullmatch(r"libnvrtc\.so\.\d+", lib.name):
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                return


def _nvrtc():
    """CuPy's NVRTC bindings, loaded and answering; else skip (or fail when required)."""
    try:
        _preload_wheel_nvrtc()
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # ImportError (no CuPy), OSError/RuntimeError (no libnvrtc)
        reason = (f"NVRTC is not usable ({type(exc).__name__}: {exc}); install it with "
                  "pip install -e '.[nvrtc]' (cupy-cuda12x and nvidia-cuda-nvrtc-cu12)")
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 and {reason}")
        pytest.skip(reason)
    return nvrtc


def compile_source(nvrtc, source: str, name: str, arch: str) -> tuple[bool, str, bytes]:
    """Compile ``source`` for ``arch``; return ``(ok, log, cubin)`` (cubin empty on failure)."""
    prog = nvrtc.createProgram(source, f"{name}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *_kernels.KERNEL_OPTIONS])
        except nvrtc.NVRTCError:
            return False, nvrtc.getProgramLog(prog), b""
        return True, nvrtc.getProgramLog(prog), bytes(nvrtc.getCUBIN(prog))
    finally:
        nvrtc.destroyProgram(prog)


def test_kernel_sources_are_all_enumerated():
    """KERNEL_SOURCES holds every ``__global__`` kernel the module defines, under its name."""
    defined = {v for k, v in vars(_kernels).items()
               if isinstance(v, str) and "__global__" in v and not k.startswith("__")}
    assert defined <= set(_kernels.KERNEL_SOURCES.values())
    for name, source in _kernels.KERNEL_SOURCES.items():
        assert re.search(rf'extern "C" __global__ void {name}\(', source), name
    assert len(_kernels.KERNEL_SOURCES) >= 2


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(_kernels.KERNEL_SOURCES))
def test_kernel_compiles_with_nvrtc(name, arch):
    nvrtc = _nvrtc()
    ok, log, cubin = compile_source(nvrtc, _kernels.KERNEL_SOURCES[name], name, arch)
    assert ok, f"{name} does not compile for {arch}:\n{log}"
    assert name.encode() in cubin  # extern "C": the entry keeps its name
    assert "warning" not in log.lower(), f"{name} for {arch} warns:\n{log}"


def test_compile_check_catches_a_syntax_error():
    """The check is not vacuous: a source with a planted error is reported, with its log."""
    nvrtc = _nvrtc()
    broken = _kernels.KERNEL_SOURCES["traffic_fold_pace"].replace("const int e = edge[i];",
                                                                  "const int e = edge[i]")
    ok, log, _ = compile_source(nvrtc, broken, "broken", ARCHS[0])
    assert not ok and "error" in log
