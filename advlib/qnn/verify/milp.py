"""The verifier's MILP decider, on SciPy's HiGHS.

Whether the ball holds a misclassified point is a mixed-integer linear program
(Khalil, Gupta & Dilkina 2019) over the engine's integers:

- the ball becomes a box of integer pixel levels, those the engine's own
  quantization `round(clip(x, 0, 1) * 255)` can produce inside it;
- each undecided hidden unit is a binary variable tied to its accumulator by
  big-M constraints whose bounds come from interval propagation; units that
  the bounds already decide are constants and leave the program;
- max-pooling is OR, padding is the engine's constant, Flatten re-indexes;
- for each class j other than the label, the program asks for a point where
  logit_j >= logit_y (up to a tolerance above float32 rounding), most likely
  classes first, stopping at the first that has one.

Every class's program infeasible: `robust`; a solution, decoded to an image
inside the ball, that the engine misclassifies: `broken`.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.sparse as sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from advlib.qnn.verify.encoding import NetworkEncoding
from advlib.qnn.verify.result import Question, Verdict, classes_to_try, finish, judge_candidate


# -- symbolic activations -----------------------------------------------------------------
@dataclasses.dataclass
class _Values:
    """A layer's outputs as affine functions of the program's variables:
    value = const + coef * x[var] (var -1: a constant), with interval bounds."""

    const: np.ndarray  # float64
    var: np.ndarray  # int64, -1 for constants
    coef: np.ndarray  # float64
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def constant(cls, values):
        values = np.asarray(values, np.float64)
        return cls(
            values.copy(),
            np.full(values.shape, -1, np.int64),
            np.zeros(values.shape),
            values.copy(),
            values.copy(),
        )

    def reshape(self, shape):
        return _Values(*(getattr(self, f.name).reshape(shape) for f in dataclasses.fields(self)))


class _Program:
    """Variables (integer, with bounds) and linear constraints, built row by row."""

    def __init__(self):
        self.low: list[float] = []
        self.high: list[float] = []
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.row_low: list[np.ndarray] = []
        self.row_high: list[np.ndarray] = []
        self.count = 0
        self.binaries = 0

    def variables(self, low, high, binary: bool = False) -> np.ndarray:
        low, high = np.atleast_1d(low), np.atleast_1d(high)
        self.binaries += len(low) if binary else 0
        first = len(self.low)
        self.low.extend(low.tolist())
        self.high.extend(high.tolist())
        return np.arange(first, first + len(low))

    def add(self, rows, cols, vals, low, high) -> None:
        """Rows numbered from 0 within this call; low <= A x <= high per row."""
        self.rows.append(np.asarray(rows) + self.count)
        self.cols.append(np.asarray(cols))
        self.vals.append(np.asarray(vals, np.float64))
        self.row_low.append(np.asarray(low, np.float64))
        self.row_high.append(np.asarray(high, np.float64))
        self.count += len(low)

    def matrix(self):
        size = len(self.low)
        if not self.rows:
            return sparse.csr_matrix((0, size)), np.zeros(0), np.zeros(0)
        matrix = sparse.csr_matrix(
            (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
            shape=(self.count, size),
        )
        return matrix, np.concatenate(self.row_low), np.concatenate(self.row_high)


def _affine(prepared: dict, values: _Values):
    """acc = W @ value, as (const, sparse coefficient matrix over variables, low, high)."""
    weights, positive, negative = prepared["matrix"], prepared["positive"], prepared["negative"]
    const = weights @ values.const
    low = positive @ values.low + negative @ values.high
    high = positive @ values.high + negative @ values.low
    variable = values.var >= 0
    scaled = weights[:, np.flatnonzero(variable)] @ sparse.diags(values.coef[variable])
    return const, scaled.tocsr(), values.var[variable], low, high


# -- the program of one ball ---------------------------------------------------------------
def solution_levels(solution: np.ndarray, box) -> np.ndarray:
    """The pixel levels of a solution of a program from `encode` over `box` (the
    ball's `level_box`): its fixed levels, and the solved ones (the first
    variables) elsewhere."""
    low, high = box
    levels = low.copy()
    free = low != high
    levels[free] = np.round(solution[: free.sum()]).astype(np.int64)
    return levels


def margin_objective(
    encoding: NetworkEncoding, const, matrix, columns, label: int, j: int, size: int
):
    """logit_label - logit_j as (row, offset), affine in the `size` variables of a
    program from `encode`: row . z + offset."""
    scale, shift = encoding.scale, encoding.shift
    row = scale[label] * _row(matrix, columns, label, size) - scale[j] * _row(
        matrix, columns, j, size
    )
    return row, scale[label] * const[label] + shift[label] - scale[j] * const[j] - shift[j]


def encode(encoding: NetworkEncoding, x: np.ndarray, eps: float):
    """The program's variables and constraints for the ball around `x`, and the
    logits as affine expressions: (program, logits_const, logits_matrix,
    logits_vars, logits_low, logits_high, stats)."""
    program = _Program()
    low, high = encoding.level_box(x.reshape(-1), eps)
    free = low != high
    var = np.full(low.shape, -1, np.int64)
    var[free] = program.variables(low[free], high[free])
    values = _Values(
        np.where(free, 0.0, low).astype(np.float64),
        var,
        free.astype(np.float64),
        low.astype(np.float64),
        high.astype(np.float64),
    )
    units = fixed = 0
    for prepared in encoding.layers:
        layer = prepared["layer"]
        kind = layer["type"]
        if kind == "flatten":
            continue  # activations are kept flat, in (row, column, channel) order
        if kind == "maxpool":
            values = _max_pool(program, prepared, values)
            continue
        inputs = values
        if kind == "conv":
            inputs = _append_constant(values, prepared["pad"])
        const, matrix, columns, acc_low, acc_high = _affine(prepared, inputs)
        if layer["output"] == "logits":
            return (
                program,
                const,
                matrix,
                columns,
                acc_low,
                acc_high,
                {"units": units, "fixed": fixed},
            )
        values, decided = _threshold(program, prepared, const, matrix, columns, acc_low, acc_high)
        units += len(const)
        fixed += decided
    raise AssertionError("validated specs end in a logits layer")


def _threshold(program, prepared, const, matrix, columns, low, high):
    """Bits of a thresholded layer: constants where the bounds decide them,
    binary variables tied to the accumulator by big-M rows elsewhere."""
    threshold, flip = prepared["threshold"], prepared["flip"]
    on = np.where(flip, high <= threshold, low >= threshold)
    off = np.where(flip, low > threshold, high < threshold)
    open_ = ~(on | off)
    bits = on.astype(np.float64)
    var = np.full(len(bits), -1, np.int64)
    rows = np.flatnonzero(open_)
    if rows.size:
        z = program.variables(np.zeros(rows.size), np.ones(rows.size), binary=True)
        var[rows] = z
        sub = matrix[rows].tocoo()
        t, lo, hi, c, f = threshold[rows], low[rows], high[rows], const[rows], flip[rows]
        # no flip: z = 1 <=> acc >= t;  flip: z = 1 <=> acc <= t  (acc = c + sub x)
        # row A: acc + (lo - t) * z >= lo  (no flip: z = 1 forces acc >= t)
        #        acc + (hi - t) * z <= hi  (flip: z = 1 forces acc <= t)
        # row B: acc - (hi - t + 1) * z <= t - 1  (no flip: z = 0 forces acc <= t - 1)
        #        acc + (t + 1 - lo) * z >= t + 1  (flip: z = 0 forces acc >= t + 1)
        coef_a = np.where(f, hi - t, lo - t)
        coef_b = np.where(f, t + 1 - lo, -(hi - t + 1))
        n = rows.size
        for coef, lower, upper in (
            (coef_a, np.where(f, -np.inf, lo), np.where(f, hi, np.inf)),
            (coef_b, np.where(f, t + 1, -np.inf), np.where(f, np.inf, t - 1)),
        ):
            program.add(
                np.concatenate([sub.row, np.arange(n)]),
                np.concatenate([columns[sub.col], z]),
                np.concatenate([sub.data, coef]),
                lower - c,
                upper - c,
            )
    values = _Values(
        np.where(open_, 0.0, bits),
        var,
        open_.astype(np.float64),
        on.astype(np.float64),
        (~off).astype(np.float64),
    )
    return _signed(values), int((~open_).sum())


def _max_pool(program, prepared, values):
    """OR over each window of bits (inputs are +-1 values 2b - 1)."""
    layer = prepared["layer"]
    channels = layer["in_shape"][-1]
    windows = prepared["windows"]
    bits = _bits(values).reshape((-1, channels))
    out_const, out_var = [], []
    for pixel_taps in windows:
        taps = pixel_taps[pixel_taps >= 0]
        const = bits.const[taps]  # (taps, C) 0/1 for constants
        var = bits.var[taps]
        for channel in range(channels):
            v, c = var[:, channel], const[:, channel]
            if np.any((v < 0) & (c > 0.5)):
                out_const.append(1.0)
                out_var.append(-1)
                continue
            live = np.unique(v[v >= 0])
            if live.size == 0:
                out_const.append(0.0)
                out_var.append(-1)
            elif live.size == 1:
                out_const.append(0.0)
                out_var.append(int(live[0]))
            else:
                y = int(program.variables(0.0, 1.0, binary=True)[0])
                k = live.size
                # y >= b_i for each i;  y <= sum b_i
                program.add(
                    np.concatenate([np.arange(k), np.arange(k)]),
                    np.concatenate([np.full(k, y), live]),
                    np.concatenate([np.ones(k), -np.ones(k)]),
                    np.zeros(k),
                    np.full(k, np.inf),
                )
                program.add(
                    np.zeros(k + 1, int),
                    np.concatenate([[y], live]),
                    np.concatenate([[-1.0], np.ones(k)]),
                    [0.0],
                    [np.inf],
                )
                out_const.append(0.0)
                out_var.append(y)
    const, var = np.array(out_const), np.array(out_var, np.int64)
    is_var = var >= 0
    out = _Values(
        const,
        var,
        is_var.astype(np.float64),
        np.where(is_var, 0.0, const),
        np.where(is_var, 1.0, const),
    )
    return _signed(out)


def _bits(values: _Values) -> _Values:
    """+-1 values (2b - 1) back to bits b."""
    return _Values(
        (values.const + 1) / 2,
        values.var,
        values.coef / 2,
        (values.low + 1) / 2,
        (values.high + 1) / 2,
    )


def _signed(bits: _Values) -> _Values:
    """Bits b to the +-1 values 2b - 1 that the next layer multiplies."""
    return _Values(2 * bits.const - 1, bits.var, 2 * bits.coef, 2 * bits.low - 1, 2 * bits.high - 1)


def _append_constant(values: _Values, value: float) -> _Values:
    extra = _Values.constant([value])
    return _Values(
        *(
            np.concatenate([getattr(values, f.name).ravel(), getattr(extra, f.name)])
            for f in dataclasses.fields(values)
        )
    )


# -- the decider ----------------------------------------------------------------------------
def _decode(x: np.ndarray, solution: np.ndarray, encoding: NetworkEncoding, eps: float):
    """The image of a MILP solution (the levels of the free pixels, in order)."""
    box = encoding.level_box(x.reshape(-1), eps)
    return encoding.image_at_levels(x, solution_levels(solution, box), eps)


def decide(question: Question, time_limit: float = 30.0) -> Verdict:
    """Decides one example by a MILP per class that the bounds leave open; see
    `advlib.qnn.verify.verify`."""
    encoding, x, label, eps, clean_logits = question
    start = time.perf_counter()
    program, const, matrix, columns, low, high, stats = encode(encoding, x, eps)
    scale, shift, tolerance = encoding.scale, encoding.shift, encoding.tolerance
    verdict = Verdict(
        "robust",
        int(label),
        fixed=stats["fixed"] / max(stats["units"], 1),
        binaries=program.binaries,
    )
    base, base_low, base_high = program.matrix()
    size = len(program.low)
    for j in classes_to_try(label, clean_logits, len(scale)):
        # a counterexample needs margin = row . z + offset <= tolerance
        row, offset = margin_objective(encoding, const, matrix, columns, label, j, size)
        margin_low = (
            min(scale[label] * low[label], scale[label] * high[label])
            + shift[label]
            - max(scale[j] * low[j], scale[j] * high[j])
            - shift[j]
        )
        if margin_low > tolerance:
            continue  # the bounds alone rule out class j
        remaining = time_limit - (time.perf_counter() - start)
        if remaining <= 0:
            return finish(verdict, "unknown", start, reason="time limit")
        if size == 0:  # every unit decided: the margin is a constant
            if offset > tolerance:
                continue
            solution = np.zeros(0)
        else:
            solution = _solve(
                base, base_low, base_high, row, offset, tolerance, program, remaining, verdict
            )
            if solution is None:
                continue
            if isinstance(solution, str):
                return finish(verdict, "unknown", start, reason=solution)
        return judge_candidate(
            verdict, encoding.engine, _decode(x, solution, encoding, eps), j, start
        )
    return finish(verdict, "robust", start, reason="every class ruled out")


def _row(matrix, columns, index, size):
    row = np.zeros(size)
    part = matrix[index].tocoo()
    np.add.at(row, columns[part.col], part.data)
    return row


def _solve(base, base_low, base_high, row, offset, tolerance, program, time_limit, verdict):
    """A point of the program with margin <= tolerance: its solution, None if
    infeasible, or a string saying why it is unknown."""
    constraints = [
        LinearConstraint(
            sparse.vstack([base, sparse.csr_matrix(row)]).tocsr(),
            np.concatenate([base_low, [-np.inf]]),
            np.concatenate([base_high, [tolerance - offset]]),
        )
    ]
    size = len(program.low)
    result = milp(
        row,
        integrality=np.ones(size),
        bounds=Bounds(program.low, program.high),
        constraints=constraints,
        # any feasible point answers the question: stop at the first
        options={"time_limit": max(float(time_limit), 1e-3), "mip_rel_gap": 1e9, "presolve": True},
    )
    verdict.programs += 1
    verdict.nodes += int(getattr(result, "mip_node_count", 0) or 0)
    if result.status == 2:
        return None
    if result.x is not None and result.status in (0, 1):
        return result.x
    if result.status == 1:
        return "time limit"
    return f"solver status {result.status}: {result.message}"
