"""The README's table: reference models under the shipped protocols.

Trains (or loads, with --natural / --robust / --binary / --twin) three models
of a data set — the naturally trained CNN, the fast-adversarially-trained CNN
and the binary CNN (evaluated through its exact engine, with STE gradients) —
and runs `advlib bench` on each, with its gradient-masking diagnostics. The
transfer diagnostic crafts on the natural CNN for the fast-AT CNN and on the
float twin for the binary CNN. Prints two Markdown tables (numbers and
diagnostics) and writes JSON to `--out`.

    python benchmarks/reference_models.py --dataset digits
    python benchmarks/reference_models.py --dataset fashion-mnist \\
        --robust adv_out/fast_fashion-mnist.keras --binary qnn_out/binary_cnn.keras
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

import advlib.qnn.layers  # noqa: F401  registers the layers for load_model
from advlib import bench, qnn
from advlib.datasets import load
from advlib.models import (
    QNNModelWrapper,
    load_model,
    small_cnn,
    train_classifier,
)
from advlib.training import AdversarialModel

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOCOLS = {"digits": "digits-linf-0.2", "fashion-mnist": "fashion-mnist-linf-0.1"}
EPS = {"digits": 0.2, "fashion-mnist": 0.1}


def natural(data, epochs):
    (x, y), _ = data
    return train_classifier(small_cnn(x.shape[1:], name="natural_cnn"), x, y, epochs=epochs, seed=0)


def robust(data, eps, epochs):
    (x, y), _ = data
    keras.utils.set_random_seed(0)
    model = small_cnn(x.shape[1:], name="fast_at_cnn")
    trainer = AdversarialModel.from_recipe("fast", model, eps=eps, seed=0)
    trainer.compile(keras.optimizers.Adam(1e-3))
    trainer.fit(x, y, epochs=epochs, batch_size=100, verbose=0)
    return model


def binary(data, epochs, is_binary=True):
    (x, y), _ = data
    keras.utils.set_random_seed(0)
    small = x.shape[1] < 16
    model = qnn.binary_cnn(
        x.shape[1:],
        filters=(32, 32, 64, 64) if small else (64, 64, 128, 128),
        dense=128 if small else 512,
        binary=is_binary,
        name="binary_cnn" if is_binary else "float_twin",
    )
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, epochs=epochs, batch_size=64 if small else 100, verbose=0)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(PROTOCOLS))
    parser.add_argument("--natural")
    parser.add_argument("--robust")
    parser.add_argument("--binary")
    parser.add_argument("--twin", help="the binary CNN's float twin (.keras)")
    parser.add_argument(
        "--models",
        default="natural,fast-AT,binary",
        help="which of natural, fast-AT and binary to evaluate",
    )
    parser.add_argument(
        "--no-twin",
        action="store_true",
        help="no float twin: skip the binary CNN's transfer diagnostic",
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--shard", default=None, help="i/n: evaluate a deterministic slice")
    parser.add_argument(
        "--keras-predictions",
        action="store_true",
        help="judge the binary CNN by Keras (bit-identical, faster on CPU) "
        "rather than the NumPy engine",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results", "reference_models"))
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - {"natural", "fast-AT", "binary"}
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; choose from natural, fast-AT, binary")
    data = load(args.dataset)
    loaded = load_model
    models = {
        "natural CNN": loaded(args.natural) if args.natural else natural(data, args.epochs),
        "fast-AT CNN": loaded(args.robust)
        if args.robust
        else robust(data, EPS[args.dataset], args.epochs),
        "binary CNN (STE)": loaded(args.binary) if args.binary else binary(data, args.epochs),
    }
    surrogates = {"fast-AT CNN": models["natural CNN"]}
    if not args.no_twin:
        surrogates["binary CNN (STE)"] = (
            loaded(args.twin) if args.twin else binary(data, args.epochs, is_binary=False)
        )
    protocol = PROTOCOLS[args.dataset]
    rows = []
    chosen = set(args.models.split(","))
    for name, model in models.items():
        if name.split()[0] not in chosen:
            continue
        folder = os.path.join(args.out, protocol, name.split()[0])
        if name.startswith("binary"):
            path = os.path.join(args.out, f"{args.dataset}_binary.npz")
            os.makedirs(args.out, exist_ok=True)
            qnn.export(model, path)
            model = QNNModelWrapper(
                model, surrogate="ste", engine=None if args.keras_predictions else path
            )
        start = time.perf_counter()
        report = bench.evaluate(
            model,
            protocol=protocol,
            out_dir=folder + f"-{int(start)}",
            batch_size=args.batch_size,
            model_name=name,
            shard=args.shard,
            transfer_from=surrogates.get(name),
        )
        seconds = time.perf_counter() - start
        standard = report["results"].get("headline") or {}
        rows.append(
            dict(
                model=name,
                clean=report["results"]["clean_accuracy"],
                robust=report["results"]["robust_accuracy"],
                autoattack=standard.get("robust_accuracy"),
                seconds=seconds,
                n=report["n"],
                shard=report["shard"],
                diagnostics={c["id"]: c["status"] for c in report["diagnostics"]},
                flag=report["headline_flag"].strip(),
            )
        )
    print(
        f"\n{protocol}" + (f", shard {args.shard} ({rows[0]['n']} examples)" if args.shard else "")
    )
    interval = lambda p: (
        "-"
        if p is None
        else (f"{100 * p['value']:.2f}% [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]")
    )
    print(
        "| model | clean | AutoAttack (standard) [95% CI] | robust (worst case) [95% CI] | "
        "evaluation time |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {100 * r['clean']['value']:.2f}% | {interval(r['autoattack'])} | "
            f"{interval(r['robust'])} | {r['seconds']:.0f} s |"
        )
    checks = list(rows[0]["diagnostics"])
    print("\n| model | " + " | ".join(checks) + " |")
    print("|---|" + "---|" * len(checks))
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(r["diagnostics"][c] for c in checks) + " |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.dataset}.json"), "w") as handle:
        json.dump(dict(protocol=protocol, rows=rows), handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
