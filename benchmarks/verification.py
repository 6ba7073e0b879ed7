"""Where exact verification of binary networks is practical: `verify()` on the
first test images, per network and eps, with both backends if asked.

    python benchmarks/verification.py                        # issue 13's table
    python benchmarks/verification.py --cells small          # the sizes table of RESULTS.md
    python benchmarks/verification.py --networks cnn --n 30  # one network, fewer images
    python benchmarks/verification.py --backends milp sat --n 30 --time-limit 5

Trains the binary networks (on digits: a 64-32-32-10 MLP, the 64-256-256-256-10
MLP and the 32-32-64-64 CNN of the tests; on Fashion-MNIST: a 784-256-256-10
MLP, trained as usual and with `VerifiableModel`'s instability loss), exports
their engines, and decides every image of each (network, eps)
cell without attacks first, so each cell shows what the verifier decides on
its own (in the harness, the attacks take the easy counterexamples first).
Prints a Markdown table (clean accuracy, robust / broken / unknown, how many the local
search broke, median, 95th percentile and maximum seconds per image) and
writes JSON to --out after every cell, so an interrupted run keeps its rows.
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
from advlib.qnn.stability import VerifiableModel
from advlib.qnn.verify import verify

# name: (builder, data set, epochs, batch size, (eps, weight) of VerifiableModel or None)
NETWORKS = {
    "mlp-32x2": (lambda shape: qnn.binary_mlp(shape, width=32, depth=2), "digits", 20, 64, None),
    "mlp-256x3": (lambda shape: qnn.binary_mlp(shape, width=256), "digits", 20, 64, None),
    "cnn": (
        lambda shape: qnn.binary_cnn(shape, filters=(32, 32, 64, 64), dense=128),
        "digits",
        15,
        64,
        None,
    ),
    "fm-mlp-256x2": (
        lambda shape: qnn.binary_mlp(shape, width=256, depth=2),
        "fashion-mnist",
        5,
        128,
        None,
    ),
    # the same MLP trained with the instability loss over eps-0.03 balls
    "fm-mlp-256x2-verifiable": (
        lambda shape: qnn.binary_mlp(shape, width=256, depth=2),
        "fashion-mnist",
        10,
        128,
        (0.03, 2.0),
    ),
}
# (network, eps values, images, seconds per image)
CELLS = {
    "issue": [
        ("mlp-32x2", (0.05, 0.1, 0.2), 360, 30.0),
        ("cnn", (0.05, 0.1, 0.2), 360, 30.0),
        ("fm-mlp-256x2", (1 / 255, 2 / 255, 0.02), 200, 60.0),
        ("fm-mlp-256x2-verifiable", (1 / 255, 2 / 255, 0.02), 200, 60.0),
    ],
    "small": [
        ("mlp-32x2", (1 / 255, 2 / 255, 4 / 255, 8 / 255), 360, 10.0),
        ("mlp-256x3", (1 / 255, 2 / 255), 10, 10.0),
        ("cnn", (1 / 255, 2 / 255), 10, 10.0),
    ],
}


def engine_for(name, folder):
    build, dataset, epochs, batch_size, stability = NETWORKS[name]
    data = load(dataset)
    (x_train, y_train), _ = data
    path = os.path.join(folder, f"{name}.npz")
    if not os.path.exists(path):
        keras.utils.set_random_seed(0)
        model = build(x_train.shape[1:])
        trained = model if stability is None else VerifiableModel(model, *stability)
        trained.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        trained.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
        qnn.export(model, path)
    return BinaryEngine.load(path), data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="issue", choices=sorted(CELLS))
    parser.add_argument(
        "--networks", nargs="+", choices=sorted(NETWORKS), help="only these networks' cells"
    )
    parser.add_argument("--backends", nargs="+", default=["milp"], choices=["milp", "sat"])
    parser.add_argument("--n", type=int, help="images per cell (default: the table's)")
    parser.add_argument("--time-limit", type=float, help="seconds per image (default: the table's)")
    parser.add_argument(
        "--eps", type=float, nargs="+", help="these eps, in this order (default: the table's)"
    )
    parser.add_argument("--search-share", type=float, default=0.5)
    parser.add_argument("--progress", action="store_true", help="a bar per cell")
    parser.add_argument("--out", default="verification_results")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    print(
        "| network | backend | eps | images | clean | robust | broken (by the search) | "
        "unknown | decided | median s | p95 s | max s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, eps_values, n, time_limit in CELLS[args.cells]:
        if args.networks and name not in args.networks:
            continue
        engine, data = engine_for(name, args.out)
        _, (x, y) = data
        n = args.n or n
        time_limit = args.time_limit or time_limit
        clean = float((engine.predict_classes(x[:n]) == y[:n]).mean())
        for backend in args.backends:
            for eps in args.eps or eps_values:
                start = time.perf_counter()
                result = verify(
                    engine,
                    x[:n],
                    y[:n],
                    eps,
                    time_limit=time_limit,
                    backend=backend,
                    search_share=args.search_share,
                    progress=args.progress,
                )
                counts = result.counts()
                searched = sum("local search" in v.reason for v in result.verdicts)
                row = dict(
                    network=name,
                    backend=backend,
                    eps=eps,
                    n=n,
                    clean=clean,
                    time_limit=time_limit,
                    **counts,
                    by_search=searched,
                    **result.times(),
                    decided=(counts["robust"] + counts["broken"]) / n,
                    wall=time.perf_counter() - start,
                )
                rows.append(row)
                print(
                    f"| {name} | {backend} | {eps:.4g} | {n} | {100 * clean:.1f}% | "
                    f"{row['robust']} | "
                    f"{row['broken']} ({searched}) | {row['unknown']} | "
                    f"{100 * row['decided']:.1f}% | {row['median']:.3f} | "
                    f"{row['p95']:.3f} | {row['max']:.2f} |",
                    flush=True,
                )
                with open(os.path.join(args.out, "verification.json"), "w") as handle:
                    json.dump(rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
