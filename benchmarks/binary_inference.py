"""Binary inference: the bit-packed engine against the Keras model.

On the same batch, times Keras's inference (`model.predict`) and each engine
backend available, and compares the memory of the weights (float32 in Keras,
packed bits in the engine). Prints a table and writes JSON to `--out`.

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


def keras_side(args):
    """Builds or loads the Keras model; returns (model, engine path, x, y)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from advlib import qnn
    from advlib.datasets import load

    (x_train, y_train), (x_test, y_test) = load(args.dataset)
    if args.model:
        model = keras.models.load_model(args.model, safe_mode=True)
    else:
        keras.utils.set_random_seed(0)
        model = qnn.binary_cnn(x_train.shape[1:], filters=(32, 32, 64, 64), dense=128)
        model.compile(keras.optimizers.Adam(3e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
    path = args.engine or os.path.join(HERE, "results", f"{model.name}.npz")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    qnn.export(model, path)
    x = np.resize(x_test, (args.n,) + x_test.shape[1:]) if args.n > len(x_test) else \
        x_test[:args.n]
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
    parser.add_argument("--out", default=os.path.join(HERE, "results", "binary_inference.json"))
    args = parser.parse_args(argv)

    from advlib.qnn.engine import BACKENDS, BinaryEngine

    rows, model = [], None
    if args.no_keras:
        if not args.engine:
            parser.error("--no-keras needs --engine")
        path = args.engine
        engine = BinaryEngine.load(path)
        x = np.random.default_rng(0).random((args.n,) + engine.input_shape, dtype=np.float32)
    else:
        model, path, x = keras_side(args)
        seconds, keras_logits = best_time(
            lambda: model.predict(x, batch_size=args.batch_size, verbose=0), args.repeats)
        float_bytes = int(sum(np.prod(w.shape) for w in model.weights)) * 4
        rows.append(dict(implementation="Keras model.predict (float32)", seconds=seconds,
                         images_per_second=len(x) / seconds, weight_bytes=float_bytes,
                         agreement=1.0))
    for backend in BACKENDS:
        engine = BinaryEngine.load(path, backend=backend)
        seconds, logits = best_time(lambda: engine.predict(x, batch_size=args.batch_size),
                                    args.repeats)
        packed = int(sum(a.nbytes for a in engine.arrays.values()))
        agreement = (float(np.mean(logits.argmax(1) == keras_logits.argmax(1)))
                     if model is not None else None)
        rows.append(dict(implementation=f"BinaryEngine ({backend})", seconds=seconds,
                         images_per_second=len(x) / seconds, weight_bytes=packed,
                         agreement=agreement))
    base = rows[0]
    print(f"\n{len(x)} images, batch {args.batch_size}, {os.path.basename(path)}")
    print("| implementation | seconds | images/s | speed vs first row | weight bytes | "
          "memory vs first row | same predictions |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["speed_ratio"] = base["seconds"] / r["seconds"]
        r["memory_ratio"] = base["weight_bytes"] / r["weight_bytes"]
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.4f}"
        print(f"| {r['implementation']} | {r['seconds']:.3f} | {r['images_per_second']:.0f} | "
              f"{r['speed_ratio']:.2f}x | {r['weight_bytes']} | {r['memory_ratio']:.1f}x | "
              f"{agree} |")
    report = dict(benchmark="binary_inference", engine=os.path.abspath(path), n=len(x),
                  machine=platform.machine(), cpus=os.cpu_count(), rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
