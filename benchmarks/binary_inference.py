"""Binary inference: the bit-packed engine against the Keras model.

On the same batch, times Keras's inference (`model.predict`) and each engine
backend available (NumPy on packed bits, NumPy on float32 BLAS, CuPy), and
compares the memory of the weights (float32 in Keras, packed bits in the engine).
Prints a table and writes JSON to `--out`.

    python benchmarks/binary_inference.py --model qnn_out/binary_cnn.keras
    python benchmarks/binary_inference.py            # trains a digits binary CNN first

The engine imports no TensorFlow; with `--engine net.npz` and `--no-keras`
this runs where only NumPy (and CuPy) is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def best_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def random_binary_mlp(input_size=784, width=4096, depth=3, classes=10, seed=0):
    """The BinaryNet MLP with random weights and thresholds, built with NumPy alone."""
    from advlib.qnn.engine import pack_signs
    from advlib.qnn.engine import spec as spec_io

    rng = np.random.default_rng(seed)
    layers, arrays, size = [], {}, input_size
    for index, units in enumerate([width] * depth + [classes]):
        last = index == depth
        layers.append(
            dict(
                type="dense",
                name=f"dense{index}",
                keras_output=f"dense{index}",
                in_shape=[size],
                out_shape=[units],
                input="uint8" if index == 0 else "binary",
                output="logits" if last else "bits",
            )
        )
        arrays[f"layer{index}/weights"] = pack_signs(rng.normal(size=(units, size)))
        if last:
            arrays[f"layer{index}/scale"] = np.full(units, 0.01, np.float32)
            arrays[f"layer{index}/shift"] = np.zeros(units, np.float32)
        else:
            spread = 255 * size if index == 0 else size
            arrays[f"layer{index}/threshold"] = rng.integers(
                -spread // 50, spread // 50 + 1, units
            ).astype(np.int64)
            arrays[f"layer{index}/flip"] = rng.random(units) < 0.5
        size = units
    spec = {
        "format": spec_io.FORMAT,
        "version": spec_io.VERSION,
        "word_bits": 32,
        "input_shape": [input_size],
        "layers": layers,
    }
    return spec, arrays


def float_matmul_forward(cp, spec, arrays):
    """The same dense network as float32 matrix products on the GPU (the baseline)."""
    from advlib.qnn.engine import unpack_bits

    weights = []
    for index, layer in enumerate(spec["layers"]):
        signs = np.where(
            unpack_bits(arrays[f"layer{index}/weights"], layer["in_shape"][0]), 1.0, -1.0
        ).astype(np.float32)
        extra = (
            (arrays[f"layer{index}/scale"], arrays[f"layer{index}/shift"])
            if layer["output"] == "logits"
            else (
                arrays[f"layer{index}/threshold"].astype(np.float32),
                arrays[f"layer{index}/flip"],
            )
        )
        weights.append((cp.asarray(signs.T), *(cp.asarray(e) for e in extra), layer["output"]))

    def forward(x8):
        h = cp.asarray(x8.reshape(len(x8), -1), dtype=cp.float32)
        for w, first, second, output in weights:
            acc = h @ w
            if output == "logits":
                return acc * first + second
            bits = cp.where(second, acc <= first, acc >= first)
            h = cp.where(bits, 1.0, -1.0).astype(cp.float32)

    return forward


def gpu_rows(spec, arrays, x, repeats):
    """Timed rows for the CuPy engine (both GEMM kernels) and the float32 baseline."""
    import cupy as cp

    from advlib.qnn.engine import BinaryEngine
    from advlib.qnn.engine.engine import walk

    x8 = np.round(np.clip(x, 0, 1) * np.float32(255)).astype(np.uint8)
    baseline = float_matmul_forward(cp, spec, arrays)

    def cuda_time(fn):
        fn()
        cp.cuda.Device().synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        cp.cuda.Device().synchronize()
        return (time.perf_counter() - start) / repeats, out

    rows = []
    seconds, expected = cuda_time(lambda: baseline(x8))
    rows.append(
        dict(
            implementation="float32 matmuls (cupy/cuBLAS)",
            seconds=seconds,
            logits=cp.asnumpy(expected),
        )
    )
    for gemm in ("cuda", "tensor"):
        engine = BinaryEngine(spec, arrays, backend="cupy", gemm=gemm)
        seconds, logits = cuda_time(lambda: walk(spec, engine._gpu, x8, keep_hidden=False)[0])
        rows.append(
            dict(
                implementation=f"BinaryEngine (cupy, {gemm} cores)", seconds=seconds, logits=logits
            )
        )
    return rows


def keras_side(args):
    """Builds or loads the Keras model; returns (model, engine path, x, y)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import advlib.qnn.layers  # noqa: F401  registers the layers for load_model
    from advlib import qnn
    from advlib.datasets import load
    from advlib.models import load_model

    (x_train, y_train), (x_test, y_test) = load(args.dataset)
    if args.model:
        model = load_model(args.model)
    else:
        keras.utils.set_random_seed(0)
        model = qnn.binary_cnn(x_train.shape[1:], filters=(32, 32, 64, 64), dense=128)
        model.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
    path = args.engine or os.path.join(HERE, "results", f"{model.name}.npz")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    qnn.export(model, path)
    x = (
        np.resize(x_test, (args.n,) + x_test.shape[1:])
        if args.n > len(x_test)
        else x_test[: args.n]
    )
    return model, path, x


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a trained Keras binary network")
    parser.add_argument("--engine", default=None, help="an exported .npz (written if --model)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--n", type=int, default=10000, help="images in the batch")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-keras", action="store_true", help="engine only (no TensorFlow)")
    parser.add_argument(
        "--random-mlp",
        type=int,
        default=None,
        metavar="WIDTH",
        help="a random BinaryNet MLP (3 hidden layers of WIDTH) instead of a model",
    )
    parser.add_argument(
        "--numpy-n",
        type=int,
        default=1000,
        help="images for the NumPy engine (it is the slow reference)",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results", "binary_inference.json"))
    args = parser.parse_args(argv)
    if os.path.isdir(args.out):
        args.out = os.path.join(args.out, "binary_inference.json")

    from advlib.qnn.engine import BinaryEngine

    rows, model = [], None
    if args.random_mlp:
        from advlib.qnn.engine import spec as spec_io

        spec, arrays = random_binary_mlp(width=args.random_mlp)
        path = args.engine or os.path.join(HERE, "results", "random_binary_mlp.npz")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        spec_io.save(path, spec, arrays)
        x = np.random.default_rng(0).random((args.n, 784), dtype=np.float32)
        from advlib.qnn.engine import cupy_backend

        if cupy_backend.available()[0]:
            rows = gpu_rows(spec, arrays, x, args.repeats)
            for row in rows[1:]:
                row["agreement"] = float(
                    np.mean(row["logits"].argmax(1) == rows[0]["logits"].argmax(1))
                )
                row["exact"] = bool(np.array_equal(row["logits"], rows[0]["logits"]))
            rows[0]["agreement"] = 1.0
            for row in rows:
                row.pop("logits")
                row["images_per_second"] = len(x) / row["seconds"]
                row["weight_bytes"] = int(sum(a.nbytes for a in arrays.values()))
            # float32 keeps 4 bytes per weight where a packed word keeps 32 weights
            rows[0]["weight_bytes"] = int(
                sum(32 * a.nbytes for a in arrays.values() if a.dtype == np.uint32)
            )
        model = None
        engine = BinaryEngine(spec, arrays)
        x_numpy = x[: args.numpy_n]
        seconds, _ = best_time(lambda: engine.predict(x_numpy), 1)
        rows.append(
            dict(
                implementation="BinaryEngine (numpy)",
                seconds=seconds * len(x) / len(x_numpy),
                images_per_second=len(x_numpy) / seconds,
                weight_bytes=int(sum(a.nbytes for a in arrays.values())),
                agreement=None,
                note=f"timed on {len(x_numpy)} images, scaled",
            )
        )
        args.no_keras = True
    elif args.no_keras:
        if not args.engine:
            parser.error("--no-keras needs --engine")
        path = args.engine
        engine = BinaryEngine.load(path)
        x = np.random.default_rng(0).random((args.n,) + engine.input_shape, dtype=np.float32)
    else:
        model, path, x = keras_side(args)
        seconds, keras_logits = best_time(
            lambda: model.predict(x, batch_size=args.batch_size, verbose=0), args.repeats
        )
        float_bytes = int(sum(np.prod(w.shape) for w in model.weights)) * 4
        rows.append(
            dict(
                implementation="Keras model.predict (float32)",
                seconds=seconds,
                images_per_second=len(x) / seconds,
                weight_bytes=float_bytes,
                agreement=1.0,
            )
        )
    for backend in [] if args.random_mlp else ["numpy", "blas"]:
        engine = BinaryEngine.load(path, backend=backend)
        seconds, logits = best_time(
            lambda: engine.predict(x, batch_size=args.batch_size), args.repeats
        )
        # the BLAS backend keeps its weights unpacked, as float32
        packed = (
            engine._backend.weight_bytes
            if backend == "blas"
            else int(sum(a.nbytes for a in engine.arrays.values()))
        )
        agreement = (
            float(np.mean(logits.argmax(1) == keras_logits.argmax(1)))
            if model is not None
            else None
        )
        rows.append(
            dict(
                implementation=f"BinaryEngine ({backend})",
                seconds=seconds,
                images_per_second=len(x) / seconds,
                weight_bytes=packed,
                agreement=agreement,
            )
        )
    base = rows[0]
    print(f"\n{len(x)} images, batch {args.batch_size}, {os.path.basename(path)}")
    print(
        "| implementation | seconds | images/s | speed vs first row | weight bytes | "
        "memory vs first row | same predictions |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["speed_ratio"] = base["seconds"] / r["seconds"]
        r["memory_ratio"] = base["weight_bytes"] / r["weight_bytes"]
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.4f}"
        print(
            f"| {r['implementation']} | {r['seconds']:.3f} | {r['images_per_second']:.0f} | "
            f"{r['speed_ratio']:.2f}x | {r['weight_bytes']} | {r['memory_ratio']:.1f}x | "
            f"{agree} |"
        )
    report = dict(
        benchmark="binary_inference",
        engine=os.path.abspath(path),
        n=len(x),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        rows=rows,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
