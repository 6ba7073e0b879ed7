"""Reports for people: the Markdown table, the robustness plot, and leaderboards."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from advlib.bench.report import validate_report


def _percent(entry) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['value']:.2f}% [{100 * low:.1f}, {100 * high:.1f}]"


def markdown(report: dict) -> str:
    """A table ready to paste into a paper."""
    protocol = report["protocol"]
    main = report["results"]["per_eps"][0]
    lines = [
        f"**{protocol['name']}** (protocol v{protocol['version']}, "
        f"sha256 {report['protocol_hash'][:12]}), {report['n']} examples, model "
        f"{report['model']['fingerprint'][:12]}",
        "",
        "| | accuracy (95% Wilson CI) | success on attacked | median norm | "
        "passes (fwd / bwd) | seconds |",
        "|---|---|---|---|---|---|",
        f"| clean | {_percent(report['results']['clean_accuracy'])} | | | | |",
    ]
    for attack in main["attacks"]:
        median = "-" if attack["median_norm"] is None else f"{attack['median_norm']:.4g}"
        lines.append(
            f"| after {attack['name']} | {_percent(attack['robust_accuracy_after'])} | "
            f"{100 * attack['success_rate']:.1f}% of {attack['attacked']} | {median} | "
            f"{attack['forward_passes']} / {attack['backward_passes']} | "
            f"{attack['seconds']:.1f} |"
        )
    flag = report.get("headline_flag", "")
    standard = report["results"].get("headline")
    if standard and standard["robust_accuracy"] is not None:
        comparable = (
            f", comparable with {standard['comparable_with']}"
            if standard["comparable_with"]
            else ""
        )
        lines.append(
            f"| **{standard['label']}{comparable}, eps={main['eps']:.4g}** | "
            f"**{_percent(standard['robust_accuracy'])}**{flag} | | | | |"
        )
    verification = main.get("verification")
    exact = " (exact)" if verification and verification["exact"] else ""
    lines.append(
        f"| **robust (worst case), eps={main['eps']:.4g}**{exact} | "
        f"**{_percent(main['robust_accuracy'])}**{flag} | | | | |"
    )
    if verification:
        low, high = verification["interval"]
        lines.append(
            f"| certified by the exact verifier ({verification['backend']}), "
            f"eps={main['eps']:.4g} | [{100 * low:.2f}%, {100 * high:.2f}%] | "
            f"{verification['verified']} verified: {verification['robust']} robust, "
            f"{verification['broken']} broken, {verification['unknown']} unknown "
            f"(limit {verification['time_limit']:g} s, search share "
            f"{verification.get('search_share', 0.5):g}) | | | "
            f"{verification['seconds']['total']:.1f} |"
        )
    if main.get("min_norm_breaks"):
        lines += [
            "",
            f"The minimum-norm attacks broke {main['min_norm_breaks']} examples within "
            f"eps={main['eps']:.4g} that the ensemble left; the worst case counts "
            "them.",
        ]
    lines += _certified_markdown(report["results"].get("certified"))
    if report["results"].get("min_norm"):
        from advlib.bench import min_norm as min_norm_module

        lines += min_norm_module.markdown(report["results"]["min_norm"], protocol["threat"]["norm"])
    adaptive = report.get("adaptive")
    if adaptive:
        if adaptive["variants"]:
            lines += [
                "",
                f"Adaptive attacks through {', '.join(adaptive['variants'])}: robust "
                f"accuracy {100 * adaptive['robust_before']:.2f}% after the "
                f"original gradient attacks, {100 * adaptive['robust_after']:.2f}% "
                "after the adaptive ones.",
            ]
        else:
            lines += [
                "",
                "Adaptive mode found nothing to adapt: no sign or quantized "
                "activations and no layer with a zero gradient.",
            ]
    if report.get("diagnostics"):
        lines += ["", "| diagnostic | status | evidence |", "|---|---|---|"]
        lines += [
            f"| {c['id']} | {_STATUS[c['status']]} | {c['message']} |"
            for c in report["diagnostics"]
        ]
    return "\n".join(lines)


def _certified_markdown(certified: dict | None) -> list[str]:
    if not certified:
        return []
    lines = [
        "",
        f"Randomized smoothing (Cohen et al. 2019), sigma={certified['sigma']:g}, "
        f"n0={certified['n0']}, n={certified['n']}, alpha={certified['alpha']:g}: "
        f"smoothed accuracy {_percent(certified['smoothed_accuracy'])}, "
        f"{certified['abstained']} abstained, {certified['seconds']:.1f} s.",
        "",
        "| L2 radius | certified accuracy, smoothed model (95% CI) | "
        "empirical robust accuracy, base model (attacks) |",
        "|---|---|---|",
    ]
    for entry in certified["per_radius"]:
        empirical = entry["empirical_robust_accuracy"]
        lines.append(
            f"| {entry['radius']:g} | {_percent(entry['certified_accuracy'])} | "
            f"{'-' if empirical is None else _percent(empirical)} |"
        )
    return lines


_STATUS = {"pass": "pass", "warn": "**warn**", "fail": "**FAIL**", "skip": "skip"}


def plot(report: dict, path) -> None:
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
        values = [clean] + [
            e["attacks"][index]["robust_accuracy_after"]["value"]
            if e["attacks"][index].get("ran", True)
            else np.nan
            for e in per_eps
        ]
        axis.plot(eps, values, "--o", markersize=3, alpha=0.7, label=f"after {name}")
    worst = [clean] + [e["robust_accuracy"]["value"] for e in per_eps]
    low = [clean] + [e["robust_accuracy"]["ci95"][0] for e in per_eps]
    high = [clean] + [e["robust_accuracy"]["ci95"][1] for e in per_eps]
    axis.plot(eps, worst, "-o", color="black", label="worst case")
    if all("verification" in e for e in per_eps):
        proved = [clean] + [e["verification"]["interval"][0] for e in per_eps]
        axis.plot(
            eps,
            proved,
            "-s",
            color="tab:green",
            markersize=3,
            label="proved robust (exact verifier)",
        )
    axis.fill_between(eps, low, high, color="black", alpha=0.1, label="95% CI")
    section = report["results"].get("min_norm")
    if section:
        axis.plot(
            [0.0] + section["eps"],
            [clean] + [p["value"] for p in section["best"]["robust_accuracy"]],
            ":",
            color="tab:purple",
            label="minimum-norm attacks (best per example)",
        )
    certified = report["results"].get("certified")
    if certified:
        points = certified["per_radius"]
        axis.plot(
            [p["radius"] for p in points],
            [p["certified_accuracy"]["value"] for p in points],
            "-^",
            color="tab:blue",
            markersize=4,
            label=f"certified, smoothed (sigma={certified['sigma']:g})",
        )
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


def _coverage(report: dict):
    """(n, and how much of the protocol the report covers; whether it is partial)."""
    total = report.get("n_total", report["protocol"].get("dataset", {}).get("n"))
    fewer = bool(total) and total != report["n"]
    parts = [f"{report['n']}" + (f" of {total}" if fewer else "")]
    if report.get("shard"):
        parts.append(f"shard {report['shard']}")
    if not report.get("complete", True):
        parts.append("incomplete")
    return ", ".join(parts), fewer or len(parts) > 1


def compare(reports: Sequence[dict], force: bool = False) -> str:
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
        raise ValueError(
            f"the reports come from different protocols: {names}. Their numbers "
            "are not comparable; pass force=True (--force) to list them anyway."
        )
    ranked = sorted(reports, key=lambda r: -r["results"]["robust_accuracy"]["value"])
    lines = [
        "| rank | model | protocol | n | clean | robust (worst case) | 95% CI | flags |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rank, r in enumerate(ranked, start=1):
        robust = r["results"]["robust_accuracy"]
        coverage, partial = _coverage(r)
        flags = [r.get("headline_flag", "").strip()] + (["partial"] if partial else [])
        lines.append(
            f"| {rank} | {r['model'].get('name', '?')} ({r['model']['fingerprint'][:8]}) "
            f"| {r['protocol']['name']} | {coverage} | "
            f"{100 * r['results']['clean_accuracy']['value']:.2f}% | "
            f"{100 * robust['value']:.2f}% | "
            f"[{100 * robust['ci95'][0]:.1f}, {100 * robust['ci95'][1]:.1f}] | "
            f"{'; '.join(f for f in flags if f) or '-'} |"
        )
    return "\n".join(lines)
