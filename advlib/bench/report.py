"""Reports: summary statistics, Markdown, the robustness plot, and compare."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

SCHEMA_VERSION = 3


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


def summarize(arrays: Dict[str, np.ndarray], names: Sequence[str], eps_list: Sequence[float],
              ran: Optional[Sequence[Sequence[bool]]] = None,
              verification: Optional[Dict] = None, certify: Optional[Dict] = None,
              min_norm: Optional[Dict] = None):
    """Numbers of a report from the per-example arrays (all batches merged).

    `arrays` holds "correct" (n,), and per eps: "broken_by" (E, n), "norm"
    (E, n), "attacked" and "success" (E, A, n), "forward", "backward",
    "seconds" (E, A). `ran` (E, A) says which attacks ran at each eps
    (default: all). With `verification` (the exact verifier's settings), the
    "verdict" and "verify_seconds" arrays (E, n) add each eps's certified
    interval, and the verifier's counterexamples (`broken_by` == A) join the
    worst case. With `certify` (a protocol's randomized-smoothing settings),
    "smoothed_pred" and "certified_radius" (n,) and "certify_seconds" add the
    certified accuracy at each radius. With `min_norm` (the protocol's section),
    "min_norm" (attacks, n) and "min_norm_seconds" add its medians and curves,
    and its points within an eps join that eps's worst case ("min_norm_breaks"
    counts the examples that only they broke).
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
                "ran": True if ran is None else bool(ran[e][a]),
                "robust_accuracy_after": _proportion(robust),
                "attacked": int(attacked.sum()),
                "success_rate": float(breaks.sum() / attacked.sum()) if attacked.any() else 0.0,
                "broken": int(breaks.sum()),
                "median_norm": float(np.median(norms)) if norms.size else None,
                "mean_norm": float(np.mean(norms)) if norms.size else None,
                "forward_passes": int(arrays["forward"][e, a]),
                "backward_passes": int(arrays["backward"][e, a]),
                "seconds": float(arrays["seconds"][e, a]),
                "nonfinite_fallbacks": int(arrays["nonfinite"][e, a]),
            })
        entry = {"eps": float(eps), "attacks": attacks}
        if verification is not None:
            entry["verification"] = _verification(arrays, e, robust, broken_by == len(names),
                                                  verification)
            robust &= broken_by != len(names)
        if min_norm is not None:
            # a minimum-norm point within eps is a break like any other
            within = arrays["min_norm"].min(axis=0) <= eps * (1 + 1e-5) + 1e-7
            entry["min_norm_breaks"] = int((robust & within).sum())
            robust &= ~within
        entry["robust_accuracy"] = _proportion(robust)
        per_eps.append(entry)
    results = {"clean_accuracy": _proportion(correct), "per_eps": per_eps,
               "robust_accuracy": per_eps[0]["robust_accuracy"]}
    if certify is not None:
        results["certified"] = _certified(arrays, certify, results)
    if min_norm is not None:
        from advlib.bench import min_norm as min_norm_module
        results["min_norm"] = min_norm_module.summarize(
            arrays["min_norm"], [a["name"] for a in min_norm["attacks"]], min_norm["eps"],
            np.asarray(arrays["min_norm_seconds"]).reshape(-1), _proportion)
    return results


def _certified(arrays, settings, results) -> Dict:
    """Randomized smoothing's certified accuracy at each radius, beside the
    attacks' worst case at the same eps (the clean accuracy at radius 0)."""
    prediction = arrays["smoothed_pred"]
    correct = prediction == arrays["label"]
    per_radius = []
    for radius in settings["radii"]:
        empirical = results["clean_accuracy"] if radius == 0 else next(
            (e["robust_accuracy"] for e in results["per_eps"]
             if math.isclose(e["eps"], radius, rel_tol=1e-9, abs_tol=1e-12)), None)
        per_radius.append({"radius": float(radius),
                           "certified_accuracy": _proportion(
                               correct & (arrays["certified_radius"] >= radius)),
                           "empirical_robust_accuracy": empirical})
    return {**settings, "smoothed_accuracy": _proportion(correct),
            "abstained": int((prediction == -1).sum()),
            "median_radius_of_correct": float(np.median(arrays["certified_radius"][correct]))
            if correct.any() else 0.0,
            "per_radius": per_radius, "seconds": float(np.sum(arrays["certify_seconds"]))}


