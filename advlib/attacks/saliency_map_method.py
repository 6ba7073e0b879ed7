"""Jacobian-based Saliency Map Attack (Papernot et al. 2016)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, Attack, random_targets, refuse_true_class_targets

# Elements of one (batch, chunk, features) block of pair scores: bounds the
# memory of the pair search at a few hundred MB whatever the input size.
_PAIR_BLOCK = 2**22


class SaliencyMapMethod(Attack):
    """JSMA: greedily saturates the pair of features with the best saliency.

    At each step, for target t and the model's class probabilities F (the
    paper's choice; logits Z with `use_logits=True`, the variant of
    cleverhans 3), with alpha = dF_t/dx and beta = sum_{j != t} dF_j/dx, the pair (p, q) maximising
    -(alpha_p + alpha_q)(beta_p + beta_q) subject to alpha_p + alpha_q > 0 and
    beta_p + beta_q < 0 (signs reversed when decreasing) moves by
    theta * (clip_max - clip_min). Features that reach the bound leave the
    search domain. An example stops when it is classified as its target,
    when changing another pair would exceed gamma * features, or when no pair
    satisfies the sign conditions.

    With probabilities, which sum to one, beta = -alpha exactly, so the best
    pair is the two largest alphas (one backward pass, O(features)). With
    logits the pair search runs in blocks, so memory grows as batch x
    features x block, never as batch x features^2.

    Args (to `generate` / `generate_np`):
        theta: change per step, as a fraction of the range; > 0 increases
            features, < 0 decreases them (default 1.0).
        gamma: the largest fraction of features changed, in (0, 1] (default 1.0).
        clip_min, clip_max: the input domain (default [0, 1]).
        y_target: targets. Without it, a random class other than the true one.
        y: the true classes, used to draw random targets (default: the model's
            predictions).
        seed: makes the random targets reproducible.
        use_logits: take the saliency map from logits instead of
            probabilities (default False; on a Fashion-MNIST CNN at gamma=0.1
            probabilities gave 92% targeted success, logits 79%).

    Example:
        >>> jsma = SaliencyMapMethod(keras_model)
        >>> x_adv = jsma.generate_np(x, theta=1.0, gamma=0.1, y_target=targets)
    """

    def __init__(self, model):
        super().__init__(model)
        self._step = self._compiled(self._step_fn)

    shared_params = (*DOMAIN, "y", "y_target", "seed")
    defaults = dict(clip_min=0.0, clip_max=1.0)
    needs_bounds = "JSMA, which moves features to the bounds of the input domain"

    def parse_params(self, theta=1.0, gamma=1.0, use_logits=False) -> dict[str, Any]:
        _checks.check_number("theta", theta, low=-1, high=1)
        if theta == 0:
            raise ValueError(
                "theta must be nonzero (positive increases features, negative "
                "decreases them), got 0."
            )
        gamma = _checks.check_number("gamma", gamma, low=0, high=1, low_open=True)
        return dict(theta=theta, gamma=gamma, use_logits=bool(use_logits))

    def _whole_batch_params(self, x, params):
        """Draws the random targets for all of `x` at once, so batching cannot change them."""
        if params.get("y_target") is not None or len(x) == 0:
            return params
        self.parse(**params)
        true_classes = params.get("y")
        if true_classes is None:
            self.model.check_output(ops.convert_to_tensor(x[:1]))
            true_classes = np.concatenate(
                [
                    backend.to_numpy(self.model.predict_classes(x[i : i + 512]))
                    for i in range(0, len(x), 512)
                ]
            )
            self._count(len(x))
        true_classes = _checks.check_labels("y", true_classes, len(x), self.model.nb_classes)
        targets = random_targets(true_classes, self.model.nb_classes, params.get("seed"))
        return dict(params, y=None, y_target=targets)

    def _generate(self, x, labels, targeted, *, theta, gamma, clip_min, clip_max, seed, use_logits):
        nb_classes = self.model.nb_classes
        predicted = backend.to_numpy(self.model.predict_classes(x))
        self._count(len(x))
        if targeted:
            refuse_true_class_targets(backend.to_numpy(labels), predicted)
            targets = labels
        else:
            targets = ops.convert_to_tensor(
                random_targets(backend.to_numpy(labels), nb_classes, seed)
            )
        shape = x.shape
        flat = utils.flatten(x)
        features = int(flat.shape[1])
        budget = int(math.floor(gamma * features))
        increase = theta > 0
        dtype = x.dtype
        low, high = ops.convert_to_tensor(clip_min, dtype), ops.convert_to_tensor(clip_max, dtype)
        domain = flat < high if increase else flat > low
        changed = ops.zeros_like(domain)
        step = ops.convert_to_tensor(theta * (clip_max - clip_min), dtype)
        # every step changes a feature by |theta| of the range, or saturates it
        max_steps = budget * math.ceil(1 / abs(theta)) + 1
        budget_t = ops.convert_to_tensor(budget)
        # what fixes a trace: the example shape, the direction, the scores, the pair block
        rule = (
            tuple(int(d) for d in shape[1:]),
            increase,
            use_logits,
            pair_block(len(x), features),
        )
        for _ in range(max_steps):
            flat, domain, changed, any_active = self._step(
                flat, domain, changed, targets, step, low, high, budget_t, rule
            )
            self._count(len(x), forward=2 if use_logits else 1, backward=2 if use_logits else 1)
            if not bool(any_active):
                break
        return ops.reshape(flat, shape)

    def _step_fn(self, flat, domain, changed, targets, step, low, high, budget, rule):
        shape, increase, use_logits, block = rule
        features = flat.shape[1]
        target_mask = ops.one_hot(targets, self.model.nb_classes, dtype="float32")

        def score(flat, of_target):
            logits = ops.cast(self.model.get_logits(ops.reshape(flat, (-1, *shape))), "float32")
            scores = logits if use_logits else ops.softmax(logits)
            target_score = ops.sum(scores * target_mask, axis=-1)
            return (target_score if of_target else ops.sum(scores, -1) - target_score), logits

        _, alpha, logits = backend.value_and_gradient(lambda flat: score(flat, True), flat)
        alpha = ops.cast(alpha, "float32")
        if use_logits:
            _, beta, _ = backend.value_and_gradient(lambda flat: score(flat, False), flat)
            p, q, found = best_pair(alpha, ops.cast(beta, "float32"), domain, increase, block)
        else:
            # probabilities sum to one, so beta = -alpha exactly: the sign conditions
            # reduce to alpha_p + alpha_q > 0 (< 0 when decreasing) and the score
            # (alpha_p + alpha_q)^2 peaks at the two largest (smallest) alphas
            p, q, found = best_pair_from_target_gradient(alpha, domain, increase)
        predicted = ops.cast(ops.argmax(logits, axis=-1), targets.dtype)
        pair = (ops.one_hot(p, features) + ops.one_hot(q, features)) > 0
        within_budget = ops.sum(ops.cast(changed | pair, "int32"), axis=1) <= budget
        active = (predicted != targets) & found & within_budget
        pair = pair & active[:, None]
        flat = ops.where(pair, utils.clip(flat + step, low, high), flat)
        changed = changed | pair
        domain = domain & ((flat < high) if increase else (flat > low))
        return flat, domain, changed, ops.any(active)


def _oriented(values, domain, increase):
    """Flips signs when decreasing, and sends features outside the domain to -inf."""
    values = values if increase else -values
    return ops.where(domain, values, ops.convert_to_tensor(-np.inf, values.dtype))


def best_pair_from_target_gradient(alpha, domain, increase):
    """The two admissible features with the largest (oriented) target gradient."""
    oriented = _oriented(alpha, domain, increase)
    top, index = ops.top_k(oriented, k=2)
    found = (top[:, 0] + top[:, 1] > 0) & ops.isfinite(top[:, 1])
    return index[:, 0], index[:, 1], found


def pair_block(batch: int, features: int) -> int:
    """How many first features of a pair `best_pair` scores at once, for a batch
    of `batch` examples: the score block holds at most `_PAIR_BLOCK` entries."""
    return max(1, min(features, _PAIR_BLOCK // max(1, batch * features)))


def best_pair(alpha, beta, domain, increase, block: int):
    """Per example, the admissible pair (p != q) maximising
    relu(a) * relu(-b), a = alpha_p + alpha_q, b = beta_p + beta_q (oriented):
    -a * b under the conditions a > 0, b < 0, and zero where they fail.

    Scans the first feature of the pair in blocks of `block` rows of the
    (features x features) score matrix (see `pair_block`), so memory grows as
    batch x block x features. The batch may be of any size: compiled steps
    trace it as unknown.
    """
    batch, features = ops.shape(alpha)[0], alpha.shape[1]
    alpha = _oriented(alpha, domain, increase)  # -inf outside: relu(a) = 0
    beta = beta if increase else -beta
    blocks = -(-features // block)
    padding = blocks * block - features
    alpha_rows = ops.pad(alpha, [[0, 0], [0, padding]], constant_values=-np.inf)
    beta_rows = ops.pad(beta, [[0, 0], [0, padding]])
    columns = ops.arange(features)

    def scan(i, best):
        best_score, best_p, best_q = best
        start = i * block
        rows = start + ops.arange(block)
        off_diagonal = ops.cast(rows[:, None] != columns[None, :], "float32")
        alpha_block = ops.slice(alpha_rows, (0, start), (batch, block))
        beta_block = ops.slice(beta_rows, (0, start), (batch, block))
        a = ops.relu(alpha_block[:, :, None] + alpha[:, None, :])
        b = ops.relu(-(beta_block[:, :, None] + beta[:, None, :]))
        score = ops.reshape(a * b * off_diagonal, (-1, block * features))
        index = ops.cast(ops.argmax(score, axis=1), "int32")
        value = ops.max(score, axis=1)
        better = value > best_score
        return (
            ops.where(better, value, best_score),
            ops.where(better, start + index // features, best_p),
            ops.where(better, index % features, best_q),
        )

    none = ops.zeros_like(alpha[:, 0], "int32")
    start = (ops.zeros_like(alpha[:, 0]), none, none)
    best_score, best_p, best_q = ops.fori_loop(0, blocks, scan, start)
    return best_p, best_q, best_score > 0
