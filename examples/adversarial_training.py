"""cleverhans's adversarial-training tutorial, done right.

1. train a clean CNN;
2. evaluate it under FGSM and PGD;
3. adversarially train a second CNN (a recipe: fast, madry, goodfellow, trades);
4. evaluate both;
5. print a table and save a plot of robust accuracy against eps.

    python examples/adversarial_training.py                       # Fashion-MNIST
    python examples/adversarial_training.py --dataset digits --epochs 1   # quick
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _outputs import add_overwrite_option, refuse_to_overwrite

from advlib.attacks import FastGradientMethod, ProjectedGradientDescent
from advlib.datasets import load
from advlib.models import KerasModelWrapper, small_cnn
from advlib.training import AdversarialModel, RobustnessCallback


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def train_clean(data, epochs, batch_size, seed):
    (x_train, y_train), _ = data
    keras.utils.set_random_seed(seed)
    model = small_cnn(x_train.shape[1:])
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=2, callbacks=[timer])
    return model, timer.seconds


def train_robust(data, recipe, eps, epochs, batch_size, seed, **overrides):
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = small_cnn(x_train.shape[1:])
    robust = AdversarialModel.from_recipe(recipe, model, eps=eps, seed=seed, **overrides)
    steps = epochs * -(-len(x_train) // batch_size)
    robust.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.1)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    monitor = RobustnessCallback(x_test, y_test, eps=eps, n=500, seed=seed, verbose=1)
    robust.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=batch_size,
        verbose=2,
        callbacks=[timer, monitor],
    )
    return model, timer.seconds, monitor


def evaluate(model, x, y, eps_values, nb_iter, seed):
    """Clean, FGSM and PGD accuracy at each eps."""
    wrapped = KerasModelWrapper(model)
    accuracy = lambda a: float(np.mean(wrapped.predict_classes(a).numpy() == y))
    rows = []
    for eps in eps_values:
        if eps == 0:
            rows.append(dict(eps=0.0, fgsm=accuracy(x), pgd=accuracy(x)))
            continue
        bounds = dict(clip_min=0.0, clip_max=1.0)
        fgsm = FastGradientMethod(wrapped).generate_np(x, y=y, eps=eps, batch_size=500, **bounds)
        pgd = ProjectedGradientDescent(wrapped).generate_np(
            x,
            y=y,
            eps=eps,
            eps_iter=2.5 * eps / nb_iter,
            nb_iter=nb_iter,
            seed=seed,
            batch_size=500,
            **bounds,
        )
        rows.append(dict(eps=float(eps), fgsm=accuracy(fgsm), pgd=accuracy(pgd)))
    return rows


def plot(results, path, nb_iter):
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for (name, rows), color in zip(results.items(), ("tab:red", "tab:blue")):
        eps = [r["eps"] for r in rows]
        axis.plot(eps, [r["pgd"] for r in rows], "-o", color=color, label=f"{name}: PGD-{nb_iter}")
        axis.plot(
            eps, [r["fgsm"] for r in rows], "--", color=color, alpha=0.6, label=f"{name}: FGSM"
        )
    axis.set_xlabel("L-inf eps")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist", "digits"]
    )
    parser.add_argument(
        "--recipe", default="fast", choices=["fast", "madry", "goodfellow", "trades"]
    )
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each training")
    parser.add_argument("--clean-epochs", type=int, default=None)
    parser.add_argument(
        "--nb-iter", type=int, default=None, help="attack steps of the madry / trades recipes"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--eval-n", type=int, default=None, help="test images (default all)")
    parser.add_argument("--eval-iter", type=int, default=20, help="PGD steps in evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="adv_out")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)
    robust_file = f"{args.recipe}_{args.dataset}.keras"
    natural_file = f"natural_{args.dataset}.keras"
    figure = f"robust_accuracy_{args.dataset}.png"
    report_file = f"report_{args.recipe}_{args.dataset}.json"
    refuse_to_overwrite(
        parser, args.out_dir, [robust_file, natural_file, figure, report_file], args.overwrite
    )

    data = load(args.dataset)
    _, (x_test, y_test) = data
    x_eval, y_eval = x_test[: args.eval_n], y_test[: args.eval_n]
    os.makedirs(args.out_dir, exist_ok=True)

    clean_model, clean_times = train_clean(
        data, args.clean_epochs or args.epochs, args.batch_size, args.seed
    )
    overrides = {} if args.nb_iter is None else {"nb_iter": args.nb_iter}
    robust_model, robust_times, monitor = train_robust(
        data, args.recipe, args.eps, args.epochs, args.batch_size, args.seed, **overrides
    )
    robust_model.save(os.path.join(args.out_dir, robust_file))
    clean_model.save(os.path.join(args.out_dir, natural_file))

    eps_values = [0.0] + [args.eps * f for f in (0.25, 0.5, 0.75, 1.0, 1.5)]
    results = {
        "natural": evaluate(clean_model, x_eval, y_eval, eps_values, args.eval_iter, args.seed),
        f"{args.recipe} AT": evaluate(
            robust_model, x_eval, y_eval, eps_values, args.eval_iter, args.seed
        ),
    }
    print(f"\n{args.dataset}, {len(x_eval)} test images, PGD-{args.eval_iter}")
    print("| model | eps | clean | FGSM | PGD | seconds per epoch | total training s |")
    print("|---|---|---|---|---|---|---|")
    for (name, rows), times in zip(results.items(), (clean_times, robust_times)):
        at_eps = next(r for r in rows if np.isclose(r["eps"], args.eps))
        print(
            f"| {name} | {args.eps} | {rows[0]['pgd']:.4f} | {at_eps['fgsm']:.4f} | "
            f"{at_eps['pgd']:.4f} | {np.mean(times):.1f} | {np.sum(times):.0f} |"
        )
    path = os.path.join(args.out_dir, figure)
    plot(results, path, args.eval_iter)
    print(f"saved {path}")
    report = dict(
        dataset=args.dataset,
        recipe=args.recipe,
        eps=args.eps,
        results=results,
        clean_epoch_seconds=clean_times,
        robust_epoch_seconds=robust_times,
        robustness_history=monitor.history,
        best_robust_epoch=monitor.best_epoch,
        plot=path,
    )
    with open(os.path.join(args.out_dir, report_file), "w") as handle:
        json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
