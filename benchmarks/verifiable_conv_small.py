"""EEV's recipe on advlib (Jia & Rinard 2020): conv-small on an input grid, with
ternary weights (learned masks) or without, trained with PGD, then verified
exactly by the SAT backend on the whole test set.

    python benchmarks/verifiable_conv_small.py [--dataset digits] [--out conv_small.json]

Prints one row per network, eps and search share (the share of the time limit
that the local search for counterexamples gets; 0: the SAT solver alone), and
writes them as JSON. Digits: 30 epochs, about 30 s to train each network.
EEV's other tricks are options: `--ramp` (the eps ramp, `EpsilonRamp`), and
`--start NET.keras --mix-n N` (fine-tuning with the verifier's
counterexamples mixed into the batches, `qnn.CounterexampleMixing`).
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from advlib import qnn
from advlib.datasets import load
from advlib.qnn.engine import BinaryEngine
from advlib.qnn.engine import spec as spec_io
from advlib.qnn.verify import verify
from advlib.qnn.verify.encoding import NetworkEncoding
from advlib.training import AdversarialModel, EpsilonRamp


def train(args, masks: bool, batch: int):
    """Trains conv-small (or fine-tunes `--start`) with PGD at `--train-eps`."""
    (x_train, y_train), _ = load(args.dataset)
    keras.utils.set_random_seed(0)
    if args.start:
        model = keras.models.load_model(args.start)
    else:
        model = qnn.conv_small(
            x_train.shape[1:],
            input_step=args.step,
            kernel_mask=masks,
            mask_decay=args.mask_decay,
        )
    eps = args.train_eps
    attack = dict(eps=eps, eps_iter=eps / 4, nb_iter=10, rand_init=True)
    trainer = AdversarialModel(
        model, attack_params=dict(attack, clip_min=0.0, clip_max=1.0), seed=0
    )
    rate = args.lr
    if args.lr_decay == "cosine":
        steps = args.epochs * -(-len(x_train) // batch)
        rate = keras.optimizers.schedules.CosineDecay(rate, steps, alpha=0.01)
    trainer.compile(
        keras.optimizers.Adam(rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    callbacks: list = [EpsilonRamp(args.ramp)] if args.ramp else []
    data = dict(x=x_train, y=y_train, batch_size=batch)
    if args.mix_n:
        mixing = qnn.CounterexampleMixing(
            x_train, y_train, eps=args.eps[0], batch_size=batch, n=args.mix_n, share=args.mix_share
        )
        callbacks.append(mixing)
        data = dict(x=mixing.batches)
    trainer.fit(**data, epochs=args.epochs, callbacks=callbacks, verbose=0)
    return model, qnn.export(model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "fashion-mnist"))
    parser.add_argument("--step", type=float, default=0.61, help="the input grid")
    parser.add_argument("--train-eps", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    parser.add_argument("--ramp", type=int, default=0, help="epochs of the eps ramp (0: none)")
    parser.add_argument(
        "--start", help="fine-tune this trained network (a --save .keras file) instead"
    )
    parser.add_argument(
        "--mix-n",
        type=int,
        default=0,
        help="verify this many training images (at the first --eps) after each epoch and "
        "mix the counterexamples into the batches (0: no mixing)",
    )
    parser.add_argument("--mix-share", type=float, default=0.25, help="of each batch")
    parser.add_argument(
        "--lr-decay",
        default="none",
        choices=("none", "cosine"),
        help="how Adam's rate decays",
    )
    parser.add_argument("--mask-decay", type=float, default=1e-4, help="per kept weight")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--n", type=int, help="test images (default: all)")
    parser.add_argument("--time-limit", type=float, default=2.0, help="seconds per image")
    parser.add_argument(
        "--weights", default="both", choices=("both", "binary", "ternary"), help="which networks"
    )
    parser.add_argument(
        "--search-share", type=float, nargs="+", default=[0.0, 0.5], help="verify with each"
    )
    parser.add_argument("--save", help="also write each exported network here (a folder)")
    parser.add_argument(
        "--engine", help="verify this exported network (a --save file) instead of training"
    )
    parser.add_argument("--out", default="verifiable_conv_small.json")
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        parser.error(f"--out {args.out!r} exists; choose a new file.")
    _, (x_test, y_test) = load(args.dataset)
    x_test, y_test = x_test[: args.n], y_test[: args.n]
    batch = 64 if args.dataset == "digits" else 128
    rows = []
    print(
        "| weights | kept | clean | eps | search | robust | broken | unknown | mean ms "
        "| median ms | p95 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    kinds = {"both": (False, True), "binary": (False,), "ternary": (True,)}[args.weights]
    for masks in kinds if args.engine is None and args.start is None else (None,):
        start = time.perf_counter()
        if args.engine is None:
            model, exported = train(args, bool(masks), batch)
        else:
            spec, arrays = spec_io.load(args.engine)
            exported = {"spec": spec, "arrays": arrays}
        masks = any(layer.get("mask") for layer in exported["spec"]["layers"])
        train_seconds = time.perf_counter() - start
        if args.save and args.engine is None:
            os.makedirs(args.save, exist_ok=True)
            name = f"conv_small_{args.dataset}_{'ternary' if masks else 'binary'}"
            spec_io.save(
                os.path.join(args.save, name + ".npz"), exported["spec"], exported["arrays"]
            )
            model.save(os.path.join(args.save, name + ".keras"))  # for `advlib bench --verify`
        layers = exported["spec"]["layers"]
        values = [
            spec_io.weight_values(layer, exported["arrays"], i)
            for i, layer in enumerate(layers)
            if "output" in layer
        ]
        kept = float(sum((v != 0).sum() for v in values) / sum(v.size for v in values))
        encoding = NetworkEncoding(BinaryEngine(**exported))
        clean = float((encoding.engine.predict_classes(x_test) == y_test).mean())
        for eps in args.eps:
            for share in args.search_share:
                start = time.perf_counter()
                result = verify(
                    encoding,
                    x_test,
                    y_test,
                    eps,
                    time_limit=args.time_limit,
                    backend="sat",
                    search_share=share,
                )
                seconds = np.array([v.seconds for v in result.verdicts])
                counts = result.counts()
                row = dict(
                    weights="ternary" if masks else "binary",
                    kept=kept,
                    clean=clean,
                    eps=eps,
                    search_share=share,
                    train_seconds=train_seconds,
                    wall_seconds=time.perf_counter() - start,
                    **counts,
                    mean_ms=1000 * seconds.mean(),
                    median_ms=1000 * np.median(seconds),
                    p95_ms=1000 * np.percentile(seconds, 95),
                )
                rows.append(row)
                print(
                    f"| {row['weights']} | {100 * kept:.1f}% | {100 * clean:.1f}% | {eps} | "
                    f"{share} | {counts['robust']} | {counts['broken']} | {counts['unknown']} "
                    f"| {row['mean_ms']:.1f} | {row['median_ms']:.1f} | {row['p95_ms']:.1f} |",
                    flush=True,
                )
    with open(args.out, "w") as handle:
        json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
