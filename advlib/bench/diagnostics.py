"""Indicators of a failed evaluation: gradient masking and attacks that did not work.

Every `advlib bench` run computes these checks and reports each as pass,
warn, fail or skip, with its evidence. They follow the checklist of Carlini
et al. 2019, "On Evaluating Adversarial Robustness" (section numbers below),
and the "indicators of attack failure" of Pintor et al. 2022:

1. iterative-vs-single-step: PGD must break at least what FGSM breaks
   (Carlini et al. 5.2.3; Pintor et al. "silent success").
2. convergence: twice the iterations and restarts must not add more than
   `convergence_threshold` (Carlini et al. 5.2.4, 5.2.5; Pintor et al.
   "non-converging attack").
3. monotone-in-eps: robust accuracy must not rise with eps (Carlini et al.
   5.2.2); unbounded: PGD with an unbounded budget must reach chance level
   (Carlini et al. 5.2.2; Athalye et al. 2018).
4. black-box-vs-white-box: the protocol's black-box attack (Square in
   version 3) must not break more than `black_box_margin` of the examples
   that the gradient attacks left: fail at the main eps, warn at another eps
   of the sweep; nor may SPSA, run on the diagnostic subset, break more than
   that margin of the examples the whole ensemble left there (Carlini et al.
   5.2.6; Uesato et al. 2018).
5. gradient-health: the input gradients must be finite and nonzero (Pintor
   et al. "broken gradients"); ste-window: for sign or quantized activations
   with a straight-through estimator, the share of units whose window is
   closed (their gradient is cut) must stay moderate.
6. determinism: logits must be identical across calls; randomized models
   need EOT (Athalye et al. 2018, section 4.1).
7. transfer: examples crafted on a surrogate (a QNN's float twin) must not
   beat the white-box attacks (Carlini et al. 5.2.7).

The checks that need attacks of their own ("probes") run on the first
`diagnostics.n` examples of the protocol; the others read the run's results.
"""

from __future__ import annotations

import numpy as np

from advlib.bench import ensemble

# spsa_iterations: SPSA's probe on the diagnostic subset (0 leaves it out);
# completeness_margin: the share of counterexamples, missed by every attack, that
# the exact verifier (binary networks, --verify) may find before the check fails
DEFAULTS = {
    "n": 100,
    "convergence_threshold": 0.01,
    "black_box_margin": 0.01,
    "spsa_iterations": 100,
    "completeness_margin": 0.01,
}
# gradient health: share of examples with a zero or non-finite gradient
GRADIENT_WARN, GRADIENT_FAIL = 0.01, 0.1
# STE window: share of quantized units whose straight-through gradient is cut
WINDOW_WARN, WINDOW_FAIL = 0.5, 0.9

CHECKS = {
    "iterative-vs-single-step": (
        "PGD breaks at least what FGSM breaks",
        "Carlini et al. 2019, 5.2.3; Pintor et al. 2022",
    ),
    "convergence": (
        "more iterations and restarts add little",
        "Carlini et al. 2019, 5.2.4-5.2.5; Pintor et al. 2022",
    ),
    "monotone-in-eps": ("robust accuracy does not rise with eps", "Carlini et al. 2019, 5.2.2"),
    "unbounded": (
        "an unbounded attack reaches chance level",
        "Carlini et al. 2019, 5.2.2; Athalye et al. 2018",
    ),
    "black-box-vs-white-box": (
        "a black-box attack breaks no more than the gradient attacks",
        "Carlini et al. 2019, 5.2.6; Uesato et al. 2018",
    ),
    "gradient-health": ("input gradients are finite and nonzero", "Pintor et al. 2022"),
    "ste-window": ("straight-through windows are open", "Gupta & Ajanthan 2020; Hubara et al."),
    "determinism": ("logits are identical across calls", "Athalye et al. 2018, 4.1 (EOT)"),
    "attack-completeness": (
        "the exact verifier finds nothing that every attack missed",
        "Khalil et al. 2019; Jia & Rinard 2020",
    ),
    "transfer": ("transfer from a surrogate does not beat white-box", "Carlini et al. 2019, 5.2.7"),
}


def settings(protocol) -> dict:
    return {**DEFAULTS, **protocol.get("diagnostics", {})}


