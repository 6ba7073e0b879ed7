"""Train a binarized network (QNN) on Fashion-MNIST, export it to the exact
bit-packed engine, check bit-exactness, and attack it next to its float twin.

    python examples/qnn_fashion_mnist.py                      # binary CNN
    python examples/qnn_fashion_mnist.py --activation-bits 2  # 2-bit activations
    python examples/qnn_fashion_mnist.py --model mlp --width 4096
    python examples/qnn_fashion_mnist.py --dataset digits --epochs 2   # quick

Binary layers train with Adam on latent real-valued weights, clipped to
[-1, 1] after each update (the kernel constraint), with BatchNorm and
straight-through gradients, through `model.fit`.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from _outputs import add_overwrite_option, refuse_to_overwrite

import advlib.qnn.layers  # noqa: F401  registers the layers for load_model
from advlib import qnn
from advlib.attacks import ProjectedGradientDescent
from advlib.datasets import load
from advlib.models import KerasModelWrapper, QNNModelWrapper, load_model
from advlib.qnn.engine import BinaryEngine


def build(kind, input_shape, activation_bits, binary, width):
    if kind == "mlp":
        return qnn.binary_mlp(
            input_shape, width=width, activation_bits=activation_bits, binary=binary
        )
    filters = (64, 64, 128, 128) if input_shape[0] >= 16 else (32, 32, 64, 64)
    return qnn.binary_cnn(
        input_shape,
        filters=filters,
        dense=512 if width >= 512 else width,
        activation_bits=activation_bits,
        binary=binary,
    )


def train(model, data, epochs, batch_size, learning_rate, seed):
    """Adam with cosine decay on cross-entropy; returns (test accuracy, seconds)."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    steps = epochs * -(-len(x_train) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=batch_size,
        verbose=2,
        validation_data=(x_test, y_test),
    )
    seconds = time.perf_counter() - start
    accuracy = model.evaluate(x_test, y_test, verbose=0, batch_size=500)[1]
    return float(accuracy), seconds


def robust_accuracy(wrapped, x, y, eps, seed):
    x_adv = ProjectedGradientDescent(wrapped).generate_np(
        x,
        y=y,
        eps=eps,
        eps_iter=eps / 8,
        nb_iter=20,
        seed=seed,
        clip_min=0.0,
        clip_max=1.0,
        batch_size=250,
    )
    return float(np.mean(wrapped.predict_classes(x_adv).numpy() == y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist", "digits"]
    )
    parser.add_argument("--model", default="cnn", choices=["cnn", "mlp"])
    parser.add_argument("--activation-bits", type=int, default=1)
    parser.add_argument(
        "--width",
        type=int,
        default=512,
        help="MLP hidden width (4096 in the paper); CNN dense width",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument(
        "--float-twin",
        action="store_true",
        help="also train the float-precision twin and attack both",
    )
    parser.add_argument("--eps", type=float, default=0.1, help="PGD L-inf radius")
    parser.add_argument("--attack-n", type=int, default=500)
    parser.add_argument(
        "--check-n",
        type=int,
        default=None,
        help="test images for the exactness check (default: all)",
    )
    parser.add_argument(
        "--binary-model",
        default=None,
        help="a trained binary .keras file to use instead of training one",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="qnn_out")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)

    data = load(args.dataset)
    (x_train, _), (x_test, y_test) = data
    os.makedirs(args.out_dir, exist_ok=True)
    report = {
        "dataset": args.dataset,
        "model": args.model,
        "activation_bits": args.activation_bits,
        "epochs": args.epochs,
    }

    if args.binary_model:
        model = load_model(args.binary_model)
    else:
        model = build(args.model, x_train.shape[1:], args.activation_bits, True, args.width)
    outputs = (
        ([] if args.binary_model else [f"{model.name}.keras"])
        + ([f"{model.name}.npz"] if args.activation_bits == 1 else [])
        + [f"{model.name}_report.json"]
    )
    refuse_to_overwrite(parser, args.out_dir, outputs, args.overwrite)
    if args.binary_model:
        model.compile(
            metrics=["accuracy"], loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        accuracy = float(model.evaluate(x_test, y_test, verbose=0, batch_size=500)[1])
        seconds = None
    else:
        accuracy, seconds = train(
            model, data, args.epochs, args.batch_size, args.learning_rate, args.seed
        )
    report.update(test_accuracy=accuracy, train_seconds=seconds)
    trained = "loaded" if seconds is None else f"trained in {seconds:.0f} s"
    print(
        f"\n{model.name} ({args.activation_bits}-bit activations): test accuracy "
        f"{accuracy:.4f}, {trained}"
    )
    memory = qnn.summary(model)
    report["memory"] = {
        "total_bytes": memory["total_bytes"],
        "float32_bytes": memory["float32_bytes"],
        "ratio": memory["ratio"],
    }
    if not args.binary_model:
        model.save(os.path.join(args.out_dir, f"{model.name}.keras"))

    engine = None
    if args.activation_bits == 1:
        path = os.path.join(args.out_dir, f"{model.name}.npz")
        qnn.export(model, path)
        engine = BinaryEngine.load(path)
        check = qnn.check_exactness(model, engine, x_test[: args.check_n])
        report["exactness"] = check
        print(
            f"engine vs Keras on {len(x_test[: args.check_n])} test images: hidden bits differing "
            f"{check['hidden_mismatches']}, predictions agreeing "
            f"{check['prediction_agreement']:.4f}, max logit relative error "
            f"{check['max_logit_rel_error']:.2e}"
        )

    x, y = x_test[: args.attack_n], y_test[: args.attack_n]
    rows = [("binary, STE gradients", QNNModelWrapper(model, surrogate="ste", engine=engine))]
    if args.activation_bits == 1:  # the surrogate acts on sign activations
        rows.append(
            (
                "binary, naive (zero) gradients",
                QNNModelWrapper(model, surrogate="zero", engine=engine),
            )
        )
    if args.float_twin:
        twin = build(args.model, x_train.shape[1:], args.activation_bits, False, args.width)
        twin_accuracy, twin_seconds = train(
            twin, data, args.epochs, args.batch_size, args.learning_rate, args.seed
        )
        report.update(float_twin_accuracy=twin_accuracy, float_twin_seconds=twin_seconds)
        print(f"float twin: test accuracy {twin_accuracy:.4f} in {twin_seconds:.0f} s")
        rows.append(("float twin", KerasModelWrapper(twin)))
    print(f"\nPGD-20, L-inf eps={args.eps}, {len(x)} test images")
    print("| model | clean | PGD |\n|---|---|---|")
    report["attacks"] = {}
    for name, wrapped in rows:
        clean = float(np.mean(wrapped.predict_classes(x).numpy() == y))
        robust = robust_accuracy(wrapped, x, y, args.eps, args.seed)
        report["attacks"][name] = {"clean": clean, "pgd": robust}
        print(f"| {name} | {clean:.3f} | {robust:.3f} |")
    with open(os.path.join(args.out_dir, f"{model.name}_report.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
