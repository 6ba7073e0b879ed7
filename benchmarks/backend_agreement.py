"""advlib on TensorFlow, JAX and PyTorch, on the same weights: numbers and times.

Trains the digits CNN (`advlib.models.small_cnn`) once on TensorFlow, or
loads the `.keras` model given with `--model` (for the issue's setting, the
fast-AT Fashion-MNIST CNN of `examples/adversarial_training.py`), writes it
out, and runs in one fresh process per backend, on the same weights and test
images:
- FGSM at eps 0.1, whose examples must agree with TensorFlow's to 1e-6 (wherever
  the gradient entry is at least 1e-7), on the test images and again on the
  same images with their ties broken: each pixel moved by less than 1e-3, so
  that no two convolution outputs in a max-pooling window are equal (flat
  regions of equal pixels tie them, and a backend that sums in another order
  may route a tied window's gradient to another pixel);
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
    python benchmarks/backend_agreement.py ... --sections fgsm  # FGSM alone

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

sections = settings.get("sections", ["fgsm", "pgd40", "min-norm", "autoattack"])
if "fgsm" in sections:
    fgsm = attacks.FastGradientMethod(model)
    out["fgsm"] = fgsm.generate_np(x, y=y, eps=eps, **bounds)
    out["fgsm_ties_broken"] = fgsm.generate_np(data["x_ties_broken"], y=y, eps=eps, **bounds)
if "pgd40" in sections:
    timed("pgd40", lambda: attacks.BasicIterativeMethod(model).generate_np(
        x, y=y, eps=eps, eps_iter=2.5 * eps / 40, nb_iter=40, batch_size=None, **bounds))
few = slice(0, settings["min_norm_n"])
for name, attack, params in (
    ("cw", attacks.CarliniWagnerL2, dict(max_iterations=settings["cw_iterations"])),
    ("fmn", attacks.FMN, dict(norm=2, steps=settings["fmn_steps"])),
):
    if "min-norm" in sections:
        result = attack(model).run(x[few], y[few], batch_size=None, **params, **bounds)
        out[name + "_median_l2"] = np.array(np.median(result.l2[result.success]))
if "autoattack" in sections:
    start = time.perf_counter()
    result = attacks.AutoAttack(model, eps=eps, version="standard", seed=0).run(
        x, y, batch_size=settings["batch_size"], **bounds)
    seconds["autoattack"] = time.perf_counter() - start
    out["autoattack_robust"] = np.array(1.0 - result.success_rate)
np.savez(sys.argv[2], **out, **{"seconds_" + k: np.array(v) for k, v in seconds.items()},
         device=np.array(backend.device()))
"""


SECTIONS = ("fgsm", "pgd40", "min-norm", "autoattack")


def checked_sections(parser: argparse.ArgumentParser, args, known) -> list[str]:
    """The sections named by `--sections`, after refusing an unknown one and an
    `--out` that exists (results are never overwritten)."""
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(known))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {', '.join(known)}")
    if os.path.exists(args.out):
        raise SystemExit(f"{args.out} exists; pass another --out (results are never overwritten)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return sections


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
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"which measurements, comma-separated, of {', '.join(SECTIONS)} (default all)",
    )
    parser.add_argument("--out", default="benchmarks/backend_agreement.json")
    parser.add_argument(
        "--resume", metavar="FOLDER", help="an interrupted run's folder: run what it lacks"
    )
    args = parser.parse_args(argv)
    sections = checked_sections(parser, args, SECTIONS)
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
        x_test, y_test = x_test[: args.n], y_test[: args.n]
        # a dither below 1e-3 that keeps [0, 1] without clipping, which would tie pixels again
        dither = np.random.default_rng(0).uniform(0.0, 1e-3, x_test.shape)
        x_ties_broken = (x_test * (1.0 - 1e-3) + dither).astype(x_test.dtype)
        np.savez(
            os.path.join(folder, "shared.npz"), x=x_test, y=y_test, x_ties_broken=x_ties_broken
        )
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
            "sections": sections,
        }
        with open(os.path.join(folder, "settings.json"), "w") as handle:
            json.dump(settings, handle)
    print(f"shared files and each backend's results: {folder}", flush=True)
    shared = os.path.join(folder, "shared.npz")
    with np.load(shared) as data:
        images = {key: data[key] for key in data.files}
    names = args.backends.split(",")
    runs = {name: run_backend(name, shared, folder, settings) for name in names}
    reference = runs[names[0]]
    from advlib.losses import cross_entropy
    from advlib.models import KerasModelWrapper

    wrapper = KerasModelWrapper(model)
    clear = {}  # the entries whose gradient is at least 1e-7, where FGSM must agree
    for key, images_key in (("fgsm", "x"), ("fgsm_ties_broken", "x_ties_broken")):
        if key in reference and images_key in images:
            gradient = wrapper.loss_gradient(images[images_key], images["y"], cross_entropy)[1]
            clear[key] = np.abs(backend.to_numpy(gradient)) >= 1e-7
    columns = [
        ("FGSM entries off by > 1e-6", "fgsm_entries_differing", "fgsm" in clear),
        ("ties broken", "fgsm_ties_broken_entries_differing", "fgsm_ties_broken" in clear),
        ("CW median L2", "cw_median_l2", "cw_median_l2" in reference),
        ("FMN median L2", "fmn_median_l2", "fmn_median_l2" in reference),
        ("AutoAttack robust", "autoattack_robust_accuracy", "autoattack_robust" in reference),
        ("PGD-40 s (ratio)", "pgd40_seconds", "seconds_pgd40" in reference),
        ("AutoAttack s (ratio)", "autoattack_seconds", "seconds_autoattack" in reference),
    ]
    columns = [(title, key) for title, key, present in columns if present]
    rows = []
    min_norm = f" (CW and FMN on {settings['min_norm_n']})" if "cw_median_l2" in reference else ""
    print(
        f"{args.dataset}, {args.n} test images{min_norm}, eps {args.eps}, the same weights; "
        f"FGSM's entries counted where the gradient is at least 1e-7; times as ratios to "
        f"{names[0]}"
    )
    print("| backend | " + " | ".join(title for title, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, run in runs.items():
        row: dict = {"backend": name, "device": str(run["device"])}
        for key, mask in clear.items():
            off = np.abs(run[key] - reference[key]) > 1e-6
            row[key + "_entries_differing"] = int(off[mask].sum())
            row[key + "_entries_compared"] = int(mask.sum())
            row[key + "_max_abs_difference"] = float(np.abs(run[key] - reference[key])[mask].max())
        for key in ("cw_median_l2", "fmn_median_l2"):
            if key in run:
                row[key] = float(run[key])
        if "autoattack_robust" in run:
            row["autoattack_robust_accuracy"] = float(run["autoattack_robust"])
        for key in ("pgd40", "autoattack"):
            if "seconds_" + key in run:
                row[key + "_seconds"] = float(run["seconds_" + key])
        rows.append(row)
        cells = []
        for _, key in columns:
            value = row[key]
            if key.endswith("_entries_differing"):
                cells.append(f"{value} of {row[key.replace('differing', 'compared')]:,}")
            elif key.endswith("_seconds"):
                ratio = value / float(reference["seconds_" + key[: -len("_seconds")]])
                cells.append(f"{value:.2f} ({ratio:.2f}x)")
            else:
                cells.append(f"{value:.7f}" if "median" in key else f"{value:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
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
