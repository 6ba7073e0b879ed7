"""advlib on TensorFlow, JAX and PyTorch, on the same weights: numbers and times.

Trains the digits CNN (`advlib.models.small_cnn`) once on TensorFlow, or
loads the `.keras` model given with `--model` (for the issue's setting, the
fast-AT Fashion-MNIST CNN of `examples/adversarial_training.py`), writes it
out, and runs in one fresh process per backend, on the same weights and test
images:
- FGSM at eps 0.1, whose examples must agree with TensorFlow's to 1e-6 (wherever
  the gradient entry is at least 1e-7);
- PGD-40 (step 2.5 eps / 40, no random start), timed;
- CW-L2 and FMN-L2 (`--cw-iterations`, `--fmn-steps`): median L2 of the
  successful examples, which must agree within 1%;
- AutoAttack standard at eps `--eps` (0.1): robust accuracy, which must agree
  within +-0.3 points (its members draw their random numbers per backend),
  timed.

Prints a table with each backend's time as a ratio to TensorFlow's, measured in
the same run, and writes JSON to `--out`.

    python benchmarks/backend_agreement.py [--n 360] [--backends tensorflow,jax,torch]
    python benchmarks/backend_agreement.py --dataset fashion-mnist \\
        --model adv_out/fast_fashion-mnist.keras --n 1000 --min-norm-n 200

The shared model, images and settings, and each backend's results, are kept in
a folder (printed at the start); `--resume FOLDER` runs only the backends whose
results are missing there, on the same files, and tabulates them all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

WORKER = r"""
import json, sys, time
import numpy as np
from advlib import attacks, backend
from advlib.models import load_model
data = np.load(sys.argv[1])
settings = json.loads(sys.argv[3])
x, y = data["x"], data["y"]
model = load_model(settings["model"])
eps = settings["eps"]
bounds = dict(clip_min=0.0, clip_max=1.0)
out, seconds = {}, {}

def timed(name, fn):
    fn()  # compiles
    start = time.perf_counter()
    value = fn()
    seconds[name] = time.perf_counter() - start
    return value

out["fgsm"] = attacks.FastGradientMethod(model).generate_np(x, y=y, eps=eps, **bounds)
timed("pgd40", lambda: attacks.BasicIterativeMethod(model).generate_np(
    x, y=y, eps=eps, eps_iter=2.5 * eps / 40, nb_iter=40, batch_size=None, **bounds))
few = slice(0, settings["min_norm_n"])
for name, attack, params in (
    ("cw", attacks.CarliniWagnerL2, dict(max_iterations=settings["cw_iterations"])),
    ("fmn", attacks.FMN, dict(norm=2, steps=settings["fmn_steps"])),
):
    result = attack(model).run(x[few], y[few], batch_size=None, **params, **bounds)
    out[name + "_median_l2"] = np.array(np.median(result.l2[result.success]))
start = time.perf_counter()
result = attacks.AutoAttack(model, eps=eps, version="standard", seed=0).run(
    x, y, batch_size=settings["batch_size"], **bounds)
seconds["autoattack"] = time.perf_counter() - start
out["autoattack_robust"] = np.array(1.0 - result.success_rate)
np.savez(sys.argv[2], **out, **{"seconds_" + k: np.array(v) for k, v in seconds.items()},
         device=np.array(backend.device()))
