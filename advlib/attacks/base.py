"""The `Attack` base class (argument checks, labels, NumPy batching), the
attack registry, and the target helpers shared by targeted attacks."""

from __future__ import annotations

import abc
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from advlib import _checks, _seeding, backend
from advlib.attacks import utils
from advlib.attacks.result import AttackResult
from advlib.models.base import Model
from advlib.models.keras import as_model

_REGISTRY: dict[str, type[Attack]] = {}

# The parameters many attacks share, with their defaults. An attack names those it
# takes in `shared_params`, and `Attack.parse` checks them, so that `parse_params`
# declares only the attack's own.
# the shared parameters that hold labels, and those that bound the input domain
TARGETABLE = ("y", "y_target", "targeted")
DOMAIN = ("clip_min", "clip_max")
SHARED_DEFAULTS: dict[str, Any] = {
    "eps": 0.3,
    "norm": None,
    "ord": None,
    "y": None,
    "y_target": None,
    "targeted": False,
    "clip_min": None,
    "clip_max": None,
    "seed": None,
}


def by_name(name: str) -> type[Attack]:
    """The attack class registered under `name` (its class name, e.g. "SPSA")."""
    return _REGISTRY[_checks.check_choice("attack", name, sorted(_REGISTRY))]


def names() -> list[str]:
    """The names of every registered attack."""
    return sorted(_REGISTRY)


def random_targets(labels: np.ndarray, nb_classes: int, seed: int | None) -> np.ndarray:
    """A uniformly random class other than `labels`, reproducible from `seed`
    (None: a seed drawn as by `advlib._seeding.draw_seed`)."""
    generator = np.random.default_rng(_seeding.seed_or_draw(seed))
    return (labels + generator.integers(1, nb_classes, size=len(labels))) % nb_classes


def on_survivors(x, survivors: np.ndarray, rounds, attempt):
    """Runs `attempt(round, rows)` for each of `rounds` on the rows of `x` still in
    `survivors` (a boolean array, updated in place), as restarts and target sweeps
    do; `attempt` returns the new rows and which of them survive. Returns `x` with
    every attempt's rows written in."""
    out = x
    for step in rounds:
        rows = np.flatnonzero(survivors)
        if rows.size == 0:
            break
        x_new, still = attempt(step, backend.padded_rows(rows))
        x_new = ops.cast(x_new[: rows.size], utils.dtype_of(out))
        out = ops.scatter_update(out, rows[:, None], x_new)
        survivors[rows] = np.asarray(still)[: rows.size]
    return out


def refuse_true_class_targets(targets: np.ndarray, true_classes: np.ndarray) -> None:
    """Raises if a target is the example's own class, naming the first one."""
    same = np.flatnonzero(targets == true_classes)
    if same.size:
        i = int(same[0])
        raise ValueError(
            f"y_target[{i}]={int(targets[i])} is the example's own class "
            f"({len(same)} such examples); a targeted attack needs a target "
            "other than the true (or, without y, the predicted) class."
        )


def defining_class(cls: type, name: str) -> type:
    """The class in `cls`'s method resolution order that defines `name`: the
    owner of a compiled method that attacks share (`Attack._compiled`)."""
    return next(klass for klass in cls.__mro__ if name in vars(klass))


