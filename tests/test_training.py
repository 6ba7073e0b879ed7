"""Adversarial training through model.fit: recipes, callback, saving, devices."""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
from conftest import run_python
from keras import ops

from advlib import backend
from advlib.attacks import FastGradientMethod, ProjectedGradientDescent
from advlib.models import KerasModelWrapper, mlp, small_cnn
from advlib.training import (
    RECIPES,
    AdversarialModel,
    CatastrophicOverfittingWarning,
    EpsilonRamp,
    RobustnessCallback,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 0.2
EPOCHS = 4


def pgd_accuracy(model, x, y, eps=EPS):
    wrapped = KerasModelWrapper(model)
    x_adv = ProjectedGradientDescent(wrapped).generate_np(
        x, y=y, eps=eps, eps_iter=eps / 8, nb_iter=20, seed=0, clip_min=0.0, clip_max=1.0
    )
    return float(np.mean(backend.to_numpy(wrapped.predict_classes(x_adv)) == y))


def fit_recipe(recipe, digits, epochs=EPOCHS, **kwargs):
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = small_cnn((8, 8, 1))
    robust = AdversarialModel.from_recipe(recipe, model, eps=EPS, **kwargs)
    robust.compile(keras.optimizers.Adam(2e-3))
    history = robust.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    return model, robust, history


@pytest.fixture(scope="module")
def clean_pgd(digits):
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = small_cnn((8, 8, 1))
    model.compile(
        keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=0)
    return pgd_accuracy(model, x_test, y_test)


# the gaussian recipe trains for randomized smoothing (L2 certificates); tests/test_certify
@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(r for r in RECIPES if RECIPES[r].attack != "gaussian"))
def test_every_recipe_improves_pgd_accuracy(recipe, digits, clean_pgd):
    _, (x_test, y_test) = digits
    model, robust, history = fit_recipe(recipe, digits)
    logs = history.history
    for key in ("loss", "clean_loss", "clean_accuracy", "adv_loss", "adv_accuracy"):
        assert len(logs[key]) == EPOCHS and np.isfinite(logs[key]).all()
    assert logs["adv_loss"][-1] < logs["adv_loss"][0]
    robust_pgd = pgd_accuracy(model, x_test, y_test)
    assert robust_pgd > clean_pgd + 0.15, (robust_pgd, clean_pgd)


def test_recipe_fields_follow_the_papers():
    assert RECIPES["goodfellow"].adv_ratio == 0.5 and RECIPES["goodfellow"].nb_iter == 1
    assert RECIPES["fast"].eps_iter_fraction == 1.25 and RECIPES["fast"].rand_init
    assert RECIPES["madry"].adv_ratio == 1.0 and RECIPES["madry"].rand_init
    assert RECIPES["trades"].trades_beta == 6.0
    params = RECIPES["madry"].attack_params(0.3)
    assert params["eps_iter"] == pytest.approx(2.5 * 0.3 / 7)


def fit_mlp(recipe, digits, seed=0, n=256, **overrides):
    """One epoch of a recipe on `n` digits with a small MLP: a training run at a
    test's cost, on any backend."""
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(seed)
    model = mlp((8, 8, 1), hidden=(32,))
    robust = AdversarialModel.from_recipe(recipe, model, eps=EPS, seed=seed, **overrides)
    robust.compile(keras.optimizers.Adam(2e-3))
    history = robust.fit(x_train[:n], y_train[:n], epochs=1, batch_size=64, verbose=0)
    return model, robust, history


@pytest.mark.backends
def test_training_attack_uses_current_weights_in_graph(digits):
    """The step's adversarial loss equals the loss at FGSM examples crafted afresh
    from the trained weights: the compiled step (a JAX program with the weights as
    its state, a TensorFlow graph, PyTorch's eager step) attacks the current model."""
    (x_train, y_train), _ = digits
    model, robust, _ = fit_mlp("goodfellow", digits)
    x, y = x_train[:64], y_train[:64]
    logs = robust.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    x_adv = FastGradientMethod(model).generate_np(x, y=y, eps=EPS, clip_min=0.0, clip_max=1.0)
    expected = ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(
            y, model.predict(x_adv, verbose=0), from_logits=True
        )
    ).mean()
    assert logs["adv_loss"] == pytest.approx(expected, rel=1e-4)
    assert logs["adv_loss"] > logs["clean_loss"]


