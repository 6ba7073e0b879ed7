"""Auto-PGD (Croce & Hein 2020) and its targeted sweep APGD-T, the gradient
attacks of AutoAttack; L1 after Croce & Hein 2021."""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import numpy as np
from keras import ops

from advlib import _checks, backend, losses
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, TARGETABLE, Attack, on_survivors, refuse_true_class_targets

_MOMENTUM = 0.75
_TARGET_SEED_STRIDE = 1000
# the step size starts at this multiple of eps (L-inf and L2: 2, L1: 1)
_STEP_FACTOR = {np.inf: 2.0, 2: 2.0, 1: 1.0}
# L1: the step may shrink to this fraction of its start, and the sparsity adapts
_L1_MIN_STEP, _L1_STEP_DECAY, _L1_SPARSITY_SHRINK = 0.1, 1.5, 1.5
# L1 "larger eps" schedule of AutoAttack: eps x 3, 2, 1 for 30%, 30%, 40% of the steps
_L1_SCHEDULE = ((3.0, 0.3), (2.0, 0.3), (1.0, 0.4))


def _negative_cross_entropy(labels, logits):
    """Targeted CE: ascending it approaches the target class."""
    return -losses.cross_entropy(labels=labels, logits=logits)


def checkpoint_lengths(nb_iter: int, norm) -> list:
    """The lengths of the windows after which APGD checks its progress: for L-inf
    and L2, 22% of the steps, then 3% less each time, down to 6% (the paper's
    p_j schedule); for L1, every 4%."""
    if norm == 1:
        return [max(int(0.04 * nb_iter), 1)] * nb_iter
    first, shortest, decrease = (max(int(f * nb_iter), 1) for f in (0.22, 0.06, 0.03))
    lengths: list[int] = []
    k = first
    while sum(lengths) < nb_iter:
        lengths.append(k)
        k = max(k - decrease, shortest)
    return lengths


class _Problem(NamedTuple):
    """One batch's question: the inputs, the labels success is judged by, and
    those the loss takes (for targeted DLR, the true and the target class)."""

    x: Any
    labels: Any
    loss_labels: Any

    def rows(self, rows) -> _Problem:
        return _Problem(*(ops.take(t, rows, axis=0) for t in self))


class _Rule(NamedTuple):
    """The run's Python choices: each combination is one trace of the loop."""

    norm: float
    loss_fn: Any
    targeted: bool
    eot_iter: int


class _Plan(NamedTuple):
    """A run's settings: its rule, radius, domain and budget."""

    rule: _Rule
    eps: float
    bounds: tuple[Any, Any]
    nb_iter: int
    nb_restarts: int
    rho: float
    large_reps: bool


class _Numbers(NamedTuple):
    """The compiled loop's numbers, as tensors of the input's dtype."""

    eps: Any
    low: Any
    high: Any
    schedule: Any  # per step: the length of the window that ends there, or 0
    rho: Any
    initial_step: Any


