"""Report a paper's robustness number: AutoAttack's standard figure and advlib's
worst case, from one Keras model, on digits (offline) or Fashion-MNIST.

    python examples/autoattack_report.py                      # reference digits CNN, eps 0.2
    python examples/autoattack_report.py --model robust.keras --dataset fashion-mnist --eps 0.1

Step 1 runs `AutoAttack` the way AutoAttack's users do (`run_standard_evaluation`);
step 2 runs the harness under protocol version 3, whose report gives the same
AutoAttack figure beside the worst case over advlib's extra attacks, with
confidence intervals and the gradient-masking diagnostics. Both go to --out-dir.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _outputs import refuse_to_overwrite

from advlib import bench
from advlib.attacks import AutoAttack
from advlib.datasets import load

PROTOCOLS = {"digits": "digits-linf-0.2", "fashion-mnist": "fashion-mnist-linf-0.1"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        help="a .keras classifier (default: the reference digits CNN, trained once and cached)",
    )
    parser.add_argument("--dataset", default="digits", choices=sorted(PROTOCOLS))
    parser.add_argument("--eps", type=float, help="default: the protocol's")
    parser.add_argument("--n", type=int, help="test examples (default: the protocol's)")
    parser.add_argument(
        "--no-sweep",
        action="store_true",
        help="the harness at the protocol's eps only (a quick look)",
    )
    parser.add_argument("--out-dir", default="autoattack_report")
    args = parser.parse_args(argv)
    refuse_to_overwrite(parser, args.out_dir, ["summary.json", "bench"])
    os.makedirs(args.out_dir, exist_ok=True)

    if args.model:
        from advlib.models import load_model

        model = load_model(args.model)
    else:
        model, _ = bench.reference_model(args.dataset)
    protocol = bench.load_protocol(PROTOCOLS[args.dataset])
    if args.eps is not None:
        protocol["threat"]["eps"] = args.eps
    if args.no_sweep:
        protocol["sweep"] = []
    if args.n is not None:
        protocol["dataset"]["n"] = args.n
        protocol["batch_size"] = min(protocol["batch_size"], args.n)
    eps, n = protocol["threat"]["eps"], protocol["dataset"]["n"]
    _, (x_test, y_test) = load(args.dataset)
    x, y = x_test[:n], y_test[:n]

    # 1. AutoAttack, as its users call it
    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, verbose=True)
    adversary.run_standard_evaluation(x, y, bs=250)

    # 2. the harness: the same figure, the worst case, intervals and diagnostics
    report = bench.evaluate(
        model, protocol, out_dir=os.path.join(args.out_dir, "bench"), progress=False
    )
    table = bench.markdown(report)
    print("\n" + table)
    standard = report["results"]["headline"]["robust_accuracy"]["value"]
    summary = {
        "eps": eps,
        "n": n,
        "autoattack_log": adversary.robust_accuracy,
        "autoattack_standard": standard,
        "worst_case": report["results"]["robust_accuracy"]["value"],
        "clean": report["results"]["clean_accuracy"]["value"],
        "flag": report["headline_flag"].strip(),
    }
    with open(os.path.join(args.out_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    print(
        f"\nAutoAttack (standard): {100 * standard:.2f}%; advlib worst case: "
        f"{100 * summary['worst_case']:.2f}% (eps {eps:g}, {n} examples)"
    )
    return summary


if __name__ == "__main__":
    main()
