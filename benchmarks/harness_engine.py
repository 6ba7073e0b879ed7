"""The harness on a binary network judged by its engine: the packed NumPy
reference against its bit-exact BLAS twin, which `QNNModelWrapper` now queries.

Every attack step of the harness asks the engine for predictions (the
gradient-free attacks, Square and SPSA, for every query), so the engine's speed
on small batches sets the harness's. This runs `bench.evaluate` twice on the
same seeded binary CNN and images, once with each engine answering the
queries, checks that every per-example outcome is the same, and prints the
wall times and their ratio. Writes JSON to --out.

    python benchmarks/harness_engine.py --n 40 --eps 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from advlib import bench, qnn
from advlib.models import QNNModelWrapper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import verify_binary


def run(model, engine_path, document, on_blas: bool):
    wrapped = QNNModelWrapper(model, surrogate="ste", engine=engine_path)
    if not on_blas:
        wrapped._predictor = wrapped.engine  # the packed reference answers the queries
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        report = bench.evaluate(
            wrapped, document, out_dir=os.path.join(folder, "run"), progress=False
        )
        with np.load(os.path.join(folder, "run", "examples.npz")) as arrays:
            broken_by = arrays["broken_by"].copy()
    return time.perf_counter() - start, report, broken_by


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="cnn", choices=sorted(verify_binary.EPOCHS))
    parser.add_argument("--n", type=int, default=40, help="test digits")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--out", default="benchmarks/results/harness_engine.json")
    args = parser.parse_args(argv)
    model = verify_binary.train(args.network, 32, 2, verify_binary.EPOCHS[args.network])
    document = verify_binary.protocol([args.eps], args.n)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        engine_path = os.path.join(folder, "engine.npz")
        qnn.export(model, engine_path)
        results = {
            name: run(model, engine_path, document, on_blas)
            for name, on_blas in (("packed NumPy (reference)", False), ("BLAS twin", True))
        }
    (ref_seconds, ref_report, ref_broken), (seconds, report, broken) = results.values()
    same = bool(np.array_equal(ref_broken, broken))
    print(
        f"{args.network}, {args.n} digits, eps {args.eps:g}, digits-linf-0.2's attacks "
        f"and diagnostics\n"
    )
    print(
        "| engine answering the queries | seconds | speed | robust accuracy | "
        "same per-example outcomes |\n|---|---|---|---|---|"
    )
    for name, (wall, rep, _) in results.items():
        accuracy = rep["results"]["per_eps"][0]["robust_accuracy"]["value"]
        rows.append(
            dict(
                engine=name,
                seconds=wall,
                speed=ref_seconds / wall,
                robust_accuracy=accuracy,
                same_outcomes=same,
            )
        )
        print(
            f"| {name} | {wall:.1f} | {ref_seconds / wall:.2f}x | {100 * accuracy:.2f}% | "
            f"{'yes' if same else 'NO'} |",
            flush=True,
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(dict(network=args.network, n=args.n, eps=args.eps, rows=rows), handle, indent=2)
    if not same:
        raise SystemExit("the two engines' outcomes differ: the BLAS twin is not exact here")
    return rows


if __name__ == "__main__":
    main()