# -- assessment ---------------------------------------------------------------------
def _graded(value: float, warn: float, fail: float) -> str:
    """A check's status: "fail" above `fail`, "warn" above `warn`, else "pass"."""
    return "fail" if value > fail else "warn" if value > warn else "pass"


def _advice(text: str, needed) -> str:
    """The advice that ends a check's message where the check found trouble."""
    return f": {text}" if needed else ""


def _check(check_id, status, message, **evidence) -> dict:
    title, source = CHECKS[check_id]
    return {
        "id": check_id,
        "title": title,
        "status": status,
        "message": message,
        "evidence": evidence,
        "source": source,
    }


def assess(
    probes: dict | None,
    results: dict,
    attacks: list[dict],
    protocol: dict,
    nb_classes: int | None,
    standing: np.ndarray | None = None,
) -> list[dict]:
    """Pass / warn / fail / skip for every check, from the probes and the run's results.

    Args:
        standing: per example of the protocol, False where the run's ensemble
            broke it at the main eps. An example that a stronger attack (or a
            transfer) breaks counts against the evaluation only if the
            ensemble left it standing.
    """
    config = settings(protocol)
    still_standing = (
        (lambda places: list(places))
        if standing is None
        else (lambda places: [i for i in places if standing[i]])
    )
    checks = [_monotone(results), _completeness(results, config)]
    if probes is None or probes.get("attacked", 0) == 0:
        checks.append(_black_box(results, attacks, config))
        reason = (
            "the diagnostic subset was not evaluated in this run"
            if probes is None
            else "no example of the diagnostic subset is classified correctly"
        )
        checks += [
            _check(cid, "skip", reason)
            for cid in (
                "iterative-vs-single-step",
                "convergence",
                "unbounded",
                "gradient-health",
                "ste-window",
                "transfer",
            )
        ]
        if probes is not None:
            checks.append(_determinism_check(probes["determinism"]))
        return _ordered(checks)
    attacked = probes["attacked"]
    checks.append(
        _black_box(results, attacks, config, probes.get("spsa"), still_standing, attacked)
    )
    checks.append(_determinism_check(probes["determinism"]))
    fgsm, pgd, strong = probes["fgsm"], probes["pgd"], probes["pgd_strong"]
    checks.append(
        _check(
            "iterative-vs-single-step",
            "warn" if pgd < fgsm else "pass",
            f"PGD broke {pgd} of {attacked}, FGSM {fgsm}"
            + _advice(
                "the iterative attack is weaker than one step; its step size, iterations or "
                "loss are wrong for this model",
                pgd < fgsm,
            ),
            fgsm=fgsm,
            pgd=pgd,
            fgsm_only=probes["fgsm_only"],
            attacked=attacked,
        )
    )
    threshold = config["convergence_threshold"]
    missed = still_standing(probes["strong_only"])
    gain = len(missed) / attacked
    unconverged = _beyond_noise(len(missed), threshold, attacked)
    evidence = {"pgd": pgd, "pgd_strong": strong, "missed_by_ensemble": missed, "gain": gain}
    evidence.update(threshold=threshold, attacked=attacked)
    checks.append(
        _check(
            "convergence",
            "warn" if unconverged else "pass",
            f"2x iterations and restarts broke {strong} of {attacked} against {pgd}; "
            f"{len(missed)} of those it added survived the whole ensemble "
            f"({100 * gain:.1f} points; threshold {100 * threshold:.1f}, and more than one "
            f"example)"
            + _advice(
                "the attacks have not converged, raise nb_iter or nb_restarts",
                unconverged,
            ),
            **evidence,
        )
    )
    unbounded = probes["unbounded"]
    chance = 1.0 / nb_classes if nb_classes else 0.0
    left = unbounded["robust"] / max(unbounded["n"], 1)
    checks.append(
        _check(
            "unbounded",
            "fail" if left > chance else "pass",
            f"at eps={unbounded['eps']:.4g} (the whole domain) {100 * left:.1f}% stay correct; "
            f"chance is {100 * chance:.1f}%" + _advice("the gradients are broken", left > chance),
            eps=unbounded["eps"],
            robust_accuracy=left,
            chance=chance,
        )
    )
    checks.append(_gradient_check(probes["gradients"]))
    checks.append(_window_check(probes.get("ste_window")))
    checks.append(_transfer_check(probes.get("transfer"), attacked, config, still_standing))
    return _ordered(checks)


