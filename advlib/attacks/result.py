"""`AttackResult`: what an attack did to each example, and at what cost."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from advlib import _checks
from advlib.attacks.utils import lp_norms, normalize_norm_or_l0

_FIELDS = {0: "l0", 1: "l1", 2: "l2", np.inf: "linf"}
# a perturbation is within eps up to float32 rounding
_EPS_TOLERANCE = 1e-5


@dataclasses.dataclass
class AttackResult:
    """The outcome of `Attack.run`.

    Attributes:
        x_adv: adversarial examples, same shape and dtype as the inputs.
        success: per example, whether the attack reached its goal (a wrong
            class when untargeted, the target class when targeted).
        labels: the true labels (or targets, if `targeted`) judged against.
        targeted: whether `labels` are targets.
        predictions: the model's classes on `x_adv`.
        l0, l1, l2, linf: per-example norms of `x_adv - x` (float64).
        forward_passes, backward_passes: model evaluations summed over
            examples (a batch of 100 through one step counts 100).
        wall_time: seconds.
        nonfinite_fallbacks: updates that were NaN or Inf and were replaced by
            the example's last finite point (see `Attack.nonfinite_fallbacks`).
    """

    x_adv: np.ndarray
    success: np.ndarray
    labels: np.ndarray
    targeted: bool
    predictions: np.ndarray
    l0: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    forward_passes: int
    backward_passes: int
    wall_time: float
    nonfinite_fallbacks: int = 0

    @classmethod
    def from_arrays(
        cls,
        x,
        x_adv,
        labels,
        targeted,
        predictions,
        forward_passes,
        backward_passes,
        wall_time,
        nonfinite_fallbacks=0,
    ) -> AttackResult:
        """The result of a batch, with its norms computed from `x` and `x_adv`."""
        success = predictions == labels if targeted else predictions != labels
        # a NaN example is no adversarial example, whatever argmax makes of it
        finite = np.isfinite(np.asarray(x_adv).reshape(len(x_adv), -1)).all(axis=1)
        return cls(
            x_adv=x_adv,
            success=success & finite,
            labels=labels,
            targeted=targeted,
            predictions=predictions,
            forward_passes=int(forward_passes),
            backward_passes=int(backward_passes),
            wall_time=float(wall_time),
            nonfinite_fallbacks=int(nonfinite_fallbacks),
            **lp_norms(np.asarray(x_adv) - np.asarray(x)),
        )

    @property
    def success_rate(self) -> float:
        """The share of examples on which the attack succeeded."""
        return float(self.success.mean()) if self.success.size else 0.0

    # -- minimum-norm views ------------------------------------------------------------
    def minimal_norms(self, norm=2) -> np.ndarray:
        """Per example, the `norm` (0, 1, 2 or np.inf) of the adversarial
        perturbation found, and inf where the attack failed: the smallest
        perturbation known to suffice (0 for an example already misclassified)."""
        return np.where(self.success, getattr(self, _field(norm)), np.inf)

    def median_norm(self, norm=2) -> float:
        """The median of `minimal_norms` over all examples (inf when the attack
        failed on half or more), Foolbox's and the FMN paper's figure."""
        norms = self.minimal_norms(norm)
        return float(np.median(norms)) if norms.size else float("nan")

    def success_at(self, eps: Sequence[float], norm=2) -> np.ndarray:
        """The share of examples broken within each eps of `eps`: a robustness curve
        (robust accuracy = 1 - success, for untargeted attacks on true labels)
        from one minimum-norm run."""
        radii = np.atleast_1d(np.asarray(eps, np.float64))
        for value in radii:
            _checks.check_number("eps", float(value), low=0)
        norms = self.minimal_norms(norm)
        if not norms.size:
            return np.zeros(len(radii))
        return np.array([(norms <= e * (1 + _EPS_TOLERANCE) + 1e-7).mean() for e in radii])

    def summary(self, norm: str | None = None) -> dict[str, float]:
        """Success rate and median / mean norms over the successful examples."""
        out = {
            "n": int(self.success.size),
            "success_rate": self.success_rate,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "wall_time": self.wall_time,
        }
        for name in [norm] if norm else ["l0", "l1", "l2", "linf"]:
            values = getattr(self, name)[self.success]
            out[f"median_{name}"] = float(np.median(values)) if values.size else float("nan")
            out[f"mean_{name}"] = float(np.mean(values)) if values.size else float("nan")
        return out

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"AttackResult(n={s['n']}, success_rate={s['success_rate']:.3f}, "
            f"mean_l2={s['mean_l2']:.4g}, mean_linf={s['mean_linf']:.4g}, "
            f"wall_time={self.wall_time:.2f}s)"
        )


def _field(norm) -> str:
    """The attribute holding `norm`'s values: 0, 1, 2 or np.inf, in any spelling."""
    return _FIELDS[normalize_norm_or_l0(norm)]
