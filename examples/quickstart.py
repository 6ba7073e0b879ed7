"""Train a small CNN on scikit-learn's digits, then attack it with FGSM and PGD.

Runs offline in well under a minute on two CPU cores:

    python examples/quickstart.py [--eps 0.1] [--epochs 15]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from advlib.attacks import FastGradientMethod, ProjectedGradientDescent
from advlib.datasets import load
from advlib.models import KerasModelWrapper, small_cnn, train_classifier


def accuracy(model, x, y):
    return float(np.mean(model.predict_classes(x).numpy() == y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf radius")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, y_test) = load("digits")
    start = time.perf_counter()
    keras_model = train_classifier(
        small_cnn(x_train.shape[1:]), x_train, y_train, epochs=args.epochs, seed=args.seed
    )
    model = KerasModelWrapper(keras_model)
    print(
        f"trained a small CNN on digits in {time.perf_counter() - start:.1f} s "
        f"({len(x_train)} train / {len(x_test)} test images)"
    )

    bounds = dict(clip_min=0.0, clip_max=1.0)
    fgsm = FastGradientMethod(model).generate_np(x_test, eps=args.eps, **bounds)
    pgd = ProjectedGradientDescent(model).generate_np(
        x_test, eps=args.eps, eps_iter=args.eps / 8, nb_iter=20, seed=args.seed, **bounds
    )

    rows = [("clean", x_test), (f"FGSM eps={args.eps}", fgsm), (f"PGD-20 eps={args.eps}", pgd)]
    print(f"\n{'examples':<18}{'accuracy':>10}")
    for name, x in rows:
        print(f"{name:<18}{accuracy(model, x, y_test):>10.3f}")
    return {name: accuracy(model, x, y_test) for name, x in rows}


if __name__ == "__main__":
    main()