"""


def run_backend(name: str, shared: str, folder: str, settings: dict) -> dict:
    out = os.path.join(folder, f"{name}.npz")
    if os.path.exists(out):  # finished in an earlier, interrupted run
        with np.load(out) as data:
            return {key: data[key] for key in data.files}
    env = dict(os.environ, KERAS_BACKEND=name, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", WORKER, shared, out, json.dumps(settings)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", help="digits or fashion-mnist")
    parser.add_argument(
        "--model", help="a .keras model of the data set (default: train the digits CNN)"
    )
    parser.add_argument("--n", type=int, default=360, help="test images")
    parser.add_argument(
        "--min-norm-n", type=int, default=None, help="of those, how many CW and FMN run on"
    )
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument(
        "--batch-size", type=int, default=500, help="AutoAttack's batch (default 500)"
    )
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--cw-iterations", type=int, default=100)
    parser.add_argument("--fmn-steps", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/backend_agreement.json")
    parser.add_argument(
        "--resume", metavar="FOLDER", help="an interrupted run's folder: run what it lacks"
    )
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        raise SystemExit(f"{args.out} exists; pass another --out (results are never overwritten)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from advlib import backend
    from advlib.datasets import load
    from advlib.models import load_model, small_cnn, train_classifier

    if args.resume:
        folder = args.resume
        with open(os.path.join(folder, "settings.json")) as handle:
            settings = json.load(handle)
        args.dataset, args.n, args.eps = settings["dataset"], settings["n"], settings["eps"]
        args.model = settings["model_source"]
        model = load_model(settings["model"])
    else:
        folder = tempfile.mkdtemp(prefix="advlib-backends-")
        if args.model:
            model = load_model(args.model)
        else:
            (x_train, y_train), _ = load(args.dataset)
            model = train_classifier(
                small_cnn(x_train.shape[1:]), x_train, y_train, epochs=15, seed=0
            )
        # every backend loads this one file: the same weights, bit for bit
        model.save(os.path.join(folder, "model.keras"))
        _, (x_test, y_test) = load(args.dataset)
        np.savez(os.path.join(folder, "shared.npz"), x=x_test[: args.n], y=y_test[: args.n])
        settings = {
            "model": os.path.join(folder, "model.keras"),
            "model_source": args.model,
            "dataset": args.dataset,
            "n": args.n,
            "eps": args.eps,
            "batch_size": args.batch_size,
            "min_norm_n": args.min_norm_n or args.n,
            "cw_iterations": args.cw_iterations,
            "fmn_steps": args.fmn_steps,
        }
        with open(os.path.join(folder, "settings.json"), "w") as handle:
            json.dump(settings, handle)
    print(f"shared files and each backend's results: {folder}", flush=True)
    shared = os.path.join(folder, "shared.npz")
    with np.load(shared) as data:
        x_test, y_test = data["x"], data["y"]
    names = args.backends.split(",")
    runs = {name: run_backend(name, shared, folder, settings) for name in names}
    reference = runs[names[0]]
    from advlib.losses import cross_entropy
    from advlib.models import KerasModelWrapper

    gradient = backend.to_numpy(
        KerasModelWrapper(model).loss_gradient(x_test, y_test, cross_entropy)[1]
    )
    clear = np.abs(gradient) >= 1e-7
    rows = []
    print(
        f"{args.dataset}, {args.n} test images (CW and FMN on {settings['min_norm_n']}), "
        f"eps {args.eps}, the same weights; times as ratios to {names[0]}"
    )
    print(
        "| backend | FGSM max diff | CW median L2 | FMN median L2 | AutoAttack robust "
        "| PGD-40 s (ratio) | AutoAttack s (ratio) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        row = {
            "backend": name,
            "device": str(run["device"]),
            "fgsm_max_abs_difference": float(np.abs(run["fgsm"] - reference["fgsm"])[clear].max()),
            "cw_median_l2": float(run["cw_median_l2"]),
            "fmn_median_l2": float(run["fmn_median_l2"]),
            "autoattack_robust_accuracy": float(run["autoattack_robust"]),
            "pgd40_seconds": float(run["seconds_pgd40"]),
            "autoattack_seconds": float(run["seconds_autoattack"]),
        }
        rows.append(row)
        pgd_ratio = row["pgd40_seconds"] / float(reference["seconds_pgd40"])
        aa_ratio = row["autoattack_seconds"] / float(reference["seconds_autoattack"])
        print(
            f"| {name} | {row['fgsm_max_abs_difference']:.1e} | {row['cw_median_l2']:.4f} "
            f"| {row['fmn_median_l2']:.4f} | {row['autoattack_robust_accuracy']:.4f} "
            f"| {row['pgd40_seconds']:.2f} ({pgd_ratio:.2f}x) "
            f"| {row['autoattack_seconds']:.1f} ({aa_ratio:.2f}x) |"
        )
    report = {
        "dataset": args.dataset,
        "model": args.model or "small_cnn trained on digits",
        "n": args.n,
        "eps": args.eps,
        "settings": {k: v for k, v in settings.items() if k != "model"},
        "rows": rows,
    }
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
