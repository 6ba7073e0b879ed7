"""`RobustnessCallback`: PGD robust accuracy every epoch, with early stopping,
roll-back to the best robust weights, and catastrophic-overfitting alarms."""

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
