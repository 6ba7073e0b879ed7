"""Runs a protocol's attacks on one batch, each on the examples still robust."""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from advlib import attacks as attack_module

_NORM_TOLERANCE = 1e-5


def attack_class(name: str):
    return getattr(attack_module, name)


def perturbation_norms(delta: np.ndarray, norm: str) -> np.ndarray:
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    if norm == "inf":
        return np.abs(flat).max(axis=1, initial=0.0)
    return np.sqrt((flat ** 2).sum(axis=1))


def attack_params(entry: Dict, eps: float, norm: str, clip, seed: int) -> Dict:
    """The parameters for one attack at one eps, with the harness's own filled in."""
    params = dict(entry["params"])
    fraction = params.pop("eps_iter_fraction", None)
    if entry["attack"] == "CarliniWagnerL2":
        return dict(params, clip_min=clip["min"], clip_max=clip["max"])
    params.update(eps=eps, norm=np.inf if norm == "inf" else 2, clip_min=clip["min"],
                  clip_max=clip["max"])
    if fraction is not None:
        params["eps_iter"] = fraction * eps
    if entry["attack"] in ("ProjectedGradientDescent", "TargetedPGD", "BasicIterativeMethod"):
        params["seed"] = seed
    return params


def run_ensemble(model, protocol: Dict, x: np.ndarray, y: np.ndarray, eps: float,
                 seed: int, on_attack=None) -> Dict[str, np.ndarray]:
    """Runs every attack of the protocol, in order, on the examples still robust.

    An example counts as broken only if the model misclassifies the
    adversarial example and the perturbation lies within the threat model
    (norm <= eps) and the input domain.

    Returns:
        per-example arrays: "broken_by" (attack index, or -1), "norm" (of the
        breaking perturbation), "attacked" and "success" of shape
        (attacks, batch); and per-attack "forward", "backward", "seconds".
    """
    norm, clip = protocol["threat"]["norm"], protocol["clip"]
    count = len(protocol["attacks"])
    robust = model.predict_classes(x).numpy() == y
    out = {"broken_by": np.full(len(x), -1, np.int16), "norm": np.full(len(x), np.nan),
           "attacked": np.zeros((count, len(x)), bool), "success": np.zeros((count, len(x)), bool),
           "forward": np.zeros(count, np.int64), "backward": np.zeros(count, np.int64),
           "seconds": np.zeros(count)}
    for index, entry in enumerate(protocol["attacks"]):
        todo = np.flatnonzero(robust)
        if todo.size == 0:
            break
        if on_attack is not None:
            on_attack(entry["name"])
        attack = attack_class(entry["attack"])(model)
        params = attack_params(entry, eps, norm, clip, seed * 1000 + index)
        result = attack.run(x[todo], y[todo], batch_size=len(todo), **params)
        norms = perturbation_norms(result.x_adv - x[todo], norm)
        within = norms <= eps * (1 + _NORM_TOLERANCE) + 1e-7
        if clip["min"] is not None:
            within &= result.x_adv.reshape(len(todo), -1).min(axis=1) >= clip["min"] - 1e-6
        if clip["max"] is not None:
            within &= result.x_adv.reshape(len(todo), -1).max(axis=1) <= clip["max"] + 1e-6
        broken = result.success & within
        out["attacked"][index, todo] = True
        out["success"][index, todo] = broken
        out["broken_by"][todo[broken]] = index
        out["norm"][todo[broken]] = norms[broken]
        out["forward"][index] = result.forward_passes
        out["backward"][index] = result.backward_passes
        out["seconds"][index] = result.wall_time
        robust[todo[broken]] = False
    return out


def attack_names(protocol) -> List[str]:
    return [entry["name"] for entry in protocol["attacks"]]
