"""Peak extra memory of JSMA on a batch of 64 CIFAR-sized inputs (32x32x3).

Each saliency variant runs in a fresh process: the peak resident memory
during the attack, minus the resident memory after the model is built and
warmed up, is the attack's extra memory. A pairwise search held whole would
need 64 x 3072^2 float32 scores: 2.4 GB per temporary.

    python benchmarks/jsma_memory.py [--out benchmarks/results/jsma_memory.json]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(variant: str, gamma: float) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from advlib.attacks import SaliencyMapMethod
    from advlib.models import small_cnn

    model = small_cnn((32, 32, 3))
    x = np.random.default_rng(0).random((64, 32, 32, 3), dtype=np.float32)
    targets = (model.predict(x, verbose=0).argmax(1) + 1) % 10
    attack = SaliencyMapMethod(model)
    attack.generate_np(
        x[:64], y_target=targets, gamma=1 / 3072, batch_size=64, use_logits=variant == "logits"
    )  # traces, one step
    before_mb = _rss_mb()
    start = time.perf_counter()
    x_adv = attack.generate_np(
        x, y_target=targets, gamma=gamma, batch_size=64, use_logits=variant == "logits"
    )
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    changed = int((x_adv != x).reshape(64, -1).sum(1).max())
    return dict(
        variant=variant,
        batch=64,
        features=3072,
        gamma=gamma,
        seconds=seconds,
        resident_before_mb=before_mb,
        peak_mb=peak_mb,
        extra_mb=peak_mb - before_mb,
        max_features_changed=changed,
    )


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gamma", type=float, default=0.01)
    parser.add_argument("--child", default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "jsma_memory.json"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.gamma)))
        return 0
    rows = []
    for variant in ("probabilities", "logits"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--gamma", str(args.gamma)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| saliency | batch | features | gamma | seconds | extra memory (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['batch']} | {r['features']} | {r['gamma']} | "
            f"{r['seconds']:.1f} | {r['extra_mb']:.0f} |"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"benchmark": "jsma_memory", "rows": rows}, handle, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
