"""The verifier's SAT decider: the binary network as cardinality constraints,
decided by a CDCL solver with native cardinality constraints (PySAT's Minicard).

Every hidden unit of the exported engine compares an integer accumulator with
an integer threshold, and the accumulator counts how many of its inputs agree
with the unit's +-1 weights. So a unit's bit is the literal of a reified
cardinality constraint, z <=> (at least k of these literals are true), which
Narodytska et al. (AAAI 2018) and Jia & Rinard (NeurIPS 2020) showed a SAT
solver decides far faster than a MILP's relaxation can bound:

- a free pixel's level is lo + (number of true literals of its order encoding
  u_1 >= u_2 >= ... >= u_m), so the first layer, whose weights are +-1, counts
  literals too;
- z => (at least k) is the native constraint "at most n of (not lits) plus k
  copies of z", and not z => (at most k - 1) likewise; units whose bounds
  decide them (k <= 0 or k > n) are constants and never reach the solver;
- max-pooling is OR;
- the last layer is affine in float: for the label y and a class j, the
  literals on which their weights agree (S) and disagree (D) give
  logit_j - logit_y as a function of the two counts, so the program asks, for
  each count d of D, for a count of S in the interval that makes j win.

The clauses of the hidden layers are built once per example; each class is one
incremental call under an assumption, so what the solver learns for one class
serves the next.
"""

from __future__ import annotations

import time

import numpy as np

from advlib.qnn.verify.encoding import NetworkEncoding
from advlib.qnn.verify.result import Question, Verdict, classes_to_try, finish, judge_candidate

_SOLVER = "minicard"
_CONFLICTS_PER_SLICE = 500


def available() -> bool:
    """Whether PySAT (pip package `python-sat`) is installed."""
    try:
        import pysat.solvers  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise ImportError(
            "the SAT backend needs PySAT: pip install 'python-sat>=1.8.dev16' "
            "(or advlib's 'verify' extra); backend='milp' needs only SciPy."
        )


class _Builder:
    """Variables, clauses and reified cardinality constraints for one example."""

    def __init__(self, solver):
        self.solver = solver
        self.count = 0

    def new(self, n: int = 1) -> np.ndarray:
        first = self.count + 1
        self.count += n
        return np.arange(first, first + n, dtype=np.int64)

    def at_least(self, lits: np.ndarray, k: int):
        """A literal z with z <=> (at least k of `lits` are true), or the constant
        True / False where k alone decides it."""
        n = len(lits)
        if k <= 0:
            return True
        if k > n:
            return False
        z = int(self.new()[0])
        negated = (-lits).tolist()
        # z => sum(not lits) <= n - k, written sum(not lits) + k z <= n
        self.solver.add_atmost(negated + [z] * k, n)
        # not z => sum(lits) <= k - 1, written sum(lits) + (n - k + 1) (not z) <= n
        self.solver.add_atmost(lits.tolist() + [-z] * (n - k + 1), n)
        return z

    def any_of(self, lits: list[int]):
        """A literal for the OR of `lits`."""
        if len(lits) == 1:
            return lits[0]
        y = int(self.new()[0])
        for lit in lits:
            self.solver.add_clause([-lit, y])
        self.solver.add_clause([-y] + list(lits))
        return y


def _rows(matrix):
    """Per row of a CSR matrix of +-1 weights: (row, input columns, signs)."""
    for row in range(matrix.shape[0]):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        yield row, matrix.indices[start:stop], matrix.data[start:stop]


class _Bits:
    """A layer's output bits: a literal where open, else a constant 0 / 1."""

    def __init__(self, lit: np.ndarray, value: np.ndarray):
        self.lit, self.value = lit, value  # lit 0 means the constant `value`

    @classmethod
    def from_list(cls, items):
        lit = np.array([0 if isinstance(v, bool) else v for v in items], np.int64)
        value = np.array([bool(v) if isinstance(v, bool) else False for v in items])
        return cls(lit, value)


