"""`AdversarialModel`: adversarial training through `compile` / `fit`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from advlib import _checks, _seeding, backend
from advlib.attacks import by_name
from advlib.attacks.gradient import GradientAttack
from advlib.attacks.projected_gradient_descent import ProjectedGradientDescent
from advlib.models.keras import KerasModelWrapper
from advlib.training import recipes
from advlib.training.noise import GaussianAugmentation

# keys of attack_params that the in-graph crafting understands
_CRAFT_KEYS = (
    "eps",
    "eps_iter",
    "nb_iter",
    "norm",
    "clip_min",
    "clip_max",
    "rand_init",
    "rand_minmax",
    "decay_factor",
    "loss_fn",
    "sigma",
)
_ACCURACY_NAMES = ("accuracy", "acc")
# the radii that `radius_scale` multiplies (a ramp shrinks them together)
_RADIUS_KEYS = ("eps", "eps_iter", "rand_minmax", "sigma")


def kl_divergence(labels, logits):
    """KL(labels || softmax(logits)) per example; `labels` is a distribution."""
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "float32")
    log_labels = ops.log(ops.maximum(labels, 1e-12))
    return ops.sum(labels * (log_labels - ops.log_softmax(logits, axis=-1)), axis=-1)


class AdversarialModel(keras.Model):
    """Wraps a Keras classifier so that `fit` trains it on adversarial examples.

    Each training step crafts adversarial examples against the current
    weights inside the compiled step (no NumPy round trip), then minimises
    `(1 - adv_ratio) * L(clean) + adv_ratio * L(adversarial)`, or TRADES's
    `L(clean) + beta * KL(clean || adversarial)`. L is the loss given to
    `compile` (default: cross-entropy on the logits). Attacks run with the
    model in inference mode, on their own loss; the training loss with the
    model in training mode.

    `compile(optimizer, loss=..., metrics=[...])` takes what `keras.Model`
    takes: a loss on the model's outputs (logits or probabilities, as the
    model returns them), and metrics reported on the clean and on the
    adversarial batch (`accuracy` and `adv_accuracy`, with `val_` forms).
    Without metrics, `clean_accuracy` and `adv_accuracy` are logged.

    Args:
        model: any Keras classifier. Its logits are found as by
            `KerasModelWrapper`, so a final softmax is fine.
        attack: a gradient attack class, or its registered name
            (`FastGradientMethod`, `BasicIterativeMethod`,
            `ProjectedGradientDescent`, `MomentumIterativeMethod`); or
            `GaussianAugmentation` (`attack_params=dict(sigma=...)`), which
            trains the base classifier of randomized smoothing. Its
            "adversarial" loss and metrics are then those on noisy inputs.
        attack_params: its parameters (cleverhans's names), e.g.
            `dict(eps=0.1, eps_iter=0.01, nb_iter=10, rand_init=True,
            clip_min=0.0, clip_max=1.0)`.
        adv_ratio: the weight of the adversarial loss, in [0, 1].
        trades_beta: if set, the TRADES objective with this beta, the attack
            maximising the KL divergence from the clean prediction.
        seed: seeds the random starts (with the step number and replica).
            None: drawn as `keras.utils.set_random_seed` allows.

    Example:
        >>> robust = AdversarialModel(model, attack=ProjectedGradientDescent,
        ...     attack_params=dict(eps=0.1, eps_iter=0.01, nb_iter=10, rand_init=True,
        ...                        clip_min=0.0, clip_max=1.0), adv_ratio=1.0)
        >>> robust.compile(optimizer="adam",
        ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...     metrics=["accuracy"])
        >>> robust.fit(x_train, y_train, epochs=5, validation_data=(x_test, y_test))
        >>> robust.model.save("robust.keras")     # a plain Keras model
    """

    def __init__(
        self,
        model: keras.Model,
        attack: type | str = ProjectedGradientDescent,
        attack_params: dict[str, Any] | None = None,
        adv_ratio: float = 1.0,
        trades_beta: float | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
        attack = by_name(attack) if isinstance(attack, str) else attack
        if not (
            isinstance(attack, type) and issubclass(attack, (GradientAttack, GaussianAugmentation))
        ):
            raise TypeError(
                f"attack must be a gradient attack class or its name "
                f"(FastGradientMethod, BasicIterativeMethod, "
                f"ProjectedGradientDescent, MomentumIterativeMethod), or "
                f"GaussianAugmentation, got "
                f"{attack!r}."
            )
        _checks.check_number("adv_ratio", adv_ratio, low=0, high=1)
        _checks.check_number("trades_beta", trades_beta, low=0, allow_none=True)
        _checks.check_number(
            "seed", seed, low=0, high=_seeding.DRAWN_SEED_MAX, integer=True, allow_none=True
        )
        self.model = model
        self.wrapper = KerasModelWrapper(model)
        self.attack = attack(self.wrapper)
        params = dict(attack_params or {})
        for label_key in ("y", "y_target", "targeted"):
            if params.get(label_key):
                raise ValueError(
                    f"attack_params must not hold {label_key!r}: training attacks "
                    "are untargeted and use the batch's own labels."
                )
        parsed = self.attack.parse(**params)
        self.craft_params = {k: parsed[k] for k in _CRAFT_KEYS if k in parsed}
        eps, low, high = parsed.get("eps"), parsed.get("clip_min"), parsed.get("clip_max")
        if eps is not None and low is not None and high is not None and eps > high - low:
            raise ValueError(
                f"eps={eps} is larger than the data range "
                f"[clip_min, clip_max] = [{low}, {high}]; is eps on the scale "
                "of the inputs?"
            )
        self.adv_ratio = float(adv_ratio)
        self.trades_beta = trades_beta
        self.seed = _seeding.seed_or_draw(seed)
        # the training steps taken, which seed each step's random starts: a variable of
        # the model, so that JAX's compiled step reads and advances it as state
        self.crafting_step = keras.Variable(
            0,
            dtype="int32",
            trainable=False,
            name="crafting_step",
            aggregation="only_first_replica",
        )
        # multiplies the attack's radii; `advlib.training.EpsilonRamp` raises it to 1
        self.radius_scale = keras.Variable(
            1.0,
            dtype="float32",
            trainable=False,
            name="radius_scale",
            aggregation="only_first_replica",
        )
        self.output_loss = None
        self.trackers = {
            name: keras.metrics.Mean(name=name) for name in ("loss", "clean_loss", "adv_loss")
        }
        self.output_metrics = _metric_pairs(None)

    @classmethod
    def from_recipe(
        cls,
        recipe,
        model: keras.Model,
        eps: float | None = None,
        norm=np.inf,
        clip_min: float | None = 0.0,
        clip_max: float | None = 1.0,
        seed: int | None = None,
        sigma: float | None = None,
        **overrides,
    ) -> AdversarialModel:
        """An `AdversarialModel` for a named recipe: "goodfellow", "madry",
        "fast" or "trades" (see `advlib.training.RECIPES`), which take `eps`;
        or "gaussian", which takes `sigma` (Gaussian data augmentation, for
        `advlib.certify.SmoothedClassifier`). `overrides` change the recipe's
        fields, e.g. `nb_iter=10` or `trades_beta=1.0`."""
        recipe = recipes.get(recipe, **overrides)
        if recipe.attack == "gaussian":
            if eps is not None:
                raise ValueError(
                    f"recipe {recipe.name!r} adds Gaussian noise and takes sigma, "
                    f"not eps (got eps={eps})."
                )
            if sigma is None:
                raise ValueError(
                    f"recipe {recipe.name!r} needs sigma, the noise's standard "
                    "deviation (e.g. sigma=0.25)."
                )
            return cls(
                model,
                attack=GaussianAugmentation,
                attack_params={"sigma": sigma},
                adv_ratio=recipe.adv_ratio,
                seed=seed,
            )
        if sigma is not None:
            raise ValueError(
                f"recipe {recipe.name!r} crafts attacks within eps; sigma "
                f"(got {sigma}) belongs to the 'gaussian' recipe."
            )
        if eps is None:
            raise ValueError(f"recipe {recipe.name!r} needs eps, the attack's radius.")
        params = dict(recipe.attack_params(eps, norm), clip_min=clip_min, clip_max=clip_max)
        if recipe.trades_beta is not None:
            params["loss_fn"] = kl_divergence
        # FGSM recipes too: one PGD step allows their random start
        return cls(
            model,
            attack=ProjectedGradientDescent,
            attack_params=params,
            adv_ratio=recipe.adv_ratio,
            trades_beta=recipe.trades_beta,
            seed=seed,
        )

    # -- Keras plumbing --------------------------------------------------------
    @property
    def metrics(self):
        return list(self.trackers.values()) + [m for pair in self.output_metrics for m in pair]

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def compile(
        self,
        optimizer: str | keras.optimizers.Optimizer = "adam",
        loss: str | keras.losses.Loss | Callable | None = None,
        metrics: Sequence[str | keras.metrics.Metric] | None = None,
        **kwargs: Any,
    ) -> None:
        """Compiles as `keras.Model.compile` does.

        Args:
            optimizer: a Keras optimizer or its name.
            loss: the training loss on the model's outputs, mixed over clean
                and adversarial inputs by the recipe: a `keras.losses.Loss`,
                its name, or a function `(y_true, y_pred)`. Default:
                cross-entropy on the logits, with integer or one-hot labels.
            metrics: Keras metrics (or names; "accuracy" is classification
                accuracy), each reported on the clean batch under its name
                and on the adversarial batch as `adv_<name>`.
            **kwargs: passed to `keras.Model.compile`.

        Raises:
            ValueError: if the loss expects logits and the model returns
                probabilities, or the reverse.
        """
        self.output_loss = None if loss is None else _output_loss(loss, self.wrapper)
        # untracked: a model that has trained is built, and Keras refuses new tracked
        # state then; `metrics` lists them (Keras's own compile skips tracking too)
        object.__setattr__(self, "output_metrics", _metric_pairs(metrics))
        super().compile(optimizer=optimizer, **kwargs)

    def fit(self, x=None, y=None, **kwargs):
        if not self.compiled:
            raise ValueError(
                "AdversarialModel.fit needs a compiled model: call compile(optimizer=...) first."
            )
        if isinstance(x, np.ndarray) and x.size:
            spread = float(x.max() - x.min())
            if self.craft_params.get("eps", 0) > spread:
                raise ValueError(
                    f"eps={self.craft_params['eps']} is larger than the range of "
                    f"the training data ({spread:.4g}); is eps on the data's scale?"
                )
        if self.output_loss is not None and isinstance(y, np.ndarray):
            _check_label_form(self.output_loss, y)
        return super().fit(x, y, **kwargs)

    # -- the loss, which Keras's train and test steps call on every backend ----
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The recipe's objective on one batch, with the attack crafted inside.

        Keras's own `train_step` and `test_step` call this on each backend
        (a gradient tape on TensorFlow, `stateless_call` under `jax.grad`,
        `loss.backward()` on PyTorch), so one objective serves all three. It
        also updates the loss trackers and the clean and adversarial metrics,
        which need the adversarial logits that only exist here; Keras's
        `compute_metrics` then reports them, as `metrics` lists them.
        """
        labels = self._labels(y)
        clean_logits = self._clean_logits(x, y_pred, training)
        targets = labels
        if self.trades_beta is not None:
            targets = ops.stop_gradient(
                ops.softmax(ops.cast(self.wrapper.get_logits(x), "float32"), axis=-1)
            )
        x_adv = self.attack.perturb(
            x, targets, seed_pair=self._seed_pair(1 if training else 2), **self._scaled_params()
        )
        adv_logits = ops.cast(self.wrapper.get_logits(x_adv, training=training), "float32")
        clean = self._loss(y, labels, clean_logits, sample_weight)
        adversarial = self._loss(y, labels, adv_logits, sample_weight)
        if self.trades_beta is not None:
            robust_term = _reduce(
                kl_divergence(ops.softmax(clean_logits, axis=-1), adv_logits), sample_weight
            )
            objective = clean + self.trades_beta * robust_term
        else:
            objective = (1 - self.adv_ratio) * clean + self.adv_ratio * adversarial
        if training:
            if self.losses:
                objective = objective + sum(self.losses)
            self.crafting_step.assign_add(1)
        self._update_trackers(
            y, labels, sample_weight, objective, clean, adversarial, clean_logits, adv_logits
        )
        _, replicas = backend.replica()
        # each replica averages its own share; gradients are summed across replicas
        return objective / replicas if training and replicas > 1 else objective

    def _labels(self, y):
        if y is None:
            raise ValueError(
                "AdversarialModel needs labels: fit and evaluate it on (x, y) "
                "pairs, since the training attack moves away from the true class."
            )
        y = ops.convert_to_tensor(y)
        if len(y.shape) == 2 and y.shape[-1] not in (None, 1):
            return ops.cast(ops.argmax(y, axis=-1), "int32")  # one-hot
        return ops.cast(ops.reshape(y, [-1]), "int32")

    def _clean_logits(self, x, y_pred, training):
        """The clean batch's logits: Keras's forward pass when the model returns
        logits, else the wrapper's pass to the logits under the softmax."""
        if self.wrapper.output_kind == "logits" and y_pred is not None:
            return ops.cast(y_pred, "float32")
        return ops.cast(self.wrapper.get_logits(x, training=training), "float32")

    def _scaled_params(self):
        """The attack's parameters with its radii times `radius_scale`."""
        scale = ops.cast(self.radius_scale, "float32")
        return {
            key: value * scale if key in _RADIUS_KEYS and value is not None else value
            for key, value in self.craft_params.items()
        }

    def _seed_pair(self, salt):
        replica_id, _ = backend.replica()
        base = backend.seed([self.seed * 1000 + salt, 0])
        return backend.fold_seed(base, ops.cast(self.crafting_step, "int32") * 64 + replica_id)

    def _outputs(self, logits):
        """The model's outputs as its loss and metrics see them."""
        return logits if self.wrapper.output_kind == "logits" else ops.softmax(logits, axis=-1)

    def _loss(self, y, labels, logits, sample_weight):
        """The training loss of one batch, reduced over it as Keras reduces."""
        if self.output_loss is not None:
            return self.output_loss(y, self._outputs(logits), sample_weight=sample_weight)
        return _reduce(
            ops.sparse_categorical_crossentropy(labels, logits, from_logits=True), sample_weight
        )

    def _update_trackers(
        self, y, labels, sample_weight, objective, clean, adversarial, clean_logits, adv_logits
    ):
        self.trackers["loss"].update_state(objective)
        self.trackers["clean_loss"].update_state(clean)
        self.trackers["adv_loss"].update_state(adversarial)
        for (clean_metric, adv_metric), wants_indices in zip(
            self.output_metrics, self._metric_labels
        ):
            truth = labels if wants_indices else y
            clean_metric.update_state(truth, self._outputs(clean_logits), sample_weight)
            adv_metric.update_state(truth, self._outputs(adv_logits), sample_weight)

    @property
    def _metric_labels(self):
        """Per metric pair: whether it takes class indices (accuracy) or the labels as given."""
        return [
            isinstance(pair[0], keras.metrics.SparseCategoricalAccuracy)
            for pair in self.output_metrics
        ]


def _reduce(values, sample_weight):
    """Keras's "sum over batch size" reduction of per-example values."""
    if sample_weight is not None:
        values = values * ops.cast(ops.reshape(sample_weight, [-1]), values.dtype)
    return ops.mean(values)


def _from_logits(loss) -> bool | None:
    """Whether a Keras loss (object or function) takes logits; None if it does not say."""
    kwargs = getattr(loss, "_fn_kwargs", None)
    if isinstance(kwargs, dict) and "from_logits" in kwargs:
        return bool(kwargs["from_logits"])
    if callable(loss):
        try:
            default = inspect.signature(loss).parameters.get("from_logits")
        except (TypeError, ValueError):
            return None
        if default is not None and isinstance(default.default, bool):
            return default.default
    return None


def _output_loss(loss, wrapper) -> keras.losses.Loss:
    """The compile-time loss as a reducing `keras.losses.Loss`, after checking that
    it reads the model's outputs in the form the model returns them."""
    try:
        resolved = keras.losses.get(loss)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"loss must be a keras.losses.Loss, the name of a Keras loss or a "
            f"function (y_true, y_pred), got {loss!r}: {error}"
        ) from error
    if resolved is None or not callable(resolved):
        raise ValueError(
            f"loss must be a keras.losses.Loss, the name of a Keras loss or a "
            f"function (y_true, y_pred), got {loss!r}."
        )
    takes_logits = _from_logits(resolved)
    returns_logits = wrapper.output_kind == "logits"
    if takes_logits is not None and takes_logits != returns_logits:
        expects, returns = (
            ("logits", "probabilities (it ends in a softmax)")
            if takes_logits
            else ("probabilities", "logits")
        )
        raise ValueError(
            f"loss {getattr(resolved, 'name', loss)!r} expects {expects} "
            f"(from_logits={takes_logits}), but "
            f"the model returns {returns}; pass from_logits={not takes_logits}."
        )
    return resolved if isinstance(resolved, keras.losses.Loss) else _FunctionLoss(resolved)


