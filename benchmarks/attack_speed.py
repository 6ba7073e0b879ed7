"""Attack throughput against a hand-written floor and the peer libraries.

Setup (as in ../shared/notes/peers-on-keras3.md): the cleverhans-tutorial CNN
for 28x28x1 inputs, trained 2 epochs on Fashion-MNIST when it is available
(random weights otherwise), the first 1,000 test images, L-inf eps 0.1,
PGD-40 with step 2.5*eps/40 and no random start, true labels.

Every implementation runs once to warm up (tracing), then `--repeats` times,
interleaved; the best time counts. Prints a table of seconds, examples per
second, ratio to advlib and accuracy left, and writes JSON to `--out`.

`--sections cw,jsma` adds the optimisation attacks on `--opt-n` correctly
classified test images, each run once (they take minutes):
- CW-L2 with `--cw-iterations` (default 1000) and 5 binary-search steps,
  batch 100, lr 5e-3, initial constant 1e-2: advlib, cleverhans 4, ART's
  CarliniL2Method and Foolbox 3's L2CarliniWagnerAttack. Success rate and the
  mean L2 of the successful examples sit beside the times.
- JSMA, theta 1, gamma 0.1, the same random targets: advlib and ART.

`--sections backends` times advlib itself on each Keras backend
(`--backends`), on the same weights and images, in one fresh process per
backend and round (`--repeats` rounds, interleaved; the best counts): PGD-40
as above (after a warm-up run), and AutoAttack standard on the first `--aa-n`
images (one run, tracing included, as a user meets it). `--baseline-rev REV`
adds advlib as it was at commit REV (`git archive`) on TensorFlow, so that
"no slower than before the backend rewrite" is a ratio measured in the same run.

    python benchmarks/attack_speed.py [--sections fgsm-pgd,cw,jsma] [--skip ART]
    python benchmarks/attack_speed.py --sections backends --backends tensorflow,jax,torch \
        --baseline-rev 8de586a --aa-n 200 --repeats 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import advlib
from advlib.attacks import BasicIterativeMethod, FastGradientMethod
from advlib.models import small_cnn, train_classifier

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def load_model_and_data(n: int, epochs: int):
    from advlib.datasets import load

    try:
        (x_train, y_train), (x_test, y_test) = load("fashion-mnist", download=False)
        source = "fashion-mnist"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        x_test = rng.random((n, 28, 28, 1), dtype=np.float32)
        y_test = rng.integers(0, 10, n)
        source = "random"
    cache = os.path.join(RESULTS, f"fashion_cnn_{epochs}ep.keras")
    if source == "fashion-mnist" and os.path.exists(cache):
        model = keras.models.load_model(cache)
    else:
        model = small_cnn((28, 28, 1))
        if source == "fashion-mnist":
            start = time.perf_counter()
            train_classifier(model, x_train, y_train, epochs=epochs, batch_size=128, seed=0)
            print(f"trained the CNN for {epochs} epochs in {time.perf_counter() - start:.0f} s")
            os.makedirs(RESULTS, exist_ok=True)
            model.save(cache)
    return model, x_test[:n], y_test[:n], source


def floor_pgd(model, eps, eps_iter, nb_iter):
    """The fastest hand-written TF2 loop measured: Python loop, compiled step."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function(reduce_retracing=True)
    def step(x_adv, x, y):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = loss_fn(y, model(x_adv, training=False))
        x_adv = x_adv + eps_iter * tf.sign(tape.gradient(loss, x_adv))
        x_adv = x + tf.clip_by_value(x_adv - x, -eps, eps)
        return tf.clip_by_value(x_adv, 0.0, 1.0)

    def run(x, y):
        x, y = tf.constant(x), tf.constant(y)
        x_adv = x
        for _ in range(nb_iter):
            x_adv = step(x_adv, x, y)
        return x_adv.numpy()

    return run


