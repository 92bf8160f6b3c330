"""Shared fixtures: where the real data lives, and the NumPy/CuPy ``xp`` parametrisation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy
import pytest

#: ../shared/data beside the checkout (override with TRAFFIC_SHARED_DATA).
SHARED_DATA = Path(
    os.environ.get("TRAFFIC_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
TEST_DATA = Path(__file__).resolve().parent / "data"
#: Set to 1 by .ci/run: CI always has the shared data, so a missing file fails the test there
#: instead of skipping it (a user's clone without ../shared/data still skips, with a reason).
REQUIRE_SHARED_DATA = os.environ.get("TRAFFIC_REQUIRE_SHARED_DATA", "") == "1"


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared/data.

    When it is absent the test is skipped with a reason, or fails when
    ``TRAFFIC_REQUIRE_SHARED_DATA=1`` (CI).
    """
    path = SHARED_DATA / relative
    if not path.exists():
        reason = (f"needs the shared real data {path} (../shared/data beside the checkout; "
                  "CI always has it, a fresh clone may not)")
        if REQUIRE_SHARED_DATA:
            pytest.fail(f"{reason}; TRAFFIC_REQUIRE_SHARED_DATA=1 makes a missing file an error",
                        pytrace=False)
        pytest.skip(reason)
    return path


def _cupy_or_skip():
    try:
        import cupy
    except ImportError:
        pytest.skip("CuPy is not installed (pip install '.[gpu]' on a CUDA machine)")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:  # CUDA runtime missing or driver mismatch
        pytest.skip(f"no usable CUDA device: {exc}")
    return cupy


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """Run one test body on NumPy and (where a GPU is present) on CuPy."""
    if request.param == "numpy":
        return numpy
    return _cupy_or_skip()


@pytest.fixture()
def ray_local():
    """A local Ray (2 CPUs), started once and shared by the tests that need one.

    Function-scoped so a test that runs its own cluster (``ray.cluster_utils.Cluster``) can
    shut it down; the next test that asks for it starts it again.
    """
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray
