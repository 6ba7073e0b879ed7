"""Exact robust accuracy of a binary network: attacks give an upper bound, the
verifier proves the lower one, and together they make a certified interval.

    python examples/verify_binary.py                          # 64-32-32-10 binary MLP, digits
    python examples/verify_binary.py --width 256 --depth 3 --eps 0.0039 --time-limit 30
    python examples/verify_binary.py --network cnn --eps 0.1 0.05 0.2 --time-limit 30 \
        --out-dir verify_cnn
    python examples/verify_binary.py --network cnn --eps 0.1 0.05 0.2 --time-limit 30 \
        --out-dir verify_cnn --resume                         # continues it after a stop
    python examples/verify_binary.py --width 256 --depth 3 --eps 0.0039 --verifiable 0.02
    python examples/verify_binary.py --dataset fashion-mnist --width 256 --depth 2 \
        --epochs 10 --verifiable 0.03 --n 200 --eps 0.00392156862745098 \
        0.00784313725490196 0.02 --time-limit 60
    python examples/verify_binary.py --network conv-small --input-step 0.61 \
        --mask-decay 1e-5 --adversarial 0.1 --ramp 5 --counterexamples 500 \
        --eps 0.1 0.2 --time-limit 2                          # EEV's recipe, SAT

Trains a small binary MLP (or, with --network cnn, the reference binary CNN of
`examples/trustworthy_evaluation.py`) on scikit-learn's digits (offline; or with
--dataset fashion-mnist on Fashion-MNIST, under that protocol), exports its exact
bit-packed engine, and runs the harness with `verify=True`: the attacks first
(STE gradients, judged by the engine), then the verifier (MILP, or SAT for
conv-small) on every example they left, at each eps. Writes the report under
--out-dir and prints, per eps, robust accuracy after the attacks, the
certified interval, the verifier's counterexamples that every attack missed,
and the share of hidden units whose sign interval bounds leave open over the
ball (the verifier's binary variables).
With --verifiable EPS the network trains with `VerifiableModel`'s loss on those
units over eps-balls, which makes it far quicker to verify. EEV's recipe (Jia &
Rinard 2020) is --network conv-small (their small convolutional network) with
--input-step (inputs on a coarse grid), --mask-decay (ternary weights with a
learned mask) and --adversarial EPS (PGD training at that radius), with --ramp
(EPS raised over the first epochs) and --counterexamples (the verifier's
counterexamples mixed into the batches). The run saves its
state after every batch (--batch-size): stopped, it continues with the same
command and --resume, which reloads the saved network instead of training
another.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from advlib import bench, qnn
from advlib.datasets import load
from advlib.models import QNNModelWrapper, load_model
from advlib.qnn.stability import VerifiableModel, instability
from advlib.qnn.verify import sat
from advlib.training import AdversarialModel, EpsilonRamp

# epochs by network: the MLP's, and the reference CNN's recipe
EPOCHS = {"mlp": 20, "cnn": 15, "conv-small": 30}
# the verifier's default search share by network (RESULTS.md: HiGHS proves nothing on
# the CNN, whose decisions are all the search's counterexamples; on a ternary
# conv-small the SAT solver alone decides each digit in a few ms, the search costs more)
SEARCH_SHARE = {"mlp": 0.5, "cnn": 0.9, "conv-small": 0.0}
# per data set: the protocol whose attacks run first, and the training batch size
DATASETS = {"digits": ("digits-linf-0.2", 64), "fashion-mnist": ("fashion-mnist-linf-0.1", 128)}


def train(
    network: str,
    width: int,
    depth: int,
    epochs: int,
    verifiable=None,
    verifiable_weight: float = 2.0,
    dataset: str = "digits",
    input_step: float | None = None,
    mask_decay: float | None = None,
    adversarial: float | None = None,
    ramp: int = 0,
    counterexamples: int = 0,
) -> keras.Model:
    """The seeded binary network; with `verifiable` (an eps), trained with
    `VerifiableModel`'s instability loss over balls of that radius; with
    `adversarial` (an eps), with PGD-10 at that radius, raised over the first
    `ramp` epochs, and with `counterexamples` training images verified after
    each epoch, whose counterexamples join the batches. `input_step` puts the
    inputs on a grid; `mask_decay` gives conv-small ternary weights."""
    (x_train, y_train), _ = load(dataset)
    keras.utils.set_random_seed(0)
    shape = x_train.shape[1:]
    if network == "cnn":
        model = qnn.binary_cnn(shape, filters=(32, 32, 64, 64), dense=128, input_step=input_step)
    elif network == "conv-small":
        masks = dict(kernel_mask=mask_decay is not None, mask_decay=mask_decay or 0.0)
        model = qnn.conv_small(shape, input_step=input_step, **masks)
    else:
        model = qnn.binary_mlp(shape, width=width, depth=depth, input_step=input_step)
    trained = model
    batch_size = DATASETS[dataset][1]
    data: dict = dict(x=x_train, y=y_train, batch_size=batch_size)
    callbacks: list = []
    if verifiable is not None:
        trained = VerifiableModel(model, verifiable, verifiable_weight)
    elif adversarial is not None:
        attack = dict(eps=adversarial, eps_iter=adversarial / 4, nb_iter=10, rand_init=True)
        trained = AdversarialModel(model, attack_params=dict(attack, clip_min=0.0, clip_max=1.0))
        if ramp:
            callbacks.append(EpsilonRamp(ramp))
        if counterexamples:
            mixing = qnn.CounterexampleMixing(
                x_train, y_train, adversarial, batch_size, n=counterexamples, verbose=0
            )
            callbacks.append(mixing)
            data = dict(x=mixing.batches)
    trained.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    trained.fit(**data, epochs=epochs, callbacks=callbacks, verbose=0)
    return model


def protocol(
    eps_list, n: int, iterations=None, square_queries=None, dataset="digits", batch_size=None
):
    """The data set's protocol (AutoAttack's ensemble, then advlib's PGD-CW and
    targeted PGD) at every one of the given eps values, on the first n test
    images (optionally with fewer steps and queries, for a quick look), in
    batches of the protocol's size or `batch_size`, at most n."""
    document = bench.load_protocol(DATASETS[dataset][0])
    document.pop("sweep_attacks", None)  # the whole ensemble at every eps
    for entry in document["attacks"]:
        if iterations and "nb_iter" in entry["params"]:
            entry["params"]["nb_iter"] = iterations
        if square_queries and "n_queries" in entry["params"]:
            entry["params"]["n_queries"] = square_queries
    document.update(
        name=f"{dataset}-verify",
        threat={"norm": "inf", "eps": eps_list[0]},
        sweep=list(eps_list[1:]),
        batch_size=min(batch_size or document["batch_size"], n),
    )
    document["dataset"]["n"] = n
    document.pop("headline")
    return document


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mlp", choices=sorted(EPOCHS))
    parser.add_argument(
        "--dataset",
        default="digits",
        choices=sorted(DATASETS),
        help="fashion-mnist needs the IDX files (see advlib.datasets)",
    )
    parser.add_argument("--width", type=int, default=32, help="the MLP's")
    parser.add_argument("--depth", type=int, default=2, help="the MLP's")
    parser.add_argument("--epochs", type=int, help="default: 20 (MLP), 15 (CNN)")
    parser.add_argument("--eps", type=float, nargs="+", default=[2 / 255, 1 / 255, 4 / 255])
    parser.add_argument("--n", type=int, default=360, help="test images (360: all digits)")
    parser.add_argument("--iterations", type=int, help="attack steps (default: the protocol's)")
    parser.add_argument("--square-queries", type=int, help="default: the protocol's 5,000")
    parser.add_argument(
        "--time-limit", type=float, default=10.0, help="verifier seconds per example"
    )
    parser.add_argument(
        "--backend",
        choices=("milp", "sat"),
        help="the verifier's solver (default: sat for conv-small where python-sat is "
        "installed, else milp)",
    )
    parser.add_argument(
        "--search-share",
        type=float,
        help="the verifier's share of each example's time for the local "
        "search (default: 0.9 for the CNN, where HiGHS decides "
        "nothing in time, 0.5 for the MLP, 0 for conv-small)",
    )
    parser.add_argument(
        "--verifiable",
        type=float,
        metavar="EPS",
        help="train with VerifiableModel's instability loss over EPS-balls",
    )
    parser.add_argument("--verifiable-weight", type=float, default=2.0, help="that loss's weight")
    parser.add_argument(
        "--input-step",
        type=float,
        help="quantize the inputs on this grid (SteppedInput; EEV: 0.61); default: 8 bits",
    )
    parser.add_argument(
        "--mask-decay",
        type=float,
        help="conv-small with ternary weights (learned masks), this penalty per kept weight",
    )
    parser.add_argument("--adversarial", type=float, help="train with PGD-10 at this eps")
    parser.add_argument(
        "--ramp", type=int, default=0, help="--adversarial: raise eps over these first epochs"
    )
    parser.add_argument(
        "--counterexamples",
        type=int,
        default=0,
        metavar="N",
        help="--adversarial: after each epoch, verify N training images and mix the "
        "counterexamples into the batches",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="examples per batch, whose results are saved as it ends "
        "(default: the protocol's, at most --n); a stopped run "
        "loses only its unfinished batch",
    )
    parser.add_argument(
        "--out-dir",
        default="verify_binary",
        help="a new or empty folder, or with --resume an earlier run's",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out-dir with its saved network, "
        "keeping the examples it finished (the other options must "
        "be that run's)",
    )
    args = parser.parse_args(argv)
    if args.verifiable is not None and args.adversarial is not None:
        parser.error("--verifiable and --adversarial are two trainings: choose one.")
    if (args.ramp or args.counterexamples) and args.adversarial is None:
        parser.error("--ramp and --counterexamples shape --adversarial training: add it.")
    if args.ramp < 0 or args.counterexamples < 0:
        parser.error(
            f"--ramp and --counterexamples must be non-negative, got {args.ramp} and "
            f"{args.counterexamples}."
        )
    if args.mask_decay is not None and args.network != "conv-small":
        parser.error("--mask-decay is for --network conv-small.")
    if args.input_step is not None and not 1 / 255 <= args.input_step <= 1:
        parser.error(f"--input-step must be in [1/255, 1], got {args.input_step}.")
    if args.mask_decay is not None and args.mask_decay < 0:
        parser.error(f"--mask-decay must be non-negative, got {args.mask_decay}.")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be a positive integer, got {args.batch_size}.")
    if args.search_share is None:
        args.search_share = SEARCH_SHARE[args.network]
    if args.backend is None:
        args.backend = "sat" if args.network == "conv-small" and sat.available() else "milp"

    model_path = os.path.join(args.out_dir, f"binary_{args.network}.keras")
    engine = os.path.join(args.out_dir, f"binary_{args.network}.npz")
    if args.resume:
        if not (os.path.isfile(model_path) and os.path.isfile(engine)):
            parser.error(
                f"--resume: {args.out_dir!r} holds no saved {args.network} network "
                f"({model_path!r} and {engine!r}); run without --resume first."
            )
        model = load_model(model_path)
    else:
        if os.path.isdir(args.out_dir) and os.listdir(args.out_dir):
            parser.error(
                f"--out-dir {args.out_dir!r} is not empty: choose a new folder, or "
                "pass --resume to continue the run saved there."
            )
        os.makedirs(args.out_dir, exist_ok=True)
        model = train(
            args.network,
            args.width,
            args.depth,
            args.epochs or EPOCHS[args.network],
            args.verifiable,
            args.verifiable_weight,
            args.dataset,
            args.input_step,
            args.mask_decay,
            args.adversarial,
            args.ramp,
            args.counterexamples,
        )
        model.save(model_path)
        qnn.export(model, engine)
    _, (x_test, _) = load(args.dataset)
    wrapped = QNNModelWrapper(model, surrogate="ste", engine=engine)
    document = protocol(
        args.eps, args.n, args.iterations, args.square_queries, args.dataset, args.batch_size
    )
    try:
        report = bench.evaluate(
            wrapped,
            document,
            progress=False,
            out_dir=os.path.join(args.out_dir, "run"),
            resume=args.resume,
            verify=True,
            verify_time_limit=args.time_limit,
            verify_search_share=args.search_share,
            verify_backend=args.backend,
        )
    except ValueError as error:  # bad options, or a run that --resume cannot continue
        parser.error(str(error))
    rows = []
    print(
        "| eps | after the attacks | certified interval | verified | robust | broken "
        "(missed by every attack) | unknown | median s | p95 s | open units |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for entry in sorted(report["results"]["per_eps"], key=lambda e: e["eps"]):
        check = entry["verification"]
        after_attacks = entry["attacks"][-1]["robust_accuracy_after"]["value"]
        low, high = check["interval"]
        open_units = float(instability(model, x_test[: args.n], entry["eps"])[1])
        rows.append(
            {
                "eps": entry["eps"],
                "after_attacks": after_attacks,
                "interval": [low, high],
                **{k: check[k] for k in ("verified", "robust", "broken", "unknown")},
                "seconds": check["seconds"],
                "open_units": open_units,
            }
        )
        print(
            f"| {entry['eps']:.4g} | {100 * after_attacks:.2f}% | [{100 * low:.2f}%, "
            f"{100 * high:.2f}%] | {check['verified']} | {check['robust']} | "
            f"{check['broken']} | {check['unknown']} | {check['seconds']['median']:.2f} | "
            f"{check['seconds']['p95']:.2f} | {100 * open_units:.1f}% |"
        )
    with open(os.path.join(args.out_dir, "verification.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
