"""Where exact verification of binary networks is practical: `verify()` on the
first test digits, per network and eps, with both backends if asked.

    python benchmarks/verification.py                       # the table in RESULTS.md
    python benchmarks/verification.py --backends milp sat --n 30 --time-limit 5

Trains three binary networks on digits (a 64-32-32-10 MLP, the 64-256-256-256-10
MLP and the 32-32-64-64 CNN of the tests), exports their engines, and decides
every digit of each (network, eps) cell without attacks first. Prints a
Markdown table (robust / broken / unknown, median, 95th percentile and maximum
seconds per digit) and writes JSON to --out.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from advlib import qnn  # noqa: E402
from advlib.datasets import load  # noqa: E402
from advlib.qnn.engine import BinaryEngine  # noqa: E402
from advlib.qnn.verify import verify  # noqa: E402

NETWORKS = {
    "mlp-32x2": lambda: qnn.binary_mlp((8, 8, 1), width=32, depth=2),
    "mlp-256x3": lambda: qnn.binary_mlp((8, 8, 1), width=256),
    "cnn": lambda: qnn.binary_cnn((8, 8, 1), filters=(32, 32, 64, 64), dense=128),
}
# (network, eps values, digits) of the table
CELLS = [("mlp-32x2", (1 / 255, 2 / 255, 4 / 255, 8 / 255), 360),
         ("mlp-256x3", (1 / 255, 2 / 255), 10),
         ("cnn", (1 / 255, 2 / 255), 10)]


def engine_for(name, data, folder):
    (x_train, y_train), _ = data
    path = os.path.join(folder, f"{name}.npz")
    if not os.path.exists(path):
        keras.utils.set_random_seed(0)
        model = NETWORKS[name]()
        model.compile(keras.optimizers.Adam(3e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, epochs=15 if name == "cnn" else 20, batch_size=64,
                  verbose=0)
        qnn.export(model, path)
    return BinaryEngine.load(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["milp"], choices=["milp", "sat"])
    parser.add_argument("--n", type=int, help="digits per cell (default: the table's)")
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--out", default="verification_results")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    data = load("digits")
    _, (x, y) = data
    rows = []
    print("| network | backend | eps | digits | robust | broken | unknown | median s | p95 s "
          "| max s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, eps_values, n in CELLS:
        engine = engine_for(name, data, args.out)
        n = args.n or n
        for backend in args.backends:
            for eps in eps_values:
                start = time.perf_counter()
                result = verify(engine, x[:n], y[:n], eps, time_limit=args.time_limit,
                                backend=backend)
                row = dict(network=name, backend=backend, eps=eps, n=n, **result.counts(),
                           **result.times(), wall=time.perf_counter() - start)
                rows.append(row)
                print(f"| {name} | {backend} | {round(eps * 255)}/255 | {n} | {row['robust']} | "
                      f"{row['broken']} | {row['unknown']} | {row['median']:.3f} | "
                      f"{row['p95']:.3f} | {row['max']:.2f} |", flush=True)
    with open(os.path.join(args.out, "verification.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
