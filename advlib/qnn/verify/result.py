"""The verifier's questions and answers: a `Question` and a `Verdict` per
example, their `VerificationResult`, and the helpers that every decider uses to close a verdict."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from advlib.qnn.verify.encoding import NetworkEncoding

STATUSES = ("robust", "broken", "unknown")


class Question(NamedTuple):
    """One example's question: does the engine of `encoding` give `label` to every
    image within L-inf distance `eps` of `x`?

    Attributes:
        encoding: the network's `NetworkEncoding`.
        x: one image in [0, 1], of the engine's input shape.
        label: the class to hold.
        eps: the L-inf radius.
        clean_logits: the engine's logits at `x`, which order the classes to
            try (None: in index order).
    """

    encoding: NetworkEncoding
    x: np.ndarray
    label: int
    eps: float
    clean_logits: np.ndarray | None = None


@dataclasses.dataclass
class Verdict:
    """The verifier's answer for one example.

    Attributes:
        status: "robust" (proved), "broken" (a counterexample, checked through
            the engine) or "unknown" (time limit or a float tie).
        label: the class judged against.
        counterexample: for "broken", an image within eps of the input that
            the engine misclassifies; else None.
        target: for "broken", the class the counterexample reaches.
        seconds: wall time.
        binaries: binary variables in the largest program solved (undecided units).
        fixed: share of hidden units decided by the bounds alone.
        programs: MILPs solved (one per class that the bounds could not rule out).
        nodes: branch-and-bound nodes, summed over the programs.
        reason: why "unknown", or how the answer was reached.
        tie: for "unknown" from a float tie, the decider's point at the tie,
            where the search for a counterexample starts; else None.
    """

    status: str
    label: int
    counterexample: np.ndarray | None = None
    target: int | None = None
    seconds: float = 0.0
    binaries: int = 0
    fixed: float = 1.0
    programs: int = 0
    nodes: int = 0
    reason: str = ""
    tie: np.ndarray | None = None


@dataclasses.dataclass
class VerificationResult:
    """Verdicts for a batch, with the statistics a report needs."""

    verdicts: list[Verdict]
    eps: float

    @property
    def statuses(self) -> np.ndarray:
        """The verdicts' statuses, one string per example."""
        return np.array([v.status for v in self.verdicts])

    def counts(self) -> dict[str, int]:
        """How many examples are robust, broken and unknown."""
        statuses = self.statuses
        return {status: int((statuses == status).sum()) for status in STATUSES}

    def robust_interval(self, correct: np.ndarray | None = None) -> list[float]:
        """[proved robust, not broken] as shares of all examples; examples that
        are misclassified to begin with (`correct` False) count as not robust."""
        statuses = self.statuses
        keep = np.ones(len(statuses), bool) if correct is None else np.asarray(correct, bool)
        n = max(len(statuses), 1)
        return [
            float(((statuses == "robust") & keep).sum() / n),
            float(((statuses != "broken") & keep).sum() / n),
        ]

    def times(self) -> dict[str, float]:
        """The median, 95th percentile, maximum and total of the per-example seconds."""
        seconds = np.array([v.seconds for v in self.verdicts]) if self.verdicts else np.zeros(1)
        return {
            "median": float(np.median(seconds)),
            "p95": float(np.percentile(seconds, 95)),
            "max": float(seconds.max()),
            "total": float(seconds.sum()),
        }

    def summary(self) -> dict:
        """The counts, times and solver statistics, as a JSON-ready dict."""
        return {
            "eps": self.eps,
            "n": len(self.verdicts),
            **self.counts(),
            "seconds": self.times(),
            "programs": int(sum(v.programs for v in self.verdicts)),
            "nodes": int(sum(v.nodes for v in self.verdicts)),
            "median_binaries": float(np.median([v.binaries for v in self.verdicts]))
            if self.verdicts
            else 0.0,
        }


def classes_to_try(label: int, clean_logits: np.ndarray | None, count: int) -> list[int]:
    """The classes other than the label, most likely first: the first that yields
    a counterexample ends the search."""
    order = np.argsort(-clean_logits) if clean_logits is not None else range(count)
    return [int(j) for j in order if j != label]


def finish(verdict: Verdict, status: str, start: float, reason: str) -> Verdict:
    """Sets the verdict's status and reason, and its time since `start`."""
    verdict.status, verdict.reason = status, reason
    verdict.seconds = time.perf_counter() - start
    return verdict


def judge_candidate(
    verdict: Verdict, engine, image: np.ndarray, target: int, start: float
) -> Verdict:
    """A decider's point for class `target`, checked through the exact `engine`:
    `broken` if the engine misclassifies it, else `unknown` (it lies within float
    rounding of a tie), with the point kept as the verdict's `tie`."""
    predicted = int(engine.predict_classes(image[None])[0])
    if predicted != verdict.label:
        verdict.counterexample, verdict.target = image, predicted
        return finish(verdict, "broken", start, reason=f"class {predicted}")
    verdict.tie = image
    return finish(
        verdict,
        "unknown",
        start,
        reason=f"a solution for class {target} lies within float rounding of a tie",
    )
