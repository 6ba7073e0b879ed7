"""Adversarial training on TensorFlow, JAX and PyTorch, from the same initial weights.

Two measurements, each backend in a fresh process:

- **accuracy**: the madry recipe (PGD-7) on digits with the settings of
  `examples/adversarial_training.py` (`small_cnn`, eps 0.1, 10 epochs of
  batches of 100, Adam with a cosine decay from 1e-3), for each seed of
  `--seeds`. Every backend starts from the same initial weights (one `.keras`
  file per seed, written here) and reports clean and PGD-20 accuracy on the
  digits test split, which must agree with TensorFlow's within 2 points;
- **speed**: the time of one epoch of fast AT (`fast`, eps 0.1) on
  Fashion-MNIST, the first epoch (compilation included) and the second, with
  the ratio of the second to TensorFlow's; `--baseline-rev REV` adds advlib's
  TensorFlow training at an earlier commit, measured in the same run.

Prints the tables and writes JSON to `--out` (never over an existing file).

    python benchmarks/backend_training.py
    python benchmarks/backend_training.py --sections speed --baseline-rev 74a7e1c
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTIONS = ("accuracy", "speed")

WORKER = r"""
import json, sys, time
import numpy as np
import keras
from advlib.attacks import ProjectedGradientDescent
from advlib.models import KerasModelWrapper, load_model
from advlib.training import AdversarialModel

settings = json.loads(sys.argv[1])
data = np.load(settings["data"])
x_train, y_train = data["x_train"], data["y_train"]
x_test, y_test = data["x_test"], data["y_test"]
keras.utils.set_random_seed(settings["seed"])
model = load_model(settings["initial"])
robust = AdversarialModel.from_recipe(
    settings["recipe"], model, eps=settings["eps"], seed=settings["seed"])
steps = settings["epochs"] * -(-len(x_train) // settings["batch_size"])
robust.compile(
    keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.1)),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
seconds = []


class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds.append(time.perf_counter() - self.start)


robust.fit(x_train, y_train, epochs=settings["epochs"], batch_size=settings["batch_size"],
           verbose=0, callbacks=[Timer()])
out = {"epoch_seconds": seconds, "backend": keras.backend.backend()}
if settings["evaluate"]:
    wrapped = KerasModelWrapper(model)

    def accuracy(x):
        return float(np.mean(keras.ops.convert_to_numpy(wrapped.predict_classes(x)) == y_test))

    eps = settings["eps"]
    x_adv = ProjectedGradientDescent(wrapped).generate_np(
        x_test, y=y_test, eps=eps, eps_iter=2.5 * eps / 20, nb_iter=20, seed=0,
        clip_min=0.0, clip_max=1.0)
    out.update(clean=accuracy(x_test), pgd20=accuracy(x_adv))
with open(settings["out"], "w") as handle:
    json.dump(out, handle)