class SatEncoding:
    """One example's ball as a SAT instance over the engine's layers.

    Args:
        encoding: the `NetworkEncoding` of the engine (its prepared layers).
        x: one image in [0, 1].
        eps: the L-inf radius.
    """

    def __init__(self, encoding: NetworkEncoding, x: np.ndarray, eps: float):
        from pysat.solvers import Solver

        self.encoding = encoding
        self.solver = Solver(name=_SOLVER)
        self.builder = _Builder(self.solver)
        self.low, self.high = encoding.level_box(x.reshape(-1), eps)
        self.units = self.fixed = 0
        self.last = self._hidden_layers()

    def close(self) -> None:
        self.solver.delete()

    # -- the input and the hidden layers ------------------------------------------------
    def _pixels(self):
        """Per pixel, the order-encoding literals of its level above `low`."""
        builder, solver = self.builder, self.solver
        literals = []
        for low, high in zip(self.low, self.high):
            lits = builder.new(int(high - low))
            for a, b in zip(lits[:-1], lits[1:]):
                solver.add_clause([-int(b), int(a)])  # u_{k+1} => u_k
            literals.append(lits)
        self.pixel_literals = literals
        return literals

    def _hidden_layers(self) -> _Bits:
        bits: _Bits | None = None  # the first layer sees the pixels, not bits
        for prepared in self.encoding.layers:
            layer = prepared["layer"]
            kind = layer["type"]
            if kind == "flatten":
                continue
            if kind == "maxpool":
                assert bits is not None, "validated specs pool only after a binary layer"
                bits = self._max_pool(prepared, bits)
                continue
            if layer["output"] == "logits":
                # the last layer's +-1 weights, read once for every class asked about
                self.output_weights = prepared["matrix"].toarray()
                assert bits is not None, "validated specs have a hidden binary layer"
                return bits
            if layer["input"] == "uint8":
                bits = self._first_layer(prepared, self._pixels())
            else:
                assert bits is not None, "validated specs start with a uint8 layer"
                bits = self._binary_layer(prepared, bits)
        raise AssertionError("validated specs end in a logits layer")

    def _thresholds(self, prepared, const: np.ndarray, counts: np.ndarray, step: int, literals):
        """Every unit's bit, for acc = const + step * (number of its true literals).

        The bounds decide most units (k <= 0 or k > the number of literals) and
        those are constants, found for the whole layer at once; only the open
        ones reach `literals(row)`, which lists theirs, and the solver."""
        threshold, flip = prepared["threshold"], prepared["flip"]
        # bit <=> acc >= t, or with flip, bit <=> acc <= t <=> not (count >= floor(.) + 1)
        need = np.where(
            flip, np.floor((threshold - const) / step) + 1, np.ceil((threshold - const) / step)
        )
        always, never = need <= 0, need > counts
        values = np.where(flip, never, always)
        self.units += len(need)
        self.fixed += int(np.count_nonzero(always | never))
        out: list = [bool(v) for v in values]
        for row in np.flatnonzero(~(always | never)):
            result = self.builder.at_least(literals(row), int(need[row]))
            out[row] = -result if flip[row] else result
        return _Bits.from_list(out)

    @staticmethod
    def _row_ids(matrix) -> np.ndarray:
        return np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))

    def _first_layer(self, prepared, pixels) -> _Bits:
        matrix = prepared["matrix"]
        pixel_count = len(self.low)
        rows, cols, signs = self._row_ids(matrix), matrix.indices, matrix.data
        keep = cols < pixel_count  # the padding input of a uint8 layer is 0
        rows, cols, signs = rows[keep], cols[keep], signs[keep]
        width = (self.high - self.low)[cols]
        units = matrix.shape[0]
        # -level = -(low + m) = -low - width + (number of true negated literals)
        const = np.bincount(rows, signs * self.low[cols] - (signs < 0) * width, units)
        counts = np.bincount(rows, width, units)
        starts = np.searchsorted(rows, np.arange(units + 1))

        def literals(row):
            part = slice(starts[row], starts[row + 1])
            parts = [
                pixels[col] if sign > 0 else -pixels[col]
                for col, sign in zip(cols[part], signs[part])
            ]
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)

        return self._thresholds(prepared, const, counts, 1, literals)

    def _binary_layer(self, prepared, bits: _Bits) -> _Bits:
        matrix = prepared["matrix"]
        size, units = len(bits.lit), matrix.shape[0]
        rows, cols, signs = self._row_ids(matrix), matrix.indices, matrix.data
        pad = cols >= size  # the padding input: the constant +-1 value
        inside = np.minimum(cols, size - 1)
        lit = np.where(pad, 0, bits.lit[inside])
        open_ = lit != 0
        value = np.where(pad, prepared.get("pad", 0.0), np.where(bits.value[inside], 1.0, -1.0))
        # an open input adds w (2 b - 1) = 2 [agrees] - 1, agrees = b or not b
        const = np.bincount(rows, np.where(open_, -1.0, signs * value), units)
        counts = np.bincount(rows, open_, units)
        oriented = np.where(signs > 0, lit, -lit)
        starts = matrix.indptr

        def literals(row):
            part = slice(starts[row], starts[row + 1])
            return oriented[part][open_[part]]

        return self._thresholds(prepared, const, counts, 2, literals)

    def _max_pool(self, prepared, bits: _Bits) -> _Bits:
        channels = prepared["layer"]["in_shape"][-1]
        lit = bits.lit.reshape(-1, channels)
        value = bits.value.reshape(-1, channels)
        out = []
        for taps in prepared["windows"]:
            taps = taps[taps >= 0]
            for channel in range(channels):
                if np.any((lit[taps, channel] == 0) & value[taps, channel]):
                    out.append(True)
                    continue
                live = np.unique(lit[taps, channel][lit[taps, channel] != 0])
                out.append(False if live.size == 0 else self.builder.any_of([int(v) for v in live]))
        return _Bits.from_list(out)

    # -- the question for one class -------------------------------------------------------
    def class_wins(self, label: int, target: int, tolerance: float) -> int | None:
        """An assumption literal under which the instance asks for logit_target >=
        logit_label - tolerance; None if no count of the last layer allows it."""
        encoding, builder, solver = self.encoding, self.builder, self.solver
        matrix = self.output_weights
        bits = self.last
        scale, shift = encoding.scale, encoding.shift
        open_ = bits.lit != 0
        values = np.where(bits.value, 1.0, -1.0)
        w_y, w_j = matrix[label, : len(bits.lit)], matrix[target, : len(bits.lit)]
        # acc_c = const_c + 2 * (agreements of the open inputs with class c's weights)
        const_y = float(np.dot(w_y[~open_], values[~open_])) - open_.sum()
        const_j = float(np.dot(w_j[~open_], values[~open_])) - open_.sum()
        oriented = np.where(w_y[open_] > 0, bits.lit[open_], -bits.lit[open_])
        same = w_y[open_] == w_j[open_]
        lits_s, lits_d = oriented[same], oriented[~same]
        s_count, d_count = np.arange(lits_s.size + 1), np.arange(lits_d.size + 1)
        # for y: a_s + a_d agreements; for j: a_s + (|D| - a_d)
        a_s, a_d = np.meshgrid(s_count, d_count, indexing="ij")
        acc_y = const_y + 2 * (a_s + a_d)
        acc_j = const_j + 2 * (a_s + lits_d.size - a_d)
        margin = (scale[label] * acc_y + shift[label]) - (scale[target] * acc_j + shift[target])
        wins = margin <= tolerance  # (|S| + 1, |D| + 1)
        if not wins.any():
            return None
        act = int(builder.new()[0])
        at_least_s = [True] + [builder.at_least(lits_s, v) for v in s_count[1:]] + [False]
        at_least_d = [True] + [builder.at_least(lits_d, v) for v in d_count[1:]] + [False]

        def lit(value, negate=False):
            if isinstance(value, bool):
                return value != negate
            return -value if negate else value

        for d in d_count:
            # not (a_d == d): not (a_d >= d) or (a_d >= d + 1)
            not_equal = [lit(at_least_d[d], True), lit(at_least_d[d + 1])]
            column = np.flatnonzero(wins[:, d])
            if column.size == 0:
                extra: list[list[int]] = [[]]
            else:
                low, high = int(column[0]), int(column[-1])
                if column.size != high - low + 1:
                    raise AssertionError("the winning counts of S form an interval")
                extra = [[lit(at_least_s[low])], [lit(at_least_s[high + 1], True)]]
            for more in extra:
                clause = [-act] + not_equal + more
                if any(v is True for v in clause):
                    continue
                solver.add_clause([int(v) for v in clause if v is not False])
        return act

    def solve(self, assumption: int, time_limit: float) -> bool | None:
        """True (a model), False (none), None (out of time). The solver runs in
        slices of conflicts, so the time limit holds without a second thread."""
        deadline = time.perf_counter() + time_limit
        while True:
            self.solver.conf_budget(_CONFLICTS_PER_SLICE)
            answer = self.solver.solve_limited(assumptions=[assumption])
            if answer is not None:
                return answer
            if time.perf_counter() >= deadline:
                return None

    def levels(self) -> np.ndarray:
        """The pixel levels of the solver's model."""
        model = self.solver.get_model()
        truth = np.zeros(self.builder.count + 1, bool)
        positive = np.array([v for v in model if v > 0], np.int64)
        truth[positive] = True
        return self.low + np.array([truth[lits].sum() for lits in self.pixel_literals], np.int64)


def decide(question: Question, time_limit: float = 30.0) -> Verdict:
    """Decides one example by one incremental SAT call per class that the counts
    leave open; see `advlib.qnn.verify.verify`."""
    encoding, x, label, eps, clean_logits = question
    start = time.perf_counter()
    instance = SatEncoding(encoding, x, eps)
    verdict = Verdict(
        "robust",
        int(label),
        fixed=instance.fixed / max(instance.units, 1),
        binaries=instance.builder.count,
    )
    try:
        for j in classes_to_try(label, clean_logits, len(encoding.scale)):
            act = instance.class_wins(label, j, encoding.tolerance)
            if act is None:
                continue  # no count of the last layer lets class j win
            remaining = time_limit - (time.perf_counter() - start)
            if remaining <= 0:
                return finish(verdict, "unknown", start, reason="time limit")
            answer = instance.solve(act, remaining)
            verdict.programs += 1
            if answer is None:
                return finish(verdict, "unknown", start, reason="time limit")
            if answer:
                image = encoding.image_at_levels(x, instance.levels(), eps)
                return judge_candidate(verdict, encoding.engine, image, j, start)
        return finish(verdict, "robust", start, reason="every class ruled out")
    finally:
        instance.close()
