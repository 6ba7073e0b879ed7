"""Exact robustness of binary networks: a complete verifier of the exported engine.

The exported engine reduces a binary network to integer arithmetic: 8-bit
pixel levels in, integer thresholds on +-1 dot products inside, max-pooling as
OR, and an affine last layer. So whether an L-inf ball around an image holds a
point that the engine misclassifies is a finite question, decided here exactly
with respect to the engine, not the float model. An example is `robust` when
no class can win inside the ball, `broken` when a counterexample, re-checked
through the engine itself, is found, and `unknown` when the time limit runs
out (or, rarely, a solution lies within float rounding of a tie).

Three deciders answer one example's `Question`, each a module with one `decide`:
`milp` (a mixed-integer program on SciPy's HiGHS) and `sat` (cardinality
constraints on PySAT's Minicard) are complete; `search`, a gradient-free local
search on the engine, only breaks. The search takes the easy counterexamples
first; the complete decider then gets its share of the time limit, and an
example it leaves undecided gets the rest in the search again. `encoding`
holds what the deciders share, `result` the questions and answers.

Example:
    >>> from advlib.qnn.verify import verify
    >>> result = verify("binary_cnn.npz", x_test[:50], y_test[:50], eps=0.1, time_limit=30)
    >>> result.counts()           # {"robust": ..., "broken": ..., "unknown": ...}
    >>> result.robust_interval()  # certified robust accuracy in [low, high]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from advlib import _checks
from advlib.qnn.engine import BinaryEngine
from advlib.qnn.verify import milp, sat, search
from advlib.qnn.verify.encoding import NetworkEncoding
from advlib.qnn.verify.result import STATUSES, Question, Verdict, VerificationResult

__all__ = [
    "BACKENDS",
    "NetworkEncoding",
    "Question",
    "STATUSES",
    "VerificationResult",
    "Verdict",
    "check_counterexamples",
    "require_backend",
    "verify",
]

Decider = Callable[..., Verdict]
# the complete deciders, by name: decide(question, time_limit)
BACKENDS: dict[str, Decider] = {"milp": milp.decide, "sat": sat.decide}
# restarts of the search before the complete program starts: on the digits CNN at
# eps 0.1, 30 break 53 of 58 correct digits (at most 1.4 s each), 0 break 21
_FIRST_RESTARTS = 30


def require_backend(name: str, parameter: str = "backend") -> None:
    """Checks that `name` is a complete decider and that its solver is installed.

    Raises:
        ValueError: for an unknown name, naming `parameter`.
        ImportError: for the SAT decider without PySAT, naming the extra.
    """
    _checks.check_choice(parameter, name, BACKENDS)
    if name == "sat":
        sat.require()


def verify(
    engine: BinaryEngine | str | NetworkEncoding,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    time_limit: float = 30.0,
    progress: bool = False,
    backend: str = "milp",
    search_share: float = 0.5,
    seed: int = 0,
    example_ids: Sequence[int] | np.ndarray | None = None,
) -> VerificationResult:
    """Decides, per example, whether the L-inf ball of radius `eps` holds a point
    that the exact binary engine misclassifies.

    Args:
        engine: an exported network (`.npz` path), a `BinaryEngine`, or a
            `NetworkEncoding` built once and reused.
        x: images in [0, 1], shape (n,) + the engine's input shape.
        y: labels (n,). An example the engine already misclassifies is
            `broken` with itself as counterexample.
        eps: the L-inf radius, in [0, 1].
        time_limit: seconds per example; past it the example is `unknown`.
        progress: show a progress bar.
        backend: "milp" (SciPy's HiGHS; no extra dependency) or "sat" (PySAT's
            Minicard with native cardinality constraints; needs the
            `python-sat` package). Both are exact and give the same answers;
            their speed differs by network. Measured on digits: the MILP
            decided 30 of 30 digits of a 64-32-32-10 binary MLP at eps 4/255 in
            1.5 s where SAT left 12 undecided at 5 s each, while on a
            64-256-256-256-10 MLP at eps 1/255 SAT ruled out a class in 1.2 s
            that the MILP had not in 20 s.
        search_share: the share of `time_limit` kept for the local search for
            counterexamples on the engine (`advlib.qnn.verify.search`). A short
            search (30 restarts) runs before the complete program and takes the
            easy counterexamples; the search proper runs on what is left of the
            time when the complete program runs out of its share undecided. The
            search can only find counterexamples; 0 turns it off, except after a
            float tie, where it starts from the tie's point. Where the
            complete program decides nothing in time (the digits CNN, with
            thousands of open units), 0.9 decides more: 99.7% of its test
            digits at eps 0.1 in 30 s, against 98.3% with 0.5. Where it
            decides everything fast (`qnn.conv_small` with masks, on a grid),
            0 is the fastest: the SAT backend alone took a few ms per digit,
            and the short search before it ten times that.
        seed: seeds the search: the example whose id is k uses seed + k.
        example_ids: per example, its index in the whole data set (default 0 to
            n - 1). A caller that verifies a subset, as the harness verifies
            what the attacks left, passes the subset's indices, so each example
            draws the seed it draws when the whole set is verified.

    Returns:
        A `VerificationResult`: a `Verdict` per example (status, checked
        counterexample, time, solver statistics).
    """
    encoding = engine if isinstance(engine, NetworkEncoding) else NetworkEncoding(engine)
    x = np.asarray(x)
    _checks.check_number("eps", eps, low=0, high=1)
    _checks.check_number("time_limit", time_limit, low=0, low_open=True)
    require_backend(backend)
    _checks.check_number("search_share", search_share, low=0, high=1, high_open=True)
    _checks.check_number("seed", seed, low=0, integer=True)
    if (
        x.ndim != len(encoding.engine.input_shape) + 1
        or tuple(x.shape[1:]) != encoding.engine.input_shape
    ):
        raise ValueError(f"x must have shape (n,) + {encoding.engine.input_shape}, got {x.shape}.")
    _checks.check_finite_array("x", x)
    _checks.check_in_range("x", x, 0.0, 1.0)
    labels = _checks.check_labels("y", y, len(x), encoding.engine.nb_classes)
    ids = _example_ids(example_ids, len(x))
    logits = encoding.engine.predict(x) if len(x) else np.zeros((0, len(encoding.scale)))
    verdicts = []
    iterator = range(len(x))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"verify eps={eps:g}", unit="ex")
    for i in iterator:
        if logits[i].argmax() != labels[i]:
            verdicts.append(
                Verdict(
                    "broken",
                    int(labels[i]),
                    counterexample=x[i].copy(),
                    target=int(logits[i].argmax()),
                    reason="misclassified",
                )
            )
            continue
        verdicts.append(
            _decide(
                Question(encoding, x[i], int(labels[i]), eps, logits[i]),
                time_limit,
                backend,
                search_share,
                seed + int(ids[i]),
            )
        )
    return VerificationResult(verdicts, float(eps))


def _example_ids(example_ids, n: int) -> np.ndarray:
    if example_ids is None:
        return np.arange(n)
    ids = np.asarray(example_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
        raise ValueError(
            f"example_ids must be {n} non-negative integers, one per example "
            f"of x; got an array of shape {ids.shape} and dtype {ids.dtype}."
        )
    return ids


def _decide(question: Question, time_limit, backend, search_share, seed):
    """A short search for a counterexample, the complete decider on its share of the
    time, then, if it is undecided, the search again on the rest (from the
    decider's point where it ended on a float tie, whatever the share)."""
    start = time.perf_counter()
    verdict = None
    if search_share:  # first a short search, which takes the easy counterexamples
        verdict = search.decide(
            question, search_share * time_limit, seed=seed, restarts=_FIRST_RESTARTS
        )
    if verdict is None or verdict.status != "broken":
        verdict = BACKENDS[backend](question, time_limit * (1 - search_share))
        # a tie's point is next to a counterexample as a rule: searched even at share 0
        if verdict.status == "unknown" and (search_share or verdict.tie is not None):
            rest = time_limit - (time.perf_counter() - start)
            verdict = search.decide(question, rest, seed=seed + 1, verdict=verdict)
    verdict.seconds = time.perf_counter() - start
    return verdict


def check_counterexamples(
    engine: BinaryEngine, x: np.ndarray, result: VerificationResult, eps: float
) -> Sequence[int]:
    """Indices of "broken" verdicts whose counterexample is misclassified by the
    engine and lies within eps of its input (all of them, for a sound verifier)."""
    good = []
    for i, verdict in enumerate(result.verdicts):
        image = verdict.counterexample
        if verdict.status != "broken" or image is None:
            continue
        inside = (
            np.abs(image.astype(np.float64) - x[i]).max() <= eps + 1e-7
            and image.min() >= 0
            and image.max() <= 1
        )
        if inside and engine.predict_classes(image[None])[0] != verdict.label:
            good.append(i)
    return good