class Attack(abc.ABC):
    """Base class of all attacks.

    Subclasses define `parse_params`, whose keyword arguments and defaults
    are the attack's own parameters (cleverhans's names), and `_generate`, which
    crafts adversarial examples for one checked batch. The parameters that many
    attacks share (labels, bounds, norm, seed: `SHARED_DEFAULTS`) are named in
    `shared_params` and checked here. A subclass that only changes defaults
    sets `defaults`; one that pins a parameter sets `fixed`; one that adds
    parameters declares them with `**params` and passes the rest on to
    `super().parse_params`. Every concrete
    subclass is registered under its class name (`by_name`), so that the
    harness, its protocols and training find it without a list to edit;
    `register=False` in the class statement opts out.

    Args:
        model: an `advlib.models.Model`, or a bare `keras.Model` that is
            wrapped with `KerasModelWrapper`.
    """

    # Parameters holding one entry per example; generate_np slices them.
    per_example_params: ClassVar[tuple[str, ...]] = ("y", "y_target")
    # Defaults that override those of parse_params's signature and SHARED_DEFAULTS.
    defaults: ClassVar[dict[str, Any]] = {}
    # Parameters pinned to a value: the attack does not take them.
    fixed: ClassVar[dict[str, Any]] = {}
    # The entries of SHARED_DEFAULTS the attack takes ("norm" brings its alias "ord");
    # an attack that declares one in parse_params checks it there.
    shared_params: ClassVar[tuple[str, ...]] = ()
    # The norms the attack supports, its default first.
    norms: ClassVar[tuple[float, ...]] = utils.NORMS
    # The Keras backends the attack runs on.
    backends: ClassVar[tuple[str, ...]] = backend.SUPPORTED
    # The attack's name and why it needs finite clip_min and clip_max, if it does.
    needs_bounds: ClassVar[str | None] = None
    # Sees only the model's outputs: the cross-check against gradient masking.
    black_box: ClassVar[bool] = False
    # The parameters an evaluation sets from its threat model.
    threat_params: ClassVar[tuple[str, ...]] = ("eps", "norm", "clip_min", "clip_max")

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if register and not inspect.isabstract(cls):
            _REGISTRY[cls.__name__] = cls

    def __init__(self, model: keras.Model | Model):
        backend.require_supported(type(self).__name__, self.backends)
        self.model: Model = as_model(model)
        self.forward_passes = 0
        self.backward_passes = 0
        # examples (or, in iterative attacks, example-steps) whose update was not
        # finite (a NaN or Inf gradient) and that kept their last finite point
        self.nonfinite_fallbacks = 0

    def _compiled(self, method: Callable) -> Callable:
        """`method` (a bound method of this attack) compiled once per model and
        per class that defines it: every attack on the same model that inherits
        the method reuses its traces (FGSM's, BIM's, PGD's and MIM's step is
        one), as cleverhans's users create attack objects freely. So a
        compiled method may read no attribute of the attack but `model`, and a
        subclass that overrides a method it calls must override it too
        (`tests/test_architecture.py` checks both); anything else enters as an
        argument."""
        owner = defining_class(type(self), method.__name__)
        return self.model.compiled_method((owner, method.__name__), method)

    def _count(self, batch: int, forward: int = 1, backward: int = 0) -> None:
        """Records model evaluations: `forward` / `backward` passes over `batch` examples."""
        self.forward_passes += batch * forward
        self.backward_passes += batch * backward

    # -- public API --------------------------------------------------------
    def generate(self, x: Any, **params: Any) -> Any:
        """Crafts adversarial examples for the batch `x`.

        Args:
            x: a batch (NumPy array or tensor) of any rank, batch first.
            **params: the attack's parameters; see `parse_params`.

        Returns:
            A tensor of Keras's backend, of the same shape and dtype as `x`.
        """
        parsed = self.parse(**params)
        x = self._check_input(x, parsed)
        if x.shape[0] == 0:
            return x
        self.model.check_output(x)
        labels, targeted = self._resolve_labels(x, parsed)
        options = {
            k: v for k, v in parsed.items() if k not in self.per_example_params + ("targeted",)
        }
        return self._finite_or_clean(x, self._generate(x, labels, targeted, **options))

    def _finite_or_clean(self, x, x_adv):
        """Never returns a non-finite adversarial example: such an example falls
        back to the clean input, and the event is counted."""
        finite = utils.finite_rows(x_adv)
        bad = int(ops.sum(ops.cast(ops.logical_not(finite), "int32")))
        if not bad:
            return x_adv
        self.nonfinite_fallbacks += bad
        return ops.where(utils.per_example(finite, x), x_adv, ops.cast(x, utils.dtype_of(x_adv)))

    def generate_np(self, x: np.ndarray, batch_size: int | None = 128, **params: Any) -> np.ndarray:
        """Like `generate`, but NumPy in, NumPy out, in batches of `batch_size`
        (None: all of `x` in one batch)."""
        _checks.check_number("batch_size", batch_size, low=1, integer=True, allow_none=True)
        x = np.asarray(x)
        batch_size = max(len(x), 1) if batch_size is None else int(batch_size)
        params = self._whole_batch_params(x, params)
        per_example = {
            k: np.asarray(v)
            for k, v in params.items()
            if k in self.per_example_params and v is not None
        }
        for name, value in per_example.items():
            if value.ndim == 0 or len(value) != len(x):
                raise ValueError(
                    f"{name} must have one entry per example ({len(x)}), got shape {value.shape}."
                )
        self.parse(**params)  # fail before the first batch, not after many
        if len(x) == 0:
            return backend.to_numpy(self.generate(x, **params))
        chunks = []
        for start in range(0, len(x), batch_size):
            stop = start + batch_size
            batch_params = dict(params, **{k: v[start:stop] for k, v in per_example.items()})
            chunks.append(backend.to_numpy(self.generate(x[start:stop], **batch_params)))
        return np.concatenate(chunks)

    def run(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        batch_size: int | None = 128,
        **params: Any,
    ) -> AttackResult:
        """Runs the attack and reports per-example success, norms and costs.

        Args:
            x: NumPy batch.
            y: true labels. Default: the model's predictions on `x`.
            batch_size: examples per batch (None: all at once).
            **params: the attack's parameters (`y_target` makes it targeted).

        Returns:
            An `AttackResult`.
        """
        x = np.asarray(x)
        _checks.check_number("batch_size", batch_size, low=1, integer=True, allow_none=True)
        batch_size = max(len(x), 1) if batch_size is None else int(batch_size)
        self.forward_passes = self.backward_passes = self.nonfinite_fallbacks = 0
        start = time.perf_counter()
        params = self._whole_batch_params(x, dict(params, y=y))
        y = params.pop("y")
        targeted = params.get("y_target") is not None or bool(params.get("targeted"))
        if targeted:
            labels = params.get("y_target")
            labels = y if labels is None else labels
        else:
            # the labels judged against are those the attack moves away from
            labels = y if y is not None else self._predict_np(x, batch_size)
            y = labels
        x_adv = self.generate_np(x, batch_size=batch_size, y=y, **params)
        labels = (
            _checks.check_labels(
                "y_target" if targeted else "y", labels, len(x), self.model.nb_classes
            )
            if len(x)
            else np.zeros(0, np.int64)
        )
        predictions = self._predict_np(x_adv, batch_size)
        return AttackResult.from_arrays(
            x,
            x_adv,
            labels,
            targeted,
            predictions,
            self.forward_passes,
            self.backward_passes,
            time.perf_counter() - start,
            self.nonfinite_fallbacks,
        )

    def _whole_batch_params(self, x: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
        """Fixes, once for all of `x`, parameters that would differ per batch."""
        return params

    def _predict_np(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, np.int64)
        self._count(len(x))
        return np.concatenate(
            [
                backend.to_numpy(self.model.predict_classes(x[i : i + batch_size]))
                for i in range(0, len(x), batch_size)
            ]
        )

    @classmethod
    def check_params(cls, **params) -> dict[str, Any]:
        """Checks parameters without a model, e.g. a protocol's at load time.

        Returns:
            The parsed parameters, as `generate` would use them.
        """
        # parse_params reads class attributes only, so no model is needed
        return cls.__new__(cls).parse(**params)

    @classmethod
    def parameters(cls) -> tuple[str, ...]:
        """The names of the attack's parameters."""
        shared = cls._shared_names()
        return tuple(n for n in cls._own_names() + shared if n not in cls.fixed)

    @classmethod
    @functools.cache
    def _own_names(cls) -> tuple[str, ...]:
        """The parameters of `parse_params`, following `**params` up the classes."""
        names: list[str] = []
        for klass in cls.__mro__:
            if "parse_params" not in vars(klass):
                continue
            signature = inspect.signature(vars(klass)["parse_params"]).parameters.values()
            names += [p.name for p in signature if p.kind is p.POSITIONAL_OR_KEYWORD]
            if not any(p.kind is p.VAR_KEYWORD for p in signature):
                break
        return tuple(n for n in dict.fromkeys(names) if n != "self")

    @classmethod
    @functools.cache
    def _shared_names(cls) -> tuple[str, ...]:
        own = cls._own_names()
        names = [n for n in cls.shared_params if n not in own]
        if "norm" in names:
            names.insert(names.index("norm") + 1, "ord")
        return tuple(names)

    @classmethod
    def takes_seed(cls) -> bool:
        """Whether the attack draws random numbers, and so takes a `seed` parameter."""
        return "seed" in cls.parameters()

    @classmethod
    def harness_params(cls) -> tuple[str, ...]:
        """The parameters an evaluation sets itself: labels, batching, the threat
        model and the seed; a protocol gives only the others."""
        own = ("y", "y_target", "targeted", "ord", "batch_size", "seed") + cls.threat_params
        return tuple(name for name in cls.parameters() if name in own)

    # Each attack declares its own keyword parameters (cleverhans's API), so these
    # abstract signatures take anything: every override is compatible with them.
    @abc.abstractmethod
    def parse_params(self, *args: Any, **params: Any) -> dict[str, Any]:
        """Checks the parameters and returns them with defaults filled in."""

    @abc.abstractmethod
    def _generate(self, *args: Any, **params: Any) -> Any:
        """Crafts adversarial examples for a checked, non-empty batch: called with
        (x, labels, targeted) and the parsed parameters as keywords."""

    # -- checks shared by all attacks ------------------------------------
    def parse(self, **params) -> dict[str, Any]:
        """Checks `params` (unknown names, values, label rules) and returns every
        parameter with the defaults filled in, as `generate` uses them."""
        allowed = self.parameters()
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown parameter(s) {unknown}; "
                f"allowed: {sorted(allowed)}."
            )
        given = {**self.defaults, **params, **self.fixed}
        own = {k: v for k, v in given.items() if k in self._own_names()}
        shared = {k: given.get(k, SHARED_DEFAULTS[k]) for k in self._shared_names()}
        parsed = {**self.parse_params(**own), **self._parse_shared(shared)}
        if parsed.get("y") is not None and parsed.get("y_target") is not None:
            raise ValueError(
                "y and y_target must not be given together: y gives the true "
                "labels of an untargeted attack, y_target the targets of a "
                "targeted one."
            )
        if parsed.get("targeted") and parsed.get("y_target") is None:
            if parsed.get("y") is None:
                raise ValueError(
                    "targeted=True needs target labels: pass y_target (or y, "
                    "as in cleverhans 4, which then holds the targets)."
                )
            parsed["y_target"], parsed["y"] = parsed["y"], None
        if "clip_min" in parsed:
            _checks.check_clip_bounds(parsed["clip_min"], parsed["clip_max"])
        return parsed

    def _parse_shared(self, shared: dict[str, Any]) -> dict[str, Any]:
        if "eps" in shared:
            shared["eps"] = float(_checks.check_number("eps", shared["eps"], low=0))
        if "norm" in shared:
            norm, alias = shared.pop("norm"), shared.pop("ord")
            shared["norm"] = utils.resolve_norm(norm, alias, self.norms[0], self.norms)
        if "targeted" in shared:
            shared["targeted"] = bool(shared["targeted"])
        if "seed" in shared:
            _checks.check_seed(shared["seed"])
        for name in ("clip_min", "clip_max"):
            if self.needs_bounds and name in shared and shared[name] is None:
                raise ValueError(f"{name} must be a number for {self.needs_bounds}; got None.")
        return shared

    def _check_input(self, x, parsed):
        array = _checks.check_batch("x", x)
        _checks.check_in_range("x", array, parsed.get("clip_min"), parsed.get("clip_max"))
        return ops.convert_to_tensor(array)

    def _resolve_labels(self, x, parsed) -> tuple[Any, bool]:
        """Returns (labels, targeted): the targets, or the labels to move away from.

        Without `y` or `y_target`, the model's own predictions are used, which
        avoids label leaking (Kurakin et al. 2016).
        """
        nb_classes = self.model.nb_classes
        batch = int(x.shape[0])
        if parsed.get("y_target") is not None:
            targets = _checks.check_labels("y_target", parsed["y_target"], batch, nb_classes)
            return ops.convert_to_tensor(targets), True
        if parsed.get("y") is not None:
            labels = _checks.check_labels("y", parsed["y"], batch, nb_classes)
            return ops.convert_to_tensor(labels), False
        self._count(batch)
        return ops.cast(self.model.predict_classes(x), "int64"), False

    @staticmethod
    def _seed_pair(seed: int | None) -> np.ndarray:
        """The stateless-RNG seed of one batch; None draws one as Keras seeding allows."""
        return np.array([_seeding.seed_or_draw(seed), 0], dtype=np.int64)