def _beyond_noise(count: int, share: float, n: int) -> bool:
    """More than `share` of `n` examples, and more than one: a single example is
    within the noise of random starts."""
    return count > max(1, share * n)


def _ordered(checks):
    order = list(CHECKS)
    return sorted(checks, key=lambda c: order.index(c["id"]))


def _monotone(results) -> dict:
    curve = sorted(
        (e["eps"], e["robust_accuracy"]["count"], e["robust_accuracy"]["n"])
        for e in results["per_eps"]
    )
    if len(curve) < 2:
        return _check("monotone-in-eps", "skip", "the protocol has a single eps (no sweep)")
    rises = [(a[0], b[0], b[1] - a[1]) for a, b in zip(curve, curve[1:]) if b[1] > a[1]]
    n = max(curve[0][2], 1)
    worst = max((r[2] for r in rises), default=0)
    status = "pass" if worst <= 1 else "fail" if _beyond_noise(worst, 0.01, n) else "warn"
    message = (
        "robust accuracy falls as eps grows"
        if not rises
        else "; ".join(
            f"from eps={a:.4g} to {b:.4g} it rises by {d} example(s)" for a, b, d in rises
        )
    )
    if status == "fail":
        message += ": the attacks fail at larger budgets, a sign of broken gradients"
    return _check(
        "monotone-in-eps", status, message, curve=[{"eps": e, "robust": c} for e, c, _ in curve]
    )


def _black_box(results, attacks, config, spsa=None, still_standing=list, attacked: int = 0) -> dict:
    """The black-box attack's breaks among the gradient attacks' survivors, at every
    eps where it ran (the sweep's small eps values are where survivors exist to
    cross-check), and SPSA's among the whole ensemble's survivors of the
    diagnostic subset."""
    index = [i for i, a in enumerate(attacks) if ensemble.is_black_box(a)]
    if not index and spsa is None:
        return _check("black-box-vs-white-box", "skip", "the protocol has no black-box attack")
    margin = config["black_box_margin"]
    status, parts, evidence = "pass", [], {"margin": margin}
    if index:
        black_box = attacks[index[0]]["attack"]
        correct = results["clean_accuracy"]["count"]
        per_eps = [
            {
                "eps": e["eps"],
                "broken": e["attacks"][index[0]]["broken"],
                "attacked": e["attacks"][index[0]]["attacked"],
            }
            for e in results["per_eps"]
            if e["attacks"][index[0]].get("ran", True)
        ]
        main, sweep = per_eps[0], per_eps[1:]
        share = main["broken"] / max(correct, 1)
        beyond = lambda row: _beyond_noise(row["broken"], margin, correct)
        # the headline's eps decides the flag; elsewhere in the sweep it is a warning
        status = "fail" if beyond(main) else "warn" if any(map(beyond, sweep)) else "pass"
        counts = ", ".join(
            f"{row['broken']} of {row['attacked']} at {row['eps']:.4g}" for row in sweep
        )
        parts.append(
            f"{black_box} broke {main['broken']} of the {main['attacked']} examples "
            f"that the gradient attacks left ({100 * share:.2f}% of {correct} "
            f"correct; margin {100 * margin:.1f}%)"
            + (f"; in the sweep: {counts}" if counts else "")
        )
        evidence.update(
            broken=main["broken"], attacked=main["attacked"], share=share, per_eps=per_eps
        )
    if spsa is not None:
        missed = still_standing(spsa["broken_at"])
        if _beyond_noise(len(missed), margin, max(attacked, 1)):
            status = "fail"
        parts.append(
            f"SPSA on the diagnostic subset broke {spsa['broken']} of {attacked}, "
            f"{len(missed)} of them left by the whole ensemble"
        )
        evidence["spsa"] = dict(spsa, missed_by_ensemble=missed)
    advice = {
        "fail": ": gradient masking, the gradients mislead the white-box attacks; try --adaptive",
        "warn": ": in the sweep the gradients mislead the white-box attacks; the "
        "curve's numbers rest on the black-box attack there",
        "pass": "",
    }[status]
    return _check("black-box-vs-white-box", status, "; ".join(parts) + advice, **evidence)