@pytest.mark.backends
def test_epsilon_ramp_scales_the_attack_inside_the_compiled_step(digits):
    """EpsilonRamp's scale reaches the compiled step at each epoch: at scale 0 the
    FGSM examples are the clean ones, so the two losses agree; a compiled
    evaluation at scale 0.5 matches FGSM crafted afresh at half the radius."""
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = mlp((8, 8, 1), hidden=(32,))
    robust = AdversarialModel.from_recipe("goodfellow", model, eps=EPS, seed=0)
    robust.compile(keras.optimizers.Adam(2e-3))
    history = robust.fit(
        x_train[:256],
        y_train[:256],
        epochs=3,
        batch_size=64,
        verbose=0,
        callbacks=[EpsilonRamp(epochs=2)],
    ).history
    assert history["radius_scale"] == [0.0, 0.5, 1.0]
    assert history["adv_loss"][0] == pytest.approx(history["clean_loss"][0], rel=1e-5)
    assert history["adv_loss"][2] > 1.2 * history["clean_loss"][2]
    assert float(ops.convert_to_numpy(robust.radius_scale)) == 1.0
    robust.radius_scale.assign(0.5)
    x, y = x_train[:64], y_train[:64]
    logs = robust.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    x_adv = FastGradientMethod(model).generate_np(x, y=y, eps=EPS / 2, clip_min=0.0, clip_max=1.0)
    expected = ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(
            y, model.predict(x_adv, verbose=0), from_logits=True
        )
    ).mean()
    assert logs["adv_loss"] == pytest.approx(expected, rel=1e-4)