def _verification(arrays, e, after_attacks, counterexamples, settings) -> Dict:
    """The certified interval at one eps: robust accuracy lies between the share
    proved robust and the share the verifier did not break."""
    verdict = arrays["verdict"][e]
    proved = after_attacks & (verdict == 0)
    unknown = after_attacks & (verdict == 2)
    verified = verdict >= 0
    seconds = arrays["verify_seconds"][e][verified]
    n = max(len(verdict), 1)
    return {**settings, "verified": int(verified.sum()), "robust": int(proved.sum()),
            "broken": int(counterexamples.sum()), "unknown": int(unknown.sum()),
            "certified": _proportion(proved),
            "interval": [float(proved.sum() / n), float((proved.sum() + unknown.sum()) / n)],
            "exact": not unknown.any(),
            "seconds": {"median": float(np.median(seconds)) if seconds.size else 0.0,
                        "p95": float(np.percentile(seconds, 95)) if seconds.size else 0.0,
                        "total": float(seconds.sum())}}


def headline(report: Dict) -> Optional[Dict]:
    """The protocol's headline figure (AutoAttack's, in version 3): the robust
    accuracy after its attacks, at every eps. None when the protocol has none; when
    the run reordered the ensemble (adaptive mode runs black-box attacks last), the
    figure is not separable and says why."""
    spec = report["protocol"].get("headline")
    if not spec:
        return None
    members = spec["attacks"]
    names = [entry["name"] for entry in report["ensemble"]]
    out = {"label": spec["label"], "comparable_with": spec.get("comparable_with", ""),
           "attacks": members}
    if names[:len(members)] != members:
        return dict(out, robust_accuracy=None, per_eps=None,
                    note="the ensemble of this run does not begin with the headline's "
                         "attacks (adaptive mode reorders it), so their figure is not "
                         "separable; see the worst case")
    after = len(members) - 1
    # where the sweep ran only some of its attacks, there is no headline figure
    complete = lambda e: all(a.get("ran", True) for a in e["attacks"][:after + 1])
    per_eps = [{"eps": e["eps"], "robust_accuracy":
                e["attacks"][after]["robust_accuracy_after"] if complete(e) else None}
               for e in report["results"]["per_eps"]]
    return dict(out, robust_accuracy=per_eps[0]["robust_accuracy"], per_eps=per_eps)


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
    standard = report["results"].get("headline")
    if standard and standard["robust_accuracy"] is not None:
        comparable = f", comparable with {standard['comparable_with']}" \
            if standard["comparable_with"] else ""
        lines.append(f"| **{standard['label']}{comparable}, eps={main['eps']:.4g}** | "
                     f"**{_percent(standard['robust_accuracy'])}**{flag} | | | | |")
    verification = main.get("verification")
    exact = " (exact)" if verification and verification["exact"] else ""
    lines.append(f"| **robust (worst case), eps={main['eps']:.4g}**{exact} | "
                 f"**{_percent(main['robust_accuracy'])}**{flag} | | | | |")
    if verification:
        low, high = verification["interval"]
        lines.append(f"| certified by the exact verifier ({verification['backend']}), "
                     f"eps={main['eps']:.4g} | [{100 * low:.2f}%, {100 * high:.2f}%] | "
                     f"{verification['verified']} verified: {verification['robust']} robust, "
                     f"{verification['broken']} broken, {verification['unknown']} unknown "
                     f"(limit {verification['time_limit']:g} s, search share "
                     f"{verification.get('search_share', 0.5):g}) | | | "
                     f"{verification['seconds']['total']:.1f} |")
    if main.get("min_norm_breaks"):
        lines += ["", f"The minimum-norm attacks broke {main['min_norm_breaks']} examples within "
                      f"eps={main['eps']:.4g} that the ensemble left; the worst case counts "
                      "them."]
    lines += _certified_markdown(report["results"].get("certified"))
    if report["results"].get("min_norm"):
        from advlib.bench import min_norm as min_norm_module
        lines += min_norm_module.markdown(report["results"]["min_norm"], protocol["threat"]["norm"])
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


