"""Interval bounds through binary networks, and training that keeps their units decided."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from conftest import randomize_batchnorm

from advlib import backend, qnn
from advlib.qnn.stability import VerifiableModel, instability, interval_bounds
from advlib.qnn.verify import NetworkEncoding, milp

numpy = backend.to_numpy  # PyTorch's tensors that carry a gradient need detaching


def thresholded_outputs(model):
    """A model giving the outputs of every BatchNorm but the last (inference mode)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][
        :-1
    ]
    return keras.Model(model.inputs, [layer.output for layer in norms])


def points_in_box(x, eps, count, rng):
    """Random points and corners of the eps-ball around x, inside [0, 1]."""
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    corners = np.where(rng.random((count,) + x.shape) < 0.5, low, high)
    inside = low + rng.random((count,) + x.shape) * (high - low)
    return np.concatenate([corners, inside]).astype(np.float32)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_bounds_hold_every_point_of_the_ball(digits_qnns, digits, kind):
    model = digits_qnns[kind]
    probe = thresholded_outputs(model)
    _, (x_test, _) = digits
    rng = np.random.default_rng(0)
    for x in x_test[:4]:
        points = points_in_box(x, 0.05, 32, rng)
        bounds = interval_bounds(model, x[None], 0.05)
        outputs = probe.predict(points, verbose=0)
        for (center, radius), values in zip(bounds, outputs):
            center, radius = numpy(center)[0], numpy(radius)[0]
            slack = 1e-4 * (1 + np.abs(center))
            assert np.all(values >= center - radius - slack)
            assert np.all(values <= center + radius + slack)


@pytest.mark.backends
def test_at_eps_zero_the_bounds_are_the_model_itself(digits_qnns, digits):
    model = digits_qnns["cnn"]
    _, (x_test, _) = digits
    bounds = interval_bounds(model, x_test[:8], 0.0)
    outputs = thresholded_outputs(model).predict(x_test[:8], verbose=0)
    for (center, radius), values in zip(bounds, outputs):
        assert np.all(numpy(radius) == 0)
        np.testing.assert_allclose(numpy(center), values, rtol=1e-5, atol=1e-4)


def stepped_mlp(step=0.25):
    """An untrained binary MLP on a SteppedInput grid, its thresholds anywhere."""
    keras.utils.set_random_seed(0)
    model = qnn.binary_mlp((8, 8, 1), width=64, depth=2, input_step=step)
    return randomize_batchnorm(model, mean_scale=3.0, variance=(0.5, 5.0))


@pytest.mark.parametrize("kind", ["mlp", "cnn", "stepped mlp"])
def test_open_units_are_the_verifiers_binary_variables(digits_qnns, digits, tmp_path, kind):
    """The share of open units matches the verifier's own interval propagation on
    the exported engine, image by image (on a SteppedInput grid too: both read
    the ball's grid values)."""
    model = stepped_mlp() if kind == "stepped mlp" else digits_qnns[kind]
    path = str(tmp_path / "net.npz")
    qnn.export(model, path)
    encoding = NetworkEncoding(path)
    _, (x_test, _) = digits
    for eps in (2 / 255, 0.05):
        for x in x_test[:5]:
            _, open_share = instability(model, x[None], eps)
            *_, stats = milp.encode(encoding, x, eps)
            assert stats["units"] - stats["fixed"] == round(float(open_share) * stats["units"])


