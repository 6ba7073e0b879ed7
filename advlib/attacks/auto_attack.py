"""AutoAttack (Croce & Hein 2020): the parameter-free ensemble whose robust
accuracy papers report and RobustBench ranks."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.attacks import utils
from advlib.attacks.auto_pgd import APGD, APGDT
from advlib.attacks.base import Attack
from advlib.attacks.fab import FAB, FABT
from advlib.attacks.square import SquareAttack

VERSIONS = ("standard", "plus", "rand", "custom")
MEMBERS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def attack_list(version: str, norm) -> list[str]:
    """The reference's attacks for a version (L1 has no Square, and its standard
    version no FAB-T)."""
    if version == "standard":
        return ["apgd-ce", "apgd-t"] if norm == 1 else ["apgd-ce", "apgd-t", "fab-t", "square"]
    if version == "plus":
        return ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    return ["apgd-ce", "apgd-dlr"]


def member_settings(name: str, version: str, norm) -> tuple[type, dict[str, Any]]:
    """The attack class and the reference's parameters for one member."""
    l1 = norm == 1
    restarts = 5 if version == "plus" or (version == "standard" and l1) else 1
    if name in ("apgd-ce", "apgd-dlr"):
        params = dict(loss=name[5:], nb_iter=100, nb_restarts=restarts, large_reps=l1)
        if version == "rand":
            params.update(eot_iter=20, nb_restarts=1)
        return APGD, params
    if name == "apgd-t":
        return APGDT, dict(
            nb_iter=100,
            nb_restarts=1,
            large_reps=l1,
            n_target_classes=5 if (l1 and version == "standard") else 9,
        )
    if name == "fab":
        return FAB, dict(nb_iter=100, nb_restarts=restarts)
    if name == "fab-t":
        return FABT, dict(nb_iter=100, nb_restarts=1, n_target_classes=9)
    return SquareAttack, dict(n_queries=5000, p_init=0.8, nb_restarts=1)


# what every member gets from the ensemble itself
_ENSEMBLE_PARAMS = ("eps", "norm", "ord", "y", "y_target", "clip_min", "clip_max", "seed")


def _check_member_params(member_params, version, attacks_to_run) -> dict[str, dict]:
    """The members' own parameters changed from the reference's, for version
    "custom" only, so that "standard" always means the reference's settings."""
    if not member_params:
        return {}
    if version != "custom":
        raise ValueError(
            f"member_params changes the reference's settings, so it is only for "
            f"version='custom'; version={version!r} runs them unchanged."
        )
    if not isinstance(member_params, dict):
        raise TypeError(
            f"member_params must be a dict from member names to dicts of their "
            f"parameters, e.g. {{'apgd-t': {{'nb_iter': 20}}}}; got "
            f"{type(member_params).__name__}."
        )
    for name, params in member_params.items():
        if name not in attacks_to_run:
            raise ValueError(
                f"member_params names {name!r}, which is not among attacks_to_run {attacks_to_run}."
            )
        if not isinstance(params, dict):
            raise TypeError(
                f"member_params[{name!r}] must be a dict of parameters, got "
                f"{type(params).__name__}."
            )
        shared = sorted(set(params) & set(_ENSEMBLE_PARAMS))
        if shared:
            raise ValueError(
                f"member_params[{name!r}] sets {shared}, which the ensemble gives "
                f"every member; pass them to AutoAttack itself."
            )
    return {name: dict(params) for name, params in member_params.items()}


