"""The arrays of a harness run, in one place: their names, codes and shapes.

Per-example arrays have the example as their last axis; per-batch arrays have
the batch as their first. The state files, the report and `merge` all read
these names.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

PER_EXAMPLE = (
    "index",
    "label",
    "clean_pred",
    "correct",
    "broken_by",
    "norm",
    "attacked",
    "success",
    "verdict",
    "verify_seconds",
    "smoothed_pred",
    "certified_radius",
    "min_norm",
)
ATTACK_COSTS = ("forward", "backward", "seconds", "nonfinite")  # per batch, eps and attack
PER_BATCH = ATTACK_COSTS + ("certify_seconds", "min_norm_seconds")
# the verifier's answers, per eps and example, in the "verdict" array
VERDICT_CODES = {"robust": 0, "broken": 1, "unknown": 2}
NOT_VERIFIED = -1
NOT_CERTIFIED = -2  # in "smoothed_pred"; -1 is the smoothed classifier's abstention


def allocate(
    labels: np.ndarray,
    eps_count: int,
    attack_count: int,
    batches: int,
    verification: bool = False,
    certify: bool = False,
    min_norm_count: int | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of a run that has not started.

    Args:
        labels: the examples' labels (n,).
        eps_count: the eps values of the sweep.
        attack_count: the attacks of the ensemble.
        batches: the run's batches.
        verification: add the exact verifier's verdicts and times.
        certify: add randomized smoothing's predictions and radii.
        min_norm_count: the minimum-norm attacks, or None for none.

    Returns:
        Every array, keyed by name, filled with "not done yet".
    """
    e, a, n = eps_count, attack_count, len(labels)
    arrays = {
        "index": np.arange(n),
        "label": labels.astype(np.int64),
        "clean_pred": np.full(n, -1, np.int64),
        "correct": np.zeros(n, bool),
        "broken_by": np.full((e, n), -1, np.int16),
        "norm": np.full((e, n), np.nan),
        "attacked": np.zeros((e, a, n), bool),
        "success": np.zeros((e, a, n), bool),
        "forward": np.zeros((batches, e, a), np.int64),
        "backward": np.zeros((batches, e, a), np.int64),
        "seconds": np.zeros((batches, e, a)),
        "nonfinite": np.zeros((batches, e, a), np.int64),
    }
    if verification:
        arrays.update(
            verdict=np.full((e, n), NOT_VERIFIED, np.int8), verify_seconds=np.zeros((e, n))
        )
    if certify:
        arrays.update(
            smoothed_pred=np.full(n, NOT_CERTIFIED, np.int64),
            certified_radius=np.zeros(n),
            certify_seconds=np.zeros(batches),
        )
    if min_norm_count is not None:
        arrays.update(
            min_norm=np.full((min_norm_count, n), np.inf),
            min_norm_seconds=np.zeros((batches, min_norm_count)),
        )
    return arrays


def batch_rows(batches: Iterable[int], batch_size: int, n: int) -> np.ndarray:
    """A mask of the examples that belong to `batches`."""
    mask = np.zeros(n, bool)
    for b in batches:
        mask[b * batch_size : (b + 1) * batch_size] = True
    return mask


def copy_batch(
    target: dict[str, np.ndarray], source: dict[str, np.ndarray], b: int, batch_size: int
) -> None:
    """Copies batch `b`'s entries of every array from `source` into `target`."""
    rows = slice(b * batch_size, (b + 1) * batch_size)
    for key in PER_EXAMPLE:
        if key in target:
            target[key][..., rows] = source[key][..., rows]
    for key in PER_BATCH:
        if key in target:
            target[key][b] = source[key][b]


def finished_view(
    arrays: dict[str, np.ndarray], selection: np.ndarray, batches_done
) -> dict[str, np.ndarray]:
    """The finished part of a run: per-example arrays at the selected examples,
    per-batch arrays summed over the finished batches."""
    return {
        key: (
            arrays[key][..., selection]
            if key in PER_EXAMPLE
            else arrays[key][batches_done].sum(axis=0)
        )
        for key in arrays
    }
