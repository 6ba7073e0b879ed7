"""Reports: a run's results, assembled from its arrays, assessed, validated and loaded."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from advlib.bench import diagnostics, ensemble
from advlib.bench import protocol as protocols
from advlib.bench.arrays import finished_view
from advlib.bench.identity import environment
from advlib.stats import proportion

SCHEMA_VERSION = 3


def summarize(
    arrays: dict[str, np.ndarray],
    names: Sequence[str],
    eps_list: Sequence[float],
    ran: Sequence[Sequence[bool]] | None = None,
    verification: dict | None = None,
    certify: dict | None = None,
    min_norm: dict | None = None,
):
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
            attacks.append(
                {
                    "name": name,
                    "ran": True if ran is None else bool(ran[e][a]),
                    "robust_accuracy_after": proportion(robust),
                    "attacked": int(attacked.sum()),
                    "success_rate": float(breaks.sum() / attacked.sum()) if attacked.any() else 0.0,
                    "broken": int(breaks.sum()),
                    "median_norm": float(np.median(norms)) if norms.size else None,
                    "mean_norm": float(np.mean(norms)) if norms.size else None,
                    "forward_passes": int(arrays["forward"][e, a]),
                    "backward_passes": int(arrays["backward"][e, a]),
                    "seconds": float(arrays["seconds"][e, a]),
                    "nonfinite_fallbacks": int(arrays["nonfinite"][e, a]),
                }
            )
        entry = {"eps": float(eps), "attacks": attacks}
        if verification is not None:
            entry["verification"] = _verification(
                arrays, e, robust, broken_by == len(names), verification
            )
            robust &= broken_by != len(names)
        if min_norm is not None:
            # a minimum-norm point within eps is a break like any other
            within = arrays["min_norm"].min(axis=0) <= eps * (1 + 1e-5) + 1e-7
            entry["min_norm_breaks"] = int((robust & within).sum())
            robust &= ~within
        entry["robust_accuracy"] = proportion(robust)
        per_eps.append(entry)
    results = {
        "clean_accuracy": proportion(correct),
        "per_eps": per_eps,
        "robust_accuracy": per_eps[0]["robust_accuracy"],
    }
    if certify is not None:
        results["certified"] = _certified(arrays, certify, results)
    if min_norm is not None:
        from advlib.bench import min_norm as min_norm_module

        results["min_norm"] = min_norm_module.summarize(
            arrays["min_norm"],
            [a["name"] for a in min_norm["attacks"]],
            min_norm["eps"],
            np.asarray(arrays["min_norm_seconds"]).reshape(-1),
        )
    return results


def _certified(arrays, settings, results) -> dict:
    """Randomized smoothing's certified accuracy at each radius, beside the
    attacks' worst case at the same eps (the clean accuracy at radius 0)."""
    prediction = arrays["smoothed_pred"]
    correct = prediction == arrays["label"]
    per_radius = []
    for radius in settings["radii"]:
        empirical = (
            results["clean_accuracy"]
            if radius == 0
            else next(
                (
                    e["robust_accuracy"]
                    for e in results["per_eps"]
                    if math.isclose(e["eps"], radius, rel_tol=1e-9, abs_tol=1e-12)
                ),
                None,
            )
        )
        per_radius.append(
            {
                "radius": float(radius),
                "certified_accuracy": proportion(correct & (arrays["certified_radius"] >= radius)),
                "empirical_robust_accuracy": empirical,
            }
        )
    return {
        **settings,
        "smoothed_accuracy": proportion(correct),
        "abstained": int((prediction == -1).sum()),
        "median_radius_of_correct": float(np.median(arrays["certified_radius"][correct]))
        if correct.any()
        else 0.0,
        "per_radius": per_radius,
        "seconds": float(np.sum(arrays["certify_seconds"])),
    }


