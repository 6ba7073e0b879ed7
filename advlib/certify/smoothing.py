"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019): a certified L2
radius for any classifier.

The smoothed classifier g(x) returns the class that the base classifier f
predicts most often under Gaussian noise, g(x) = argmax_c P(f(x + d) = c) with
d ~ N(0, sigma^2 I). If that class has probability at least p_A, g is constant
on the L2 ball of radius sigma * Phi^-1(p_A) around x. The probabilities are
estimated by Monte Carlo with a one-sided Clopper-Pearson bound, so each
certificate holds with probability at least 1 - alpha over the noise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from advlib import _checks, _seeding, backend
from advlib.models.base import Model
from advlib.models.keras import as_model
from advlib.stats import clopper_pearson_lower, wilson_interval

ABSTAIN = -1
# the phases of one certification draw independent noise
_PREDICT, _SELECT, _ESTIMATE = 0, 1, 2


@dataclasses.dataclass
class CertificationResult:
    """The outcome of `SmoothedClassifier.certify`.

    Attributes:
        prediction: per example, the smoothed classifier's class, or `ABSTAIN` (-1).
        radius: the certified L2 radius (0 where it abstains).
        p_lower: the lower confidence bound on the top class's probability.
        counts: (n, nb_classes) class counts of the estimation samples.
        sigma, n0, n, alpha: the settings.
        seconds: wall time.
    """

    prediction: np.ndarray
    radius: np.ndarray
    p_lower: np.ndarray
    counts: np.ndarray
    sigma: float
    n0: int
    n: int
    alpha: float
    seconds: float

    @property
    def abstained(self) -> np.ndarray:
        """A mask of the examples where the smoothed classifier abstained."""
        return self.prediction == ABSTAIN

    def certified(self, y, radius: float) -> np.ndarray:
        """Per example: correctly classified with a certified radius of at least
        `radius` (Cohen et al.'s certified accuracy counts these)."""
        y = np.asarray(y)
        if y.shape != self.prediction.shape:
            raise ValueError(f"y must have shape {self.prediction.shape}, got {y.shape}.")
        _checks.check_number("radius", radius, low=0)
        return (self.prediction == y) & (self.radius >= radius)

    def certified_accuracy(self, y, radii: Sequence[float]) -> np.ndarray:
        """The certified accuracy at each radius of `radii`."""
        return np.array([self.certified(y, r).mean() if len(y) else 0.0 for r in radii])

    def summary(self, y, radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> dict:
        """Certified accuracy at each radius with its 95% Wilson interval over the
        examples, the abstention rate, and the settings."""
        per_radius = []
        for r in radii:
            hits = self.certified(y, r)
            per_radius.append(
                {
                    "radius": float(r),
                    "value": float(hits.mean()) if hits.size else 0.0,
                    "count": int(hits.sum()),
                    "n": int(hits.size),
                    "ci95": wilson_interval(int(hits.sum()), int(hits.size)),
                }
            )
        correct = self.prediction == np.asarray(y)
        return {
            "sigma": self.sigma,
            "n0": self.n0,
            "n": self.n,
            "alpha": self.alpha,
            "examples": int(len(self.prediction)),
            "abstained": int(self.abstained.sum()),
            "smoothed_accuracy": float(correct.mean()) if correct.size else 0.0,
            "median_radius_of_correct": float(np.median(self.radius[correct]))
            if correct.any()
            else 0.0,
            "per_radius": per_radius,
            "seconds": self.seconds,
        }


class SmoothedClassifier:
    """The Gaussian-smoothed version of a classifier, with Cohen et al.'s
    `predict` and `certify`.

    Noise is sampled in batches inside one compiled step: `batch_size` noisy
    images per forward pass, several examples per pass when the sample count
    is smaller than the batch. With the same seed and `batch_size`, every
    number is reproduced exactly.

    Args:
        model: a Keras classifier or an `advlib.models.Model` (the base
            classifier f; train it with Gaussian noise, e.g.
            `AdversarialModel.from_recipe("gaussian", model, sigma=sigma)`).
        sigma: the noise's standard deviation, on the inputs' scale.
        batch_size: noisy images per forward pass.

    Example:
        >>> smoothed = SmoothedClassifier(model, sigma=0.25)
        >>> result = smoothed.certify(x_test[:500], n0=100, n=10_000, alpha=0.001, seed=0)
        >>> result.certified_accuracy(y_test[:500], radii=[0.0, 0.5, 1.0])
    """

    def __init__(self, model: keras.Model | Model, sigma: float, batch_size: int = 1000):
        _checks.check_number("sigma", sigma, low=0, low_open=True)
        _checks.check_number("batch_size", batch_size, low=1, integer=True)
        self.model = as_model(model)
        self.sigma = float(sigma)
        self.batch_size = int(batch_size)
        self._step = backend.compiled(self._count_classes, self.model.variables)

    # -- sampling ------------------------------------------------------------------
    def _count_classes(self, x, repeats, seed):
        """Class counts (len(x), nb_classes) of f on `repeats` noisy copies of each row."""
        noisy = ops.repeat(x, repeats, axis=0)
        noise = backend.normal(ops.shape(noisy), seed, noisy.dtype)
        classes = ops.argmax(self.model.get_logits(noisy + self.sigma * noise), axis=-1)
        votes = ops.one_hot(classes, self.model.nb_classes, dtype="int32")
        return ops.sum(ops.reshape(votes, (-1, repeats, self.model.nb_classes)), axis=1)

    def sample_counts(
        self, x, num: int, seed: int | None = None, phase: int = _PREDICT, progress: bool = False
    ) -> np.ndarray:
        """Counts of the base classifier's classes over `num` noisy copies of each
        example of `x`: an int64 array (len(x), nb_classes)."""
        x = self._check_x(x)
        _checks.check_number("num", num, low=1, integer=True)
        seed = _seeding.seed_or_draw(_checks.check_seed(seed))
        counts = np.zeros((len(x), self.model.nb_classes), np.int64)
        group = max(1, self.batch_size // num)  # examples per forward pass
        chunk = min(num, self.batch_size)  # noisy copies per example per pass
        bar = _progress(len(x), progress, f"smoothing sigma={self.sigma:g}, {num} samples")
        for start in range(0, len(x), group):
            rows = x[start : start + group]
            for index, done in enumerate(range(0, num, chunk)):
                repeats = min(chunk, num - done)
                # noise depends on (seed, phase, first example, chunk) only
                stream = (phase * 1_000_003 + start) * 1_000_003 + index
                # `repeats` shapes the batch, so it is a Python number (fixed per compilation)
                batch_counts = self._step(rows, repeats, backend.seed([seed, stream]))
                counts[start : start + len(rows)] += backend.to_numpy(batch_counts)
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        return counts

    # -- Cohen et al.'s procedures ----------------------------------------------------
    def certify(
        self,
        x: np.ndarray,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        seed: int | None = None,
        progress: bool = False,
    ) -> CertificationResult:
        """Cohen et al.'s CERTIFY: pick the top class from `n0` samples, bound its
        probability from `n` fresh samples, and certify the L2 radius
        sigma * Phi^-1(p_lower), or abstain where p_lower <= 1/2.

        Args:
            x: a NumPy batch.
            n0: selection samples per example.
            n: estimation samples per example.
            alpha: each certificate fails with probability at most alpha.
            seed: None draws one (see `advlib._seeding`).
            progress: show a progress bar.

        Returns:
            A `CertificationResult`.
        """
        from scipy.stats import norm

        _checks.check_number("n0", n0, low=1, integer=True)
        _checks.check_number("n", n, low=1, integer=True)
        _checks.check_number("alpha", alpha, low=0, high=1, low_open=True, high_open=True)
        seed = _seeding.seed_or_draw(_checks.check_seed(seed))
        start = time.perf_counter()
        selection = self.sample_counts(x, n0, seed, _SELECT, progress)
        top = selection.argmax(axis=1)
        counts = self.sample_counts(x, n, seed, _ESTIMATE, progress)
        p_lower = clopper_pearson_lower(counts[np.arange(len(top)), top], n, alpha)
        certain = p_lower > 0.5
        prediction = np.where(certain, top, ABSTAIN).astype(np.int64)
        radius = np.where(certain, self.sigma * norm.ppf(np.where(certain, p_lower, 0.75)), 0.0)
        return CertificationResult(
            prediction,
            radius,
            p_lower,
            counts,
            self.sigma,
            int(n0),
            int(n),
            float(alpha),
            time.perf_counter() - start,
        )

    def predict(
        self,
        x: np.ndarray,
        n: int = 1000,
        alpha: float = 0.001,
        seed: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """The smoothed classifier's classes, or `ABSTAIN` where a two-sided
        binomial test cannot tell the top two classes apart at level `alpha`
        (Cohen et al.'s PREDICT: a wrong class is returned with probability at
        most alpha).

        Args:
            x: a NumPy batch.
            n: noise samples per example.
            alpha: the test's level.
            seed: None draws one (see `advlib._seeding`).
            progress: show a progress bar.

        Returns:
            int64 classes (len(x),), -1 where it abstains.
        """
        from scipy.stats import binomtest

        _checks.check_number("alpha", alpha, low=0, high=1, low_open=True, high_open=True)
        counts = self.sample_counts(x, n, seed, _PREDICT, progress)
        order = np.argsort(-counts, axis=1, kind="stable")
        prediction = order[:, 0].astype(np.int64)
        for i, (top, second) in enumerate(order[:, :2]):
            n_a, n_b = int(counts[i, top]), int(counts[i, second])
            if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
                prediction[i] = ABSTAIN
        return prediction

    def _check_x(self, x) -> np.ndarray:
        array = _checks.check_batch("x", x)
        if len(array):
            self.model.check_output(array[:1])
        return array


def _progress(total: int, show: bool, description: str):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="ex", dynamic_ncols=True)
