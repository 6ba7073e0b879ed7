"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016): a minimum-norm attack by
repeated steps onto the nearest linearised decision boundary."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from advlib import _checks
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, Attack

_OWN_CLASS = 1e10  # f_y - f_y is no boundary
_PAST_BOUNDARY = 1e-4  # each step lands this far beyond the linearised boundary


class DeepFool(Attack):
    """DeepFool: from the input, step onto the nearest linearised boundary among
    the `nb_candidate` most likely classes, until the class changes.

    At each step, with f_k - f_y the logit differences of the candidates and
    w_k their gradients, the nearest boundary in `norm` is
    k* = argmin |f_k - f_y| / ||w_k||_dual, and the step is the smallest one that
    crosses its linearisation (L2: along w; L-inf: along sign(w)). The steps
    accumulate into r, and the adversarial example is x + (1 + overshoot) r,
    clipped to the input domain. Untargeted only. Each step runs only on the
    examples not yet adversarial, as one forward and one backward pass over a
    copy of each example per candidate (every candidate's gradient at once).

    Args (to `generate` / `generate_np`), cleverhans 3's names and defaults:
        nb_candidate (10): the most likely classes (by the clean logits) whose
            boundaries are considered, the label's included (at most all classes).
        overshoot (0.02): the accumulated step is scaled by 1 + overshoot.
        max_iter (50): steps at most.
        norm (2): 2 or np.inf (`ord` is an alias).
        y: true labels (default: the model's predictions).
        clip_min (0), clip_max (1): the input domain.

    Example:
        >>> result = DeepFool(model).run(x, y)
        >>> result.median_norm(2), result.success_at([0.5, 1.0, 2.0])
    """

    threat_params = ("norm", "clip_min", "clip_max")

    def __init__(self, model):
        super().__init__(model)
        self._step = tf.function(self._step_fn, reduce_retracing=True)

    shared_params = ("norm", "y", *DOMAIN)
    norms = (2, np.inf)
    defaults = dict(clip_min=0.0, clip_max=1.0)

    def parse_params(self, nb_candidate=10, overshoot=0.02, max_iter=50) -> dict[str, Any]:
        return dict(
            nb_candidate=int(
                _checks.check_number("nb_candidate", nb_candidate, low=2, integer=True)
            ),
            overshoot=float(_checks.check_number("overshoot", overshoot, low=0)),
            max_iter=int(_checks.check_number("max_iter", max_iter, low=1, integer=True)),
        )

    def _generate(
        self, x, labels, targeted, *, nb_candidate, overshoot, max_iter, norm, clip_min, clip_max
    ):
        del targeted  # untargeted only: parse refuses y_target
        nb_candidate = min(nb_candidate, self.model.nb_classes)
        low, high = utils.bounds_as_tensors(x.dtype, clip_min, clip_max)
        candidates = self._candidates(x, labels, nb_candidate)
        overshoot = tf.constant(overshoot, x.dtype)
        total = tf.zeros_like(x)
        active = np.arange(len(x))
        for _ in range(max_iter):
            # only the examples still classified as their label take a step
            rows = tf.constant(active[:, None])
            pick = lambda t: tf.gather_nd(t, rows)
            updated, still = self._step(
                pick(x), pick(total), pick(labels), pick(candidates), low, high, overshoot, norm
            )
            self._count(len(active), forward=nb_candidate, backward=nb_candidate)
            still = still.numpy()
            total = tf.tensor_scatter_nd_update(total, rows, updated)
            active = active[still]
            if not active.size:
                break
        return tf.clip_by_value(x + (1 + overshoot) * total, low, high)

    def _candidates(self, x, labels, count):
        """Per example, the label first, then the `count` - 1 most likely other classes."""
        self._count(len(x))
        logits = tf.cast(self.model.predict_logits(x), tf.float32)
        own = tf.one_hot(labels, tf.shape(logits)[1], on_value=True, off_value=False)
        others = tf.math.top_k(tf.where(own, -np.inf, logits), k=count - 1).indices
        return tf.concat([tf.cast(labels[:, None], tf.int32), others], axis=1)

    def _step_fn(self, x, total, labels, candidates, low, high, overshoot, norm):
        """One DeepFool step for a batch of examples: those still classified as their
        label at x + (1 + overshoot) total move to their nearest linearised boundary.
        Returns the new accumulated steps and which examples moved."""
        x_adv = tf.clip_by_value(x + (1 + overshoot) * total, low, high)
        batch, count = tf.shape(x)[0], tf.shape(candidates)[1]
        # one copy of each example per candidate: one backward pass of the
        # batch x candidates copies gives every candidate's gradient
        copies = tf.repeat(x_adv, count, axis=0)
        with tf.GradientTape() as tape:
            tape.watch(copies)
            all_logits = tf.cast(self.model.get_logits(copies), x.dtype)
            picked = tf.reshape(
                tf.gather(all_logits, tf.reshape(candidates, [-1, 1]), batch_dims=1), [batch, count]
            )
            own = tf.gather(all_logits, tf.repeat(labels, count), batch_dims=1)
            difference_copies = tf.reshape(picked, [-1]) - own
        gradient = tape.gradient(
            difference_copies, copies, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        logits = all_logits[::count]
        difference = picked - tf.reshape(own, [batch, count])
        flat_gradient = tf.reshape(gradient, [batch, count, -1])
        is_own = tf.range(tf.shape(candidates)[1])[None, :] == 0
        difference = tf.where(is_own, tf.constant(_OWN_CLASS, x.dtype), difference)
        _, _, f, w = utils.nearest_linear_boundary(difference, flat_gradient, norm)
        size = tf.abs(f) + _PAST_BOUNDARY
        if norm == np.inf:
            step = utils.per_example(
                size / (tf.reduce_sum(tf.abs(w), axis=1) + 1e-12), w
            ) * tf.sign(w)
        else:
            step = utils.per_example(size / (tf.reduce_sum(tf.square(w), axis=1) + 1e-12), w) * w
        moving = tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
        total = tf.where(utils.per_example(moving, x), total + tf.reshape(step, tf.shape(x)), total)
        return total, moving
