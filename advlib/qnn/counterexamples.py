"""`CounterexampleMixing`: the verifier's counterexamples mixed into the batches.

EEV (Jia & Rinard 2020) fine-tuned their verifiable networks on the points the
exact verifier found: points that the training attack (PGD) had missed, since
the network was robust to PGD there and yet not robust. This callback runs
`advlib.qnn.verify` on training examples between epochs and feeds what it
finds back into training.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from advlib import _checks
from advlib.qnn.engine import BinaryEngine
from advlib.qnn.exporter import export
from advlib.qnn.verify import require_backend, verify
from advlib.qnn.verify.encoding import NetworkEncoding


class MixedBatches(keras.utils.PyDataset):
    """The training set in shuffled batches, each with a share of its examples
    drawn from a pool of counterexamples (none while the pool is empty).

    Built by `CounterexampleMixing`, which fills the pool; pass it to `fit` as
    `x`. Epoch `e` shuffles with `seed + e`, so runs repeat.
    """

    def __init__(self, x, y, batch_size: int, share: float, seed: int):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size, self.share, self.seed = batch_size, share, seed
        self.pool_x = np.zeros((0,) + x.shape[1:], x.dtype)
        self.pool_y = np.zeros((0,), y.dtype)
        self.pool_rows = np.zeros((0,), "int64")  # the training example each came from
        self.epoch = 0
        self._order = np.random.default_rng(seed).permutation(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        x, y = self.x[rows], self.y[rows]
        mixed = min(int(round(self.share * len(rows))), len(self.pool_x))
        if mixed:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            picks = rng.choice(len(self.pool_x), size=mixed, replace=False)
            x = np.concatenate([x[: len(rows) - mixed], self.pool_x[picks]])
            y = np.concatenate([y[: len(rows) - mixed], self.pool_y[picks]])
        return x, y

    def on_epoch_end(self):
        self.epoch += 1
        self._order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.x))

    def add(self, x, y, rows, capacity: int) -> None:
        """Adds counterexamples to the pool, which keeps the newest `capacity`.

        Args:
            x: the counterexamples.
            y: their labels.
            rows: the indices of the training examples they break.
            capacity: the pool's size.
        """
        self.pool_x = np.concatenate([self.pool_x, x])[-capacity:]
        self.pool_y = np.concatenate([self.pool_y, y])[-capacity:]
        self.pool_rows = np.concatenate([self.pool_rows, rows])[-capacity:]


class CounterexampleMixing(keras.callbacks.Callback):
    """Verifies training examples between epochs and mixes the counterexamples
    the verifier finds into later batches.

    After every `every` epochs, the network being trained (the binary network
    inside an `AdversarialModel` or `VerifiableModel`, or the fitted model
    itself) is exported and `advlib.qnn.verify` decides the next `n` training
    examples, in a fixed shuffled order that wraps around. Each counterexample
    to an example the network classifies correctly joins a pool (the newest
    `pool_size` are kept; `batches.pool_x`, `pool_y` and `pool_rows`), labelled
    with the example's class; from then on,
    `share` of each batch of `batches` comes from the pool. Under an
    `AdversarialModel`, the attack then starts from the counterexamples.

    A check costs up to `n * time_limit` seconds. Networks trained for
    verification are decided in milliseconds per example, others may time
    out on most: EEV mixed counterexamples in a fine-tuning stage, after the
    network had learnt to be verifiable.

    The epoch's logs gain `verified_robust` (the share of the checked
    examples proved robust: the verified accuracy on them), `counterexamples`
    (found at this check) and `pool` (the pool's size).

    Args:
        x: the training images, in [0, 1].
        y: their labels (class indices).
        eps: the L-inf radius to verify.
        batch_size: the batches' size.
        share: the share of each batch drawn from the pool, in [0, 1).
        n: training examples verified at each check.
        every: epochs between checks.
        pool_size: counterexamples kept.
        time_limit: seconds per example for the verifier.
        backend: the verifier's backend, "sat" or "milp".
        search_share: the verifier's local-search share (0: the solver alone,
            the fastest on networks trained for verification).
        seed: seeds the shuffles and the draws from the pool.
        verbose: 1 prints each check's figures.

    Example:
        >>> mixing = qnn.CounterexampleMixing(x_train, y_train, eps=0.1)
        >>> trainer = AdversarialModel(model, attack_params=dict(eps=0.1, eps_iter=0.025,
        ...     nb_iter=10, rand_init=True, clip_min=0.0, clip_max=1.0))
        >>> trainer.compile("adam")
        >>> trainer.fit(mixing.batches, epochs=5, callbacks=[mixing])
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        eps: float,
        batch_size: int = 128,
        share: float = 0.25,
        n: int = 1000,
        every: int = 1,
        pool_size: int = 10000,
        time_limit: float = 0.5,
        backend: str = "sat",
        search_share: float = 0.0,
        seed: int = 0,
        verbose: int = 1,
    ):
        super().__init__()
        x = np.asarray(x, dtype="float32")
        _checks.check_finite_array("x", x)
        _checks.check_in_range("x", x, 0.0, 1.0)
        if x.ndim < 2:
            raise ValueError(f"x must be a batch of images, shape (n, ...), got {x.shape}.")
        labels = np.asarray(y)
        if labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"y must hold one class index per image, shape ({len(x)},), got "
                f"{labels.dtype} of shape {labels.shape}."
            )
        _checks.check_number("eps", eps, low=0, high=1, low_open=True)
        _checks.check_number("batch_size", batch_size, low=1, integer=True)
        _checks.check_number("share", share, low=0, high=1, high_open=True)
        _checks.check_number("n", n, low=1, integer=True)
        _checks.check_number("every", every, low=1, integer=True)
        _checks.check_number("pool_size", pool_size, low=1, integer=True)
        _checks.check_number("time_limit", time_limit, low=0, low_open=True)
        require_backend(backend)
        _checks.check_number("search_share", search_share, low=0, high=1, high_open=True)
        _checks.check_number("seed", seed, low=0, integer=True)
        self.x, self.y = x, labels.astype("int64")
        self.eps, self.n, self.every, self.pool_size = float(eps), int(n), int(every), pool_size
        self.time_limit, self.backend, self.search_share = time_limit, backend, search_share
        self.verbose = verbose
        self.batches = MixedBatches(self.x, self.y, int(batch_size), float(share), seed)
        self._checked = np.random.default_rng([seed, 1]).permutation(len(x))
        self._cursor = 0
        self.history: list[dict[str, float]] = []

    def _classifier(self) -> keras.Model:
        inner = getattr(self.model, "model", None)
        return inner if isinstance(inner, keras.Model) else self.model

    def check(self) -> dict[str, float]:
        """Verifies the next `n` training examples and pools the counterexamples.

        Returns:
            `verified_robust`, `counterexamples` and `pool`, as logged.
        """
        count = min(self.n, len(self.x))
        rows = np.take(self._checked, np.arange(self._cursor, self._cursor + count), mode="wrap")
        self._cursor = (self._cursor + count) % len(self.x)
        encoding = NetworkEncoding(BinaryEngine(**export(self._classifier())))
        result = verify(
            encoding,
            self.x[rows],
            self.y[rows],
            self.eps,
            time_limit=self.time_limit,
            backend=self.backend,
            search_share=self.search_share,
            example_ids=rows,
        )
        found = [
            (verdict.counterexample, row)
            for verdict, row in zip(result.verdicts, rows)
            if verdict.status == "broken" and verdict.reason != "misclassified"
        ]
        if found:
            points, sources = zip(*found)
            broken = np.array(sources, "int64")
            self.batches.add(
                np.stack(points).astype(self.x.dtype), self.y[broken], broken, self.pool_size
            )
        return {
            "verified_robust": result.counts()["robust"] / count,
            "counterexamples": float(len(found)),
            "pool": float(len(self.batches.pool_x)),
        }

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        figures = self.check()
        self.history.append({"epoch": epoch, **figures})
        if logs is not None:
            logs.update(figures)
        if self.verbose:
            checked = min(self.n, len(self.x))
            print(
                f"epoch {epoch + 1}: {100 * figures['verified_robust']:.1f}% of {checked} "
                f"training examples verified robust at eps {self.eps:g}; "
                f"{int(figures['counterexamples'])} counterexamples pooled "
                f"({int(figures['pool'])} in the pool)"
            )
