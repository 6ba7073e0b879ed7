#!/usr/bin/env bash
# advlib's GPU check: run ON the lent GPU machine (device tool), from the repo root.
# It needs only python3 with NumPy and CuPy, and pytest (carried as wheels when absent):
#   here:   mkdir -p .gpu/wheels && echo /.gpu/ >> .git/info/exclude
#           pip download pytest pluggy iniconfig packaging -d .gpu/wheels
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=480)
# It runs the GPU tests (bit-exactness of every kernel and of the whole engine), the GEMM
# benchmark and the end-to-end BinaryNet MLP benchmark, writing logs and JSON under $OUT.
set -u
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
python3 -c "import numpy, cupy; print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'cc', cupy.cuda.Device(0).compute_capability)"
if ! python3 -c "import pytest" 2>/dev/null && [ -d .gpu/wheels ]; then
  python3 -m pip install -q --no-index --find-links .gpu/wheels --target /tmp/gpu-site pytest \
    && export PYTHONPATH=$PYTHONPATH:/tmp/gpu-site
fi
echo "== GPU tests (no TensorFlow here: only the engine's tests are collected)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "not emulated" 2>&1 | tail -30
echo "== benchmarks/binary_gemm.py"
timeout 200 python3 benchmarks/binary_gemm.py --out "$OUT/binary_gemm.json" 2>&1 | tail -30
echo "== benchmarks/binary_inference.py (BinaryNet MLP 3x4096, 10,000 inputs)"
timeout 200 python3 benchmarks/binary_inference.py --random-mlp 4096 --no-keras --n 10000 \
  --out "$OUT/binary_inference.json" 2>&1 | tail -20
ls -la "$OUT"