class _FunctionLoss(keras.losses.Loss):
    """A per-example loss function, reduced as Keras reduces its own."""

    def __init__(self, fn):
        name = getattr(fn, "__name__", "")
        # the name opens a TensorFlow name scope: a lambda's "<lambda>" is not valid
        super().__init__(name=name if name.isidentifier() else "loss")
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def _check_label_form(loss, y: np.ndarray) -> None:
    """Refuses labels whose form (class indices or one-hot) the loss cannot read."""
    name = str(loss.name)
    sparse = "sparse" in name
    one_hot = y.ndim == 2 and y.shape[-1] > 1
    if not sparse and "categorical" in name and not one_hot:
        raise ValueError(
            f"loss {name} needs one-hot labels of shape (n, classes), got y of "
            f"shape {y.shape}; use SparseCategoricalCrossentropy for class "
            "indices, or keras.utils.to_categorical(y)."
        )
    if sparse and one_hot:
        raise ValueError(
            f"loss {name} needs class indices, got one-hot y of shape {y.shape}; "
            "use CategoricalCrossentropy, or y.argmax(axis=1)."
        )


def _metric_pairs(metrics) -> list[tuple[keras.metrics.Metric, keras.metrics.Metric]]:
    """A (clean, adversarial) pair of Keras metrics per requested metric."""
    if not metrics:
        return [
            (
                keras.metrics.SparseCategoricalAccuracy(name="clean_accuracy"),
                keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy"),
            )
        ]
    if isinstance(metrics, (str, keras.metrics.Metric)) or callable(metrics):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)):
        raise TypeError(f"metrics must be a list of Keras metrics or their names, got {metrics!r}.")
    return [(_metric(m, ""), _metric(m, "adv_")) for m in metrics]


def _metric(metric, prefix: str) -> keras.metrics.Metric:
    """A fresh Keras metric for `metric` (a name, a Metric or a function), named with
    `prefix`."""
    if isinstance(metric, str) and metric in _ACCURACY_NAMES:
        return keras.metrics.SparseCategoricalAccuracy(name=prefix + "accuracy")
    try:
        resolved = keras.metrics.get(metric)
    except (ValueError, TypeError) as error:
        raise ValueError(f"metrics: {metric!r} is not a Keras metric: {error}") from error
    if isinstance(resolved, keras.metrics.Metric):
        return type(resolved).from_config(dict(resolved.get_config(), name=prefix + resolved.name))
    if callable(resolved):
        return keras.metrics.MeanMetricWrapper(resolved, name=prefix + resolved.__name__)
    raise ValueError(f"metrics: {metric!r} is not a Keras metric.")