def _completeness(results, config) -> dict:
    """Counterexamples of the exact verifier among the examples every attack left:
    fail at the main eps beyond the margin, warn elsewhere in the sweep."""
    rows = [(e["eps"], e["verification"]) for e in results["per_eps"] if "verification" in e]
    if not rows:
        return _check(
            "attack-completeness",
            "skip",
            "the exact verifier did not run (--verify, binary networks with an engine)",
        )
    correct = results["clean_accuracy"]["count"]
    margin = config["completeness_margin"]
    beyond = [_beyond_noise(v["broken"], margin, correct) for _, v in rows]
    status = "fail" if beyond[0] else "warn" if any(beyond[1:]) else "pass"
    counts = "; ".join(
        f"eps={eps:.4g}: {v['broken']} of {v['verified']} verified ({v['unknown']} unknown)"
        for eps, v in rows
    )
    return _check(
        "attack-completeness",
        status,
        f"counterexamples the attacks missed: {counts}"
        + _advice(
            "the attacks are incomplete here, the verifier's counterexamples join the worst case",
            status != "pass",
        ),
        per_eps=[
            {"eps": eps, "broken": v["broken"], "verified": v["verified"], "unknown": v["unknown"]}
            for eps, v in rows
        ],
        margin=margin,
    )


def _determinism_check(evidence) -> dict:
    difference = evidence["max_abs_difference"]
    if difference == 0:
        return _check(
            "determinism", "pass", f"{evidence['calls']} calls gave identical logits", **evidence
        )
    return _check(
        "determinism",
        "warn",
        f"logits differ between calls by up to {difference:.3g}: the model is "
        "randomized. Gradients of one call follow one draw of the noise; attack the "
        "expectation instead (EOT): advlib.models.EOTModelWrapper(model, samples=k)",
        **evidence,
    )


def _gradient_check(evidence) -> dict:
    share = (evidence["zero"] + evidence["nonfinite"]) / max(evidence["n"], 1)
    status = _graded(share, GRADIENT_WARN, GRADIENT_FAIL)
    found = (
        f"{evidence['zero']} zero and {evidence['nonfinite']} non-finite input "
        f"gradients of {evidence['n']} ({100 * share:.1f}%)"
    )
    advice = "the attacks are blind here; use --adaptive (BPDA) or a surrogate gradient"
    return _check(
        "gradient-health",
        status,
        found + _advice(advice, status == "fail"),
        share=share,
        **evidence,
    )


def _window_check(evidence) -> dict:
    if evidence is None:
        return _check("ste-window", "skip", "the model has no sign or quantized activations")
    if "error" in evidence:
        return _check(
            "ste-window", "skip", f"the quantized layers could not be probed: {evidence['error']}"
        )
    closed, surrogate = evidence["closed"], evidence["surrogate"]
    if surrogate == "zero":
        return _check(
            "ste-window",
            "skip",
            "the 'zero' surrogate cuts every unit's gradient (see gradient-health)",
            **evidence,
        )
    if surrogate != "ste":
        return _check(
            "ste-window",
            "pass",
            f"{100 * closed:.1f}% of quantized units lie "
            f"outside [-1, 1], but the {surrogate!r} surrogate has no window",
            **evidence,
        )
    status = _graded(closed, WINDOW_WARN, WINDOW_FAIL)
    return _check(
        "ste-window",
        status,
        f"{100 * closed:.1f}% of quantized units have a closed straight-through "
        f"window (gradient cut)"
        + _advice("use --adaptive (identity or smooth sign)", status != "pass"),
        **evidence,
    )


def _transfer_check(evidence, attacked, config, still_standing) -> dict:
    if evidence is None:
        return _check(
            "transfer",
            "skip",
            "no surrogate model was given (--transfer-from, e.g. a QNN's float twin)",
        )
    missed = still_standing(evidence["transfer_only"])
    share = len(missed) / max(attacked, 1)
    status = "fail" if _beyond_noise(len(missed), config["black_box_margin"], attacked) else "pass"
    return _check(
        "transfer",
        status,
        f"transfer broke {evidence['transfer']} of {attacked}, white-box PGD "
        f"{evidence['white_box']}; {len(missed)} broken only by transfer survived "
        f"the whole ensemble"
        + _advice(
            "the white-box gradients are worse than a surrogate's, a sign of masking",
            status == "fail",
        ),
        share=share,
        missed_by_ensemble=missed,
        **evidence,
    )


def headline_flag(checks: list[dict]) -> str:
    failed = [c["id"] for c in checks if c["status"] == "fail"]
    return f" ⚠ failed checks: {', '.join(failed)}" if failed else ""
