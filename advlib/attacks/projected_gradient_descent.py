"""Iterative attacks: BIM (Kurakin et al. 2016) and PGD (Madry et al. 2017)."""

from __future__ import annotations

import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.attacks.base import DOMAIN
from advlib.attacks.gradient import GradientAttack


class ProjectedGradientDescent(GradientAttack):
    """Projected gradient ascent from a random start in the eps-ball.

    Every step moves `eps_iter` along the best ascent direction for `norm`,
    then projects back onto the `norm` ball of radius `eps` around `x`
    (exactly, for L1 too) and onto `[clip_min, clip_max]`.

    Args (to `generate` / `generate_np`):
        eps (0.3), eps_iter (0.05), nb_iter (10): radius, step and steps.
        norm: np.inf (default), 1 or 2; `ord` is an alias.
        y, y_target, targeted: labels as in `FastGradientMethod`.
        clip_min, clip_max: input domain bounds.
        loss_fn: `loss_fn(labels=, logits=)`, or "ce" (default) / "cw".
        rand_init (True): start uniformly in the ball of radius `rand_minmax`.
        rand_minmax: radius of the random start (default eps).
        nb_restarts (1): per example, the most damaging restart is kept.
        seed: makes the random starts reproducible for a given batch.

    Example:
        >>> pgd = ProjectedGradientDescent(keras_model)
        >>> x_adv = pgd.generate_np(x, eps=0.1, eps_iter=0.01, nb_iter=40,
        ...                         clip_min=0.0, clip_max=1.0, seed=0)
    """

    defaults = dict(eps_iter=0.05, rand_init=True)


class MadryEtAl(ProjectedGradientDescent):
    """PGD with a random start, under the name of Madry et al. (2017)."""


class BasicIterativeMethod(ProjectedGradientDescent):
    """PGD started at `x` itself (no random start), after Kurakin et al. (2016)."""

    defaults = dict(eps_iter=0.05, rand_init=False)


class TargetedPGD(ProjectedGradientDescent):
    """Untargeted robustness checked by targeted PGD against the top classes.

    For k = 1 .. `top_classes`, runs targeted PGD towards the k-th most likely
    wrong class (by the clean logits) on the examples that are still
    classified correctly, and keeps the first adversarial example that changes
    the prediction: AutoAttack's targeted sweep. The default loss is the
    targeted margin `Z_t - max_{j != t} Z_j`.

    Args (to `generate`), beyond PGD's:
        top_classes (3): how many target classes to try.
    """

    shared_params = ("norm", "y", *DOMAIN, "seed")
    defaults = dict(ProjectedGradientDescent.defaults, loss_fn="cw")
    fixed = dict(nb_restarts=1, decay_factor=None)

    def parse_params(self, top_classes=3, **params):
        parsed = super().parse_params(**params)
        parsed["top_classes"] = int(
            _checks.check_number("top_classes", top_classes, low=1, integer=True)
        )
        return parsed

    def _generate(self, x, labels, targeted, *, top_classes, **options):
        logits = backend.to_numpy(self.model.predict_logits(x))
        self._count(len(x))
        true = backend.to_numpy(labels)
        logits[np.arange(len(x)), true] = -np.inf
        ranked = np.argsort(-logits, axis=1)[:, : min(top_classes, logits.shape[1] - 1)]
        x_adv = backend.to_numpy(x).copy()
        open_ = np.ones(len(x), bool)
        for k in range(ranked.shape[1]):
            index = np.flatnonzero(open_)
            if index.size == 0:
                break
            targets = ops.convert_to_tensor(ranked[index, k])
            candidate = super()._generate(ops.take(x, index, axis=0), targets, True, **options)
            candidate = backend.to_numpy(candidate)
            fooled = backend.to_numpy(self.model.predict_classes(candidate)) != true[index]
            self._count(len(index))
            x_adv[index[fooled]] = candidate[fooled]
            if k == ranked.shape[1] - 1:  # keep the last try where none fooled the model
                x_adv[index[~fooled]] = candidate[~fooled]
            open_[index[fooled]] = False
        return ops.convert_to_tensor(x_adv)
