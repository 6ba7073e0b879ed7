"""SPSA: advlib's batched attack against one example at a time (cleverhans 4's way).

Setup: the digits CNN (15 epochs, seed 0), the first `--n` correctly
classified test digits, L-inf eps 0.2, `--nb-iter` Adam iterations with 128
samples, lr 0.01, delta 0.01, no early stop (cleverhans's default), so both
make the same number of model queries. advlib also runs one example at a
time, the execution model cleverhans imposes. Each runs once after a warm-up on
two examples; an implementation that fails is reported with its error.
Prints a table and writes JSON to `--out`.

    python benchmarks/spsa_speed.py [--n 50] [--nb-iter 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from advlib.attacks import SPSA
from advlib.datasets import load
from advlib.models import KerasModelWrapper, small_cnn, train_classifier

HERE = os.path.dirname(os.path.abspath(__file__))
PARAMS = dict(eps=0.2, learning_rate=0.01, delta=0.01, spsa_samples=128, clip_min=0.0, clip_max=1.0)


def run_advlib(model, x, y, nb_iter):
    return SPSA(model).generate_np(x, batch_size=len(x), y=y, nb_iter=nb_iter, seed=0, **PARAMS)


def run_advlib_one_by_one(model, x, y, nb_iter):
    """cleverhans's execution model (a batch of 1), with advlib's code."""
    attack = SPSA(model)
    return np.concatenate(
        [
            attack.generate_np(x[i : i + 1], y=y[i : i + 1], nb_iter=nb_iter, seed=0, **PARAMS)
            for i in range(len(x))
        ]
    )


def run_cleverhans(model, x, y, nb_iter):
    from cleverhans.tf2.attacks.spsa import spsa

    return np.concatenate(
        [
            spsa(
                model,
                tf.constant(x[i : i + 1]),
                tf.constant(y[i : i + 1]),
                nb_iter=nb_iter,
                **PARAMS,
            ).numpy()
            for i in range(len(x))
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--nb-iter", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "spsa_speed.json"))
    args = parser.parse_args(argv)
    (x_train, y_train), (x_test, y_test) = load("digits")
    model = train_classifier(small_cnn((8, 8, 1)), x_train, y_train, epochs=15, seed=0)
    wrapped = KerasModelWrapper(model)
    keep = np.flatnonzero(wrapped.predict_classes(x_test).numpy() == y_test)[: args.n]
    x, y = x_test[keep], y_test[keep]
    runners = {"advlib (batched)": run_advlib, "advlib, one at a time": run_advlib_one_by_one}
    try:
        import cleverhans  # noqa: F401

        runners["cleverhans 4 (batch of 1)"] = run_cleverhans
    except ImportError:
        print("cleverhans is not installed: advlib only")
    rows = []
    for name, run in runners.items():
        try:
            run(model, x[:2], y[:2], 2)  # warm-up: tracing
        except Exception as error:  # a peer that does not run on Keras 3 is a result too
            rows.append(dict(implementation=name, crashed=f"{type(error).__name__}: {error}"))
            continue
        start = time.perf_counter()
        x_adv = run(model, x, y, args.nb_iter)
        seconds = time.perf_counter() - start
        linf = np.abs(x_adv - x).reshape(len(x), -1).max(axis=1)
        rows.append(
            dict(
                implementation=name,
                seconds=seconds,
                success=float(np.mean(wrapped.predict_classes(x_adv).numpy() != y)),
                max_linf=float(linf.max()),
            )
        )
    base = rows[0]["seconds"]
    print(f"\nSPSA, {len(x)} digits, {args.nb_iter} iterations x 128 samples, eps 0.2")
    print("| implementation | seconds | time / advlib | success | max L-inf |")
    print("|---|---|---|---|---|")
    for row in rows:
        if "crashed" in row:
            print(f"| {row['implementation']} | crashed: {row['crashed']} | | | |")
            continue
        print(
            f"| {row['implementation']} | {row['seconds']:.1f} | "
            f"{row['seconds'] / base:.1f}x | {row['success']:.2f} | {row['max_linf']:.3f} |"
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(
            {
                "benchmark": "spsa_speed",
                "n": len(x),
                "nb_iter": args.nb_iter,
                "params": PARAMS,
                "rows": rows,
            },
            handle,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
