"""The harness's minimum-norm section: per example, the smallest adversarial
perturbation that any of the section's attacks (FMN, FAB, DeepFool) finds, and
the robustness curve it implies at every eps of a list.

A protocol asks for it with

    "min_norm": {"attacks": [{"name": "fmn", "attack": "FMN", "params": {"steps": 100}},
                             {"name": "fab", "attack": "FAB", "params": {...}},
                             {"name": "deepfool", "attack": "DeepFool"}],
                 "eps": [0.25, 0.5, 0.75, 1.0]}

The attacks run unbounded in the protocol's norm on every example of a batch;
a perturbation counts only if the model misclassifies the point and the point
lies in the input domain. Misclassified clean examples have norm 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from advlib import backend
from advlib.attacks.utils import within_threat
from advlib.stats import proportion

_TOLERANCE = 1e-5  # float32 rounding of a perturbation's norm


def run(
    model, protocol: dict, x: np.ndarray, y: np.ndarray, seed: int, instances: dict
) -> dict[str, np.ndarray]:
    """The section's attacks on one batch. Returns "norms" (attacks, batch), inf
    where an attack found nothing, and per attack "seconds", "forward", "backward"."""
    from advlib.bench.ensemble import AttackEntry, attack_for, attack_seed

    section = protocol["min_norm"]
    norm, clip = protocol["threat"]["norm"], protocol["clip"]
    entries = [AttackEntry.from_protocol(entry) for entry in section["attacks"]]
    correct = backend.to_numpy(model.predict_classes(x)) == y
    out = {
        "norms": np.full((len(entries), len(x)), np.inf),
        "seconds": np.zeros(len(entries)),
        "forward": np.zeros(len(entries), np.int64),
        "backward": np.zeros(len(entries), np.int64),
    }
    out["norms"][:, ~correct] = 0.0
    rows = np.flatnonzero(correct)
    if rows.size == 0:
        return out
    for index, entry in enumerate(entries):
        attack = attack_for(instances, entry.attack, model)
        params = entry.params_at(
            float(protocol["threat"]["eps"]), norm, clip, attack_seed(seed, 500 + index)
        )
        result = attack.run(x[rows], y[rows], batch_size=len(rows), **params)
        inside, norms = within_threat(result.x_adv, x[rows], np.inf, norm, clip["min"], clip["max"])
        found = result.success & inside
        out["norms"][index, rows] = np.where(found, norms, np.inf)
        out["seconds"][index] = result.wall_time
        out["forward"][index] = result.forward_passes
        out["backward"][index] = result.backward_passes
    return out


def summarize(
    norms: np.ndarray, names: Sequence[str], eps: Sequence[float], seconds: np.ndarray
) -> dict:
    """Per attack and for the best of them per example: median minimal norm,
    success rate, and robust accuracy at each eps, as the report's
    {value, count, n, ci95} entries."""
    best = norms.min(axis=0) if len(names) else np.zeros(0)
    median = lambda values: float(np.median(values)) if values.size else float("nan")
    within = lambda values, e: values <= e * (1 + _TOLERANCE) + 1e-7
    attacks = [
        {
            "name": name,
            "median_norm": _finite(median(norms[a])),
            "success_rate": float(np.isfinite(norms[a]).mean()) if norms[a].size else 0.0,
            "seconds": float(seconds[a]),
            "robust_accuracy": [proportion(~within(norms[a], e)) for e in eps],
        }
        for a, name in enumerate(names)
    ]
    # which attack gave each example's smallest norm
    wins = {
        name: int(np.sum((norms.argmin(axis=0) == a) & np.isfinite(best)))
        for a, name in enumerate(names)
    }
    return {
        "eps": [float(e) for e in eps],
        "attacks": attacks,
        "best": {
            "median_norm": _finite(median(best)),
            "success_rate": float(np.isfinite(best).mean()) if best.size else 0.0,
            "smallest_by": wins,
            "robust_accuracy": [proportion(~within(best, e)) for e in eps],
        },
    }


def markdown(section: dict, norm: str) -> list[str]:
    header = " | ".join(f"robust at {e:g}" for e in section["eps"])
    lines = [
        "",
        f"Minimum-norm attacks (L{norm}, unbounded): per example, the smallest perturbation found.",
        "",
        f"| attack | median norm | success | {header} | seconds |",
        "|---|---|---|" + "---|" * len(section["eps"]) + "---|",
    ]
    rows = section["attacks"] + [
        dict(
            section["best"],
            name="**best per example**",
            seconds=sum(a["seconds"] for a in section["attacks"]),
        )
    ]
    for row in rows:
        median = "inf" if row["median_norm"] is None else f"{row['median_norm']:.4g}"
        curve = " | ".join(f"{100 * p['value']:.1f}%" for p in row["robust_accuracy"])
        lines.append(
            f"| {row['name']} | {median} | {100 * row['success_rate']:.1f}% | "
            f"{curve} | {row['seconds']:.1f} |"
        )
    return lines


def _finite(value: float):
    """JSON has no infinity: a median that is inf (most examples unbroken) is None."""
    return None if math.isinf(value) else value