class AutoAttack(Attack):
    """The AutoAttack ensemble: each attack runs on the examples still robust.

    `version="standard"` runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets)
    and Square (5,000 queries), each with the reference's parameters; "plus"
    adds APGD-DLR and untargeted FAB with 5 restarts; "rand" runs APGD-CE and
    APGD-DLR with 20 EOT samples, for randomized defences; "custom" runs
    `attacks_to_run`. For L1, the standard version is APGD-CE and APGD-T (5
    targets) with the 3-2-1 eps schedule. An example is broken when an attack
    makes the model misclassify it within the eps ball and the input domain;
    the result is the per-example worst case.

    After each call, `robust_accuracy` holds the accuracy after each attack
    (the reference's `robust_accuracy_dict`) and `log` its lines.

    Args (to the constructor, as AutoAttack's; any can be given to `generate`):
        model: a Keras model or an `advlib.models.Model`.
        norm: "Linf" / np.inf (default), "L2" / 2 or "L1" / 1.
        eps: the radius (default 0.3).
        version: "standard" (default), "plus", "rand" or "custom".
        attacks_to_run: for version="custom", names among "apgd-ce",
            "apgd-dlr", "apgd-t", "fab", "fab-t", "square".
        member_params (to `generate`): for version="custom", parameters
            that replace the reference's for some members, e.g.
            `{"apgd-t": {"nb_iter": 20, "n_target_classes": 3}}` (as setting
            `adversary.apgd_targeted.n_iter` in the reference); each member
            checks its own.
        seed: makes every member reproducible (default 0, as in the reference's
            examples).
        verbose: print the log as it is written.

    Example:
        >>> adversary = AutoAttack(keras_model, norm="Linf", eps=8 / 255, version="standard")
        >>> x_adv = adversary.run_standard_evaluation(x_test, y_test, bs=250)
        >>> adversary.robust_accuracy
    """

    def __init__(
        self,
        model,
        norm=None,
        eps: float | None = None,
        version: str | None = None,
        attacks_to_run=None,
        seed: int | None = None,
        verbose: bool = False,
    ):
        super().__init__(model)
        given = dict(norm=norm, eps=eps, version=version, attacks_to_run=attacks_to_run, seed=seed)
        self.settings = {k: v for k, v in given.items() if v is not None}
        self.check_params(**self.settings)
        self.verbose = bool(verbose)
        self.robust_accuracy: dict[str, float] = {}
        self.log: list[str] = []
        self._members: dict[str, Attack] = {}

    def parse_params(
        self,
        eps=0.3,
        norm=None,
        ord=None,
        version="standard",
        attacks_to_run=None,
        y=None,
        clip_min=0.0,
        clip_max=1.0,
        seed=0,
        member_params=None,
    ) -> dict[str, Any]:
        norm = utils.resolve_norm(norm, ord)
        _checks.check_number("eps", eps, low=0)
        _checks.check_choice("version", version, VERSIONS)
        if version == "custom":
            if not attacks_to_run:
                raise ValueError(
                    f"version='custom' needs attacks_to_run, a list of names among {list(MEMBERS)}."
                )
            for name in attacks_to_run:
                _checks.check_choice("attacks_to_run entry", name, MEMBERS)
        elif attacks_to_run:
            raise ValueError(
                f"attacks_to_run is only for version='custom'; version="
                f"{version!r} runs {attack_list(version, norm)}."
            )
        if norm == 1 and "square" in (attacks_to_run or []):
            raise ValueError("square has no L1 version; remove it from attacks_to_run.")
        _checks.check_seed(seed)
        attacks_to_run = list(attacks_to_run or attack_list(version, norm))
        return dict(
            eps=float(eps),
            norm=norm,
            version=version,
            attacks_to_run=attacks_to_run,
            y=y,
            clip_min=clip_min,
            clip_max=clip_max,
            seed=seed,
            member_params=_check_member_params(member_params, version, attacks_to_run),
        )

    def parse(self, **params) -> dict[str, Any]:
        return super().parse(**{**getattr(self, "settings", {}), **params})

    # -- the reference's entry point --------------------------------------------------------
    def run_standard_evaluation(
        self,
        x_orig: np.ndarray,
        y_orig: np.ndarray,
        bs: int = 250,
        return_labels: bool = False,
        batch_size: int | None = None,
        **params: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """AutoAttack's method: runs the ensemble on all of `x_orig`, attack by attack,
        in batches of `bs` (or `batch_size`); NumPy in, NumPy out.

        Returns:
            The adversarial examples (`x_orig` where an example stayed robust);
            with `return_labels`, the pair (examples, the model's classes on them).
        """
        batch_size = bs if batch_size is None else batch_size
        _checks.check_number("bs", batch_size, low=1, integer=True)
        parsed = self.parse(**params)
        x = np.asarray(x_orig)
        x_checked = backend.to_numpy(self._check_input(x, parsed))
        self.model.check_output(ops.convert_to_tensor(x_checked[:1]))
        y = _checks.check_labels("y_orig", y_orig, len(x), self.model.nb_classes)
        x_adv, predicted = self._ensemble(x_checked, y, batch_size, parsed)
        return (x_adv, predicted) if return_labels else x_adv

    def _generate(self, x, labels, targeted, **params):
        x_adv, _ = self._ensemble(
            backend.to_numpy(x), backend.to_numpy(labels), len(x), dict(params)
        )
        return ops.convert_to_tensor(x_adv)

    # -- the ensemble -----------------------------------------------------------------------
    def _ensemble(self, x, y, batch_size, params):
        eps, norm = params["eps"], params["norm"]
        predicted = self._predict_np(x, batch_size)
        robust = predicted == y
        x_adv = x.copy()
        n = max(len(x), 1)
        self.robust_accuracy = {"clean": float(robust.sum() / n)}
        self.log = [f"initial accuracy: {100 * robust.sum() / n:.2f}%"]
        start = time.perf_counter()
        for name in params["attacks_to_run"]:
            rows = np.flatnonzero(robust)
            if rows.size == 0:
                break
            for begin in range(0, rows.size, batch_size):
                batch = rows[begin : begin + batch_size]
                padded = backend.padded_rows(batch)
                candidate = self._run_member(name, x[padded], y[padded], params)[: batch.size]
                classes = self._predict_np(candidate, len(candidate))
                within, _ = utils.within_threat(
                    candidate, x[batch], eps, norm, params["clip_min"], params["clip_max"]
                )
                broken = (classes != y[batch]) & within
                x_adv[batch[broken]] = candidate[broken]
                predicted[batch[broken]] = classes[broken]
                robust[batch[broken]] = False
            self.robust_accuracy[name] = float(robust.sum() / n)
            self._say(
                f"robust accuracy after {name.upper()}: {100 * robust.sum() / n:.2f}% "
                f"(total time {time.perf_counter() - start:.1f} s)"
            )
        return x_adv, predicted

    def _run_member(self, name, x, y, params):
        cls, settings = member_settings(name, params["version"], params["norm"])
        settings.update(params["member_params"].get(name, {}))
        attack = self._members.get(name)
        if attack is None:
            attack = self._members[name] = cls(self.model)
        attack.forward_passes = attack.backward_passes = attack.nonfinite_fallbacks = 0
        shared = dict(
            eps=params["eps"],
            norm=params["norm"],
            y=y,
            clip_min=params["clip_min"],
            clip_max=params["clip_max"],
            seed=params["seed"],
        )
        if cls in (FAB, FABT) and (shared["clip_min"] is None or shared["clip_max"] is None):
            raise ValueError(
                "AutoAttack's FAB needs a bounded input domain: give clip_min and "
                "clip_max, or use version='custom' without fab."
            )
        out = backend.to_numpy(attack.generate(x, **shared, **settings))
        self.forward_passes += attack.forward_passes
        self.backward_passes += attack.backward_passes
        self.nonfinite_fallbacks += attack.nonfinite_fallbacks
        return out

    def _say(self, line: str) -> None:
        self.log.append(line)
        if self.verbose:
            print(line)
