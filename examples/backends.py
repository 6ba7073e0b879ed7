"""The same evaluation on whichever Keras backend runs, and a PyTorch module as it is.

    KERAS_BACKEND=tensorflow python examples/backends.py
    KERAS_BACKEND=jax python examples/backends.py
    KERAS_BACKEND=torch python examples/backends.py           # also a torch.nn.Module
    KERAS_BACKEND=torch python examples/backends.py --quick   # what tests/test_examples.py runs

Trains a small CNN on scikit-learn's digits with `model.fit`, then attacks it
with FGSM, PGD and APGD at eps 0.1 and prints the robust accuracies. Under
PyTorch it also trains a `torch.nn.Module` with a plain PyTorch loop and
evaluates it through `advlib.models.from_torch`, in its own channels-first
layout, with no port.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from advlib import attacks, backend
from advlib.datasets import load
from advlib.models import from_torch, small_cnn, train_classifier

ATTACKS = {
    "FGSM": (attacks.FastGradientMethod, {}),
    "PGD-20": (attacks.ProjectedGradientDescent, dict(nb_iter=20, eps_iter=0.025, seed=0)),
    "APGD-CE": (attacks.APGD, dict(nb_iter=50, seed=0)),
}


def evaluate(model, x, y, eps: float) -> dict[str, float]:
    """Robust accuracy under each attack, and the seconds it took."""
    rows = {}
    for name, (attack_class, params) in ATTACKS.items():
        start = time.perf_counter()
        result = attack_class(model).run(x, y, eps=eps, clip_min=0.0, clip_max=1.0, **params)
        rows[name] = (1.0 - result.success_rate, time.perf_counter() - start)
    return rows


def torch_module(x_train, y_train, epochs: int):
    """A small CNN in PyTorch, trained with a plain PyTorch loop (channels first)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 8 * 8, 10),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    images = torch.tensor(x_train.transpose(0, 3, 1, 2))
    labels = torch.tensor(y_train, dtype=torch.int64)
    for _ in range(epochs):
        for start in range(0, len(images), 64):
            optimizer.zero_grad()
            batch = slice(start, start + 64)
            torch.nn.functional.cross_entropy(net(images[batch]), labels[batch]).backward()
            optimizer.step()
    return net


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n", type=int, default=360, help="test digits attacked")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="3 epochs, 60 digits")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.n = 3, 60
    (x_train, y_train), (x_test, y_test) = load("digits")
    x_test, y_test = x_test[: args.n], y_test[: args.n]
    keras.utils.set_random_seed(0)
    model = train_classifier(small_cnn((8, 8, 1)), x_train, y_train, epochs=args.epochs, seed=0)
    clean = float(np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test))
    print(f"Keras backend: {backend.name()}; clean accuracy {clean:.3f} on {len(x_test)} digits")
    results = {"Keras model": evaluate(model, x_test, y_test, args.eps)}
    if backend.name() == "torch":
        net = torch_module(x_train, y_train, args.epochs)
        channels_first = x_test.transpose(0, 3, 1, 2)
        wrapped = from_torch(net, input_shape=channels_first.shape[1:], nb_classes=10)
        results["torch.nn.Module"] = evaluate(wrapped, channels_first, y_test, args.eps)
    print(f"\n| model | attack | robust accuracy (eps {args.eps:g}) | seconds |")
    print("|---|---|---|---|")
    for model_name, rows in results.items():
        for attack_name, (accuracy, seconds) in rows.items():
            print(f"| {model_name} | {attack_name} | {accuracy:.3f} | {seconds:.1f} |")
    return {"clean": clean, **results}


if __name__ == "__main__":
    main()
