"""`AdversarialModel`: adversarial training through `compile` / `fit`."""

from __future__ import annotations

from typing import Any, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from advlib import _checks
from advlib.attacks import FastGradientMethod, ProjectedGradientDescent
from advlib.attacks.gradient import GradientAttack
from advlib.models.keras import KerasModelWrapper
from advlib.training import recipes

_ATTACKS = {"fgsm": FastGradientMethod, "pgd": ProjectedGradientDescent}
# keys of attack_params that the in-graph crafting understands
_CRAFT_KEYS = ("eps", "eps_iter", "nb_iter", "norm", "clip_min", "clip_max", "rand_init",
               "rand_minmax", "decay_factor", "loss_fn")


def kl_divergence(labels, logits):
    """KL(labels || softmax(logits)) per example; `labels` is a distribution."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    log_labels = tf.math.log(tf.maximum(labels, 1e-12))
    return tf.reduce_sum(labels * (log_labels - tf.nn.log_softmax(logits)), axis=-1)


class AdversarialModel(keras.Model):
    """Wraps a Keras classifier so that `fit` trains it on adversarial examples.

    Each training step crafts adversarial examples against the current
    weights inside the compiled step (no NumPy round trip), then minimises
    `(1 - adv_ratio) * CE(clean) + adv_ratio * CE(adversarial)`, or TRADES's
    `CE(clean) + beta * KL(clean || adversarial)`. Attacks run with the model
    in inference mode; the loss with it in training mode.

    Args:
        model: any Keras classifier. Its logits are found as by
            `KerasModelWrapper`, so a final softmax is fine.
        attack: a gradient attack class (`FastGradientMethod`,
            `BasicIterativeMethod`, `ProjectedGradientDescent`,
            `MomentumIterativeMethod`).
        attack_params: its parameters (cleverhans's names), e.g.
            `dict(eps=0.1, eps_iter=0.01, nb_iter=10, rand_init=True,
            clip_min=0.0, clip_max=1.0)`.
        adv_ratio: the weight of the adversarial loss, in [0, 1].
        trades_beta: if set, the TRADES objective with this beta, the attack
            maximising the KL divergence from the clean prediction.
        seed: seeds the random starts (with the step number and replica).

    Example:
        >>> robust = AdversarialModel(model, attack=ProjectedGradientDescent,
        ...     attack_params=dict(eps=0.1, eps_iter=0.01, nb_iter=10, rand_init=True,
        ...                        clip_min=0.0, clip_max=1.0), adv_ratio=1.0)
        >>> robust.compile(optimizer="adam")
        >>> robust.fit(x_train, y_train, epochs=5, validation_data=(x_test, y_test))
        >>> robust.model.save("robust.keras")     # a plain Keras model
    """

    def __init__(self, model: keras.Model, attack=ProjectedGradientDescent,
                 attack_params: Optional[Dict[str, Any]] = None, adv_ratio: float = 1.0,
                 trades_beta: Optional[float] = None, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
        if not (isinstance(attack, type) and issubclass(attack, GradientAttack)):
            raise TypeError(f"attack must be a gradient attack class (FastGradientMethod, "
                            f"BasicIterativeMethod, ProjectedGradientDescent, "
                            f"MomentumIterativeMethod), got {attack!r}.")
        _checks.check_number("adv_ratio", adv_ratio, low=0, high=1)
        _checks.check_number("trades_beta", trades_beta, low=0, allow_none=True)
        _checks.check_number("seed", seed, low=0, integer=True)
        self.model = model
        self.wrapper = KerasModelWrapper(model)
        self.attack = attack(self.wrapper)
        params = dict(attack_params or {})
        for label_key in ("y", "y_target", "targeted"):
            if params.get(label_key):
                raise ValueError(f"attack_params must not hold {label_key!r}: training attacks "
                                 "are untargeted and use the batch's own labels.")
        parsed = self.attack._parse(params)
        self.craft_params = {k: parsed[k] for k in _CRAFT_KEYS if k in parsed}
        eps, low, high = parsed["eps"], parsed.get("clip_min"), parsed.get("clip_max")
        if low is not None and high is not None and eps > high - low:
            raise ValueError(f"eps={eps} is larger than the data range "
                             f"[clip_min, clip_max] = [{low}, {high}]; is eps on the scale "
                             "of the inputs?")
        self.adv_ratio = float(adv_ratio)
        self.trades_beta = trades_beta
        self.seed = int(seed)
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "clean_loss", "adv_loss")}
        self.trackers.update({name: keras.metrics.SparseCategoricalAccuracy(name=name)
                              for name in ("clean_accuracy", "adv_accuracy")})

    @classmethod
    def from_recipe(cls, recipe, model: keras.Model, eps: float, norm=np.inf,
                    clip_min: Optional[float] = 0.0, clip_max: Optional[float] = 1.0,
                    seed: int = 0, **overrides) -> "AdversarialModel":
        """An `AdversarialModel` for a named recipe: "goodfellow", "madry",
        "fast" or "trades" (see `advlib.training.RECIPES`); `overrides`
        change the recipe's fields, e.g. `nb_iter=10` or `trades_beta=1.0`."""
        recipe = recipes.get(recipe, **overrides)
        params = dict(recipe.attack_params(eps, norm), clip_min=clip_min, clip_max=clip_max)
        if recipe.trades_beta is not None:
            params["loss_fn"] = kl_divergence
        if recipe.attack == "fgsm":  # FGSM-based recipes: one step, random start allowed
            attack = ProjectedGradientDescent
        else:
            attack = _ATTACKS[recipe.attack]
        return cls(model, attack=attack, attack_params=params, adv_ratio=recipe.adv_ratio,
                   trades_beta=recipe.trades_beta, seed=seed)

    # -- Keras plumbing --------------------------------------------------------
    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Compiles with `optimizer`; the loss is the recipe's, on logits.

        Raises:
            ValueError: if a `loss` or `metrics` is given: the model logs
                loss, clean and adversarial loss and accuracy itself.
        """
        if loss is not None:
            raise ValueError(f"AdversarialModel defines its own loss (cross-entropy on logits, "
                             f"mixed by its recipe); compile it without loss=, got {loss!r}.")
        if metrics:
            raise ValueError("AdversarialModel logs clean_accuracy and adv_accuracy (and their "
                             f"losses) itself; compile it without metrics=, got {metrics!r}.")
        super().compile(optimizer=optimizer, **kwargs)

    def fit(self, x=None, y=None, **kwargs):
        if not self.compiled:
            raise ValueError("AdversarialModel.fit needs a compiled model: call "
                             "compile(optimizer=...) first.")
        if isinstance(x, np.ndarray) and x.size:
            spread = float(x.max() - x.min())
            if self.craft_params["eps"] > spread:
                raise ValueError(f"eps={self.craft_params['eps']} is larger than the range of "
                                 f"the training data ({spread:.4g}); is eps on the data's scale?")
        return super().fit(x, y, **kwargs)

    # -- the steps ---------------------------------------------------------------
    def _labels(self, y):
        if y is None:
            raise ValueError("AdversarialModel needs labels: fit and evaluate it on (x, y) "
                             "pairs, since the training attack moves away from the true class.")
        y = tf.convert_to_tensor(y)
        if y.shape.rank == 2 and y.shape[-1] not in (None, 1):
            return tf.argmax(y, axis=-1, output_type=tf.int64)  # one-hot
        return tf.cast(tf.reshape(y, [-1]), tf.int64)

    def _seed_pair(self, salt):
        replica = tf.distribute.get_replica_context()
        replica_id = 0 if replica is None else replica.replica_id_in_sync_group
        step = tf.cast(self.optimizer.iterations, tf.int64)
        return tf.stack([tf.constant(self.seed, tf.int64) * 1000 + salt,
                         step * 64 + tf.cast(replica_id, tf.int64)])

    def _objectives(self, x, labels, sample_weight, training, salt):
        """Per-example objective, with the clean and adversarial parts."""
        targets = labels
        if self.trades_beta is not None:
            targets = tf.stop_gradient(tf.nn.softmax(tf.cast(self.wrapper.get_logits(x),
                                                             tf.float32)))
        x_adv = self.attack.perturb(x, targets, seed_pair=self._seed_pair(salt),
                                    **self.craft_params)
        adv_logits = tf.cast(self.wrapper.get_logits(x_adv, training=training), tf.float32)
        clean_logits = tf.cast(self.wrapper.get_logits(x, training=training), tf.float32)
        clean = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, clean_logits)
        adversarial = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, adv_logits)
        if self.trades_beta is not None:
            robust_term = kl_divergence(tf.nn.softmax(clean_logits), adv_logits)
            objective = clean + self.trades_beta * robust_term
        else:
            objective = (1 - self.adv_ratio) * clean + self.adv_ratio * adversarial
        return objective, clean, adversarial, clean_logits, adv_logits

    def _reduce(self, values, sample_weight):
        if sample_weight is not None:
            values = values * tf.cast(tf.reshape(sample_weight, [-1]), values.dtype)
        return tf.reduce_mean(values)  # Keras's "sum over batch size"

    def _update_trackers(self, labels, sample_weight, objective, clean, adversarial,
                         clean_logits, adv_logits):
        self.trackers["loss"].update_state(objective)
        self.trackers["clean_loss"].update_state(self._reduce(clean, sample_weight))
        self.trackers["adv_loss"].update_state(self._reduce(adversarial, sample_weight))
        self.trackers["clean_accuracy"].update_state(labels, clean_logits, sample_weight)
        self.trackers["adv_accuracy"].update_state(labels, adv_logits, sample_weight)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._labels(y)
        with tf.GradientTape() as tape:
            objective, clean, adversarial, clean_logits, adv_logits = self._objectives(
                x, labels, sample_weight, training=True, salt=1)
            loss = self._reduce(objective, sample_weight)
            if self.model.losses:
                loss = loss + tf.add_n(self.model.losses)
            # each replica averages its own share; gradients are summed across replicas
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / replicas)
        variables = self.model.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return self._update_trackers(labels, sample_weight, loss, clean, adversarial,
                                     clean_logits, adv_logits)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._labels(y)
        objective, clean, adversarial, clean_logits, adv_logits = self._objectives(
            x, labels, sample_weight, training=False, salt=2)
        return self._update_trackers(labels, sample_weight, self._reduce(objective,
                                                                         sample_weight),
                                     clean, adversarial, clean_logits, adv_logits)