def _verification(arrays, e, after_attacks, counterexamples, settings) -> dict:
    """The certified interval at one eps: robust accuracy lies between the share
    proved robust and the share the verifier did not break."""
    verdict = arrays["verdict"][e]
    proved = after_attacks & (verdict == 0)
    unknown = after_attacks & (verdict == 2)
    verified = verdict >= 0
    seconds = arrays["verify_seconds"][e][verified]
    n = max(len(verdict), 1)
    return {
        **settings,
        "verified": int(verified.sum()),
        "robust": int(proved.sum()),
        "broken": int(counterexamples.sum()),
        "unknown": int(unknown.sum()),
        "certified": proportion(proved),
        "interval": [float(proved.sum() / n), float((proved.sum() + unknown.sum()) / n)],
        "exact": not unknown.any(),
        "seconds": {
            "median": float(np.median(seconds)) if seconds.size else 0.0,
            "p95": float(np.percentile(seconds, 95)) if seconds.size else 0.0,
            "total": float(seconds.sum()),
        },
    }


def headline(report: dict) -> dict | None:
    """The protocol's headline figure (AutoAttack's, in version 3): the robust
    accuracy after its attacks, at every eps. None when the protocol has none; when
    the run reordered the ensemble (adaptive mode runs black-box attacks last), the
    figure is not separable and says why."""
    spec = report["protocol"].get("headline")
    if not spec:
        return None
    members = spec["attacks"]
    names = [entry["name"] for entry in report["ensemble"]]
    out = {
        "label": spec["label"],
        "comparable_with": spec.get("comparable_with", ""),
        "attacks": members,
    }
    if names[: len(members)] != members:
        return dict(
            out,
            robust_accuracy=None,
            per_eps=None,
            note="the ensemble of this run does not begin with the headline's "
            "attacks (adaptive mode reorders it), so their figure is not "
            "separable; see the worst case",
        )
    after = len(members) - 1
    # where the sweep ran only some of its attacks, there is no headline figure
    complete = lambda e: all(a.get("ran", True) for a in e["attacks"][: after + 1])
    per_eps = [
        {
            "eps": e["eps"],
            "robust_accuracy": e["attacks"][after]["robust_accuracy_after"]
            if complete(e)
            else None,
        }
        for e in report["results"]["per_eps"]
    ]
    return dict(out, robust_accuracy=per_eps[0]["robust_accuracy"], per_eps=per_eps)


# what `compare` and `merge` read from a report.json, with the types they need
_REPORT_SCHEMA = {
    "protocol": dict,
    "protocol_hash": str,
    "model": dict,
    "results": dict,
    "n": int,
    "batch_size": int,
    "batches": list,
}
_RESULTS_SCHEMA = {"clean_accuracy": dict, "robust_accuracy": dict, "per_eps": list}


def validate_report(report, source: str = "report") -> dict:
    """Checks that a loaded report has the keys and types that advlib reads.

    Raises:
        ValueError: naming `source` and the first missing or malformed key.
    """

    def need(mapping, schema, where):
        for key, kind in schema.items():
            if key not in mapping:
                raise ValueError(f"{source} is not an advlib report: {where} lacks {key!r}.")
            if not isinstance(mapping[key], kind) or isinstance(mapping[key], bool):
                wanted = " or ".join(
                    k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,))
                )
                raise ValueError(
                    f"{source} is not an advlib report: {where}{key!r} is "
                    f"{type(mapping[key]).__name__}, expected {wanted}."
                )

    if not isinstance(report, dict):
        raise ValueError(
            f"{source} is not an advlib report: it holds a "
            f"{type(report).__name__}, not a JSON object."
        )
    need(report, _REPORT_SCHEMA, "")
    need(report["results"], _RESULTS_SCHEMA, "results.")
    for key in ("clean_accuracy", "robust_accuracy"):
        need(report["results"][key], {"value": (int, float), "ci95": list}, f"results.{key}.")
    need(report["protocol"], {"name": str, "threat": dict}, "protocol.")
    need(report["model"], {"fingerprint": str}, "model.")
    return report


