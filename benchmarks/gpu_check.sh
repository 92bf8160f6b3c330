#!/usr/bin/env bash
# GPU check for the estimator, for the device machine: CuPy parity tests and the GPU benchmark.
# Run from the repository root; writes logs under $OUT (or ./gpu_out when OUT is unset).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
$PY -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/device.txt"
# polars is only needed by test_probes/snapshot; the estimator tests import it lazily.
$PY -m pytest -q -p no:cacheprovider tests/test_estimator.py tests/test_profiles.py -rs 2>&1 | tee "$OUT/pytest.txt"
$PY benchmarks/estimator.py --xp cupy --repeats 20 --output "$OUT/BENCHMARKS.gpu.md" 2>&1 | tee "$OUT/bench.txt"
