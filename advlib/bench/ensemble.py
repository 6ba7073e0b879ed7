"""Runs a protocol's attacks on one batch, each on the examples still robust."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from advlib import backend
from advlib.attacks import Attack, by_name
from advlib.attacks.utils import within_threat


@dataclasses.dataclass(frozen=True)
class AttackEntry:
    """One attack of a protocol, as the harness runs it.

    Attributes:
        name: the entry's name in the protocol and the report.
        attack: the attack class.
        params: the protocol's own parameters (never the threat model's).
        eps_iter_fraction: the step size as a fraction of eps, if set.
        variant: the adaptive model variant it attacks, if any.
    """

    name: str
    attack: type[Attack]
    params: Mapping[str, Any]
    eps_iter_fraction: float | None = None
    variant: str | None = None

    @classmethod
    def from_protocol(cls, entry: dict) -> AttackEntry:
        params = dict(entry.get("params", {}))
        fraction = params.pop("eps_iter_fraction", None)
        return cls(
            entry.get("name", entry["attack"]),
            by_name(entry["attack"]),
            params,
            fraction,
            entry.get("variant"),
        )

    @property
    def black_box(self) -> bool:
        return self.attack.black_box

    def params_at(self, eps: float, norm: str, clip: dict, seed: int) -> dict[str, Any]:
        """The attack's parameters at one eps: the protocol's, with the threat model,
        the step size and the seed filled in where the attack takes them."""
        own = self.attack.harness_params()
        threat = dict(
            eps=eps,
            norm=np.inf if norm == "inf" else 2,
            clip_min=clip["min"],
            clip_max=clip["max"],
            seed=seed,
        )
        params = dict(self.params, **{k: v for k, v in threat.items() if k in own})
        if self.eps_iter_fraction is not None:
            params["eps_iter"] = self.eps_iter_fraction * eps
        return params


def attack_for(instances: dict | None, attack: type[Attack], model) -> Attack:
    """The attack object for `model`, kept in `instances` (when given) so that every
    later run of that attack on that model reuses its compiled steps."""
    if instances is None:
        return attack(model)
    key = (attack, id(model))
    if key not in instances:
        # the model is kept beside its attack, so that its id is never reused
        instances[key] = (attack(model), model)
    return instances[key][0]


def batch_seed(seed: int, batch: int, eps_index: int) -> int:
    """The seed of one batch at one eps, from the protocol's seed."""
    return (seed * 10007 + batch) * 16 + eps_index


def attack_seed(seed: int, index: int) -> int:
    """The seed of the ensemble's `index`-th attack, from the batch's seed."""
    return seed * 1000 + index


def run_ensemble(
    model,
    protocol: dict,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    seed: int,
    on_attack=None,
    attacks: list[dict] | None = None,
    variants: dict | None = None,
    instances: dict | None = None,
    skip: Sequence[bool] = (),
) -> dict[str, np.ndarray]:
    """Runs every attack of the protocol, in order, on the examples still robust.

    An example counts as broken only if `model` (the model as evaluated)
    misclassifies the adversarial example and the perturbation lies within the
    threat model (norm <= eps) and the input domain.

    Args:
        attacks: the entries to run (default: the protocol's). An entry with a
            "variant" key attacks `variants[variant]` (an adaptive model, e.g.
            with BPDA gradients) while `model` still judges the result.
        instances: a dict that keeps the attack objects between calls, so that
            their compiled steps are traced once per run, not once per batch.
        skip: per entry, True to leave it out at this eps (`sweep_attacks`).

    Returns:
        per-example arrays: "broken_by" (attack index, or -1), "norm" (of the
        breaking perturbation), "attacked" and "success" of shape
        (attacks, batch); and per-attack "forward", "backward", "seconds".
    """
    norm, clip = protocol["threat"]["norm"], protocol["clip"]
    entries = [
        AttackEntry.from_protocol(a) for a in (protocol["attacks"] if attacks is None else attacks)
    ]
    count = len(entries)
    robust = backend.to_numpy(model.predict_classes(x)) == y
    out = {
        "broken_by": np.full(len(x), -1, np.int16),
        "norm": np.full(len(x), np.nan),
        "attacked": np.zeros((count, len(x)), bool),
        "success": np.zeros((count, len(x)), bool),
        "forward": np.zeros(count, np.int64),
        "backward": np.zeros(count, np.int64),
        "seconds": np.zeros(count),
        "nonfinite": np.zeros(count, np.int64),
    }
    for index, entry in enumerate(entries):
        todo = np.flatnonzero(robust)
        if todo.size == 0:
            break
        if index < len(skip) and skip[index]:
            continue
        if on_attack is not None:
            on_attack(entry.name)
        variant = entry.variant
        target = model if variant is None or variants is None else variants[variant]
        attack = attack_for(instances, entry.attack, target)
        params = entry.params_at(eps, norm, clip, attack_seed(seed, index))
        result = attack.run(x[todo], y[todo], batch_size=len(todo), **params)
        success = (
            result.success
            if variant is None
            else backend.to_numpy(model.predict_classes(result.x_adv)) != y[todo]
        )
        within, norms = within_threat(result.x_adv, x[todo], eps, norm, clip["min"], clip["max"])
        broken = success & within
        out["attacked"][index, todo] = True
        out["success"][index, todo] = broken
        out["broken_by"][todo[broken]] = index
        out["norm"][todo[broken]] = norms[broken]
        out["forward"][index] = result.forward_passes
        out["backward"][index] = result.backward_passes
        out["seconds"][index] = result.wall_time
        out["nonfinite"][index] = result.nonfinite_fallbacks
        robust[todo[broken]] = False
    return out


def expand(attacks: list[dict], variant_names: list[str]) -> list[dict]:
    """The ensemble of an adaptive run: the gradient attacks once more per model
    variant, after the originals; the black-box attacks last, so that they
    cross-check every white-box attack."""
    black = [a for a in attacks if is_black_box(a)]
    white = [a for a in attacks if not is_black_box(a)]
    adapted = [dict(a, name=f"{a['name']}@{v}", variant=v) for v in variant_names for a in white]
    return white + adapted + black


def is_black_box(entry: dict) -> bool:
    """Whether a protocol entry's attack sees only the model's outputs."""
    return by_name(entry["attack"]).black_box