def test_epsilon_ramp_schedule_and_bad_input():
    ramp = EpsilonRamp(epochs=4, start=0.2)
    assert [ramp.scale(e) for e in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    with pytest.raises(ValueError, match="epochs"):
        EpsilonRamp(epochs=0)
    with pytest.raises(ValueError, match="start"):
        EpsilonRamp(epochs=3, start=1.0)
    model = mlp((8, 8, 1), hidden=(8,))
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(TypeError, match="AdversarialModel"):
        model.fit(np.zeros((4, 8, 8, 1)), np.zeros(4, int), verbose=0, callbacks=[EpsilonRamp(2)])


@pytest.mark.backends
def test_training_is_reproducible_from_its_seed(digits):
    """The same seed gives the same weights, step for step; another seed other
    random starts. The steps taken seed each step's random start."""
    runs = [fit_mlp("madry", digits, seed=seed, nb_iter=2) for seed in (0, 0, 1)]
    weights = [run[0].get_weights() for run in runs]
    for a, b in zip(weights[0], weights[1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(weights[0], weights[2]))
    assert int(ops.convert_to_numpy(runs[0][1].crafting_step)) == 256 // 64


@pytest.mark.backends
@pytest.mark.parametrize("recipe", ["fast", "gaussian"])
def test_the_other_recipes_train_on_this_backend(recipe, digits):
    """fast AT's random start and the gaussian recipe's noise, which the tests
    above do not reach, on this backend."""
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = mlp((8, 8, 1), hidden=(32,))
    kwargs = dict(sigma=0.25) if recipe == "gaussian" else dict(eps=EPS)
    robust = AdversarialModel.from_recipe(recipe, model, seed=0, **kwargs)
    robust.compile(keras.optimizers.Adam(2e-3))
    before = [w.copy() for w in model.get_weights()]
    history = robust.fit(x_train[:128], y_train[:128], epochs=1, batch_size=64, verbose=0)
    logs = history.history
    assert np.isfinite(logs["loss"]).all()
    if recipe == "fast":  # an attack raises the loss; noise only changes it
        assert logs["adv_loss"][0] > logs["clean_loss"][0]
    assert logs["adv_loss"][0] != logs["clean_loss"][0]
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def softmax_mlp():
    """A digits MLP that ends in a softmax: its logits are under it."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


@pytest.mark.slow
def test_tf_data_class_weights_validation_and_softmax_models(digits):
    import tensorflow as tf

    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = softmax_mlp()
    robust = AdversarialModel.from_recipe("fast", model, eps=EPS)
    robust.compile(keras.optimizers.Adam(2e-3))
    data = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(64)
    weights = {c: (3.0 if c == 0 else 1.0) for c in range(10)}
    history = robust.fit(
        data, epochs=2, class_weight=weights, verbose=0, validation_data=(x_test, y_test)
    )
    assert "val_adv_accuracy" in history.history and "val_clean_loss" in history.history
    # the loss is computed on the logits before the softmax
    logs = robust.evaluate(x_test, y_test, verbose=0, return_dict=True, batch_size=len(x_test))
    logits = KerasModelWrapper(model).get_logits(x_test)
    expected = ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(y_test, logits, from_logits=True)
    ).mean()
    assert logs["clean_loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.backends
@pytest.mark.slow  # JAX compiles a third step (validation): the PyTorch leg runs it
def test_class_weights_validation_and_softmax_models_on_this_backend(digits):
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = softmax_mlp()
    robust = AdversarialModel.from_recipe("trades", model, eps=EPS, nb_iter=2)
    robust.compile(
        keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    weights = {c: (3.0 if c == 0 else 1.0) for c in range(10)}
    history = robust.fit(
        x_train[:256],
        y_train[:256],
        batch_size=64,
        class_weight=weights,
        verbose=0,
        validation_data=(x_test[:64], y_test[:64]),
    )
    for key in ("loss", "accuracy", "adv_accuracy", "val_adv_accuracy", "val_clean_loss"):
        assert np.isfinite(history.history[key]).all(), key
    # the loss is the compiled one, on the probabilities the model returns
    logs = robust.evaluate(x_test, y_test, verbose=0, return_dict=True, batch_size=len(x_test))
    expected = ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(y_test, model.predict(x_test, verbose=0))
    ).mean()
    assert logs["clean_loss"] == pytest.approx(expected, rel=1e-4)


def test_mixed_precision(digits):
    (x_train, y_train), _ = digits
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        # an MLP: half-precision convolutions are slow on CPUs
        model = mlp((8, 8, 1), hidden=(128,))
        robust = AdversarialModel.from_recipe("fast", model, eps=EPS)
        robust.compile(keras.optimizers.Adam(2e-3))
        assert isinstance(robust.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.layers[-1].compute_dtype == "float16"
        history = robust.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["adv_accuracy"][-1] > 0.3


@pytest.mark.slow
def test_inner_model_saves_and_loads_without_advlib(digits, tmp_path):
    _, (x_test, _) = digits
    model, robust, _ = fit_mlp("fast", digits)
    path = str(tmp_path / "robust.keras")
    robust.model.save(path)
    script = textwrap.dedent(f"""
        import sys, numpy as np, keras
        model = keras.models.load_model({path!r}, safe_mode=True)
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "out.npy")!r}, model.predict(x, verbose=0))
        assert not any(m.startswith('advlib') for m in sys.modules)
    """)
    np.save(tmp_path / "x.npy", x_test)
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        cwd=str(tmp_path),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), model.predict(x_test, verbose=0), atol=1e-5
    )


@pytest.mark.slow
def test_binary_networks_train_with_ste_gradients(digits):
    from advlib import qnn

    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = qnn.binary_cnn((8, 8, 1), filters=(16, 16, 32, 32), dense=64)
    robust = AdversarialModel.from_recipe("fast", model, eps=EPS)
    robust.compile(keras.optimizers.Adam(3e-3))
    history = robust.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    assert history.history["adv_accuracy"][-1] > history.history["adv_accuracy"][0]
    x_adv = ProjectedGradientDescent(model).generate_np(
        x_test[:50], eps=EPS, nb_iter=3, eps_iter=0.1, seed=0
    )
    assert np.abs(x_adv - x_test[:50]).max() > 0  # STE gradients are not zero


# -- bad input -------------------------------------------------------------------
@pytest.mark.backends
def test_bad_arguments(digits):
    (x_train, y_train), _ = digits
    model = small_cnn((8, 8, 1))
    with pytest.raises(ValueError, match=r"adv_ratio must be in \[0, 1\], got 1.5"):
        AdversarialModel(model, attack_params=dict(eps=0.1), adv_ratio=1.5)
    with pytest.raises(ValueError, match="attack must be one of .*'ProjectedGradientDescent'"):
        AdversarialModel(model, attack="pgd")
    with pytest.raises(TypeError, match="attack must be a gradient attack class"):
        AdversarialModel(model, attack="SPSA")
    with pytest.raises(ValueError, match="eps=2.0 is larger than the data range"):
        AdversarialModel(model, attack_params=dict(eps=2.0, clip_min=0.0, clip_max=1.0))
    with pytest.raises(ValueError, match="eps must be in"):
        AdversarialModel(model, attack_params=dict(eps=-1.0))
    with pytest.raises(ValueError, match="must not hold 'y_target'"):
        AdversarialModel(model, attack_params=dict(eps=0.1, y_target=[1]))
    with pytest.raises(ValueError, match="recipe must be one of"):
        AdversarialModel.from_recipe("free", model, eps=0.1)
    robust = AdversarialModel(model, attack_params=dict(eps=0.1))
    with pytest.raises(ValueError, match="needs a compiled model"):
        robust.fit(x_train, y_train)
    with pytest.raises(
        ValueError,
        match=r"expects probabilities \(from_logits=False\), but "
        "the model returns logits; pass from_logits=True",
    ):
        robust.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="loss must be a keras.losses.Loss.*'hinge_of_doom'"):
        robust.compile(optimizer="adam", loss="hinge_of_doom")
    with pytest.raises(ValueError, match="metrics: 'accuracy_of_doom' is not a Keras metric"):
        robust.compile(optimizer="adam", metrics=["accuracy_of_doom"])
    robust.compile(optimizer="adam")
    with pytest.raises(ValueError, match="needs labels"):
        robust.fit(x_train, epochs=1, verbose=0)
    wide = AdversarialModel(small_cnn((8, 8, 1)), attack_params=dict(eps=300.0))
    wide.compile(optimizer="adam")
    with pytest.raises(ValueError, match="larger than the range of the training data"):
        wide.fit(x_train, y_train, verbose=0)


# -- the callback ------------------------------------------------------------------
class ScriptedCallback(RobustnessCallback):
    """Replays (PGD, FGSM) accuracies instead of attacking."""

    def __init__(self, script, **kwargs):
        super().__init__(
            np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, int), eps=0.1, verbose=0, **kwargs
        )
        self.script = list(script)

    def evaluate(self):
        return self.script.pop(0)


def run_scripted(callback, epochs, digits):
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = small_cnn((8, 8, 1))
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    snapshots = []

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(model.get_weights())

    history = model.fit(
        x_train[:128], y_train[:128], epochs=epochs, verbose=0, callbacks=[Snap(), callback]
    )
    return model, history, snapshots


def test_callback_stops_on_catastrophic_overfitting(digits):
    callback = ScriptedCallback(
        [(0.5, 0.6), (0.7, 0.72), (0.2, 0.95), (0.1, 0.99)], on_overfit="stop", restore_best=False
    )
    with pytest.warns(CatastrophicOverfittingWarning, match="epoch 3.*0.700.*0.200"):
        _, history, _ = run_scripted(callback, 4, digits)
    assert len(history.history["loss"]) == 3
    assert callback.overfit_epoch == 2 and callback.best_epoch == 1
    assert history.history["val_pgd_accuracy"] == [0.5, 0.7, 0.2]


@pytest.mark.backends
def test_callback_rolls_back_to_the_best_robust_weights(digits):
    callback = ScriptedCallback(
        [(0.5, 0.6), (0.7, 0.72), (0.2, 0.95)], on_overfit="rollback", restore_best=False
    )
    with pytest.warns(CatastrophicOverfittingWarning):
        model, _, snapshots = run_scripted(callback, 5, digits)
    for restored, best in zip(model.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(restored, best)


def test_callback_warns_only_when_fgsm_rises(digits):
    callback = ScriptedCallback([(0.7, 0.8), (0.4, 0.5), (0.45, 0.6)], on_overfit="stop")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CatastrophicOverfittingWarning)
        _, history, _ = run_scripted(callback, 3, digits)  # robustness lost, not masked
    assert len(history.history["loss"]) == 3


@pytest.mark.backends
def test_callback_patience_and_restore_best(digits):
    callback = ScriptedCallback(
        [(0.5, 0.6), (0.6, 0.6), (0.55, 0.5), (0.58, 0.5), (0.5, 0.5)],
        patience=2,
        restore_best=True,
    )
    model, history, snapshots = run_scripted(callback, 5, digits)
    assert len(history.history["loss"]) == 4  # two epochs without improvement
    for restored, best in zip(model.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(restored, best)


@pytest.mark.backends
def test_callback_measures_real_pgd_accuracy(digits):
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = mlp((8, 8, 1), hidden=(32,))
    robust = AdversarialModel.from_recipe("fast", model, eps=EPS)
    robust.compile(keras.optimizers.Adam(2e-3))
    callback = RobustnessCallback(
        x_test, y_test, eps=EPS, eps_iter=EPS / 8, n=50, verbose=0, restore_best=False
    )
    robust.fit(
        x_train[:256], y_train[:256], epochs=2, batch_size=64, verbose=0, callbacks=[callback]
    )
    assert callback.history[-1]["pgd_accuracy"] == pgd_accuracy(
        model, x_test[:50], y_test[:50], EPS
    )
    with pytest.raises(ValueError, match="on_overfit must be one of"):
        RobustnessCallback(x_test, y_test, eps=0.1, on_overfit="panic")


@pytest.mark.slow
def test_jax_data_parallel_matches_one_device():
    """keras.distribution.DataParallel over two (host) devices trains the same
    weights as one device: the step's objective is the global batch's."""
    script = textwrap.dedent("""
        import json, numpy as np, keras
        from keras import distribution
        from advlib.datasets import load
        from advlib.training import AdversarialModel
        (x, y), _ = load("digits")
        x, y = x[:256], y[:256]

        def train(data_parallel):
            if data_parallel:
                devices = distribution.list_devices("cpu")
                assert len(devices) == 2, devices
                distribution.set_distribution(distribution.DataParallel(devices=devices))
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                      keras.layers.Dense(32, activation="tanh"),
                                      keras.layers.Dense(10)])
            robust = AdversarialModel.from_recipe("madry", model, eps=0.2, seed=0, nb_iter=3)
            robust.compile(keras.optimizers.SGD(0.1))
            history = robust.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
            distribution.set_distribution(None)
            return model.get_weights(), history.history["loss"]

        w1, l1 = train(False)
        w2, l2 = train(True)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(w1, w2))
        print(json.dumps({"max_weight_diff": diff, "losses": [l1, l2]}))
    """)
    out = run_python(
        script, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["max_weight_diff"] < 1e-5, result
    np.testing.assert_allclose(result["losses"][0], result["losses"][1], rtol=1e-5)


@pytest.mark.slow
def test_mirrored_strategy_matches_one_device():
    script = textwrap.dedent("""
        import os, json, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        two = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two)
        import keras
        from advlib.datasets import load
        from advlib.training import AdversarialModel
        (x, y), _ = load("digits")
        x, y = x[:512], y[:512]

        def train(strategy):
            with strategy.scope():
                keras.utils.set_random_seed(0)
                model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                          keras.layers.Dense(32, activation="tanh"),
                                          keras.layers.Dense(10)])
                robust = AdversarialModel.from_recipe("goodfellow", model, eps=0.2)
                robust.compile(keras.optimizers.SGD(0.1))
            history = robust.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
            return model.get_weights(), history.history["loss"]

        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert mirrored.num_replicas_in_sync == 2
        w1, l1 = train(tf.distribute.get_strategy())
        w2, l2 = train(mirrored)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(w1, w2))
        print(json.dumps({"max_weight_diff": diff, "losses": [l1, l2]}))
    """)
    out = run_python(script)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["max_weight_diff"] < 1e-4, result
    np.testing.assert_allclose(result["losses"][0], result["losses"][1], rtol=1e-4)
