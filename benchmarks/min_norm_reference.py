"""advlib's minimum-norm attacks against the references, on the same weights and data.

Rebuilds the Keras CNN in PyTorch with the same weights (logits must agree to
1e-4) and runs, on the first `--n` Fashion-MNIST test images:

- DeepFool L2 (50 steps, 10 candidates, overshoot 0.02): advlib's `DeepFool`,
  torchattacks' `DeepFool` and Foolbox's `L2DeepFoolAttack`;
- FMN (100 steps, Foolbox's defaults) in L2, and also L-inf, L1 and L0: advlib's
  `FMN` and Foolbox's `L2FMNAttack` etc.;
- EAD with the L1 decision rule (torchattacks' defaults: beta 1e-3, 9 search
  steps of 100 iterations, learning rate 0.01, c0 = 1e-3, abort early):
  advlib's `ElasticNetMethod`, torchattacks' `EADL1` and Foolbox's `EADAttack`.

For each it prints the success rate, the median minimal norm over all images
(inf where an attack failed, 0 where the clean image is already misclassified),
its ratio to the reference's, and the wall time on the same CPU (the fastest
of `--repeats` runs of each side); JSON goes to
`--out`. PyTorch, torchattacks and Foolbox are needed here only
(`pip install torch torchattacks foolbox==3.3.4`), never by advlib or its tests.

    python examples/adversarial_training.py --out-dir adv_out        # the CNNs
    python benchmarks/min_norm_reference.py --model adv_out/natural_fashion-mnist.keras --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from autoattack_reference import RESULTS, from_nchw, run_torch, torch_twin

NORM_NAMES = {0: "L0", 1: "L1", 2: "L2", np.inf: "Linf"}


def norms_of(x_adv, x, y, predict, norm):
    """Minimal norms as advlib's AttackResult defines them: the perturbation's norm
    where the point is misclassified and inside [0, 1], else inf."""
    delta = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    size = {
        0: (delta != 0).sum(1),
        1: np.abs(delta).sum(1),
        2: np.sqrt((delta**2).sum(1)),
        np.inf: np.abs(delta).max(1),
    }[norm]
    inside = (x_adv.reshape(len(x), -1).min(1) >= -1e-6) & (
        x_adv.reshape(len(x), -1).max(1) <= 1 + 1e-6
    )
    broken = (predict(x_adv) != y) & inside
    return np.where(broken, size, np.inf)


def timed(function, repeats=1):
    """The function's output and its fastest wall time over `repeats` runs (the
    machines are noisy; the minimum is the least disturbed run)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = function()
        best = min(best, time.perf_counter() - start)
    return out, best


def advlib_runs(model):
    from advlib.attacks import FMN, DeepFool, ElasticNetMethod

    run = lambda attack, **params: (
        lambda x, y: attack(model).generate_np(x, y=y, batch_size=500, **params)
    )
    return {
        "DeepFool L2": (2, run(DeepFool, norm=2, nb_candidate=10, overshoot=0.02, max_iter=50)),
        "FMN L2": (2, run(FMN, norm=2, steps=100)),
        "FMN Linf": (np.inf, run(FMN, norm=np.inf, steps=100)),
        "FMN L1": (1, run(FMN, norm=1, steps=100)),
        "FMN L0": (0, run(FMN, norm=0, steps=100)),
        "EAD (L1 rule)": (
            1,
            run(
                ElasticNetMethod,
                beta=1e-3,
                decision_rule="L1",
                confidence=0.0,
                learning_rate=0.01,
                binary_search_steps=9,
                max_iterations=100,
                abort_early=True,
                initial_const=1e-3,
            ),
        ),
    }


