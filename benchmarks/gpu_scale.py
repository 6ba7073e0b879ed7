"""advlib at scale on one GPU: the harness, AutoAttack against torchattacks, and the
binary engine inside an attack. Sized for one short run on a lent H100 (under 8
minutes in all); `--quick` runs every path on tiny settings, on a CPU too.

Sections (`--sections`, default all):

- `a`: the `fashion-mnist-linf-0.1` harness run (AutoAttack standard and the rest,
  with the diagnostics) on a `.keras` model (`--model`, the fast-AT CNN), on this
  process's Keras backend; its wall time split by attack. `--quick`: the digits
  protocol on 10 digits with two short attacks, on `--model` (a digits model) or
  the reference digits CNN.
- `b`: AutoAttack standard on a CIFAR-10-shaped WideResNet-16-4 with fixed random
  weights (seed 0), advlib (PyTorch backend, `advlib.models.from_torch`) against
  torchattacks on the very same module and inputs. Fixed-work mode: the labels are
  the network's own predictions (clean accuracy 100%) and each member attack runs
  on every input with its full budget, so the two libraries do the same work on a
  network that was never trained (its robust accuracy means nothing and is shown
  only to check that both agree). Runs in a child process with KERAS_BACKEND=torch.
- `c`: Square (5,000 queries) on the BinaryNet MLP (784-4096-4096-4096-10, random
  weights) through `QNNModelWrapper`: predictions from the CuPy engine against the
  float Keras model on the same device. The time ratio, and whether the two runs
  make the same decisions (their adversarial examples and successes).

A part whose library is missing (CuPy, torchattacks) is skipped by name in the
table and the JSON, never silently.

    KERAS_BACKEND=torch python benchmarks/gpu_scale.py --model fast_fashion-mnist.keras \\
        --data-dir /path/to/fashion-mnist --out gpu_scale.json
    KERAS_BACKEND=jax python benchmarks/gpu_scale.py --quick --out /tmp/gpu_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

FULL = dict(harness_n=None, wrn=(16, 4), aa_n=1000, aa_iter=100, queries=5000, mlp=4096, sq_n=1000)
QUICK = dict(harness_n=10, wrn=(10, 1), aa_n=8, aa_iter=3, queries=20, mlp=32, sq_n=8)
EPS_CIFAR = 8 / 255


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import jax

        return str(jax.devices()[0])
    except ImportError:
        return "cpu"


def skipped(why: str) -> dict:
    return {"skipped": why}


# ---- (a) the harness -------------------------------------------------------------


def harness_section(args, sizes) -> dict:
    from advlib import bench
    from advlib.models.loading import load_model

    if args.quick:
        model = load_model(args.model) if args.model else bench.reference_model(verbose=False)[0]
        # the mechanics only: two short attacks, no headline, a short probe
        protocol = bench.load_protocol("digits-linf-0.2")
        protocol["dataset"]["n"] = protocol["batch_size"] = sizes["harness_n"]
        protocol["sweep"] = []
        protocol.pop("headline")
        protocol["diagnostics"] = dict(protocol["diagnostics"], n=10, spsa_iterations=5)
        protocol["attacks"] = [a for a in protocol["attacks"] if a["name"] in ("apgd-ce", "square")]
        for entry in protocol["attacks"]:
            params = entry["params"]
            for key, value in (("nb_iter", 3), ("n_queries", 20)):
                if key in params:
                    params[key] = value
    else:
        if not args.model:
            return skipped("--model (the fast-AT Fashion-MNIST CNN, a .keras file) not given")
        if args.data_dir:
            os.environ["ADVLIB_DATA"] = args.data_dir
        model = load_model(args.model)
        protocol = bench.load_protocol("fashion-mnist-linf-0.1")
    start = time.perf_counter()
    report = bench.evaluate(model, protocol, progress=not args.quick)
    wall = time.perf_counter() - start
    attacks = report["results"]["per_eps"]
    split = {}
    for entry in attacks:
        for attack in entry["attacks"]:
            key = f"{attack['name']} @ eps {entry['eps']:g}"
            split[key] = attack["seconds"]
    return {
        "protocol": protocol["name"],
        "n": report["n"],
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "wall_seconds": wall,
        "attack_seconds": split,
        "clean_accuracy": report["results"]["clean_accuracy"]["value"],
        "autoattack_accuracy": (report["results"]["headline"] or {})
        .get("robust_accuracy", {})
        .get("value"),
        "worst_case_accuracy": report["results"]["robust_accuracy"]["value"],
    }


# ---- (b) AutoAttack against torchattacks on a WideResNet -------------------------


def wide_resnet(depth: int, widen: int, classes: int = 10):
    """Zagoruyko & Komodakis's WideResNet (pre-activation blocks), as RobustBench's."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.shortcut = (
                None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)
            )

        def forward(self, x):
            out = torch.relu(self.bn1(x))
            skip = x if self.shortcut is None else self.shortcut(out)
            out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
            return out + skip

    blocks = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    layers: list = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)]
    for stage in range(3):
        for b in range(blocks):
            cin = widths[stage] if b == 0 else widths[stage + 1]
            layers.append(Block(cin, widths[stage + 1], (1 if stage == 0 else 2) if b == 0 else 1))
    layers += [
        nn.BatchNorm2d(widths[3]),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(widths[3], classes),
    ]
    return nn.Sequential(*layers)