def load_report(path: str) -> dict:
    """Reads and validates a report.json."""
    import json

    try:
        with open(path) as handle:
            report = json.load(handle)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path!r} is not valid JSON ({error}).") from error
    return validate_report(report, repr(path))


def summarize_arrays(
    arrays: dict[str, np.ndarray],
    selection: np.ndarray,
    batches_done,
    names: Sequence[str],
    protocol: dict,
    verification: dict | None = None,
) -> dict:
    """The results section of a run's finished batches (`summarize` on their arrays)."""
    view = finished_view(arrays, selection, batches_done)
    eps_list = protocols.eps_values(protocol)
    ran = [protocols.runs_at(protocol, e, names) for e in range(len(eps_list))]
    return summarize(
        view, names, eps_list, ran, verification, protocol.get("certify"), protocol.get("min_norm")
    )


def assess(report: dict, arrays: dict, selection: np.ndarray) -> dict:
    """Adds the diagnostics, and their flag on the headline, to a report."""
    standing = ~(selection & (arrays["broken_by"][0] >= 0))
    checks = diagnostics.assess(
        report["probes"],
        report["results"],
        report["ensemble"],
        report["protocol"],
        report.get("nb_classes"),
        standing,
    )
    report["diagnostics"] = checks
    report["headline_flag"] = diagnostics.headline_flag(checks)
    report["results"]["headline"] = headline(report)
    if report.get("adaptive"):
        report["adaptive"] = adaptive_summary(report)
    return report


def adaptive_summary(report: dict) -> dict:
    """Robust accuracy before and after the adaptive attacks, at the main eps."""
    attacks = report["results"]["per_eps"][0]["attacks"]
    entries = report["ensemble"]
    last = lambda keep: max((i for i, e in enumerate(entries) if keep(e)), default=None)
    before = last(lambda e: "variant" not in e and not ensemble.is_black_box(e))
    after = last(lambda e: not ensemble.is_black_box(e))
    value = lambda i: None if i is None else attacks[i]["robust_accuracy_after"]["value"]
    return {
        "variants": report["adaptive"]["variants"],
        "robust_before": value(before),
        "robust_after": value(after),
    }


def build_report(evaluation, model_name: str) -> dict:
    """The report of an `advlib.bench.runner.Evaluation`'s finished batches, assessed."""
    selection = evaluation.selection()
    done = sorted(evaluation.done)
    results = summarize_arrays(
        evaluation.arrays,
        selection,
        done,
        evaluation.names,
        evaluation.protocol,
        evaluation.verification,
    )
    variants = evaluation.variants
    return assess(
        {
            "schema_version": SCHEMA_VERSION,
            "protocol": evaluation.protocol,
            "protocol_hash": evaluation.identity["protocol_hash"],
            "model": {
                "name": model_name,
                "fingerprint": evaluation.identity["model_fingerprint"],
                "identity": {k: v for k, v in evaluation.model_parts.items() if k != "fingerprint"},
            },
            "identity": evaluation.identity,
            "data": {
                **evaluation.protocol["dataset"],
                "fingerprint": evaluation.identity["data_fingerprint"],
            },
            "environment": environment(),
            "seeds": {
                "protocol": evaluation.protocol["seed"],
                "per_batch": "(seed * 10007 + batch) * 16 + eps_index, then * 1000 + attack",
            },
            "batch_size": evaluation.batch_size,
            "shard": evaluation.identity["shard"],
            "batches": done,
            "complete": set(done) == set(evaluation.mine),
            "n": int(selection.sum()),
            "n_total": len(evaluation.x),
            "results": results,
            "ensemble": evaluation.attacks,
            "nb_classes": evaluation.wrapped.nb_classes,
            "probes": evaluation.probes,
            "adaptive": None if variants is None else {"variants": list(variants)},
            "verify": evaluation.verification,
            "headline_flag": "",
        },
        evaluation.arrays,
        selection,
    )
