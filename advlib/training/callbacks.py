"""Training callbacks: `RobustnessCallback` (PGD robust accuracy every epoch, with
early stopping, roll-back to the best robust weights and catastrophic-overfitting
alarms) and `EpsilonRamp` (the attack radius raised over the first epochs)."""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from advlib import _checks, backend
from advlib.attacks.fast_gradient_method import FastGradientMethod
from advlib.attacks.projected_gradient_descent import ProjectedGradientDescent
from advlib.models.keras import KerasModelWrapper

ON_OVERFIT = ("warn", "stop", "rollback")


class CatastrophicOverfittingWarning(UserWarning):
    """PGD robust accuracy collapsed while FGSM accuracy rose (Wong et al. 2020)."""


class RobustnessCallback(keras.callbacks.Callback):
    """Evaluates PGD (and FGSM) robust accuracy on a fixed held-out subset.

    Adds `val_pgd_accuracy` and `val_fgsm_accuracy` to the epoch logs, keeps
    the weights of the best robust epoch, and watches for catastrophic
    overfitting, the known failure of fast adversarial training: PGD accuracy
    falls by `overfit_drop` from its best while FGSM accuracy rises above its
    value at that best epoch.

    Args:
        x: held-out examples; the first `n` are used, always the same ones.
        y: their labels.
        eps: L-inf radius.
        eps_iter: PGD's step (default eps / 4).
        nb_iter: PGD's steps, from a random start drawn from `seed`.
        clip_min: the input domain's low end.
        clip_max: its high end.
        n: how many of `x` to evaluate.
        seed: seeds PGD's random start.
        patience: stop when robust accuracy has not improved for this many
            epochs (None: never).
        restore_best: at the end of training, load the best robust weights.
        on_overfit: "warn", "stop" (stop training) or "rollback" (restore the
            best robust weights, then stop).
        overfit_drop: the fall in PGD accuracy that counts as a collapse.
        verbose: 1 prints the robust accuracy after every epoch.

    Example:
        >>> callback = RobustnessCallback(x_val, y_val, eps=0.1, clip_min=0., clip_max=1.)
        >>> robust.fit(x, y, epochs=10, callbacks=[callback])
        >>> callback.best_accuracy, callback.best_epoch
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        eps: float,
        eps_iter: float | None = None,
        nb_iter: int = 20,
        clip_min: float | None = 0.0,
        clip_max: float | None = 1.0,
        n: int = 500,
        seed: int = 0,
        patience: int | None = None,
        restore_best: bool = True,
        on_overfit: str = "warn",
        overfit_drop: float = 0.2,
        verbose: int = 1,
    ):
        super().__init__()
        _checks.check_number("eps", eps, low=0)
        _checks.check_number("n", n, low=1, integer=True)
        _checks.check_number("patience", patience, low=1, integer=True, allow_none=True)
        _checks.check_number("overfit_drop", overfit_drop, low=0, high=1, low_open=True)
        _checks.check_choice("on_overfit", on_overfit, ON_OVERFIT)
        self.x, self.y = np.asarray(x)[:n], np.asarray(y)[:n]
        self.params_pgd: dict[str, Any] = dict(
            eps=eps,
            eps_iter=eps / 4 if eps_iter is None else eps_iter,
            nb_iter=nb_iter,
            clip_min=clip_min,
            clip_max=clip_max,
            seed=seed,
            rand_init=True,
        )
        self.params_fgsm: dict[str, Any] = dict(eps=eps, clip_min=clip_min, clip_max=clip_max)
        self.patience, self.restore_best = patience, restore_best
        self.on_overfit, self.overfit_drop, self.verbose = on_overfit, overfit_drop, verbose
        self.history: list[dict[str, float]] = []

    def _target(self) -> keras.Model:
        """The classifier being trained (the inner model of an AdversarialModel)."""
        from advlib.training.adversarial_model import AdversarialModel

        return self.model.model if isinstance(self.model, AdversarialModel) else self.model

    def evaluate(self):
        """(PGD accuracy, FGSM accuracy) of the current weights on the subset."""
        wrapper = KerasModelWrapper(self._target())
        accuracy = lambda x: float(np.mean(backend.to_numpy(wrapper.predict_classes(x)) == self.y))
        pgd = ProjectedGradientDescent(wrapper).generate_np(self.x, y=self.y, **self.params_pgd)
        fgsm = FastGradientMethod(wrapper).generate_np(self.x, y=self.y, **self.params_fgsm)
        return accuracy(pgd), accuracy(fgsm)

    def on_train_begin(self, logs=None):
        self.best_accuracy, self.best_fgsm = -1.0, -1.0
        self.best_epoch: int | None = None
        self.best_weights, self.wait, self.overfit_epoch = None, 0, None
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        pgd, fgsm = self.evaluate()
        self.history.append({"epoch": epoch, "pgd_accuracy": pgd, "fgsm_accuracy": fgsm})
        if logs is not None:
            logs["val_pgd_accuracy"], logs["val_fgsm_accuracy"] = pgd, fgsm
        if self.verbose:
            print(
                f"epoch {epoch + 1}: PGD accuracy {pgd:.4f}, FGSM accuracy {fgsm:.4f} "
                f"on {len(self.x)} held-out examples"
            )
        if pgd > self.best_accuracy:
            self.best_accuracy, self.best_epoch, self.best_fgsm = pgd, epoch, fgsm
            self.best_weights = self._target().get_weights()
            self.wait = 0
        else:
            self.wait += 1
        if self.best_accuracy - pgd >= self.overfit_drop and fgsm > self.best_fgsm:
            self._overfitting(epoch, pgd, fgsm)
        elif self.patience is not None and self.wait >= self.patience:
            self.model.stop_training = True

    def _overfitting(self, epoch, pgd, fgsm):
        self.overfit_epoch = epoch
        warnings.warn(
            f"catastrophic overfitting at epoch {epoch + 1}: PGD accuracy fell from "
            f"{self.best_accuracy:.3f} (epoch {(self.best_epoch or 0) + 1}) to {pgd:.3f} "
            f"while FGSM accuracy rose from {self.best_fgsm:.3f} to {fgsm:.3f}. The model "
            "has learnt to mask single-step gradients; use a smaller step, more attack "
            "steps, or stop at the best robust epoch.",
            CatastrophicOverfittingWarning,
            stacklevel=2,
        )
        if self.on_overfit == "rollback":
            self._target().set_weights(self.best_weights)
        if self.on_overfit in ("stop", "rollback"):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best and self.best_weights is not None:
            self._target().set_weights(self.best_weights)


class EpsilonRamp(keras.callbacks.Callback):
    """Raises an `AdversarialModel`'s attack radius linearly over the first epochs.

    Epoch `e` (counted from 0) trains with the attack's radii (`eps`,
    `eps_iter`, and `rand_minmax` or `sigma` where set) times
    `start + (1 - start) * min(e / epochs, 1)`: from `start` times the radius
    at the first epoch to the full radius from epoch `epochs` on. Large radii
    from the first step can stall training, binary networks' above all; EEV
    (Jia & Rinard 2020) ramped eps up for theirs. The scale returns to 1 when
    training ends, so `evaluate` and later fits use the full radius.

    Args:
        epochs: the epochs the ramp takes.
        start: the scale at the first epoch, in [0, 1).
        verbose: 1 prints the radius scale at each epoch of the ramp.

    Example:
        >>> robust = AdversarialModel(model, attack_params=dict(eps=0.1, eps_iter=0.025,
        ...     nb_iter=10, rand_init=True, clip_min=0.0, clip_max=1.0))
        >>> robust.compile("adam")
        >>> robust.fit(x, y, epochs=20, callbacks=[EpsilonRamp(epochs=5)])
    """

    def __init__(self, epochs: int, start: float = 0.0, verbose: int = 0):
        super().__init__()
        _checks.check_number("epochs", epochs, low=1, integer=True)
        _checks.check_number("start", start, low=0, high=1, high_open=True)
        self.epochs, self.start, self.verbose = int(epochs), float(start), verbose

    def scale(self, epoch: int) -> float:
        """The radius scale at `epoch` (counted from 0)."""
        return self.start + (1 - self.start) * min(epoch / self.epochs, 1.0)

    def on_train_begin(self, logs=None):
        from advlib.training.adversarial_model import AdversarialModel

        if not isinstance(self.model, AdversarialModel):
            raise TypeError(
                f"EpsilonRamp scales an AdversarialModel's attack; it was given to the fit "
                f"of a {type(self.model).__name__}."
            )

    def on_epoch_begin(self, epoch, logs=None):
        scale = self.scale(epoch)
        # set between epochs: JAX's compiled loop reads the variables at an epoch's start
        self.model.radius_scale.assign(scale)
        if self.verbose and scale < 1:
            print(f"epoch {epoch + 1}: attack radius x {scale:.3f}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["radius_scale"] = self.scale(epoch)

    def on_train_end(self, logs=None):
        self.model.radius_scale.assign(1.0)
