#!/usr/bin/env bash
# GPU check of the estimator, for the device machine; run from the repository root.
#
# 1. CPU parts (any machine): every CUDA kernel compiles with NVRTC for sm_80 and sm_90
#    (tests/test_kernels_nvrtc.py, required: a missing NVRTC fails), the NumPy/numba
#    estimator tests.
# 2. With a CUDA GPU: the estimator tests again with the CuPy cases required (a skipped GPU
#    test fails the check), then benchmarks/estimator.py --xp cupy at 26.4 M segments (the
#    K=6 network, ../shared/tools/tile_network.py --k 6), its table appended to BENCHMARKS.md
#    here and copied to $OUT/BENCHMARKS.gpu.md (only $OUT comes back from the device machine).
# Without a GPU it runs part 1, then says so and exits 2; any failure exits non-zero.
# Logs go under $OUT (./gpu_out when OUT is unset). PY: the Python to use (default: .venv's).
set -u -o pipefail
OUT=${OUT:-gpu_out}
M_GPU=${M_GPU:-26400000}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD TRAFFIC_REQUIRE_NVRTC=1
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
status=0

echo "== CPU: NVRTC compile of every kernel (sm_80, sm_90) and the NumPy estimator tests"
$PY -m pytest -q -p no:cacheprovider -rs tests/test_kernels_nvrtc.py tests/test_estimator.py \
    2>&1 | tee "$OUT/pytest_cpu.txt" || status=1

gpu_count=$($PY -c "
from traffic._xp import gpu_available, cupy_or_none
print(cupy_or_none().cuda.runtime.getDeviceCount() if gpu_available() else 0)" 2>/dev/null)
if [ "${gpu_count:-0}" -lt 1 ]; then
    echo "gpu_check: no usable CUDA GPU here (CuPy missing, no driver or no device):" \
         "ran the CPU parts only (status $status); the GPU tests and benchmark need one." >&2
    exit 2
fi

echo "== GPU: device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
$PY -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" \
    | tee -a "$OUT/device.txt"

echo "== GPU: estimator tests (CuPy cases must run, not skip)"
$PY -m pytest -q -p no:cacheprovider -rs tests/test_estimator.py tests/test_profiles.py \
    2>&1 | tee "$OUT/pytest.txt" || status=1
if grep -q "^SKIPPED.*CUDA\|^SKIPPED.*CuPy" "$OUT/pytest.txt"; then
    echo "gpu_check: GPU tests were skipped on a GPU machine" >&2
    status=1
fi

echo "== GPU: benchmark at $M_GPU segments"
$PY benchmarks/estimator.py --xp cupy --repeats 20 --m-gpu "$M_GPU" \
    --output BENCHMARKS.md "$OUT/BENCHMARKS.gpu.md" 2>&1 | tee "$OUT/bench.txt" || status=1
exit $status