def reference_runs(twin):
    """Per attack, the references' (name, callable on NHWC NumPy) pairs."""
    import foolbox as fb
    import torch
    import torchattacks as ta

    nchw = from_nchw(twin)
    model = fb.PyTorchModel(twin, bounds=(0, 1))

    def foolbox(attack):
        def call(x, y):
            out = []
            for i in range(0, len(x), 500):
                images = torch.tensor(x[i : i + 500])
                _, adv, _ = attack(
                    model, images, torch.tensor(y[i : i + 500]).long(), epsilons=None
                )
                out.append(adv.detach().numpy())
            return np.concatenate(out)

        return call

    torchattack = lambda attack: lambda x, y: run_torch(attack, x, y)
    return {
        "DeepFool L2": [
            ("torchattacks", torchattack(ta.DeepFool(nchw, steps=50, overshoot=0.02))),
            (
                "Foolbox",
                foolbox(fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)),
            ),
        ],
        "FMN L2": [("Foolbox", foolbox(fb.attacks.L2FMNAttack(steps=100)))],
        "FMN Linf": [("Foolbox", foolbox(fb.attacks.LInfFMNAttack(steps=100)))],
        "FMN L1": [("Foolbox", foolbox(fb.attacks.L1FMNAttack(steps=100)))],
        "FMN L0": [("Foolbox", foolbox(fb.attacks.L0FMNAttack(steps=100)))],
        "EAD (L1 rule)": [
            (
                "torchattacks",
                torchattack(
                    ta.EADL1(
                        nchw,
                        kappa=0,
                        lr=0.01,
                        binary_search_steps=9,
                        max_iterations=100,
                        abort_early=True,
                        initial_const=1e-3,
                        beta=1e-3,
                    )
                ),
            ),
            (
                "Foolbox",
                foolbox(
                    fb.attacks.EADAttack(
                        binary_search_steps=9,
                        steps=100,
                        initial_stepsize=0.01,
                        confidence=0.0,
                        initial_const=1e-3,
                        regularization=1e-3,
                        decision_rule="L1",
                        abort_early=True,
                    )
                ),
            ),
        ],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the Fashion-MNIST CNN (.keras)")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--only", nargs="+", help="attack rows to run (default: all)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time each attack this many times and keep the fastest",
    )
    parser.add_argument("--out", default=os.path.join(RESULTS, "min_norm_reference.json"))
    args = parser.parse_args(argv)
    try:
        import foolbox  # noqa: F401
        import torch
        import torchattacks  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            f"this benchmark needs PyTorch, torchattacks and Foolbox: {error}"
        ) from None
    from advlib.datasets import load
    from advlib.models import load_model

    torch.set_num_threads(os.cpu_count())
    keras_model = load_model(args.model)
    twin = torch_twin(keras_model)
    _, (x_test, y_test) = load("fashion-mnist", download=False)
    x, y = x_test[: args.n], y_test[: args.n]
    keras_logits = keras_model.predict(x, verbose=0)
    with torch.no_grad():
        torch_logits = twin(torch.tensor(x)).numpy()
    difference = float(np.abs(keras_logits - torch_logits).max())
    if difference > 1e-4:
        raise SystemExit(f"the PyTorch twin's logits differ by {difference:.2g}")
    predict = lambda images: keras_model.predict(images, verbose=0, batch_size=1000).argmax(1)
    clean = float(np.mean(predict(x) == y))
    ours, theirs = advlib_runs(keras_model), reference_runs(twin)
    rows = []
    for name, (norm, attack) in ours.items():
        if args.only and name not in args.only:
            continue
        # a first call traces the compiled steps; the timed run is the second
        attack(x[:8], y[:8])
        x_adv, seconds = timed(lambda: attack(x, y), args.repeats)
        mine = norms_of(x_adv, x, y, predict, norm)
        for reference, call in theirs[name]:
            ref_adv, ref_seconds = timed(lambda: call(x, y), args.repeats)
            other = norms_of(ref_adv, x, y, predict, norm)
            row = {
                "attack": name,
                "norm": NORM_NAMES[norm],
                "reference": reference,
                "advlib_success": float(np.isfinite(mine).mean()),
                "reference_success": float(np.isfinite(other).mean()),
                "advlib_median": float(np.median(mine)),
                "reference_median": float(np.median(other)),
                "advlib_seconds": seconds,
                "reference_seconds": ref_seconds,
                "advlib_smaller_on": int(np.sum(mine < other)),
                "reference_smaller_on": int(np.sum(other < mine)),
            }
            row["median_ratio"] = (
                row["advlib_median"] / row["reference_median"]
                if np.isfinite(row["reference_median"]) and row["reference_median"] > 0
                else float("nan")
            )
            row["speedup"] = ref_seconds / seconds
            rows.append(row)
            print(
                f"{name} vs {reference}: median {row['advlib_median']:.4g} vs "
                f"{row['reference_median']:.4g}, {seconds:.1f} s vs {ref_seconds:.1f} s",
                flush=True,
            )
    print(
        f"\nFashion-MNIST, first {args.n} test images, model {os.path.basename(args.model)} "
        f"({100 * clean:.1f}% clean); logits agree to {difference:.2g}:\n"
    )
    print(
        "| attack | reference | advlib median | reference median | ratio | advlib success | "
        "reference success | advlib smaller / larger | advlib s | reference s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['attack']} | {r['reference']} | {r['advlib_median']:.4g} | "
            f"{r['reference_median']:.4g} | {r['median_ratio']:.3f} | "
            f"{100 * r['advlib_success']:.1f}% | {100 * r['reference_success']:.1f}% | "
            f"{r['advlib_smaller_on']} / {r['reference_smaller_on']} | "
            f"{r['advlib_seconds']:.1f} | {r['reference_seconds']:.1f} | "
            f"{r['speedup']:.1f}x |"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(
            {
                "n": args.n,
                "repeats": args.repeats,
                "model": os.path.basename(args.model),
                "clean": clean,
                "logit_difference": difference,
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "rows": rows,
            },
            handle,
            indent=1,
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