def autoattack_section(args, sizes) -> dict:
    import torch
    from autoattack_reference import (
        MEMBERS,
        advlib_attacks,
        reference_attacks,
        robust_mask,
        run_torch,
    )

    from advlib import backend
    from advlib.models import from_torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    depth, widen = sizes["wrn"]
    module = wide_resnet(depth, widen).to(device).eval()
    rng = np.random.default_rng(0)
    x = rng.random((sizes["aa_n"], 32, 32, 3), dtype=np.float32)  # NHWC, as the harness
    with torch.no_grad():  # fixed work: the labels are the predictions (clean accuracy 100%)
        y = module(torch.tensor(x).permute(0, 3, 1, 2).to(device)).argmax(1).cpu().numpy()
    wrapped = from_torch(module, (3, 32, 32), data_format="channels_last")
    predict = lambda a: backend.to_numpy(wrapped.predict_classes(a))
    ours, _ = advlib_attacks(wrapped, EPS_CIFAR, nb_iter=sizes["aa_iter"], queries=sizes["queries"])
    try:
        theirs, _ = reference_attacks(
            module, EPS_CIFAR, 10, steps=sizes["aa_iter"], queries=sizes["queries"]
        )
    except ImportError:
        theirs = None
    rows = []
    for member in MEMBERS:
        row: dict = {"attack": member}
        sides = [("advlib", lambda: ours[member](x, y))]
        if theirs is not None:
            sides.append(("torchattacks", lambda: run_torch(theirs[member], x, y, device=device)))
        for side, run in sides:
            _synchronize()
            start = time.perf_counter()
            x_adv = run()
            _synchronize()
            row[f"{side}_seconds"] = time.perf_counter() - start
            row[f"{side}_robust"] = float(robust_mask(predict, x_adv, x, y, EPS_CIFAR).mean())
        if theirs is None:
            row["torchattacks"] = "skipped: torchattacks is not installed"
        else:
            row["speedup"] = row["torchattacks_seconds"] / row["advlib_seconds"]
        rows.append(row)
    total = {
        side: sum(r[f"{side}_seconds"] for r in rows)
        for side in ("advlib", "torchattacks")
        if f"{side}_seconds" in rows[0]
    }
    return {
        "network": f"WideResNet-{depth}-{widen} (random weights, seed 0)",
        "mode": "fixed work: labels are the network's predictions; each member on every input",
        "n": len(x),
        "device": device,
        "rows": rows,
        "total_seconds": total,
        "speedup": total["torchattacks"] / total["advlib"] if len(total) == 2 else None,
    }


def _synchronize():
    # only a backend already in use can have work pending (importing torch costs seconds)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


# ---- (c) the binary engine inside Square -----------------------------------------


