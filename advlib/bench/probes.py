"""The probes of the gradient-masking checks: attacks and measurements on the
diagnostic subset, whose evidence `advlib.bench.diagnostics.assess` judges.

Probing needs the model; assessing needs only the evidence, so the checks can
be re-run from a saved report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from advlib import backend
from advlib.attacks.utils import within_threat
from advlib.bench import diagnostics, ensemble
from advlib.models.base import Model
from advlib.models.inspect import gradient_health, logit_spread, ste_window

# Uesato et al.'s SPSA (cleverhans's defaults), stopping at each example's first success;
# the protocol's diagnostics set nb_iter (spsa_iterations)
SPSA_PROBE: dict[str, Any] = {
    "name": "spsa",
    "attack": "SPSA",
    "params": {"spsa_samples": 128, "early_stop_loss_threshold": 0.0},
}


def _pgd_entry(protocol) -> dict:
    """The protocol's first PGD, or a standard PGD-50 with steps of eps / 4."""
    for entry in protocol["attacks"]:
        if entry["attack"] == "ProjectedGradientDescent":
            return entry
    return {
        "name": "pgd",
        "attack": "ProjectedGradientDescent",
        "params": {"nb_iter": 50, "eps_iter_fraction": 0.25, "rand_init": True},
    }


def _broken(model, entry: dict, x, y, eps, norm, clip, seed, judge, instances) -> np.ndarray:
    """Which examples the protocol entry's attack breaks at `eps`, judged by `judge`
    (the model as evaluated)."""
    typed = ensemble.AttackEntry.from_protocol(entry)
    params = typed.params_at(eps, norm, clip, seed)
    attack = ensemble.attack_for(instances, typed.attack, model)
    result = attack.run(x, y, batch_size=len(x), **params)
    within, _ = within_threat(result.x_adv, x, eps, norm, clip["min"], clip["max"])
    return (backend.to_numpy(judge.predict_classes(result.x_adv)) != y) & within


def probe(
    model: Model,
    judge: Model,
    protocol: dict,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    surrogate: Model | None = None,
    on_step: Callable[[str], None] | None = None,
    instances: dict | None = None,
) -> dict:
    """Runs the diagnostic attacks and measurements on the examples `x`.

    Args:
        model: the `Model` whose gradients the attacks use.
        judge: the `Model` whose predictions count (the model as evaluated).
        protocol: a validated protocol.
        x: the diagnostic subset's inputs.
        y: its labels.
        seed: for the random starts.
        surrogate: optional `Model` to transfer attacks from.
        on_step: called with the name of each probe as it starts.
        instances: attack objects kept between calls (the harness's, so that
            the probes reuse the ensemble's compiled steps).

    Returns:
        A JSON-serializable dict of evidence, read by `assess`.
    """
    step = on_step or (lambda name: None)
    instances = {} if instances is None else instances
    norm, clip = protocol["threat"]["norm"], protocol["clip"]
    eps = float(protocol["threat"]["eps"])
    correct = backend.to_numpy(judge.predict_classes(x)) == y
    places = np.flatnonzero(correct)  # positions in the protocol's examples
    x, y = x[correct], y[correct]
    out: dict = {"n": int(correct.size), "attacked": int(correct.sum())}
    step("determinism")
    out["determinism"] = logit_spread(judge, x if len(x) else np.zeros((1,) + x.shape[1:], x.dtype))
    if len(x) == 0:
        return out
    step("gradients")
    out["gradients"] = gradient_health(model, x, y)
    out["ste_window"] = ste_window(model, x)
    pgd = _pgd_entry(protocol)
    strong = dict(
        pgd,
        params={
            **pgd["params"],
            "nb_iter": 2 * pgd["params"].get("nb_iter", 10),
            "nb_restarts": 2 * pgd["params"].get("nb_restarts", 1),
        },
    )
    runs = {
        "fgsm": {"name": "fgsm", "attack": "FastGradientMethod", "params": {}},
        "pgd": pgd,
        "pgd_strong": strong,
    }
    broken = {}
    for index, (name, entry) in enumerate(runs.items()):
        step(name)
        broken[name] = _broken(
            model, entry, x, y, eps, norm, clip, seed * 100 + index, judge, instances
        )
        out[name] = int(broken[name].sum())
    out["fgsm_only"] = int((broken["fgsm"] & ~broken["pgd"]).sum())
    out["strong_only"] = places[broken["pgd_strong"] & ~broken["pgd"]].tolist()
    out["pgd_params"] = dict(pgd["params"])
    step("unbounded")
    out["unbounded"] = _unbounded(model, judge, pgd, x, y, norm, clip, seed * 100 + 7, instances)
    iterations = diagnostics.settings(protocol)["spsa_iterations"]
    if iterations:
        step("spsa")
        entry = dict(SPSA_PROBE, params=dict(SPSA_PROBE["params"], nb_iter=iterations))
        # the judge answers the queries: a black-box attack needs no variant's gradients
        spsa = _broken(judge, entry, x, y, eps, norm, clip, seed * 100 + 9, judge, instances)
        out["spsa"] = {
            "broken": int(spsa.sum()),
            "broken_at": places[spsa].tolist(),
            "params": entry["params"],
        }
    if surrogate is not None:
        step("transfer")
        transferred = _broken(
            surrogate, pgd, x, y, eps, norm, clip, seed * 100 + 8, judge, instances
        )
        white = broken["fgsm"] | broken["pgd"] | broken["pgd_strong"]
        out["transfer"] = {
            "transfer": int(transferred.sum()),
            "white_box": int(white.sum()),
            "transfer_only": places[transferred & ~white].tolist(),
        }
    return out


def _unbounded(model, judge, pgd, x, y, norm, clip, seed, instances) -> dict:
    """PGD on the margin loss with a budget covering the whole input domain."""
    low = 0.0 if clip["min"] is None else clip["min"]
    high = 1.0 if clip["max"] is None else clip["max"]
    span = high - low
    eps = span if norm == "inf" else span * float(np.sqrt(np.prod(x.shape[1:])))
    # no random start: it alone would misclassify, and hide a zero gradient
    entry = dict(
        pgd, params={**pgd["params"], "loss_fn": "cw", "rand_init": False, "nb_restarts": 1}
    )
    broken = _broken(model, entry, x, y, eps, norm, clip, seed, judge, instances)
    return {"eps": eps, "robust": int((~broken).sum()), "n": len(x)}
