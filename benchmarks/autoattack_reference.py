"""advlib's AutoAttack against the PyTorch reference, on the same weights and data.

Rebuilds each Keras CNN in PyTorch with the same weights (the logits must agree
to 1e-4), then runs every AutoAttack member and the standard ensemble in both
libraries on the first `--n` Fashion-MNIST test images at L-inf `--eps`:

- advlib: `APGD` (CE), `APGDT`, `FABT`, `SquareAttack` and `AutoAttack`
  (version "standard"), each with the parameters of fra31/auto-attack.
- the reference: torchattacks' `APGD`, `APGDT`, `FAB` (multi-targeted) and
  `Square` with the same parameters (100 steps, 9 targets, 5,000 queries,
  Square's schedule not rescaled, as in fra31/auto-attack), and their
  `MultiAttack` in AutoAttack's order; also `torchattacks.AutoAttack` as it
  ships, whose members run 10 steps.

Prints robust accuracy and wall time side by side, the examples that one
ensemble breaks and the other does not, and writes JSON to `--out`. PyTorch and
torchattacks are needed here only (`pip install torch torchattacks`), never by
advlib or its tests.

    python examples/adversarial_training.py --out-dir adv_out      # the two CNNs
    python benchmarks/autoattack_reference.py --natural adv_out/natural_fashion-mnist.keras \\
        --robust adv_out/fast_fashion-mnist.keras --n 1000

With `--same-module` (and KERAS_BACKEND=torch), advlib attacks the PyTorch twin
itself through `advlib.models.from_torch`, in the same process as torchattacks:
the two libraries on the very same module, no port between them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MEMBERS = ("apgd-ce", "apgd-t", "fab-t", "square")


def torch_twin(keras_model):
    """The Keras Sequential CNN (Conv2D 'same' / MaxPooling2D / Flatten / Dense) as a
    PyTorch module with the same weights, taking NHWC inputs like the Keras model."""
    import keras
    import torch
    from torch import nn

    class NHWCToNCHW(nn.Module):
        def forward(self, x):
            return x.permute(0, 3, 1, 2)

    class FlattenLikeKeras(nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1).reshape(len(x), -1)  # Keras flattens (h, w, c)

    layers = [NHWCToNCHW()]
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = (w.numpy() for w in layer.weights)
            if (
                layer.padding != "same"
                or tuple(layer.strides) != (1, 1)
                or kernel.shape[0] % 2 == 0
            ):
                raise ValueError(f"{layer.name}: only odd 'same' convolutions of stride 1 port")
            conv = nn.Conv2d(
                kernel.shape[2], kernel.shape[3], kernel.shape[:2], padding=kernel.shape[0] // 2
            )
            conv.weight.data = torch.tensor(kernel.transpose(3, 2, 0, 1))
            conv.bias.data = torch.tensor(bias)
            layers.append(conv)
        elif isinstance(layer, keras.layers.MaxPooling2D):
            layers.append(nn.MaxPool2d(layer.pool_size, layer.strides))
            continue
        elif isinstance(layer, keras.layers.Flatten):
            layers.append(FlattenLikeKeras())
            continue
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = (w.numpy() for w in layer.weights)
            dense = nn.Linear(*kernel.shape)
            dense.weight.data = torch.tensor(kernel.T.copy())
            dense.bias.data = torch.tensor(bias)
            layers.append(dense)
        else:
            raise ValueError(f"{layer.name}: {type(layer).__name__} has no PyTorch port here")
        activation = layer.activation.__name__
        if activation == "relu":
            layers.append(nn.ReLU())
        elif activation != "linear":
            raise ValueError(f"{layer.name}: activation {activation!r} has no port here")
    return nn.Sequential(*layers).eval()


def reference_attacks(model, eps, n_classes, steps=100, queries=5000):
    """torchattacks' members with fra31/auto-attack's standard parameters (fewer
    `steps` and `queries` for quick runs)."""
    import torchattacks as ta

    members = {
        "apgd-ce": ta.APGD(
            model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, loss="ce"
        ),
        "apgd-t": ta.APGDT(
            model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, n_classes=n_classes
        ),
        "fab-t": ta.FAB(
            model,
            norm="Linf",
            eps=eps,
            steps=steps,
            n_restarts=1,
            seed=0,
            multi_targeted=True,
            n_classes=n_classes,
        ),
        "square": ta.Square(
            model,
            norm="Linf",
            eps=eps,
            n_queries=queries,
            n_restarts=1,
            p_init=0.8,
            resc_schedule=False,
            seed=0,
        ),
    }
    ensembles = {
        "autoattack (reference parameters)": ta.MultiAttack([members[m] for m in MEMBERS]),
        "torchattacks.AutoAttack (as shipped: 10 steps)": ta.AutoAttack(
            model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=0
        ),
    }
    return members, ensembles


def advlib_attacks(model, eps, nb_iter=100, queries=5000):
    from advlib.attacks import APGD, APGDT, FABT, AutoAttack, SquareAttack

    box = dict(eps=eps, clip_min=0.0, clip_max=1.0, seed=0)
    members = {
        "apgd-ce": lambda x, y: APGD(model).generate_np(
            x, y=y, nb_iter=nb_iter, loss="ce", batch_size=500, **box
        ),
        "apgd-t": lambda x, y: APGDT(model).generate_np(
            x, y=y, nb_iter=nb_iter, n_target_classes=9, batch_size=500, **box
        ),
        "fab-t": lambda x, y: FABT(model).generate_np(
            x, y=y, nb_iter=nb_iter, n_target_classes=9, batch_size=500, **box
        ),
        "square": lambda x, y: SquareAttack(model).generate_np(
            x, y=y, n_queries=queries, batch_size=500, **box
        ),
    }
    standard = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0)
    return members, {
        "autoattack (standard)": lambda x, y: standard.run_standard_evaluation(x, y, bs=500)
    }


def robust_mask(predict, x_adv, x, y, eps):
    within = np.abs(x_adv - x).reshape(len(x), -1).max(axis=1) <= eps + 1e-6
    return (predict(x_adv) == y) | ~within


def run_torch(attack, x, y, batch=500, device="cpu"):
    """A torchattacks attack on NHWC arrays, fed to it as NCHW tensors on `device`."""
    import torch

    out = []
    for i in range(0, len(x), batch):
        images = torch.tensor(x[i : i + batch]).permute(0, 3, 1, 2).contiguous().to(device)
        adv = attack(images, torch.tensor(y[i : i + batch]).long().to(device))
        out.append(adv.permute(0, 2, 3, 1).detach().cpu().numpy())
    return np.concatenate(out)


def from_nchw(twin):
    """torchattacks feeds NCHW images; the twin takes NHWC like the Keras model."""
    from torch import nn

    class FromNCHW(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 2, 3, 1))

    return FromNCHW(twin).eval()


def evaluate_model(name, keras_model, x, y, eps, skip_single, same_module=False):
    import torch

    from advlib import backend
    from advlib.models import KerasModelWrapper, from_torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    twin = torch_twin(keras_model)
    with torch.no_grad():
        torch_logits = twin(torch.tensor(x)).numpy()
    keras_logits = keras_model.predict(x, verbose=0, batch_size=500)
    difference = float(np.abs(torch_logits - keras_logits).max())
    if difference > 1e-4:
        raise SystemExit(f"{name}: the PyTorch twin's logits differ by {difference:.3g} > 1e-4")
    module = from_nchw(twin)
    if same_module:
        # advlib attacks the very module torchattacks attacks (the NHWC images are
        # transposed to its channels-first layout inside the wrapper)
        wrapped = from_torch(module, (x.shape[3], *x.shape[1:3]), data_format="channels_last")
    else:
        wrapped = KerasModelWrapper(keras_model)
    predict = lambda a: np.concatenate(
        [backend.to_numpy(wrapped.predict_classes(a[i : i + 500])) for i in range(0, len(a), 500)]
    )
    clean = float(np.mean(predict(x) == y))
    ours, our_ensembles = advlib_attacks(wrapped, eps)
    theirs, their_ensembles = reference_attacks(module, eps, int(keras_logits.shape[1]))
    rows, masks = [], {}
    plan = [] if skip_single else [(m, ours[m], theirs[m]) for m in MEMBERS]
    plan.append(
        (
            "autoattack (standard)",
            our_ensembles["autoattack (standard)"],
            their_ensembles["autoattack (reference parameters)"],
        )
    )
    for label, mine, reference in plan:
        row = {"model": name, "attack": label}
        for side, run in (
            ("advlib", lambda: mine(x, y)),
            ("reference", lambda: run_torch(reference, x, y)),
        ):
            print(f"  {name}: {label} ({side}) ...", flush=True)
            start = time.perf_counter()
            x_adv = run()
            row[f"{side}_seconds"] = time.perf_counter() - start
            mask = robust_mask(predict, x_adv, x, y, eps)
            row[f"{side}_robust"] = float(mask.mean())
            masks[(label, side)] = mask
        row["speedup"] = row["reference_seconds"] / row["advlib_seconds"]
        rows.append(row)
        print(
            f"    advlib {100 * row['advlib_robust']:.1f}% in {row['advlib_seconds']:.0f} s, "
            f"reference {100 * row['reference_robust']:.1f}% in "
            f"{row['reference_seconds']:.0f} s",
            flush=True,
        )
    shipped = their_ensembles["torchattacks.AutoAttack (as shipped: 10 steps)"]
    start = time.perf_counter()
    shipped_mask = robust_mask(predict, run_torch(shipped, x, y), x, y, eps)
    extra = {
        "torchattacks_autoattack_as_shipped": {
            "robust": float(shipped_mask.mean()),
            "seconds": time.perf_counter() - start,
        }
    }
    ours_aa, theirs_aa = (masks[("autoattack (standard)", s)] for s in ("advlib", "reference"))
    extra["only_reference_breaks"] = int((ours_aa & ~theirs_aa).sum())
    extra["only_advlib_breaks"] = int((theirs_aa & ~ours_aa).sum())
    return {"model": name, "clean": clean, "logit_difference": difference, "rows": rows, **extra}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--natural", help="the naturally trained CNN (.keras)")
    parser.add_argument("--robust", help="the adversarially trained CNN (.keras)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument(
        "--skip-single", action="store_true", help="only the ensembles, not each attack alone"
    )
    parser.add_argument(
        "--same-module",
        action="store_true",
        help="advlib attacks the PyTorch twin itself, through from_torch (needs "
        "KERAS_BACKEND=torch), instead of the Keras model",
    )
    parser.add_argument("--out", default=os.path.join(RESULTS, "autoattack_reference.json"))
    args = parser.parse_args(argv)
    if args.same_module and os.environ.get("KERAS_BACKEND") != "torch":
        parser.error("--same-module runs advlib on PyTorch: set KERAS_BACKEND=torch")
    models = [
        (name, path) for name, path in (("robust", args.robust), ("natural", args.natural)) if path
    ]
    if not models:
        parser.error("give --natural and/or --robust")
    try:
        import torch  # noqa: F401
        import torchattacks  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"this benchmark needs PyTorch and torchattacks: {error}") from None
    from advlib.datasets import load
    from advlib.models import load_model

    _, (x_test, y_test) = load("fashion-mnist", download=False)
    x, y = x_test[: args.n], y_test[: args.n]
    results = [
        evaluate_model(name, load_model(path), x, y, args.eps, args.skip_single, args.same_module)
        for name, path in models
    ]
    print()
    print(f"Fashion-MNIST, first {args.n} test images, L-inf eps {args.eps}:\n")
    print(
        "| model | attack | advlib robust | reference robust | advlib s | reference s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for result in results:
        for row in result["rows"]:
            print(
                f"| {row['model']} ({100 * result['clean']:.1f}% clean) | {row['attack']} | "
                f"{100 * row['advlib_robust']:.1f}% | {100 * row['reference_robust']:.1f}% | "
                f"{row['advlib_seconds']:.0f} | {row['reference_seconds']:.0f} | "
                f"{row['speedup']:.1f}x |"
            )
        shipped = result["torchattacks_autoattack_as_shipped"]
        print(
            f"| {result['model']} | torchattacks.AutoAttack as shipped (10 steps) | | "
            f"{100 * shipped['robust']:.1f}% | | {shipped['seconds']:.0f} | |"
        )
    for result in results:
        print(
            f"\n{result['model']}: logits agree to {result['logit_difference']:.2g}; "
            f"{result['only_reference_breaks']} examples broken only by the reference's "
            f"ensemble, {result['only_advlib_breaks']} only by advlib's."
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(
            {
                "n": args.n,
                "eps": args.eps,
                "advlib_attacks": "the PyTorch module" if args.same_module else "the Keras model",
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "results": results,
            },
            handle,
            indent=1,
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
