"""What EEV's input quantization (`qnn.SteppedInput`) does to the verifier: the
same binary MLP on digits, trained as usual, with 8-bit inputs and on a grid of
0.25, verified by the SAT backend on the first 60 test digits (2 s each).

    python benchmarks/stepped_input_verification.py [--out stepped.json]

Prints one row per network and eps, and writes them as JSON.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from advlib import qnn
from advlib.datasets import load
from advlib.qnn.engine import BinaryEngine
from advlib.qnn.verify import verify


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="test digits to verify")
    parser.add_argument("--time-limit", type=float, default=2.0, help="seconds per digit")
    parser.add_argument("--out", default="stepped_input_verification.json")
    args = parser.parse_args(argv)
    (x_train, y_train), (x_test, y_test) = load("digits")
    rows = []
    print("| input | clean | eps | robust | broken | unknown | ms per digit |")
    print("|---|---|---|---|---|---|---|")
    for step in (None, 0.25):
        keras.utils.set_random_seed(0)
        model = qnn.binary_mlp((8, 8, 1), width=100, depth=2, input_step=step)
        model.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0)
        engine = BinaryEngine(**qnn.export(model))
        clean = float((engine.predict_classes(x_test) == y_test).mean())
        for eps in (0.05, 0.1):
            start = time.perf_counter()
            result = verify(
                engine,
                x_test[: args.n],
                y_test[: args.n],
                eps,
                time_limit=args.time_limit,
                backend="sat",
            )
            seconds = time.perf_counter() - start
            counts = result.counts()
            name = "8-bit" if step is None else f"SteppedInput({step})"
            rows.append(dict(input=name, clean=clean, eps=eps, seconds=seconds, **counts))
            print(
                f"| {name} | {100 * clean:.1f}% | {eps} | {counts['robust']} | "
                f"{counts['broken']} | {counts['unknown']} | {1000 * seconds / args.n:.0f} |",
                flush=True,
            )
    with open(args.out, "w") as handle:
        json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
