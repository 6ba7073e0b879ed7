"""Certified against empirical robustness of one model: randomized smoothing.

For each sigma:
1. train a CNN with Gaussian data augmentation (the "gaussian" recipe);
2. run the harness's certify protocol on it: the attack ensemble at L2 eps
   (the empirical figure of the base model) and Cohen et al.'s CERTIFY (the
   certified figure of the smoothed model) on the same test images;
3. print the table and draw both curves of every sigma in one figure.

    python examples/certified_robustness.py                  # Fashion-MNIST, sigma 0.25 and 0.5
    python examples/certified_robustness.py --dataset digits --epochs 5 --n 60 \\
        --samples 1000 --quick                               # a minute on a laptop

An interrupted run resumes: trained models are reused and each harness run
continues from its last finished batch (`--out-dir` keeps both).
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from advlib import bench
from advlib.bench import protocol as protocols
from advlib.datasets import load
from advlib.models import load_model, small_cnn
from advlib.training import AdversarialModel

PROTOCOLS = {"digits": "digits-l2-certified", "fashion-mnist": "fashion-mnist-l2-certified"}


def train_gaussian(data, sigma, epochs, batch_size, seed, path):
    """The base classifier for smoothing at `sigma`; reused from `path` if saved."""
    if os.path.exists(path):
        print(f"reusing {path}")
        return load_model(path)
    (x_train, y_train), _ = data
    keras.utils.set_random_seed(seed)
    model = small_cnn(x_train.shape[1:])
    trainer = AdversarialModel.from_recipe("gaussian", model, sigma=sigma, seed=seed)
    trainer.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    trainer.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=2)
    model.save(path)
    return model


def protocol_for(dataset, sigma, n, samples, quick):
    """The dataset's certify protocol at `sigma` (renamed when it differs from the
    shipped one, so that its reports are never ranked with the shipped protocol's)."""
    document = protocols.load(PROTOCOLS[dataset])
    document["certify"]["sigma"] = sigma
    if n is not None:
        document["dataset"]["n"] = n
        document["batch_size"] = min(document["batch_size"], n)
    if samples is not None:
        document["certify"]["n"] = samples
    if quick:  # the harness mechanics only: APGD-CE, FMN and FAB with 10 steps
        document["attacks"] = [
            {
                "name": "apgd-ce",
                "attack": "APGD",
                "params": {"nb_iter": 10, "loss": "ce", "nb_restarts": 1},
            }
        ]
        document["headline"]["attacks"] = ["apgd-ce"]
        document.pop("sweep_attacks", None)
        document["diagnostics"] = {"n": 20, "spsa_iterations": 0}
        for entry in document.get("min_norm", {}).get("attacks", []):
            for steps in ("steps", "nb_iter"):
                if steps in entry["params"]:
                    entry["params"][steps] = 10
    if document != protocols.load(PROTOCOLS[dataset]):
        document["name"] += f"-sigma{sigma:g}" + ("-custom" if n or samples or quick else "")
    return protocols.validate(document)


def run(sigma, args, data):
    path = os.path.join(args.out_dir, f"gaussian_{sigma:g}_{args.dataset}.keras")
    model = train_gaussian(data, sigma, args.epochs, args.batch_size, args.seed, path)
    folder = os.path.join(args.out_dir, f"sigma_{sigma:g}")
    resume = os.path.exists(os.path.join(folder, "state.json"))
    return bench.evaluate(
        model,
        protocol=protocol_for(args.dataset, sigma, args.n, args.samples, args.quick),
        out_dir=folder,
        resume=resume,
        progress=not args.quiet,
        model_name=f"gaussian sigma={sigma:g}",
    )


def plot(reports, path):
    """Per sigma: certified accuracy of the smoothed model and the attacks' robust
    accuracy of the base model, against the L2 radius."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for (sigma, report), color in zip(reports.items(), plt.rcParams["axes.prop_cycle"]):
        certified = report["results"]["certified"]["per_radius"]
        axis.plot(
            [p["radius"] for p in certified],
            [p["certified_accuracy"]["value"] for p in certified],
            "-^",
            color=color["color"],
            label=f"sigma={sigma:g}: certified (smoothed)",
        )
        per_eps = sorted(report["results"]["per_eps"], key=lambda e: e["eps"])
        axis.plot(
            [0.0] + [e["eps"] for e in per_eps],
            [report["results"]["clean_accuracy"]["value"]]
            + [e["robust_accuracy"]["value"] for e in per_eps],
            "--o",
            color=color["color"],
            alpha=0.7,
            label=f"sigma={sigma:g}: empirical (base model, attacks)",
        )
    axis.set_xlabel("L2 radius")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist", choices=sorted(PROTOCOLS))
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n", type=int, help="test examples (default: the protocol's)")
    parser.add_argument("--samples", type=int, help="CERTIFY's n (default: the protocol's)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="attack with APGD-CE only, and every attack with 10 steps (for a smoke test)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="certified_runs")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    for sigma in args.sigma:
        if sigma <= 0:
            parser.error(f"--sigma must be positive, got {sigma}")
    os.makedirs(args.out_dir, exist_ok=True)
    data = load(args.dataset)
    reports = {sigma: run(sigma, args, data) for sigma in args.sigma}
    print(
        "\n| sigma | clean (base) | smoothed | abstained | "
        + " | ".join(
            f"certified r={p['radius']:g}"
            for p in next(iter(reports.values()))["results"]["certified"]["per_radius"]
        )
        + " | certify seconds |"
    )
    summary = {}
    for sigma, report in reports.items():
        certified = report["results"]["certified"]
        values = [p["certified_accuracy"]["value"] for p in certified["per_radius"]]
        print(
            f"| {sigma:g} | {100 * report['results']['clean_accuracy']['value']:.1f}% | "
            f"{100 * certified['smoothed_accuracy']['value']:.1f}% | "
            f"{certified['abstained']} | "
            + " | ".join(f"{100 * v:.1f}%" for v in values)
            + f" | {certified['seconds']:.0f} |"
        )
        summary[f"{sigma:g}"] = {
            "clean": report["results"]["clean_accuracy"]["value"],
            "certified": certified,
            "empirical": [
                {"eps": e["eps"], "robust": e["robust_accuracy"]["value"]}
                for e in report["results"]["per_eps"]
            ],
        }
    figure = os.path.join(args.out_dir, "certified_vs_empirical.png")
    plot(reports, figure)
    with open(os.path.join(args.out_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"figure: {figure}")
    return summary


if __name__ == "__main__":
    main()