@pytest.mark.backends
def test_verifiable_training_runs_on_this_backend(digits):
    """Two epochs of VerifiableModel on this backend: the bounds' loss trains with
    the model, and the share of open units it logs is the bounds' own."""
    (x_train, y_train), (x_test, _) = digits
    keras.utils.set_random_seed(0)
    model = qnn.binary_mlp((8, 8, 1), width=16, depth=2)
    trainer = VerifiableModel(model, eps=0.05, weight=2.0)
    trainer.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = trainer.fit(x_train[:256], y_train[:256], epochs=2, batch_size=64, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert 0 < history.history["open_units"][0] <= 1
    logs = trainer.evaluate(x_test[:64], np.zeros(64, int), verbose=0, return_dict=True)
    expected = float(numpy(instability(model, x_test[:64], 0.05)[1]))
    assert logs["open_units"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_training_with_the_loss_leaves_fewer_open_units(digits, tmp_path):
    (x_train, y_train), (x_test, y_test) = digits
    eps = 0.05

    def train(weight):
        keras.utils.set_random_seed(0)
        model = qnn.binary_mlp((8, 8, 1), width=32, depth=2)
        trainer = model if weight is None else VerifiableModel(model, eps=eps, weight=weight)
        trainer.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        history = trainer.fit(x_train, y_train, epochs=20, batch_size=64, verbose=0)
        if weight is not None:  # evaluate reports the open share with the moving statistics
            logs = trainer.evaluate(x_test, y_test, verbose=0, return_dict=True)
            assert logs["open_units"] == pytest.approx(
                float(instability(model, x_test, eps)[1]), abs=0.02
            )
        return model, history.history

    plain, _ = train(None)
    stable, history = train(2.0)
    assert history["open_units"][-1] < history["open_units"][0]
    plain_open = float(instability(plain, x_test, eps)[1])
    stable_open = float(instability(stable, x_test, eps)[1])
    assert stable_open < 0.6 * plain_open  # measured: 0.42 against 0.78
    accuracy = (stable.predict(x_test, verbose=0).argmax(1) == y_test).mean()
    assert accuracy > 0.7  # measured: 0.78 (0.89 without the loss)
    # what the verifier sees: fewer binary variables per image
    plain_path, stable_path = str(tmp_path / "plain.npz"), str(tmp_path / "stable.npz")
    qnn.export(plain, plain_path)
    qnn.export(stable, stable_path)
    binaries = [
        np.median([milp.encode(NetworkEncoding(path), x, eps)[0].binaries for x in x_test[:20]])
        for path in (plain_path, stable_path)
    ]
    assert binaries[1] < 0.6 * binaries[0]


@pytest.mark.backends
@pytest.mark.slow  # out of the JAX leg: 16 s of compiling there
def test_cardinality_bound_decay_is_eevs_hinge_on_the_bias(digits):
    """The hinge equals a NumPy computation from the moving statistics: per unit of
    the hidden layers after the first, k = (tau + kept) / 2 agreements, with tau the
    folded threshold and kept the unit's non-zero weights (masks included), and
    relu(k - 5) summed. Trained with it, the bounds come down."""
    keras.utils.set_random_seed(0)
    masked = qnn.conv_small((8, 8, 1), filters=(4, 8), dense=16, kernel_mask=True)
    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    biased = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten()]
        + [qnn.QuantDense(12, input_quantizer="uint8", kernel_quantizer="ste_sign")]
        + [keras.layers.BatchNormalization()]
        + [qnn.QuantDense(12, **binary), keras.layers.BatchNormalization()]
        + [qnn.QuantDense(10, **binary), keras.layers.BatchNormalization()]
        + [qnn.QuantDense(3, **binary), keras.layers.BatchNormalization()]
    )
    rng = np.random.default_rng(0)
    for model in (masked, biased):
        randomize_batchnorm(model, mean_scale=20.0)
        quantized = [layer for layer in model.layers if isinstance(layer, qnn.QuantConv2D)]
        quantized += [layer for layer in model.layers if isinstance(layer, qnn.QuantDense)]
        norms = [
            layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
        ]
        for layer in quantized:
            if layer.mask is not None:
                layer.mask.assign(rng.normal(size=layer.mask.shape).astype(np.float32))
            if layer.use_bias:
                layer.bias.assign(rng.normal(scale=3.0, size=layer.bias.shape).astype(np.float32))
        expected = 0.0
        for layer, norm in list(zip(quantized, norms))[1:-1]:
            kernel = numpy(layer.quantized_kernel())
            kept = (kernel.reshape(-1, kernel.shape[-1]) != 0).sum(axis=0)
            gamma, beta, mean, variance = (numpy(w).astype(np.float64) for w in norm.weights)
            tau = mean - beta * np.sqrt(variance + norm.epsilon) / gamma
            if layer.use_bias:
                tau = tau - numpy(layer.bias)
            expected += np.maximum((tau + kept) / 2 - 5.0, 0).sum()
        assert expected > 0
        got = float(numpy(qnn.cardinality_bound_decay(model)))
        assert got == pytest.approx(expected, rel=1e-4)
    (x_train, y_train), _ = digits
    decays = []
    for hinge in (0.0, 0.05):
        keras.utils.set_random_seed(0)
        model = qnn.conv_small((8, 8, 1), filters=(4, 8), dense=16)
        trainer = VerifiableModel(model, eps=0.05, weight=0.0, bias_hinge=hinge)
        trainer.compile(
            keras.optimizers.Adam(3e-2),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        history = trainer.fit(x_train[:512], y_train[:512], epochs=2, batch_size=64, verbose=0)
        decays.append(history.history["bound_decay"][-1])
    assert decays[1] < 0.5 * decays[0]
    with pytest.raises(ValueError, match="training=True needs the batch"):
        qnn.cardinality_bound_decay(model, training=True)
    with pytest.raises(ValueError, match="bias_hinge"):
        VerifiableModel(model, eps=0.1, bias_hinge=-1.0)


def test_bad_input_is_refused_by_name(digits_qnns):
    float_twin = qnn.binary_mlp((8, 8, 1), width=8, depth=1, binary=False)
    with pytest.raises(ValueError, match="input quantizer"):
        VerifiableModel(float_twin, eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        VerifiableModel(digits_qnns["mlp"], eps=1.5)
    with pytest.raises(ValueError, match="weight"):
        VerifiableModel(digits_qnns["mlp"], eps=0.1, weight=-1)
    with pytest.raises(TypeError, match="model must be a keras.Model"):
        VerifiableModel("model.keras", eps=0.1)
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="Dense"):
        interval_bounds(dense, np.zeros((1, 4), np.float32), 0.1)
    with pytest.raises(ValueError, match="eps"):
        instability(digits_qnns["mlp"], np.zeros((1, 8, 8, 1), np.float32), -0.1)
    single = qnn.binary_mlp((8, 8, 1), width=8, depth=0)
    with pytest.raises(ValueError, match="no hidden binary layer"):
        instability(single, np.zeros((1, 8, 8, 1), np.float32), 0.1)
    no_norm = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            qnn.QuantDense(8, input_quantizer="uint8", kernel_quantizer="ste_sign"),
            qnn.QuantDense(3, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
        ]
    )
    with pytest.raises(ValueError, match="not followed by BatchNormalization"):
        VerifiableModel(no_norm, eps=0.1)


