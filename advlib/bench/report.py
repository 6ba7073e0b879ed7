"""Reports: summary statistics, Markdown, the robustness plot, and compare."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

SCHEMA_VERSION = 2


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> List[float]:
    """The 95% Wilson score interval of a proportion."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _proportion(mask: np.ndarray) -> Dict:
    k, n = int(mask.sum()), int(mask.size)
    return {"value": k / n if n else 0.0, "count": k, "n": n, "ci95": wilson_interval(k, n)}


def summarize(arrays: Dict[str, np.ndarray], names: Sequence[str], eps_list: Sequence[float]):
    """Numbers of a report from the per-example arrays (all batches merged).

    `arrays` holds "correct" (n,), and per eps: "broken_by" (E, n), "norm"
    (E, n), "attacked" and "success" (E, A, n), "forward", "backward",
    "seconds" (E, A).
    """
    correct = arrays["correct"].astype(bool)
    per_eps = []
    for e, eps in enumerate(eps_list):
        broken_by = arrays["broken_by"][e]
        robust = correct.copy()
        attacks = []
        for a, name in enumerate(names):
            breaks = broken_by == a
            robust &= ~breaks
            attacked = arrays["attacked"][e, a]
            norms = arrays["norm"][e][breaks]
            attacks.append({
                "name": name,
                "robust_accuracy_after": _proportion(robust),
                "attacked": int(attacked.sum()),
                "success_rate": float(breaks.sum() / attacked.sum()) if attacked.any() else 0.0,
                "broken": int(breaks.sum()),
                "median_norm": float(np.median(norms)) if norms.size else None,
                "mean_norm": float(np.mean(norms)) if norms.size else None,
                "forward_passes": int(arrays["forward"][e, a]),
                "backward_passes": int(arrays["backward"][e, a]),
                "seconds": float(arrays["seconds"][e, a]),
            })
        per_eps.append({"eps": float(eps), "attacks": attacks,
                        "robust_accuracy": _proportion(robust)})
    return {"clean_accuracy": _proportion(correct), "per_eps": per_eps,
            "robust_accuracy": per_eps[0]["robust_accuracy"]}


def _percent(entry) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['value']:.2f}% [{100 * low:.1f}, {100 * high:.1f}]"


def markdown(report: Dict) -> str:
    """A table ready to paste into a paper."""
    protocol = report["protocol"]
    main = report["results"]["per_eps"][0]
    lines = [f"**{protocol['name']}** (protocol v{protocol['version']}, "
             f"sha256 {report['protocol_hash'][:12]}), {report['n']} examples, model "
             f"{report['model']['fingerprint'][:12]}",
             "",
             "| | accuracy (95% Wilson CI) | success on attacked | median norm | "
             "passes (fwd / bwd) | seconds |",
             "|---|---|---|---|---|---|",
             f"| clean | {_percent(report['results']['clean_accuracy'])} | | | | |"]
    for attack in main["attacks"]:
        median = "-" if attack["median_norm"] is None else f"{attack['median_norm']:.4g}"
        lines.append(f"| after {attack['name']} | {_percent(attack['robust_accuracy_after'])} | "
                     f"{100 * attack['success_rate']:.1f}% of {attack['attacked']} | {median} | "
                     f"{attack['forward_passes']} / {attack['backward_passes']} | "
                     f"{attack['seconds']:.1f} |")
    flag = report.get("headline_flag", "")
    lines.append(f"| **robust (worst case), eps={main['eps']:.4g}** | "
                 f"**{_percent(main['robust_accuracy'])}**{flag} | | | | |")
    adaptive = report.get("adaptive")
    if adaptive:
        if adaptive["variants"]:
            lines += ["", f"Adaptive attacks through {', '.join(adaptive['variants'])}: robust "
                          f"accuracy {100 * adaptive['robust_before']:.2f}% after the "
                          f"original gradient attacks, {100 * adaptive['robust_after']:.2f}% "
                          "after the adaptive ones."]
        else:
            lines += ["", "Adaptive mode found nothing to adapt: no sign or quantized "
                          "activations and no layer with a zero gradient."]
    if report.get("diagnostics"):
        lines += ["", "| diagnostic | status | evidence |", "|---|---|---|"]
        lines += [f"| {c['id']} | {_STATUS[c['status']]} | {c['message']} |"
                  for c in report["diagnostics"]]
    return "\n".join(lines)


_STATUS = {"pass": "pass", "warn": "**warn**", "fail": "**FAIL**", "skip": "skip"}


def plot(report: Dict, path: str) -> None:
    """Robust accuracy against eps, after each attack and in the worst case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_eps = sorted(report["results"]["per_eps"], key=lambda e: e["eps"])
    eps = [0.0] + [e["eps"] for e in per_eps]
    clean = report["results"]["clean_accuracy"]["value"]
    figure, axis = plt.subplots(figsize=(6, 4))
    names = [a["name"] for a in per_eps[0]["attacks"]]
    for index, name in enumerate(names):
        values = [clean] + [e["attacks"][index]["robust_accuracy_after"]["value"]
                            for e in per_eps]
        axis.plot(eps, values, "--o", markersize=3, alpha=0.7, label=f"after {name}")
    worst = [clean] + [e["robust_accuracy"]["value"] for e in per_eps]
    low = [clean] + [e["robust_accuracy"]["ci95"][0] for e in per_eps]
    high = [clean] + [e["robust_accuracy"]["ci95"][1] for e in per_eps]
    axis.plot(eps, worst, "-o", color="black", label="worst case")
    axis.fill_between(eps, low, high, color="black", alpha=0.1, label="95% CI")
    axis.axvline(report["protocol"]["threat"]["eps"], color="grey", linewidth=0.8)
    axis.set_xlabel(f"eps (L-{report['protocol']['threat']['norm']})")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1)
    axis.set_title(report["protocol"]["name"])
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def compare(reports: Sequence[Dict], force: bool = False) -> str:
    """A leaderboard of reports, best worst-case robust accuracy first.

    Raises:
        ValueError: if the reports come from different protocols (by hash),
            unless `force`.
    """
    hashes = {r["protocol_hash"] for r in reports}
    if len(hashes) > 1 and not force:
        names = sorted({f"{r['protocol']['name']} ({r['protocol_hash'][:12]})" for r in reports})
        raise ValueError(f"the reports come from different protocols: {names}. Their numbers "
                         "are not comparable; pass force=True (--force) to list them anyway.")
    ranked = sorted(reports, key=lambda r: -r["results"]["robust_accuracy"]["value"])
    lines = ["| rank | model | protocol | clean | robust (worst case) | 95% CI | flags |",
             "|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(ranked, start=1):
        robust = r["results"]["robust_accuracy"]
        lines.append(f"| {rank} | {r['model'].get('name', '?')} ({r['model']['fingerprint'][:8]}) "
                     f"| {r['protocol']['name']} | "
                     f"{100 * r['results']['clean_accuracy']['value']:.2f}% | "
                     f"{100 * robust['value']:.2f}% | "
                     f"[{100 * robust['ci95'][0]:.1f}, {100 * robust['ci95'][1]:.1f}] | "
                     f"{r.get('headline_flag', '').strip() or '-'} |")
    return "\n".join(lines)