def engine_section(args, sizes) -> dict:
    import keras

    from advlib import qnn
    from advlib.attacks import SquareAttack
    from advlib.models import QNNModelWrapper
    from advlib.qnn.engine import BinaryEngine, cupy_backend

    keras.utils.set_random_seed(0)
    width = sizes["mlp"]
    model = qnn.binary_mlp((28, 28, 1), width=width, depth=3)
    spec_arrays = qnn.export(model)
    rng = np.random.default_rng(0)
    x = rng.random((sizes["sq_n"], 28, 28, 1), dtype=np.float32)
    float_model = QNNModelWrapper(model)
    y = np.asarray(keras.ops.convert_to_numpy(float_model.predict_classes(x)))
    settings = dict(eps=0.1, n_queries=sizes["queries"], seed=0, batch_size=1000)
    result = {"network": f"BinaryNet MLP 784-{width}x3-10 (random weights)", "n": len(x)}
    sides = {"float Keras model": float_model}
    usable, why = cupy_backend.available()
    if usable:
        engine = BinaryEngine(spec_arrays["spec"], spec_arrays["arrays"], backend="cupy")
        sides["CuPy engine"] = QNNModelWrapper(model, engine=engine)
    else:
        result["CuPy engine"] = f"skipped: {why}"
    outcomes = {}
    for name, wrapped in sides.items():
        attack = SquareAttack(wrapped)
        _synchronize()
        start = time.perf_counter()
        x_adv = attack.generate_np(x, y=y, **settings)
        _synchronize()
        seconds = time.perf_counter() - start
        success = np.asarray(keras.ops.convert_to_numpy(wrapped.predict_classes(x_adv))) != y
        outcomes[name] = (x_adv, success)
        result[name] = {"seconds": seconds, "success_rate": float(success.mean())}
    if len(outcomes) == 2:
        (a, sa), (b, sb) = outcomes.values()
        result["same_examples"] = bool(np.array_equal(a, b))
        result["same_successes"] = bool(np.array_equal(sa, sb))
        result["engine_speedup"] = (
            result["float Keras model"]["seconds"] / result["CuPy engine"]["seconds"]
        )
    return result


SECTIONS = {"a": harness_section, "b": autoattack_section, "c": engine_section}


def run_child(section: str, args) -> dict:
    """Section b needs the PyTorch backend: it runs in a child process."""
    command = [sys.executable, os.path.abspath(__file__), "--sections", section, "--child"]
    command += ["--quick"] if args.quick else []
    env = dict(os.environ, KERAS_BACKEND="torch")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        return skipped(f"the PyTorch child failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="a,b,c", help="comma-separated: a, b, c")
    parser.add_argument("--quick", action="store_true", help="tiny settings (any machine)")
    parser.add_argument("--model", help="section a: the fast-AT Fashion-MNIST CNN (.keras)")
    parser.add_argument("--data-dir", help="section a: a folder of Fashion-MNIST's IDX files")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gpu_scale.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from a, b, c")
    sizes = QUICK if args.quick else FULL
    results: dict = {}
    for section in sections:
        start = time.perf_counter()
        if section == "b" and os.environ.get("KERAS_BACKEND") != "torch":
            results[section] = run_child(section, args)[section]
        else:
            try:
                results[section] = SECTIONS[section](args, sizes)
            except ImportError as error:
                results[section] = skipped(f"{error.name or error} is not installed")
        results[section]["section_seconds"] = time.perf_counter() - start
    if args.child:
        print(json.dumps(results))
        return results
    document = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name(),
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "quick": args.quick,
        "results": results,
    }
    print_tables(document)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(document, handle, indent=2)
    return document


def _harness_lines(a):
    yield f"{a['protocol']}, {a['n']} images: {a['wall_seconds']:.1f} s in all"
    for name, seconds in a["attack_seconds"].items():
        yield f"| {name} | {seconds:.1f} s |"


def _autoattack_lines(b):
    yield f"{b['network']}, {b['n']} inputs, {b['mode']}"
    yield "| attack | advlib s | torchattacks s | speed-up | robust (advlib / ta) |"
    for row in b["rows"]:
        if "torchattacks_seconds" in row:
            theirs = f"{row['torchattacks_seconds']:.2f} | {row['speedup']:.2f}x"
            robust = f"{row['advlib_robust']:.3f} / {row['torchattacks_robust']:.3f}"
        else:
            theirs, robust = f"- | {row['torchattacks']}", f"{row['advlib_robust']:.3f} / -"
        yield f"| {row['attack']} | {row['advlib_seconds']:.2f} | {theirs} | {robust} |"


def _engine_lines(c):
    for name in ("float Keras model", "CuPy engine"):
        value = c.get(name)
        shown = value if isinstance(value, str) else f"{value['seconds']:.2f} s"
        yield f"| {name} | {shown} |"
    if "engine_speedup" in c:
        yield (
            f"engine {c['engine_speedup']:.2f}x, same examples {c['same_examples']}, "
            f"same successes {c['same_successes']}"
        )


TITLES = {
    "a": ("(a) harness run", _harness_lines),
    "b": ("(b) AutoAttack, advlib against torchattacks on the same module", _autoattack_lines),
    "c": ("(c) Square inside the binary engine", _engine_lines),
}


def print_tables(document):
    print(f"\n{document['device']}, Keras backend {document['backend']}, {document['date']}")
    for section, result in document["results"].items():
        title, lines = TITLES[section]
        print(f"\n{title}")
        for line in [f"skipped: {result['skipped']}"] if "skipped" in result else lines(result):
            print(f"  {line}")


if __name__ == "__main__":
    main()