@pytest.mark.backends
def test_counterexample_mixing_pools_the_verifiers_counterexamples(digits):
    """Between epochs the callback verifies training digits; what it pools are
    points within eps of digits the exported engine classifies correctly, which
    the engine misclassifies; and the next batches carry them."""
    from advlib.qnn.engine import BinaryEngine
    from advlib.training import AdversarialModel

    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = qnn.binary_mlp((8, 8, 1), width=16, depth=2, input_step=0.25)
    trainer = AdversarialModel.from_recipe("goodfellow", model, eps=0.1, seed=0)
    trainer.compile(keras.optimizers.Adam(3e-3))
    mixing = qnn.CounterexampleMixing(
        x_train[:256], y_train[:256], eps=0.1, batch_size=64, n=48, time_limit=1.0, verbose=0
    )
    history = trainer.fit(mixing.batches, epochs=2, callbacks=[mixing], verbose=0).history
    found = [int(c) for c in history["counterexamples"]]
    assert found[-1] > 0 and history["pool"] == [found[0], sum(found)]
    assert 0 <= history["verified_robust"][-1] < 1
    pool = mixing.batches
    points, labels, rows = (
        pool.pool_x[-found[-1] :],
        pool.pool_y[-found[-1] :],
        pool.pool_rows[-found[-1] :],
    )
    np.testing.assert_array_equal(labels, y_train[rows])
    assert np.abs(points - x_train[rows]).max() <= 0.1 + 1e-6
    engine = BinaryEngine(**qnn.export(model))  # the weights of the last check
    np.testing.assert_array_equal(engine.predict_classes(x_train[rows]), labels)
    assert (engine.predict_classes(points) != labels).all()
    x, y = pool[0]
    mixed = min(round(0.25 * 64), len(pool.pool_x))
    for point, label in zip(x[-mixed:], y[-mixed:]):
        matches = np.flatnonzero((pool.pool_x == point).all(axis=(1, 2, 3)))
        assert matches.size and label in pool.pool_y[matches]
    assert len(x) == 64


def test_mixed_batches_repeat_from_their_seed_and_cover_the_data():
    x = np.random.default_rng(0).random((100, 2, 2, 1)).astype("float32")
    y = np.arange(100) % 10
    a, b = (qnn.MixedBatches(x, y, batch_size=32, share=0.5, seed=3) for _ in range(2))
    seen = np.concatenate([a[i][1] for i in range(len(a))])
    assert len(a) == 4 and sorted(seen) == sorted(y)  # an empty pool mixes nothing
    for batches in (a, b):
        batches.add(np.ones((5, 2, 2, 1), "float32"), np.full(5, 7), np.arange(5), capacity=4)
        batches.on_epoch_end()
    assert len(a.pool_x) == 4 and a.pool_rows.tolist() == [1, 2, 3, 4]
    for i in range(len(a)):
        (xa, ya), (xb, yb) = a[i], b[i]
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        mixed = min(round(0.5 * len(xa)), 4)
        assert (xa[-mixed:] == 1).all() and (ya[-mixed:] == 7).all()
        assert not (xa[:-mixed] == 1).all(axis=(1, 2, 3)).any()


def test_counterexample_mixing_refuses_bad_input_by_name():
    x, y = np.zeros((8, 8, 8, 1), "float32"), np.zeros(8, int)
    with pytest.raises(ValueError, match="share"):
        qnn.CounterexampleMixing(x, y, eps=0.1, share=1.0)
    with pytest.raises(ValueError, match="eps"):
        qnn.CounterexampleMixing(x, y, eps=0.0)
    with pytest.raises(ValueError, match="backend"):
        qnn.CounterexampleMixing(x, y, eps=0.1, backend="z3")
    with pytest.raises(ValueError, match="y must hold one class index"):
        qnn.CounterexampleMixing(x, np.eye(10)[y], eps=0.1)
    with pytest.raises(ValueError, match="x"):
        qnn.CounterexampleMixing(x + 2, y, eps=0.1)
