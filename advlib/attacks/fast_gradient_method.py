"""Fast Gradient Method (Goodfellow et al. 2014; L1 and L2 variants)."""

from __future__ import annotations

from advlib.attacks.base import DOMAIN, TARGETABLE
from advlib.attacks.gradient import GradientAttack


class FastGradientMethod(GradientAttack):
    """One step of size `eps` along the best linear ascent direction.

    With `norm=np.inf` this is FGSM: every coordinate with a nonzero gradient
    moves by exactly `eps` (before clipping to `[clip_min, clip_max]`).

    Args (to `generate` / `generate_np`):
        eps: size of the step (default 0.3).
        norm: np.inf (default), 1 or 2; `ord` is an alias.
        y: true labels; default the model's predictions (no label leaking).
        y_target: target labels, which make the attack targeted.
        targeted: cleverhans 4's flag; with it, `y` holds the targets.
        clip_min, clip_max: input domain bounds (None: unbounded).
        loss_fn: `loss_fn(labels=, logits=)` per example, or "ce" / "cw".

    Example:
        >>> fgsm = FastGradientMethod(keras_model)
        >>> x_adv = fgsm.generate_np(x, eps=0.1, clip_min=0.0, clip_max=1.0)
    """

    shared_params = ("norm", *TARGETABLE, *DOMAIN)
    fixed = dict(
        eps_iter=None,
        nb_iter=1,
        rand_init=False,
        rand_minmax=None,
        nb_restarts=1,
        decay_factor=None,
    )