class APGD(Attack):
    """Auto-PGD: PGD with momentum and a step size that halves when progress stalls.

    From the random start, each step moves along the gradient (sign for L-inf,
    normalised for L2, a sparse sign step for L1) with momentum 0.75. At the
    paper's checkpoints, an example's step size halves, and it restarts from
    its best point, when fewer than `rho` of the steps since the last
    checkpoint raised the loss, or when neither the step size nor the best
    loss changed since then. Per example, the first adversarial point found is
    kept; where none is, the point of highest loss. Restarts run on the
    examples still robust.

    Args (to `generate` / `generate_np`):
        eps: radius of the ball (default 0.3).
        nb_iter: steps per restart (default 100).
        norm: np.inf (default), 2 or 1; `ord` is an alias.
        loss: "ce" (cross-entropy, default) or "dlr" (Difference of Logits
            Ratio, invariant to the logits' scale). With `y_target`, the
            targeted versions (DLR-T needs 4 classes or more).
        nb_restarts: runs from new random starts on the examples still
            robust (default 1).
        rho: the share of loss increases a window must reach (default 0.75).
        eot_iter: gradients averaged per step, for randomized models
            (Expectation over Transformation; default 1).
        large_reps: L1 only: AutoAttack's schedule of 3, 2, then 1 times eps.
        y, y_target, targeted: labels as in `FastGradientMethod`.
        clip_min, clip_max: input domain bounds.
        seed: makes the random starts reproducible.

    Example:
        >>> apgd = APGD(keras_model)
        >>> x_adv = apgd.generate_np(x, y=y, eps=8 / 255, loss="dlr", clip_min=0., clip_max=1.)
    """

    def __init__(self, model):
        super().__init__(model)
        self._iterate = self._compiled(self._iterate_fn)

    shared_params: ClassVar[tuple[str, ...]] = ("eps", "norm", *TARGETABLE, *DOMAIN, "seed")

    def parse_params(
        self, nb_iter=100, loss="ce", nb_restarts=1, rho=0.75, eot_iter=1, large_reps=False
    ) -> dict[str, Any]:
        return dict(
            nb_iter=int(_checks.check_number("nb_iter", nb_iter, low=1, integer=True)),
            loss=_checks.check_choice("loss", loss, ("ce", "dlr")),
            nb_restarts=int(_checks.check_number("nb_restarts", nb_restarts, low=1, integer=True)),
            rho=float(_checks.check_number("rho", rho, low=0, high=1)),
            eot_iter=int(_checks.check_number("eot_iter", eot_iter, low=1, integer=True)),
            large_reps=bool(large_reps),
        )

    # -- the attack ---------------------------------------------------------------
    def _generate(self, x, labels, targeted, *, eps, loss, seed, **options):
        if eps == 0:
            return x
        true = labels
        if targeted:
            true = self.model.predict_classes(x)
            self._count(len(x))
            refuse_true_class_targets(backend.to_numpy(labels), backend.to_numpy(true))
        loss_labels = (
            ops.stack([ops.cast(true, "int64"), ops.cast(labels, "int64")], axis=1)
            if targeted and loss == "dlr"
            else labels
        )
        plan = self._plan(x, eps, self._loss(loss, targeted), targeted, **options)
        return self._restarts(_Problem(x, labels, loss_labels), plan, self._seed_pair(seed))[0]

    @staticmethod
    def _plan(x, eps, loss_fn, targeted, *, norm, clip_min, clip_max, eot_iter, **budget) -> _Plan:
        rule = _Rule(norm, loss_fn, targeted, eot_iter)
        return _Plan(rule, eps, utils.bounds_as_tensors(x.dtype, clip_min, clip_max), **budget)

    def _loss(self, name: str, targeted: bool):
        if name == "dlr":
            needed = 4 if targeted else 3
            if self.model.nb_classes < needed:
                raise ValueError(
                    f"loss='dlr' needs {needed} classes or more"
                    f"{' when targeted' if targeted else ''}; the model has "
                    f"{self.model.nb_classes}. Use loss='ce'."
                )
            return losses.targeted_dlr_loss if targeted else losses.dlr_loss
        return _negative_cross_entropy if targeted else losses.cross_entropy

    def _restarts(self, problem: _Problem, plan: _Plan, seed_pair):
        """Runs restarts on the examples still robust.

        Returns:
            (x_adv, robust): the adversarial examples, or the points of highest
            loss where none was found; and which examples stayed robust.
        """
        robust = np.ones(len(problem.x), bool)

        def restart(index, rows):
            return self._run(problem.rows(rows), plan, seed_pair + [1, index])

        return on_survivors(problem.x, robust, range(plan.nb_restarts), restart), robust

    def _run(self, problem: _Problem, plan: _Plan, seed_pair):
        """One restart: (best adversarial or highest-loss points, still robust)."""
        x, (low, high), eps = problem.x, plan.bounds, plan.eps
        if plan.rule.norm == 1 and plan.large_reps:
            schedule = [
                (eps * f, max(math.ceil(share * plan.nb_iter), 1)) for f, share in _L1_SCHEDULE[:-1]
            ]
            schedule.append((eps, plan.nb_iter - sum(n for _, n in schedule)))
            start = x + utils.project_l1_box(
                self._noise(x, 1, seed_pair), eps * 3, low - x, high - x
            )
            for current, steps in schedule:
                start = x + utils.project_l1_box(start - x, current, low - x, high - x)
                stage = plan._replace(eps=current, nb_iter=max(steps, 1))
                start, x_adv, robust = self._single_run(problem, stage, seed_pair, start)
            return ops.where(utils.per_example(robust, x), start, x_adv), robust
        best, x_adv, robust = self._single_run(problem, plan, seed_pair, None)
        return ops.where(utils.per_example(robust, x), best, x_adv), robust

    def _noise(self, x, norm, seed_pair):
        seed_pair = backend.seed(seed_pair)
        if norm == np.inf:
            t = backend.uniform(ops.shape(x), seed_pair, -1.0, 1.0, x.dtype)
            scale = ops.max(ops.abs(utils.flatten(t)), axis=1)
        else:
            t = backend.normal(ops.shape(x), seed_pair, x.dtype)
            if norm == 1:
                return t
            scale = utils.lp_norm(t, 2)
        return t / utils.per_example(scale + 1e-12, x)

    def _single_run(self, problem: _Problem, plan: _Plan, seed_pair, start):
        """Algorithm 1 of the paper on one batch, from `start` (None: a random start).

        Returns:
            (x_best, x_adv, robust): the highest-loss points, the adversarial
            points found, and which examples no step made adversarial.
        """
        x, (low, high), rule, nb_iter = problem.x, plan.bounds, plan.rule, plan.nb_iter
        norm, eot_iter = rule.norm, rule.eot_iter
        eps_t = ops.cast(plan.eps, x.dtype)
        if start is None:
            noise = self._noise(x, norm, seed_pair)
            start = (
                x + utils.project_l1_box(noise, eps_t, low - x, high - x)
                if norm == 1
                else utils.clip(x + eps_t * noise, low, high)
            )
        loss, grad, logits = self._evaluate(start, problem.loss_labels, rule.loss_fn, eot_iter)
        robust = ~self._succeeded(logits, problem.labels, rule.targeted)
        factor = _STEP_FACTOR[norm]
        features = int(np.prod(x.shape[1:]))
        batch = len(x)
        state = {
            **dict.fromkeys(("x_adv", "x_old", "x_best", "x_found"), start),
            **dict.fromkeys(("grad", "grad_best"), grad),
            **dict.fromkeys(("loss_best", "previous", "last_best"), loss),
            "robust": robust,
            "increases": ops.zeros_like(loss),
            "step": factor * eps_t * ops.ones((batch,), x.dtype),
            "reduced": ops.ones((batch,), "bool"),
            # L1: the sparsity of the step, and that of the best point at the last check
            "sparsity": ops.full((batch,), 0.2, x.dtype),
            "last_sparsity": ops.full((batch,), float(features), x.dtype),
        }
        schedule = np.zeros(nb_iter)
        ends = np.cumsum(checkpoint_lengths(nb_iter, norm))
        schedule[ends[ends <= nb_iter] - 1] = np.diff(np.r_[0, ends])[ends <= nb_iter]
        numbers = _Numbers(
            eps_t,
            low,
            high,
            ops.convert_to_tensor(schedule, x.dtype),
            ops.convert_to_tensor(plan.rho, x.dtype),
            factor * eps_t,
        )
        state = self._iterate(state, problem, numbers, rule)
        self._count(len(x), forward=(nb_iter + 1) * eot_iter, backward=(nb_iter + 1) * eot_iter)
        return state["x_best"], state["x_found"], state["robust"]

    def _evaluate(self, x_adv, loss_labels, loss_fn, eot_iter):
        """Per-example loss and its gradient, averaged over `eot_iter` calls."""
        total_loss, total_grad = 0.0, 0.0
        for _ in range(eot_iter):
            loss, grad, logits = self.model.loss_gradient(x_adv, loss_labels, loss_fn)
            total_loss, total_grad = total_loss + loss, total_grad + grad
        return (ops.cast(total_loss, x_adv.dtype) / eot_iter, total_grad / eot_iter, logits)

    @staticmethod
    def _succeeded(logits, labels, targeted):
        predicted = ops.cast(ops.argmax(logits, axis=-1), labels.dtype)
        return ops.equal(predicted, labels) if targeted else ops.not_equal(predicted, labels)

    # -- compiled pieces ----------------------------------------------------------------
    @staticmethod
    def _project(x, point, numbers: _Numbers, norm):
        eps, low, high = numbers.eps, numbers.low, numbers.high
        if norm == 1:
            return x + utils.project_l1_box(point - x, eps, low - x, high - x)
        return utils.clip(x + utils.clip_eta(point - x, norm, eps), low, high)

    def _ascend(self, x, state, numbers: _Numbers, norm):
        """The plain step z of the paper, projected."""
        x_adv, grad, step = state["x_adv"], state["grad"], utils.per_example(state["step"], x)
        if norm == 1:
            flat = utils.flatten(ops.abs(grad))
            features = flat.shape[1]
            ranked = ops.sort(flat, axis=1)
            place = ops.clip(ops.cast((1 - state["sparsity"]) * features, "int32"), 0, features - 1)
            threshold = utils.per_example(utils.take_rows(ranked, place), x)
            direction = ops.sign(grad) * ops.cast(ops.abs(grad) >= threshold, x.dtype)
            count = ops.sum(ops.abs(utils.flatten(direction)), axis=1)
            moved = x_adv + step * direction / utils.per_example(count + 1e-10, x)
            return self._project(x, moved, numbers, norm)
        direction = ops.sign(grad) if norm == np.inf else utils.optimize_linear(grad, 1.0, 2)
        return self._project(x, x_adv + step * direction, numbers, norm)

    def _iterate_fn(self, state, problem: _Problem, numbers: _Numbers, rule: _Rule):
        """Every step of one run, in one compiled loop, with the checkpoints."""
        x = problem.x

        def step(i, state):
            momentum = ops.where(i > 0, _MOMENTUM, 1.0)
            state = self._step_fn(state, problem, numbers, ops.cast(momentum, x.dtype), rule)
            length = numbers.schedule[i]
            # the checkpoint is cheap next to a gradient: computed at every step, kept
            # at the checkpoints, so that one loop body serves every backend
            checked = self._check_fn(state, x, length, numbers, rule.norm)
            return {k: ops.where(length > 0, checked[k], state[k]) for k in state}

        return ops.fori_loop(0, ops.shape(numbers.schedule)[0], step, state)

    def _step_fn(self, state, problem: _Problem, numbers: _Numbers, momentum, rule: _Rule):
        x, norm = problem.x, rule.norm
        state = dict(state)
        z = self._ascend(x, state, numbers, norm)
        if norm == 1:  # the L1 version takes the plain step
            moved = z
        else:
            x_adv = state["x_adv"]
            heavy = x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - state["x_old"])
            moved = self._project(x, heavy, numbers, norm)
        loss, grad, logits = self._evaluate(moved, problem.loss_labels, rule.loss_fn, rule.eot_iter)
        finite = ops.isfinite(loss) & utils.finite_rows(grad) & utils.finite_rows(moved)
        keep = utils.per_example(finite, x)
        moved, grad = ops.where(keep, moved, state["x_adv"]), ops.where(keep, grad, state["grad"])
        loss = ops.where(finite, loss, state["previous"])
        success = self._succeeded(logits, problem.labels, rule.targeted) & finite
        state["x_found"] = ops.where(
            utils.per_example(success & state["robust"], x), moved, state["x_found"]
        )
        state["robust"] = state["robust"] & ~success
        better = loss > state["loss_best"]
        state["x_best"] = ops.where(utils.per_example(better, x), moved, state["x_best"])
        state["grad_best"] = ops.where(utils.per_example(better, x), grad, state["grad_best"])
        state["loss_best"] = ops.maximum(loss, state["loss_best"])
        state["increases"] += ops.cast(loss > state["previous"], loss.dtype)
        state["previous"] = loss
        state["x_old"], state["x_adv"], state["grad"] = state["x_adv"], moved, grad
        return state

    def _check_fn(self, state, x, length, numbers: _Numbers, norm):
        """A checkpoint: where progress stalled, halve the step (L1: adapt the step and
        the sparsity) and go back to the best point."""
        state, rho, initial_step = dict(state), numbers.rho, numbers.initial_step
        if norm == 1:
            changed = ops.cast(ops.not_equal(utils.flatten(state["x_best"] - x), 0), x.dtype)
            sparsity_now = ops.sum(changed, axis=1)
            features = float(changed.shape[1])
            restart = sparsity_now / state["last_sparsity"] < 0.95
            state["sparsity"] = sparsity_now / features / _L1_SPARSITY_SHRINK
            step = ops.where(restart, initial_step, state["step"] / _L1_STEP_DECAY)
            state["step"] = utils.clip(step, initial_step * _L1_MIN_STEP, initial_step)
            state["last_sparsity"] = sparsity_now
        else:
            oscillating = state["increases"] <= length * rho
            stuck = ~state["reduced"] & (state["last_best"] >= state["loss_best"])
            restart = oscillating | stuck
            state["reduced"] = restart
            state["last_best"] = state["loss_best"]
            state["step"] = ops.where(restart, state["step"] / 2, state["step"])
        back = utils.per_example(restart, x)
        state["x_adv"] = ops.where(back, state["x_best"], state["x_adv"])
        state["grad"] = ops.where(back, state["grad_best"], state["grad"])
        state["increases"] = ops.zeros_like(state["increases"])
        return state


