"""Binary GEMM on the GPU against float baselines (needs CuPy and a GPU).

For each shape (M, N, K): the binary CUDA-core kernel and the binary
tensor-core kernel (packed operands, int32 output) against a plain float32
shared-memory kernel (the QNN paper's "unoptimized" baseline), cuBLAS SGEMM
(`cupy.matmul`, float32) and cuBLAS on float16 tensor cores. Reports time,
effective TOPS (2 M N K per second) and ratios; checks the binary results
against each other and against the float product of the +-1 matrices.

    python benchmarks/binary_gemm.py [--out DIR_OR_FILE] [--repeats 10]
"""

import argparse
import json
import os
import sys

import numpy as np

SHAPES = [(8192, 8192, 8192), (10000, 4096, 4096), (10000, 4096, 784), (10000, 10, 4096)]


def timed(cp, fn, repeats):
    fn()
    cp.cuda.Device().synchronize()
    start = cp.cuda.Event()
    stop = cp.cuda.Event()
    start.record()
    for _ in range(repeats):
        out = fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / 1000 / repeats, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", "binary_gemm.json"
        ),
    )
    args = parser.parse_args(argv)
    from advlib.qnn.engine import cupy_backend, nvrtc, pack_signs

    usable, why = cupy_backend.available()
    if not usable:
        print(f"binary_gemm: {why}; nothing to measure.")
        return 0
    import cupy as cp

    kernels = cupy_backend.CupyBackend()
    float_kernel = cp.RawModule(code=nvrtc.sources()["float_gemm.cu"]).get_function("float_gemm")
    device = cp.cuda.Device()
    rows = []
    for m, n, k in SHAPES:
        rng = np.random.default_rng(0)
        a_signs = np.where(rng.random((m, k)) < 0.5, -1, 1).astype(np.float32)
        w_signs = np.where(rng.random((n, k)) < 0.5, -1, 1).astype(np.float32)
        a_bits, w_bits = cp.asarray(pack_signs(a_signs)), cp.asarray(pack_signs(w_signs))
        a32, w32 = cp.asarray(a_signs), cp.asarray(w_signs)
        a16, w16 = a32.astype(cp.float16), w32.astype(cp.float16)
        c32 = cp.empty((m, n), cp.float32)
        runs = {
            "binary, CUDA cores": lambda: kernels.gemm(a_bits, w_bits, k, tensor_cores=False),
            "float32 shared-memory kernel": lambda: (
                float_kernel(
                    ((m + 15) // 16, (n + 15) // 16),
                    (16, 16),
                    (a32, w32, c32, np.int32(m), np.int32(n), np.int32(k)),
                ),
                c32,
            )[1],
            "cuBLAS SGEMM (float32)": lambda: cp.matmul(a32, w32.T),
            "cuBLAS float16 tensor cores": lambda: cp.matmul(a16, w16.T),
        }
        if kernels.kernels.compute_capability >= 80:
            runs["binary, tensor cores"] = lambda: kernels.gemm(
                a_bits, w_bits, k, tensor_cores=True
            )
        results = {}
        for name, fn in runs.items():
            seconds, out = timed(cp, fn, args.repeats if m * n * k < 2e11 else 3)
            results[name] = (seconds, out)
        reference = results["cuBLAS SGEMM (float32)"][1]
        for name in ("binary, CUDA cores", "binary, tensor cores"):
            if name in results:
                assert cp.array_equal(results[name][1].astype(cp.float32), reference), name
        sgemm = results["cuBLAS SGEMM (float32)"][0]
        for name, (seconds, _) in results.items():
            rows.append(
                dict(
                    m=m,
                    n=n,
                    k=k,
                    implementation=name,
                    seconds=seconds,
                    tops=2 * m * n * k / seconds / 1e12,
                    speedup_vs_sgemm=sgemm / seconds,
                )
            )
    print(
        f"{device.attributes.get('MultiProcessorCount', '?')} SMs, compute capability "
        f"{kernels.kernels.compute_capability}"
    )
    print("| M x N x K | implementation | ms | TOPS | vs cuBLAS SGEMM |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['m']}x{r['n']}x{r['k']} | {r['implementation']} | "
            f"{1000 * r['seconds']:.3f} | {r['tops']:.1f} | {r['speedup_vs_sgemm']:.2f}x |"
        )
    out = args.out if not os.path.isdir(args.out) else os.path.join(args.out, "binary_gemm.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as handle:
        json.dump({"benchmark": "binary_gemm", "rows": rows}, handle, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