"""


def run(backend: str, settings: dict, source: str = ROOT) -> dict:
    """One training run in a fresh process on `backend`, with advlib from `source`."""
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(settings)],
        env=env,
        capture_output=True,
        text=True,
        cwd=source,
    )
    if done.returncode:
        raise SystemExit(f"{backend} failed:\n{done.stderr[-3000:]}")
    with open(settings["out"]) as handle:
        return json.load(handle)


def initial_weights(input_shape, seed: int, path: str) -> str:
    """An untrained `small_cnn` of seed `seed`, saved for every backend to load."""
    import keras

    from advlib.models import small_cnn

    keras.utils.set_random_seed(seed)
    small_cnn(input_shape).save(path)
    return path


def accuracy_section(args, folder: str, backends: list[str]) -> list[dict]:
    from advlib.datasets import load

    (x_train, y_train), (x_test, y_test) = load("digits")
    data = os.path.join(folder, "digits.npz")
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    rows = []
    for seed in args.seeds:
        initial = initial_weights(
            x_train.shape[1:], seed, os.path.join(folder, f"init{seed}.keras")
        )
        for backend in backends:
            settings = dict(
                data=data,
                initial=initial,
                seed=seed,
                recipe="madry",
                eps=0.1,
                epochs=args.epochs,
                batch_size=100,
                evaluate=True,
                out=os.path.join(folder, f"madry_{backend}_{seed}.json"),
            )
            result = run(backend, settings)
            rows.append({**result, "seed": seed, "backend": backend})
            print(
                f"  seed {seed}, {backend}: clean {result['clean']:.4f}, "
                f"PGD-20 {result['pgd20']:.4f}",
                flush=True,
            )
    print(
        f"\nmadry (PGD-7) on digits, {args.epochs} epochs, eps 0.1, the same initial "
        "weights per seed; accuracy on the test split (PGD-20: step 2.5 eps / 20)"
    )
    print("| backend | seed | clean | PGD-20 | clean - TF | PGD-20 - TF |")
    print("|---|---|---|---|---|---|")
    reference = {row["seed"]: row for row in rows if row["backend"] == backends[0]}
    for row in rows:
        base = reference[row["seed"]]
        print(
            f"| {row['backend']} | {row['seed']} | {row['clean']:.2%} | {row['pgd20']:.2%} "
            f"| {100 * (row['clean'] - base['clean']):+.1f} "
            f"| {100 * (row['pgd20'] - base['pgd20']):+.1f} |"
        )
    for backend in backends:
        mine = [row for row in rows if row["backend"] == backend]
        print(
            f"| {backend} | mean | {np.mean([r['clean'] for r in mine]):.2%} "
            f"| {np.mean([r['pgd20'] for r in mine]):.2%} | | |"
        )
    return rows


def speed_section(args, folder: str, backends: list[str]) -> list[dict]:
    from advlib.datasets import load

    (x_train, y_train), (x_test, y_test) = load("fashion-mnist")
    x_train, y_train = x_train[: args.speed_n], y_train[: args.speed_n]
    data = os.path.join(folder, "fashion.npz")
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test[:10], y_test=y_test[:10])
    initial = initial_weights(x_train.shape[1:], 0, os.path.join(folder, "init_fashion.keras"))
    runs = [(backend, backend, ROOT) for backend in backends]
    if args.baseline_rev:
        from attack_speed import advlib_tree

        tree = advlib_tree(args.baseline_rev, os.path.join(folder, "baseline"))
        runs.insert(0, (f"tensorflow at {args.baseline_rev}", "tensorflow", tree))
    rows = [dict(label=label, rounds=[]) for label, _, _ in runs]
    for round_ in range(args.repeats):  # rounds interleaved, so drifts hit every run alike
        for row, (label, backend, source) in zip(rows, runs):
            settings = dict(
                data=data,
                initial=initial,
                seed=0,
                recipe="fast",
                eps=0.1,
                epochs=2,
                batch_size=100,
                evaluate=False,
                out=os.path.join(folder, f"fast_{len(row['rounds'])}_{label}.json"),
            )
            result = run(backend, settings, source)
            row["rounds"].append(result["epoch_seconds"])
            print(f"  round {round_ + 1}, {label}: epochs of {result['epoch_seconds']}", flush=True)
    for row in rows:  # the best round of each: the least disturbed
        row["first_epoch_seconds"] = min(epochs[0] for epochs in row["rounds"])
        row["second_epoch_seconds"] = min(epochs[1] for epochs in row["rounds"])
    reference = next(row for row in rows if row["label"] == backends[0])["second_epoch_seconds"]
    print(
        f"\nfast AT on Fashion-MNIST, {len(x_train):,} images an epoch, batches of 100, "
        f"the best of {args.repeats} round(s); the second epoch's time as a ratio to "
        f"{backends[0]}'s"
    )
    print("| run | first epoch s (compiling) | second epoch s | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        first, second = row["first_epoch_seconds"], row["second_epoch_seconds"]
        print(f"| {row['label']} | {first:.1f} | {second:.1f} | {second / reference:.2f}x |")
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="accuracy, speed or both (default)"
    )
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="madry's epochs on digits")
    parser.add_argument(
        "--speed-n", type=int, default=60000, help="Fashion-MNIST images in a timed epoch"
    )
    parser.add_argument("--baseline-rev", default=None, help="also time TensorFlow at this commit")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the speed section")
    parser.add_argument("--out", default=os.path.join(HERE, "backend_training.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, HERE)
    from backend_agreement import checked_sections

    sections = checked_sections(parser, args, SECTIONS)
    backends = args.backends.split(",")
    folder = tempfile.mkdtemp(prefix="advlib-training-")
    print(f"initial weights, data and each run's results: {folder}", flush=True)
    report: dict = {"backends": backends, "folder": folder}
    if "accuracy" in sections:
        report["accuracy"] = accuracy_section(args, folder, backends)
    if "speed" in sections:
        report["speed"] = speed_section(args, folder, backends)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
