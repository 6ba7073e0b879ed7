"""Every attack on the current Keras backend: seconds (compilation included) and success.

    KERAS_BACKEND=jax python benchmarks/backend_attacks.py [--out backend_attacks_jax.json]

Trains the tests' digits CNN (Conv2D(8) and a dense layer, 5 epochs, seed 0)
with `model.fit` on the backend that runs, attacks 100 test digits with each
attack once (L-inf eps 0.1 where the attack has an eps; small budgets), and
prints a table of seconds and success rates; writes JSON to `--out`. Run it
once per backend and read the columns side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
from sklearn.datasets import load_digits

from advlib import attacks, backend

CASES = {
    "FastGradientMethod": dict(eps=0.1),
    "BasicIterativeMethod": dict(eps=0.1, eps_iter=0.02, nb_iter=10),
    "ProjectedGradientDescent": dict(eps=0.1, eps_iter=0.02, nb_iter=10, seed=0),
    "MomentumIterativeMethod": dict(eps=0.1, eps_iter=0.02, nb_iter=10),
    "SaliencyMapMethod": dict(theta=1.0, gamma=0.1, seed=0),
    "CarliniWagnerL2": dict(max_iterations=30, binary_search_steps=3),
    "SPSA": dict(eps=0.1, nb_iter=5, seed=0, spsa_samples=32),
    "APGD": dict(eps=0.1, nb_iter=20, seed=0),
    "APGDT": dict(eps=0.1, nb_iter=10, seed=0, n_target_classes=3),
    "FAB": dict(eps=0.1, nb_iter=10, seed=0),
    "FABT": dict(eps=0.1, nb_iter=10, seed=0, n_target_classes=3),
    "SquareAttack": dict(eps=0.1, n_queries=100, seed=0),
    "AutoAttack": dict(eps=0.1, version="standard", seed=0),
    "DeepFool": dict(max_iter=20),
    "FMN": dict(norm=2, steps=20),
    "ElasticNetMethod": dict(max_iterations=30, binary_search_steps=3),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file (default: by backend)")
    args = parser.parse_args(argv)
    out = args.out or f"benchmarks/backend_attacks_{backend.name()}.json"
    if os.path.exists(out):
        raise SystemExit(f"{out} exists; pass another --out (results are never overwritten)")
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1000], y[:1000], epochs=5, verbose=0)
    xs, ys = x[1000:1100], y[1000:1100]
    rows = {}
    print(f"backend {backend.name()} ({backend.device()})\n| attack | seconds | success |")
    print("|---|---|---|")
    for name, params in CASES.items():
        start = time.perf_counter()
        result = attacks.by_name(name)(model).run(xs, ys, clip_min=0.0, clip_max=1.0, **params)
        seconds = time.perf_counter() - start
        rows[name] = {"seconds": seconds, "success_rate": float(result.success_rate)}
        print(f"| {name} | {seconds:.2f} | {result.success_rate:.3f} |")
    report = {"backend": backend.name(), "device": backend.device(), "n": 100, "rows": rows}
    with open(out, "w") as handle:
        json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
