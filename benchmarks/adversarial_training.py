"""Time per epoch of each adversarial-training recipe, relative to clean training.

The cleverhans-tutorial CNN on `--n` Fashion-MNIST training images (digits
when Fashion-MNIST is absent), batch 100. Each configuration trains one
epoch to warm up (tracing) and then `--epochs` timed epochs; the mean timed
epoch counts. Expected: about 2x for the fast recipe (one attack step) and
k + 1 for PGD-k. Prints a table and writes JSON to `--out`.

    python benchmarks/adversarial_training.py [--n 10000] [--epochs 1]
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from advlib.datasets import load
from advlib.models import small_cnn
from advlib.training import AdversarialModel

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = [
    ("clean", None, {}),
    ("goodfellow (FGSM, 50/50)", "goodfellow", {}),
    ("fast (FGSM + random start)", "fast", {}),
    ("madry PGD-3", "madry", {"nb_iter": 3}),
    ("madry PGD-7", "madry", {}),
    ("trades (PGD-10 on KL)", "trades", {}),
]


def epoch_seconds(recipe, overrides, x, y, epochs, eps):
    keras.utils.set_random_seed(0)
    model = small_cnn(x.shape[1:])
    if recipe is None:
        trainer = model
        trainer.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    else:
        trainer = AdversarialModel.from_recipe(recipe, model, eps=eps, seed=0, **overrides)
        trainer.compile(keras.optimizers.Adam(1e-3))
    trainer.fit(x, y, epochs=1, batch_size=100, verbose=0)  # tracing
    start = time.perf_counter()
    trainer.fit(x, y, epochs=epochs, batch_size=100, verbose=0)
    return (time.perf_counter() - start) / epochs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "adversarial_training.json"))
    args = parser.parse_args(argv)
    try:
        (x, y), _ = load("fashion-mnist", download=False)
        source = "fashion-mnist"
    except FileNotFoundError:
        (x, y), _ = load("digits")
        source = "digits"
    x, y = x[: args.n], y[: args.n]
    rows = []
    for name, recipe, overrides in CONFIGS:
        seconds = epoch_seconds(recipe, overrides, x, y, args.epochs, args.eps)
        rows.append(dict(configuration=name, seconds_per_epoch=seconds))
        print(f"{name}: {seconds:.1f} s per epoch", flush=True)
    clean = rows[0]["seconds_per_epoch"]
    print(f"\n{source}, {len(x)} images, batch 100, eps {args.eps}")
    print("| training | seconds per epoch | relative to clean |")
    print("|---|---|---|")
    for r in rows:
        r["relative_to_clean"] = r["seconds_per_epoch"] / clean
        print(
            f"| {r['configuration']} | {r['seconds_per_epoch']:.1f} | "
            f"{r['relative_to_clean']:.2f}x |"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(
            dict(
                benchmark="adversarial_training",
                data=source,
                n=len(x),
                machine=platform.machine(),
                cpus=os.cpu_count(),
                rows=rows,
            ),
            handle,
            indent=2,
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
