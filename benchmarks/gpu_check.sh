#!/usr/bin/env bash
# advlib's GPU check: run ON the lent GPU machine (device tool), from the repo root.
# It needs python3 with NumPy, CuPy, PyTorch and JAX (there already), and pytest, Keras
# and torchattacks, carried as wheels, with Fashion-MNIST and the fast-AT CNN:
#   here:   mkdir -p .gpu/wheels && echo /.gpu/ >> .git/info/exclude
#           pip download pytest pluggy iniconfig packaging keras absl-py namex optree \
#               rich h5py ml-dtypes torchattacks tqdm scipy -d .gpu/wheels --no-deps
#           cp /usr/share/datasets/fashion-mnist/*.gz .gpu/          # apt: dataset-fashion-mnist
#           python examples/adversarial_training.py --out-dir adv_out && \
#               cp adv_out/fast_fashion-mnist.keras .gpu/
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=590)
#           (QUICK=1 bash benchmarks/gpu_check.sh: the scale sections on tiny settings)
# It runs the GPU tests (bit-exactness of every kernel and of the whole engine), the GEMM
# benchmark, the end-to-end BinaryNet MLP benchmark, and benchmarks/gpu_scale.py (the
# harness on the GPU, AutoAttack against torchattacks on a WideResNet, Square through the
# CuPy engine), writing logs and JSON under $OUT.
set -u
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
python3 -c "import numpy, cupy; print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'cc', cupy.cuda.Device(0).compute_capability)"
if [ -d .gpu/wheels ]; then
  for package in pytest keras torchattacks; do
    python3 -c "import $package" 2>/dev/null || python3 -m pip install -q --no-index \
      --find-links .gpu/wheels --target /tmp/gpu-site "$package" 2>&1 | tail -2
  done
  export PYTHONPATH=$PYTHONPATH:/tmp/gpu-site
fi
echo "== GPU tests (no TensorFlow here: only the engine's tests are collected)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "not emulated" 2>&1 | tail -30
echo "== benchmarks/binary_gemm.py"
timeout 200 python3 benchmarks/binary_gemm.py --out "$OUT/binary_gemm.json" 2>&1 | tail -30
echo "== benchmarks/binary_inference.py (BinaryNet MLP 3x4096, 10,000 inputs)"
timeout 200 python3 benchmarks/binary_inference.py --random-mlp 4096 --no-keras --n 10000 \
  --out "$OUT/binary_inference.json" 2>&1 | tail -20
QUICK_FLAG=${QUICK:+--quick}
echo "== benchmarks/gpu_scale.py (b): AutoAttack, advlib against torchattacks, WideResNet-16-4"
KERAS_BACKEND=torch timeout 200 python3 benchmarks/gpu_scale.py --sections b $QUICK_FLAG \
  --out "$OUT/gpu_scale_b.json" 2>&1 | tail -12
echo "== benchmarks/gpu_scale.py (c): Square 5,000 queries, CuPy engine against the float model"
KERAS_BACKEND=torch timeout 90 python3 benchmarks/gpu_scale.py --sections c $QUICK_FLAG \
  --out "$OUT/gpu_scale_c.json" 2>&1 | tail -8
MODEL=.gpu/fast_fashion-mnist.keras
for backend in torch jax; do  # the faster backend's harness run, by one probe each
  echo "== benchmarks/gpu_scale.py (a) on $backend: fashion-mnist-linf-0.1, 10,000 images"
  KERAS_BACKEND=$backend timeout 240 python3 benchmarks/gpu_scale.py --sections a $QUICK_FLAG \
    --model "$MODEL" --data-dir .gpu --out "$OUT/gpu_scale_a_$backend.json" 2>&1 | tail -12
  [ -n "${QUICK:-}" ] || break  # the full run on one backend only: PyTorch's
done
ls -la "$OUT"