def _certified_markdown(certified: Optional[Dict]) -> List[str]:
    if not certified:
        return []
    lines = ["", f"Randomized smoothing (Cohen et al. 2019), sigma={certified['sigma']:g}, "
                 f"n0={certified['n0']}, n={certified['n']}, alpha={certified['alpha']:g}: "
                 f"smoothed accuracy {_percent(certified['smoothed_accuracy'])}, "
                 f"{certified['abstained']} abstained, {certified['seconds']:.1f} s.",
             "",
             "| L2 radius | certified accuracy, smoothed model (95% CI) | "
             "empirical robust accuracy, base model (attacks) |",
             "|---|---|---|"]
    for entry in certified["per_radius"]:
        empirical = entry["empirical_robust_accuracy"]
        lines.append(f"| {entry['radius']:g} | {_percent(entry['certified_accuracy'])} | "
                     f"{'-' if empirical is None else _percent(empirical)} |")
    return lines


_STATUS = {"pass": "pass", "warn": "**warn**", "fail": "**FAIL**", "skip": "skip"}


def plot(report: Dict, path) -> None:
    """Robust accuracy against eps, after each attack and in the worst case, as a PNG
    written to `path` (a file name or a binary handle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_eps = sorted(report["results"]["per_eps"], key=lambda e: e["eps"])
    eps = [0.0] + [e["eps"] for e in per_eps]
    clean = report["results"]["clean_accuracy"]["value"]
    figure, axis = plt.subplots(figsize=(6, 4))
    names = [a["name"] for a in per_eps[0]["attacks"]]
    for index, name in enumerate(names):
        # a gap where the attack did not run (`sweep_attacks`)
        values = [clean] + [e["attacks"][index]["robust_accuracy_after"]["value"]
                            if e["attacks"][index].get("ran", True) else np.nan
                            for e in per_eps]
        axis.plot(eps, values, "--o", markersize=3, alpha=0.7, label=f"after {name}")
    worst = [clean] + [e["robust_accuracy"]["value"] for e in per_eps]
    low = [clean] + [e["robust_accuracy"]["ci95"][0] for e in per_eps]
    high = [clean] + [e["robust_accuracy"]["ci95"][1] for e in per_eps]
    axis.plot(eps, worst, "-o", color="black", label="worst case")
    if all("verification" in e for e in per_eps):
        proved = [clean] + [e["verification"]["interval"][0] for e in per_eps]
        axis.plot(eps, proved, "-s", color="tab:green", markersize=3,
                  label="proved robust (exact verifier)")
    axis.fill_between(eps, low, high, color="black", alpha=0.1, label="95% CI")
    section = report["results"].get("min_norm")
    if section:
        axis.plot([0.0] + section["eps"], [clean] + [p["value"] for p in
                                              section["best"]["robust_accuracy"]], ":",
                  color="tab:purple", label="minimum-norm attacks (best per example)")
    certified = report["results"].get("certified")
    if certified:
        points = certified["per_radius"]
        axis.plot([p["radius"] for p in points],
                  [p["certified_accuracy"]["value"] for p in points], "-^",
                  color="tab:blue", markersize=4,
                  label=f"certified, smoothed (sigma={certified['sigma']:g})")
    axis.axvline(report["protocol"]["threat"]["eps"], color="grey", linewidth=0.8)
    axis.set_xlabel(f"eps (L-{report['protocol']['threat']['norm']})")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1)
    axis.set_title(report["protocol"]["name"])
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


# what `compare` and `merge` read from a report.json, with the types they need
_REPORT_SCHEMA = {"protocol": dict, "protocol_hash": str, "model": dict, "results": dict,
                  "n": int, "batch_size": int, "batches": list}
_RESULTS_SCHEMA = {"clean_accuracy": dict, "robust_accuracy": dict, "per_eps": list}


def validate_report(report, source: str = "report") -> Dict:
    """Checks that a loaded report has the keys and types that advlib reads.

    Raises:
        ValueError: naming `source` and the first missing or malformed key.
    """
    def need(mapping, schema, where):
        for key, kind in schema.items():
            if key not in mapping:
                raise ValueError(f"{source} is not an advlib report: {where} lacks {key!r}.")
            if not isinstance(mapping[key], kind) or isinstance(mapping[key], bool):
                wanted = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple)
                                                          else (kind,)))
                raise ValueError(f"{source} is not an advlib report: {where}{key!r} is "
                                 f"{type(mapping[key]).__name__}, expected {wanted}.")

    if not isinstance(report, dict):
        raise ValueError(f"{source} is not an advlib report: it holds a "
                         f"{type(report).__name__}, not a JSON object.")
    need(report, _REPORT_SCHEMA, "")
    need(report["results"], _RESULTS_SCHEMA, "results.")
    for key in ("clean_accuracy", "robust_accuracy"):
        need(report["results"][key], {"value": (int, float), "ci95": list}, f"results.{key}.")
    need(report["protocol"], {"name": str, "threat": dict}, "protocol.")
    need(report["model"], {"fingerprint": str}, "model.")
    return report


def load_report(path: str) -> Dict:
    """Reads and validates a report.json."""
    import json

    try:
        with open(path) as handle:
            report = json.load(handle)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path!r} is not valid JSON ({error}).") from error
    return validate_report(report, repr(path))


def _coverage(report: Dict):
    """(n, and how much of the protocol the report covers; whether it is partial)."""
    total = report.get("n_total", report["protocol"].get("dataset", {}).get("n"))
    fewer = bool(total) and total != report["n"]
    parts = [f"{report['n']}" + (f" of {total}" if fewer else "")]
    if report.get("shard"):
        parts.append(f"shard {report['shard']}")
    if not report.get("complete", True):
        parts.append("incomplete")
    return ", ".join(parts), fewer or len(parts) > 1


def compare(reports: Sequence[Dict], force: bool = False) -> str:
    """A leaderboard of reports, best worst-case robust accuracy first.

    Partial reports (a shard, an unfinished run, fewer examples than the
    protocol's) are flagged in the n column: their numbers cover fewer examples.

    Raises:
        ValueError: if a report is malformed, or the reports come from
            different protocols (by hash), unless `force`.
    """
    for index, report in enumerate(reports):
        validate_report(report, f"report {index + 1}")
    hashes = {r["protocol_hash"] for r in reports}
    if len(hashes) > 1 and not force:
        names = sorted({f"{r['protocol']['name']} ({r['protocol_hash'][:12]})" for r in reports})
        raise ValueError(f"the reports come from different protocols: {names}. Their numbers "
                         "are not comparable; pass force=True (--force) to list them anyway.")
    ranked = sorted(reports, key=lambda r: -r["results"]["robust_accuracy"]["value"])
    lines = ["| rank | model | protocol | n | clean | robust (worst case) | 95% CI | flags |",
             "|---|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(ranked, start=1):
        robust = r["results"]["robust_accuracy"]
        coverage, partial = _coverage(r)
        flags = [r.get("headline_flag", "").strip()] + (["partial"] if partial else [])
        lines.append(f"| {rank} | {r['model'].get('name', '?')} ({r['model']['fingerprint'][:8]}) "
                     f"| {r['protocol']['name']} | {coverage} | "
                     f"{100 * r['results']['clean_accuracy']['value']:.2f}% | "
                     f"{100 * robust['value']:.2f}% | "
                     f"[{100 * robust['ci95'][0]:.1f}, {100 * robust['ci95'][1]:.1f}] | "
                     f"{'; '.join(f for f in flags if f) or '-'} |")
    return "\n".join(lines)
