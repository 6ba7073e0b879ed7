"""Does a stronger attack close the gap that the verifier finds? Runs heavier
settings of each attack family on the examples whose counterexamples every
attack of the protocol missed, and counts how many of them each one breaks.

    python examples/verify_binary.py --eps 0.1 0.05 0.2 --time-limit 30   # first
    python benchmarks/verification_gap.py --run verify_binary --eps 0.05

Reads the harness run that `examples/verify_binary.py` wrote under --run (its
report, per-example verdicts and engine), retrains the same seeded binary network
for the STE's gradients (checked bit-exact against the engine), and attacks
the digits the verifier broke after every attack had failed on them. Prints a
Markdown table and writes JSON beside the run.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from advlib.attacks import APGD, SPSA, ProjectedGradientDescent, SquareAttack
from advlib.bench.arrays import VERDICT_CODES
from advlib.datasets import load
from advlib.models import QNNModelWrapper
from advlib.qnn.engine import BinaryEngine

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import verify_binary


def settings(eps):
    """key -> (the table's name, attack class, its parameters)."""
    box = dict(eps=eps, clip_min=0.0, clip_max=1.0, seed=0)
    return {
        "pgd": (
            "PGD (STE), 100 steps x 10 restarts",
            ProjectedGradientDescent,
            dict(box, eps_iter=eps / 4, nb_iter=100, nb_restarts=10, rand_init=True),
        ),
        "apgd": ("APGD-CE (STE), 1,000 steps", APGD, dict(box, nb_iter=1000)),
        "spsa": ("SPSA, 200 steps x 256 samples", SPSA, dict(box, nb_iter=200, spsa_samples=256)),
        "square": ("Square, 20,000 queries", SquareAttack, dict(box, n_queries=20000)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default="verify_binary", help="the --out-dir of examples/verify_binary.py"
    )
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--network", default="mlp", choices=sorted(verify_binary.EPOCHS))
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--epochs", type=int, help="default: the example's for --network")
    parser.add_argument(
        "--attacks",
        nargs="+",
        choices=sorted(settings(0.1)),
        help="only these settings (default: all)",
    )
    args = parser.parse_args(argv)
    report = json.load(open(os.path.join(args.run, "run", "report.json")))
    eps_list = [entry["eps"] for entry in report["results"]["per_eps"]]
    matches = [i for i, eps in enumerate(eps_list) if abs(eps - args.eps) < 1e-9]
    if not matches:
        parser.error(f"--eps {args.eps} is not one of the run's eps values {eps_list}")
    with np.load(os.path.join(args.run, "run", "examples.npz")) as arrays:
        verdict, index = arrays["verdict"][matches[0]], arrays["index"]
    missed = np.flatnonzero(verdict == VERDICT_CODES["broken"])
    _, (x_test, y_test) = load("digits")
    x, y = x_test[index[missed]], y_test[index[missed]]
    engine_path = os.path.join(args.run, f"binary_{args.network}.npz")
    engine = BinaryEngine.load(engine_path)
    model = verify_binary.train(
        args.network, args.width, args.depth, args.epochs or verify_binary.EPOCHS[args.network]
    )
    if not (
        QNNModelWrapper(model).predict_classes(x_test).numpy() == engine.predict_classes(x_test)
    ).all():
        raise SystemExit(
            "the retrained model differs from the run's engine: pass the run's "
            "--network, --width, --depth and --epochs"
        )
    wrapped = QNNModelWrapper(model, surrogate="ste", engine=engine_path)
    rows = []
    print(
        f"{len(missed)} digits at eps {args.eps:g} have a counterexample that every attack "
        f"of the protocol missed\n"
    )
    print("| attack | breaks | seconds |\n|---|---|---|")
    chosen = settings(args.eps)
    for key in args.attacks or chosen:
        name, attack, params = chosen[key]
        start = time.perf_counter()
        adversarial = attack(wrapped).generate_np(x, y=y, **params)
        inside = np.abs(adversarial - x).max(axis=(1, 2, 3)) <= args.eps + 1e-6
        breaks = int(((engine.predict_classes(adversarial) != y) & inside).sum())
        seconds = time.perf_counter() - start
        rows.append({"attack": name, "breaks": breaks, "of": int(len(missed)), "seconds": seconds})
        print(f"| {name} | {breaks} of {len(missed)} | {seconds:.0f} |", flush=True)
    suffix = "" if not args.attacks else "_" + "_".join(args.attacks)
    with open(os.path.join(args.run, f"gap_eps{args.eps:g}{suffix}.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