def implementations(model, eps, nb_iter, n):
    eps_iter = 2.5 * eps / nb_iter
    bounds = dict(clip_min=0.0, clip_max=1.0)
    fgsm, bim = FastGradientMethod(model), BasicIterativeMethod(model)
    impls = {
        ("FGSM", "advlib"): lambda x, y: fgsm.generate_np(x, y=y, eps=eps, batch_size=n, **bounds),
        ("FGSM", "hand-written floor"): floor_pgd(model, eps, eps, 1),
        (f"PGD-{nb_iter}", "advlib"): lambda x, y: bim.generate_np(
            x, y=y, eps=eps, eps_iter=eps_iter, nb_iter=nb_iter, batch_size=n, **bounds
        ),
        (f"PGD-{nb_iter}", "hand-written floor"): floor_pgd(model, eps, eps_iter, nb_iter),
    }
    try:
        from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

        impls[("FGSM", "cleverhans 4")] = lambda x, y: fast_gradient_method(
            model, tf.constant(x), eps, np.inf, y=tf.constant(y), **bounds
        ).numpy()
        impls[(f"PGD-{nb_iter}", "cleverhans 4")] = lambda x, y: projected_gradient_descent(
            model,
            tf.constant(x),
            eps,
            eps_iter,
            nb_iter,
            np.inf,
            y=tf.constant(y),
            rand_init=False,
            sanity_checks=False,
            **bounds,
        ).numpy()
    except ImportError:
        pass
    try:
        from art.attacks.evasion import FastGradientMethod as ArtFGM
        from art.attacks.evasion import ProjectedGradientDescent as ArtPGD
        from art.estimators.classification import TensorFlowV2Classifier

        classifier = TensorFlowV2Classifier(
            model,
            nb_classes=10,
            input_shape=(28, 28, 1),
            clip_values=(0.0, 1.0),
            loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        art_fgsm = ArtFGM(classifier, eps=eps, batch_size=n)
        art_pgd = ArtPGD(
            classifier,
            norm=np.inf,
            eps=eps,
            eps_step=eps_iter,
            max_iter=nb_iter,
            num_random_init=0,
            batch_size=n,
            verbose=False,
        )
        onehot = lambda y: np.eye(10, dtype=np.float32)[y]
        impls[("FGSM", "ART")] = lambda x, y: art_fgsm.generate(x, y=onehot(y))
        impls[(f"PGD-{nb_iter}", "ART")] = lambda x, y: art_pgd.generate(x, y=onehot(y))
    except ImportError:
        pass
    try:
        import foolbox

        fmodel = foolbox.TensorFlowModel(model, bounds=(0.0, 1.0))
        fb_fgsm = foolbox.attacks.FGSM(random_start=False)
        fb_bim = foolbox.attacks.LinfBasicIterativeAttack(
            abs_stepsize=eps_iter, steps=nb_iter, random_start=False
        )

        def run_foolbox(attack):
            return lambda x, y: attack(fmodel, tf.constant(x), tf.constant(y), epsilons=eps)[
                1
            ].numpy()

        impls[("FGSM", "Foolbox 3")] = run_foolbox(fb_fgsm)
        impls[(f"PGD-{nb_iter}", "Foolbox 3")] = run_foolbox(fb_bim)
    except ImportError:
        pass
    return impls


def optimisation_attacks(model, x, y, sections, cw_iterations, skip):
    """CW-L2 and JSMA rows: (attack, implementation, seconds, success, norm)."""
    from advlib.attacks import CarliniWagnerL2, SaliencyMapMethod
    from advlib.attacks.saliency_map_method import random_targets

    onehot = lambda labels: np.eye(10, dtype=np.float32)[labels]
    cw = dict(
        learning_rate=5e-3,
        binary_search_steps=5,
        max_iterations=cw_iterations,
        initial_const=1e-2,
        confidence=0.0,
    )
    runs = {}
    if "cw" in sections:
        name = f"CW-L2 ({cw_iterations} it.)"
        runs[(name, "advlib")] = lambda: CarliniWagnerL2(model).generate_np(
            x, y=y, batch_size=100, **cw
        )
        try:
            from cleverhans.tf2.attacks.carlini_wagner_l2 import carlini_wagner_l2

            runs[(name, "cleverhans 4")] = lambda: np.concatenate(
                [
                    carlini_wagner_l2(
                        model,
                        x[i : i + 100],
                        y=y[i : i + 100],
                        batch_size=100,
                        clip_min=0.0,
                        clip_max=1.0,
                        **cw,
                    )
                    for i in range(0, len(x), 100)
                ]
            )
        except ImportError:
            pass
        try:
            from art.attacks.evasion import CarliniL2Method
            from art.estimators.classification import TensorFlowV2Classifier

            classifier = TensorFlowV2Classifier(
                model,
                nb_classes=10,
                input_shape=x.shape[1:],
                clip_values=(0.0, 1.0),
                loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            art_cw = CarliniL2Method(
                classifier,
                confidence=0.0,
                learning_rate=5e-3,
                binary_search_steps=5,
                max_iter=cw_iterations,
                initial_const=1e-2,
                batch_size=100,
                verbose=False,
            )
            runs[(name, "ART")] = lambda: art_cw.generate(x, y=onehot(y))
        except ImportError:
            pass
        try:
            import foolbox

            fmodel = foolbox.TensorFlowModel(model, bounds=(0.0, 1.0))
            fb_cw = foolbox.attacks.L2CarliniWagnerAttack(
                binary_search_steps=5,
                steps=cw_iterations,
                stepsize=5e-3,
                confidence=0.0,
                initial_const=1e-2,
                abort_early=True,
            )
            runs[(name, "Foolbox 3")] = lambda: np.concatenate(
                [
                    fb_cw(
                        fmodel,
                        tf.constant(x[i : i + 100]),
                        tf.constant(y[i : i + 100]),
                        epsilons=None,
                    )[0].numpy()
                    for i in range(0, len(x), 100)
                ]
            )
        except ImportError:
            pass
    if "jsma" in sections:
        targets = random_targets(y, 10, 0)
        runs[("JSMA (gamma 0.1)", "advlib")] = lambda: SaliencyMapMethod(model).generate_np(
            x, y_target=targets, theta=1.0, gamma=0.1, batch_size=100
        )
        try:
            from art.attacks.evasion import SaliencyMapMethod as ArtJSMA
            from art.estimators.classification import TensorFlowV2Classifier

            classifier = TensorFlowV2Classifier(
                model,
                nb_classes=10,
                input_shape=x.shape[1:],
                clip_values=(0.0, 1.0),
                loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            art_jsma = ArtJSMA(classifier, theta=1.0, gamma=0.1, batch_size=100, verbose=False)
            runs[("JSMA (gamma 0.1)", "ART")] = lambda: art_jsma.generate(x, y=onehot(targets))
        except ImportError:
            pass
    rows = []
    for (attack, name), run in runs.items():
        if name in skip:
            continue
        print(f"running {attack} with {name} ...", flush=True)
        start = time.perf_counter()
        try:
            x_adv = np.asarray(run())
        except Exception as error:  # a peer that crashes is a result too
            rows.append(dict(attack=attack, implementation=name, error=repr(error)[:200]))
            continue
        seconds = time.perf_counter() - start
        predicted = model.predict(x_adv, verbose=0).argmax(1)
        success = predicted == targets if attack.startswith("JSMA") else predicted != y
        delta = (x_adv - x).reshape(len(x), -1)
        norm = (
            np.linalg.norm(delta, axis=1) if attack.startswith("CW") else (delta != 0).mean(axis=1)
        )
        rows.append(
            dict(
                attack=attack,
                implementation=name,
                seconds=seconds,
                success_rate=float(success.mean()),
                mean_norm=float(norm[success].mean()) if success.any() else None,
                norm="L2" if attack.startswith("CW") else "fraction of features",
            )
        )
    return rows


BACKEND_WORKER = r"""
import json, sys, time
import numpy as np
import keras
from advlib import attacks
settings = json.loads(sys.argv[1])
data = np.load(settings["data"])
x, y = data["x"], data["y"]
model = keras.saving.load_model(settings["model"])
eps, nb_iter = settings["eps"], settings["nb_iter"]
bounds = dict(clip_min=0.0, clip_max=1.0)
pgd = attacks.BasicIterativeMethod(model)
run = lambda: pgd.generate_np(x, y=y, eps=eps, eps_iter=2.5 * eps / nb_iter, nb_iter=nb_iter,
                              batch_size=None, **bounds)
run()  # warm-up: tracing, first calls
start = time.perf_counter()
x_adv = run()
pgd_seconds = time.perf_counter() - start
few = slice(0, settings["aa_n"])
start = time.perf_counter()
result = attacks.AutoAttack(model, eps=eps, version="standard", seed=0).run(
    x[few], y[few], batch_size=settings["aa_n"], **bounds)
aa_seconds = time.perf_counter() - start
print(json.dumps(dict(
    backend=keras.backend.backend(), pgd_seconds=pgd_seconds, aa_seconds=aa_seconds,
    pgd_accuracy_left=float(np.mean(model.predict(x_adv, verbose=0).argmax(1) == y)),
    aa_robust_accuracy=float(1.0 - result.success_rate))))
"""


def advlib_tree(rev: str, folder: str) -> str:
    """advlib's sources as they were at commit `rev`, unpacked under `folder`."""
    root = os.path.dirname(HERE)
    archive = subprocess.run(
        ["git", "-C", root, "archive", rev, "advlib"], capture_output=True, check=True
    ).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(folder, filter="data")
    return folder


def backend_section(model, x, y, args):
    """advlib's PGD-40 and AutoAttack on each backend (and at `--baseline-rev`)."""
    folder = tempfile.mkdtemp(prefix="advlib-speed-")
    model_file, data_file = os.path.join(folder, "model.keras"), os.path.join(folder, "data.npz")
    model.save(model_file)
    np.savez(data_file, x=x, y=y)
    settings = dict(
        model=model_file, data=data_file, eps=args.eps, nb_iter=args.nb_iter, aa_n=args.aa_n
    )
    runs = {f"advlib, {name}": (name, os.path.dirname(HERE)) for name in args.backends.split(",")}
    if args.baseline_rev:
        tree = advlib_tree(args.baseline_rev, os.path.join(folder, "baseline"))
        runs = {f"advlib {args.baseline_rev}, tensorflow": ("tensorflow", tree), **runs}
    measured: dict[str, list[dict]] = {label: [] for label in runs}
    for _ in range(args.repeats):  # rounds interleaved, so drifts hit every run alike
        for label, (name, path) in runs.items():
            env = dict(os.environ, KERAS_BACKEND=name, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3")
            done = subprocess.run(
                [sys.executable, "-c", BACKEND_WORKER, json.dumps(settings)],
                env=env,
                capture_output=True,
                text=True,
                cwd=folder,  # so that the tree on PYTHONPATH is the advlib imported
            )
            if done.returncode:
                raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
            measured[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for label, found in measured.items():
        rows.append(
            dict(
                implementation=label,
                backend=found[0]["backend"],
                pgd_seconds=min(r["pgd_seconds"] for r in found),
                aa_seconds=min(r["aa_seconds"] for r in found),
                pgd_accuracy_left=found[0]["pgd_accuracy_left"],
                aa_robust_accuracy=found[0]["aa_robust_accuracy"],
            )
        )
    reference = next(r for r in rows if r["implementation"] == "advlib, tensorflow")
    print(
        f"\nPGD-{args.nb_iter} on {len(x)} images, AutoAttack standard on {args.aa_n}; "
        "times as ratios to advlib on TensorFlow"
    )
    print("| implementation | PGD s (ratio) | accuracy left | AutoAttack s (ratio) | robust |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['implementation']} | {r['pgd_seconds']:.2f} "
            f"({r['pgd_seconds'] / reference['pgd_seconds']:.2f}x) | {r['pgd_accuracy_left']:.3f} "
            f"| {r['aa_seconds']:.1f} ({r['aa_seconds'] / reference['aa_seconds']:.2f}x) "
            f"| {r['aa_robust_accuracy']:.3f} |"
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--nb-iter", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sections", default="fgsm-pgd", help="comma-separated: fgsm-pgd, cw, jsma"
    )
    parser.add_argument("--opt-n", type=int, default=100)
    parser.add_argument("--cw-iterations", type=int, default=1000)
    parser.add_argument("--skip", default="", help="comma-separated implementations to skip")
    parser.add_argument(
        "--backends", default="tensorflow,jax,torch", help="for --sections backends"
    )
    parser.add_argument("--baseline-rev", default=None, help="also time advlib at this commit")
    parser.add_argument("--aa-n", type=int, default=200, help="AutoAttack's images (backends)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "attack_speed.json"))
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    skip = [s for s in args.skip.split(",") if s]

    model, x, y, source = load_model_and_data(args.n, args.epochs)
    clean = float(np.mean(model.predict(x, verbose=0).argmax(1) == y))
    print(f"model: CNN on {source}, clean accuracy {clean:.3f} on {len(x)} examples")
    report = dict(
        benchmark="attack_speed",
        advlib=advlib.__version__,
        tensorflow=tf.__version__,
        keras=keras.__version__,
        machine=platform.machine(),
        cpus=os.cpu_count(),
        data=source,
        n=len(x),
        eps=args.eps,
        nb_iter=args.nb_iter,
        clean_accuracy=clean,
        repeats=args.repeats,
        rows=[],
        optimisation_rows=[],
    )
    if "fgsm-pgd" in sections:
        report["rows"] = fgsm_pgd(model, x, y, args, skip)
    if "backends" in sections:
        report["backend_rows"] = backend_section(model, x, y, args)
        report["aa_n"] = args.aa_n
        report["baseline_rev"] = args.baseline_rev
    if "cw" in sections or "jsma" in sections:
        correct = np.flatnonzero(model.predict(x, verbose=0).argmax(1) == y)[: args.opt_n]
        rows = optimisation_attacks(
            model, x[correct], y[correct], sections, args.cw_iterations, skip
        )
        report["optimisation_rows"] = rows
        report["cw_iterations"] = args.cw_iterations
        print_optimisation_table(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"\nwrote {args.out}")
    return report


def print_optimisation_table(rows):
    print("\n| attack | implementation | seconds | advlib speed-up | success | mean norm |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['attack']} | {r['implementation']} | crashed: {r['error'][:60]} | | | |")
            continue
        ours = next(
            (
                o
                for o in rows
                if o["attack"] == r["attack"] and o["implementation"] == "advlib" and "seconds" in o
            ),
            None,
        )
        ratio = f"{r['seconds'] / ours['seconds']:.1f}x" if ours else "-"
        norm = "-" if r["mean_norm"] is None else f"{r['mean_norm']:.4f} ({r['norm']})"
        print(
            f"| {r['attack']} | {r['implementation']} | {r['seconds']:.1f} | {ratio} | "
            f"{r['success_rate']:.3f} | {norm} |"
        )


def fgsm_pgd(model, x, y, args, skip):
    impls = {
        key: run
        for key, run in implementations(model, args.eps, args.nb_iter, args.n).items()
        if key[1] not in skip
    }
    outputs = {key: run(x, y) for key, run in impls.items()}  # warm-up: tracing, first calls
    times = {key: [] for key in impls}
    for _ in range(args.repeats):  # interleaved, so drifts in machine speed hit all alike
        for key, run in impls.items():
            start = time.perf_counter()
            outputs[key] = run(x, y)
            times[key].append(time.perf_counter() - start)
    rows = []
    for (attack, name), x_adv in outputs.items():
        best = min(times[(attack, name)])
        accuracy = float(np.mean(model.predict(x_adv, verbose=0).argmax(1) == y))
        rows.append(
            dict(
                attack=attack,
                implementation=name,
                seconds=best,
                examples_per_second=len(x) / best,
                accuracy_left=accuracy,
                linf=float(np.abs(x_adv - x).max()),
            )
        )
    for row in rows:
        ours = next(
            r for r in rows if r["attack"] == row["attack"] and r["implementation"] == "advlib"
        )
        row["time_vs_advlib"] = row["seconds"] / ours["seconds"]

    print("\n| attack | implementation | seconds | examples/s | time / advlib | accuracy left |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['attack']} | {r['implementation']} | {r['seconds']:.2f} | "
            f"{r['examples_per_second']:.0f} | {r['time_vs_advlib']:.2f}x | "
            f"{r['accuracy_left']:.3f} |"
        )
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