class APGDT(APGD):
    """APGD-T: APGD on the targeted DLR loss towards each of the top other classes.

    For k = 2 .. `n_target_classes` + 1, the examples still robust are
    attacked towards their k-th most likely class (by the clean logits); an
    example counts as broken as soon as it is misclassified (an untargeted
    success), as in AutoAttack, whose standard version uses 9 targets.

    Args (to `generate` / `generate_np`):
        n_target_classes: how many target classes to try (default 9; at most
            the number of classes minus one).
        eps, nb_iter, norm, nb_restarts, rho, eot_iter, large_reps, clip_min,
        clip_max, seed: as for `APGD`.
        y: the true labels (default: the model's predictions).

    Example:
        >>> x_adv = APGDT(keras_model).generate_np(x, y=y, eps=0.1, clip_min=0., clip_max=1.)
    """

    shared_params = ("eps", "norm", "y", *DOMAIN, "seed")
    fixed = dict(loss="dlr")

    def parse_params(self, n_target_classes=9, **params) -> dict[str, Any]:
        parsed = super().parse_params(**params)
        parsed["n_target_classes"] = int(
            _checks.check_number("n_target_classes", n_target_classes, low=1, integer=True)
        )
        return parsed

    def _generate(self, x, labels, targeted, *, eps, loss, seed, n_target_classes, **options):
        if eps == 0:
            return x
        plan = self._plan(x, eps, self._loss(loss, targeted=True), False, **options)
        logits = self.model.predict_logits(x)
        self._count(len(x))
        ranked = np.argsort(-backend.to_numpy(logits), axis=-1, kind="stable")
        robust = ranked[:, 0] == backend.to_numpy(labels)
        seed_pair = self._seed_pair(seed)

        def towards(k, rows):
            true = ops.take(labels, rows, axis=0)
            pair = ops.stack(
                [ops.cast(true, "int64"), ops.convert_to_tensor(ranked[rows, k], "int64")], 1
            )
            problem = _Problem(ops.take(x, rows, axis=0), true, pair)
            return self._restarts(problem, plan, seed_pair + [0, _TARGET_SEED_STRIDE * k])

        targets = range(1, min(n_target_classes, self.model.nb_classes - 1) + 1)
        return on_survivors(x, robust, targets, towards)
