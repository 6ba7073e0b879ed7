"""Attack one trained CNN with FGSM, PGD, JSMA and Carlini-Wagner L2.

Prints success rates, perturbation norms and costs for each attack, and saves
a grid of adversarial examples as a PNG:

    python examples/attack_gallery.py [--dataset digits] [--n 100] [--out-dir .]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _outputs import add_overwrite_option, refuse_to_overwrite

from advlib.attacks import (
    CarliniWagnerL2,
    FastGradientMethod,
    ProjectedGradientDescent,
    SaliencyMapMethod,
)
from advlib.datasets import load
from advlib.models import KerasModelWrapper, small_cnn, train_classifier


def attack_all(model, x, y, eps, cw_iterations, jsma_gamma, seed):
    """Runs the four attacks; returns {name: AttackResult}."""
    bounds = dict(clip_min=0.0, clip_max=1.0)
    return {
        f"FGSM (Linf {eps})": FastGradientMethod(model).run(x, y, eps=eps, **bounds),
        f"PGD-40 (Linf {eps})": ProjectedGradientDescent(model).run(
            x, y, eps=eps, eps_iter=eps / 10, nb_iter=40, seed=seed, **bounds
        ),
        f"JSMA (gamma {jsma_gamma})": SaliencyMapMethod(model).run(
            x, y, theta=1.0, gamma=jsma_gamma, seed=seed
        ),
        "CW-L2": CarliniWagnerL2(model).run(x, y, max_iterations=cw_iterations),
    }


def print_table(results):
    print(
        "\n| attack | success | median L0 | median L2 | median Linf | seconds | "
        "forward / backward passes |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        s = result.summary()
        print(
            f"| {name} | {s['success_rate']:.3f} | {s['median_l0']:.0f} | "
            f"{s['median_l2']:.3f} | {s['median_linf']:.3f} | {s['wall_time']:.1f} | "
            f"{s['forward_passes']} / {s['backward_passes']} |"
        )


def save_grid(x, y, results, path, rows=5):
    """Clean images in the first column, each attack's version beside them."""
    columns = 1 + len(results)
    figure, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.9 * rows))
    image = lambda a: a[..., 0] if a.shape[-1] == 1 else a
    for row in range(rows):
        axes[row, 0].imshow(image(x[row]), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"clean: {y[row]}", fontsize=8)
        for col, (name, result) in enumerate(results.items(), start=1):
            axes[row, col].imshow(image(result.x_adv[row]), cmap="gray", vmin=0, vmax=1)
            mark = "broken" if result.success[row] else "held"
            axes[row, col].set_title(f"{result.predictions[row]} ({mark})", fontsize=8)
            if row == 0:
                axes[row, col].set_title(f"{name}\n{result.predictions[row]} ({mark})", fontsize=7)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist", "mnist"])
    parser.add_argument("--n", type=int, default=100, help="test images to attack")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument(
        "--jsma-gamma",
        type=float,
        default=None,
        help="default 0.3 on 8x8 digits, 0.1 on 28x28 images",
    )
    parser.add_argument("--cw-iterations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=".")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)
    figure = f"attack_gallery_{args.dataset}.png"
    refuse_to_overwrite(parser, args.out_dir, [figure], args.overwrite)

    (x_train, y_train), (x_test, y_test) = load(args.dataset)
    model = KerasModelWrapper(
        train_classifier(
            small_cnn(x_train.shape[1:]), x_train, y_train, epochs=args.epochs, seed=args.seed
        )
    )
    correct = np.flatnonzero(
        model.predict_classes(x_test[: 4 * args.n]).numpy() == y_test[: 4 * args.n]
    )[: args.n]
    x, y = x_test[correct], y_test[correct]
    print(f"{args.dataset}: attacking {len(x)} correctly classified test images")
    gamma = args.jsma_gamma or (0.3 if x.shape[1] < 16 else 0.1)
    results = attack_all(model, x, y, args.eps, args.cw_iterations, gamma, args.seed)
    print_table(results)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, figure)
    save_grid(x, y, results, path, rows=min(5, len(x)))
    print(f"\nsaved {path}")
    return results, path


if __name__ == "__main__":
    main()
