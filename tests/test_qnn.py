"""Quantizers, quantized layers, training, saving and the engine's exactness."""

import keras
import numpy as np
import pytest
from conftest import randomize_batchnorm, run_python
from keras import ops

from advlib import backend, qnn
from advlib.attacks import ProjectedGradientDescent
from advlib.models import QNNModelWrapper
from advlib.qnn.engine import BinaryEngine

X = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], np.float32)


def forward_and_gradient(fn, x=X):
    """fn(x) and its elementwise derivative, through the backend's own autodiff."""
    value, gradient, _ = backend.value_and_gradient(
        lambda t: (fn(t), None), ops.convert_to_tensor(x)
    )
    return backend.to_numpy(value), backend.to_numpy(gradient)


@pytest.mark.backends
def test_ste_sign_values_and_gradient():
    y, grad = forward_and_gradient(qnn.ste_sign)
    np.testing.assert_array_equal(y, [-1, -1, -1, 1, 1, 1, 1])  # never 0, unlike tf.sign
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0])


@pytest.mark.backends
@pytest.mark.parametrize(
    "name,expected",
    [
        ("ste", [0, 1, 1, 1, 1, 1, 0]),
        ("identity", [1, 1, 1, 1, 1, 1, 1]),
        ("zero", [0, 0, 0, 0, 0, 0, 0]),
        ("smooth", list((1 - np.tanh(X.astype(np.float64) / 0.5) ** 2) / 0.5)),
    ],
)
def test_sign_surrogates_change_only_the_gradient(name, expected):
    layer = qnn.SteSign()
    with qnn.sign_surrogate(name, temperature=0.5):
        y, grad = forward_and_gradient(layer)
    np.testing.assert_array_equal(y, [-1, -1, -1, 1, 1, 1, 1])
    # the backends differentiate tanh by different formulas: 1e-6, as across backends
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="surrogate must be one of"), qnn.sign_surrogate("magic"):
        pass


@pytest.mark.backends
def test_stochastic_binarization():
    weights = np.full([20000], 0.5, np.float32)
    draws = [
        ops.convert_to_numpy(qnn.StochasticBinarization(seed=3)(weights, training=True))
        for _ in range(2)
    ]
    np.testing.assert_array_equal(draws[0], draws[1])  # seeded
    assert set(np.unique(draws[0])) == {-1.0, 1.0}
    assert abs(np.mean(draws[0] == 1) - 0.75) < 0.02  # P(+1) = hard_sigmoid(0.5)
    other = ops.convert_to_numpy(qnn.StochasticBinarization(seed=4)(weights, training=True))
    assert not np.array_equal(draws[0], other)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(qnn.StochasticBinarization()(X, training=False)),
        ops.convert_to_numpy(qnn.ste_sign(X)),
    )
    _, grad = forward_and_gradient(lambda x: qnn.StochasticBinarization()(x, training=True))
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0])


@pytest.mark.backends
def test_k_bit_quantizer():
    y, grad = forward_and_gradient(qnn.KBitQuantizer(2))
    np.testing.assert_allclose(y, [-1, -1, -1 / 3, 1 / 3, 1 / 3, 1, 1], atol=1e-6)
    # the clipping range's ends pass the whole gradient, on every backend
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0])
    grid = np.linspace(-1.0, 1.0, 1000, dtype=np.float32)
    levels = np.unique(ops.convert_to_numpy(qnn.KBitQuantizer(3)(grid)))
    assert len(levels) == 8
    for bad in (0, 9, 2.5):
        with pytest.raises(ValueError, match="k must be an integer from 1 to 8"):
            qnn.KBitQuantizer(bad)


@pytest.mark.backends
def test_uint8_input():
    x = np.array([0.0, 0.5, 1 / 255, 1.0, 1.2], np.float32)
    y, grad = forward_and_gradient(qnn.Uint8Input(), x)
    np.testing.assert_array_equal(y, [0, 128, 1, 255, 255])
    np.testing.assert_array_equal(grad, [255, 255, 255, 255, 0])


@pytest.mark.backends
def test_straight_through_gradients_match_their_formulas():
    """Each quantizer's backward pass, on this backend, equals the estimator it
    defines, computed in NumPy: so the three backends agree with each other.
    The values include the ends of every clipping range, where the backends'
    own clip functions disagree."""
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.uniform(-2, 2, 2000), [-1.0, 1.0, 0.0, -0.0, 0.5, 255.0, 1 / 255]]
    ).astype(np.float32)
    inside = (np.abs(x) <= 1).astype(np.float32)
    expected = {
        "ste_sign": (qnn.ste_sign, inside),
        "stochastic": (lambda t: qnn.StochasticBinarization(seed=0)(t, training=True), inside),
        "2bit": (qnn.KBitQuantizer(2), inside),
        "8bit on [0, 2]": (
            qnn.KBitQuantizer(8, 0.0, 2.0),
            ((x >= 0) & (x <= 2)).astype(np.float32),
        ),
        "uint8": (qnn.Uint8Input(), 255 * ((x >= 0) & (x <= 1)).astype(np.float32)),
    }
    for name, (quantizer, derivative) in expected.items():
        _, gradient = forward_and_gradient(quantizer, x)
        np.testing.assert_allclose(gradient, derivative, atol=1e-6, err_msg=name)
    for surrogate, derivative in (
        ("identity", np.ones_like(x)),
        ("zero", np.zeros_like(x)),
        ("smooth", (1 - np.tanh(x.astype(np.float64) / 0.5) ** 2) / 0.5),
    ):
        with qnn.sign_surrogate(surrogate, temperature=0.5):
            _, gradient = forward_and_gradient(qnn.SteSign(), x)
        np.testing.assert_allclose(gradient, derivative, atol=1e-6, err_msg=surrogate)


@pytest.mark.backends
def test_quant_conv_pads_with_pad_values():
    layer = qnn.QuantConv2D(
        1,
        3,
        padding="same",
        pad_values=1.0,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        use_bias=False,
    )
    x = -np.ones((1, 4, 4, 1), np.float32)
    layer.build(x.shape)
    layer.kernel.assign(np.ones((3, 3, 1, 1), np.float32))
    out = ops.convert_to_numpy(layer(x))[0, ..., 0]
    # a corner sees 4 inputs of -1 and 5 padded +1: 1; the centre sees 9 x -1
    assert out[0, 0] == 1 and out[1, 1] == -9 and out[0, 1] == -3
    plain = qnn.QuantConv2D(1, 3, padding="same", use_bias=False)
    plain.build(x.shape)
    plain.kernel.assign(np.ones((3, 3, 1, 1), np.float32))
    assert ops.convert_to_numpy(plain(x))[0, 0, 0, 0] == -4  # Keras's zeros


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_binary_networks_learn_digits(digits_qnns, digits, kind):
    _, (x_test, y_test) = digits
    model = digits_qnns[kind]
    assert model.evaluate(x_test, y_test, verbose=0)[1] >= 0.85
    for layer in model.layers:
        if isinstance(layer, (qnn.QuantDense, qnn.QuantConv2D)):
            kernel = ops.convert_to_numpy(layer.kernel)
            assert np.abs(kernel).max() <= 1.0  # latent weights clipped after updates


@pytest.mark.backends
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_engine_is_bit_exact_on_all_digits(digits_qnns, digits, tmp_path, kind):
    (x_train, _), (x_test, _) = digits
    model = digits_qnns[kind]
    path = str(tmp_path / f"{kind}.npz")
    qnn.export(model, path)
    engine = BinaryEngine.load(path)
    report = qnn.check_exactness(model, engine, np.concatenate([x_train, x_test]))
    assert report["exact"], report
    assert sum(report["hidden_mismatches"]) == 0 and sum(report["hidden_bits"]) > 0
    assert report["max_logit_rel_error"] <= 1e-4
    assert report["prediction_agreement"] == 1.0


@pytest.mark.backends
@pytest.mark.skipif(
    backend.name() == "tensorflow",
    reason="compares this backend's export with TensorFlow's: the JAX and PyTorch legs",
)
def test_export_is_the_same_on_another_backend(digits_qnns, digits, tmp_path):
    """The trained binary CNN saved here, loaded and exported on TensorFlow, gives
    the same engine file, array for array, bit for bit: so the same engine
    predictions."""
    _, (x_test, _) = digits
    other = "tensorflow"
    model = digits_qnns["cnn"]
    model.save(tmp_path / "cnn.keras")
    qnn.export(model, str(tmp_path / "here.npz"))
    script = (
        "from advlib import qnn\n"
        "from advlib.models import load_model\n"
        f"qnn.export(load_model({str(tmp_path / 'cnn.keras')!r}), "
        f"{str(tmp_path / 'there.npz')!r})\n"
    )
    done = run_python(script, KERAS_BACKEND=other)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "here.npz") as here, np.load(tmp_path / "there.npz") as there:
        assert sorted(here.files) == sorted(there.files)
        for key in here.files:
            np.testing.assert_array_equal(here[key], there[key], err_msg=key)
    predictions = [
        BinaryEngine.load(str(tmp_path / f)).predict(x_test) for f in ("here.npz", "there.npz")
    ]
    np.testing.assert_array_equal(*predictions)


def random_binary_model(seed, channels=(3, 5, 33), dense=17, input_shape=(9, 7, 2)):
    """Random weights and BatchNorm statistics, negative and zero scales included."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input(input_shape)]
    for i, width in enumerate(channels):
        layers += [
            qnn.QuantConv2D(
                width,
                3,
                padding="same" if i != 1 else "valid",
                strides=2 if i == 2 else 1,
                pad_values=0.0 if i == 0 else (-1.0 if i == 2 else 1.0),
                input_quantizer="uint8" if i == 0 else "ste_sign",
                kernel_quantizer="ste_sign",
                use_bias=i == 1,
            ),
            keras.layers.BatchNormalization(),
        ]
        if i == 0:
            layers.append(keras.layers.MaxPooling2D(2, padding="same"))
    layers += [
        keras.layers.Flatten(),
        qnn.QuantDense(dense, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
        keras.layers.BatchNormalization(),
        qnn.QuantDense(4, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
        keras.layers.BatchNormalization(),
    ]
    model = keras.Sequential(layers)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma = rng.normal(size=n)
            gamma[0] = 0.0
            gamma[1] = -abs(gamma[1])
            layer.gamma.assign(gamma)
            layer.beta.assign(rng.normal(size=n))
            layer.moving_mean.assign(rng.normal(size=n) * 5)
            layer.moving_variance.assign(rng.uniform(0.5, 30, size=n))
        elif isinstance(layer, (qnn.QuantConv2D, qnn.QuantDense)) and layer.use_bias:
            layer.bias.assign(rng.normal(size=layer.bias.shape[0]))
    return model


# the PyTorch leg of the backend matrix runs one seed of the two (slow: not the JAX leg)
@pytest.mark.parametrize(
    "seed", [pytest.param(0, marks=[pytest.mark.backends, pytest.mark.slow]), 1]
)
def test_engine_is_exact_on_random_odd_shapes(seed, tmp_path):
    model = random_binary_model(seed)
    path = str(tmp_path / "random.npz")
    qnn.export(model, path)
    engine = BinaryEngine.load(path)
    x = np.random.default_rng(seed).random((37, 9, 7, 2), dtype=np.float32)
    report = qnn.check_exactness(model, engine, x, batch_size=16)
    assert report["exact"], report
    assert report["max_logit_rel_error"] <= 1e-4


@pytest.mark.backends
def test_export_refuses_what_it_cannot_represent():
    float_model = keras.Sequential([keras.Input((4,)), qnn.QuantDense(3)])
    with pytest.raises(ValueError, match="kernel quantizer is not binary"):
        qnn.export(float_model)
    two_bit = qnn.binary_mlp((4,), width=8, activation_bits=2)
    with pytest.raises(ValueError, match="input quantizer is KBitQuantizer"):
        qnn.export(two_bit)
    zero_padded = keras.Sequential(
        [
            keras.Input((5, 5, 1)),
            qnn.QuantConv2D(
                2, 3, padding="same", input_quantizer="uint8", kernel_quantizer="ste_sign"
            ),
            qnn.QuantConv2D(
                2, 3, padding="same", input_quantizer="ste_sign", kernel_quantizer="ste_sign"
            ),
        ]
    )
    with pytest.raises(ValueError, match="must pad with \\+1 or -1"):
        qnn.export(zero_padded)
    softmax_end = keras.Sequential(
        [
            keras.Input((4,)),
            qnn.QuantDense(3, input_quantizer="uint8", kernel_quantizer="ste_sign"),
            keras.layers.Softmax(),
        ]
    )
    with pytest.raises(ValueError, match="remove the layers after it"):
        qnn.export(softmax_end)


@pytest.mark.backends
def test_save_and_load_keras_file_in_safe_mode(digits_qnns, digits, tmp_path):
    _, (x_test, _) = digits
    model = digits_qnns["cnn"]
    path = str(tmp_path / "binary.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(
        loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0)
    )
    quantizers = {
        type(layer.kernel_quantizer).__name__
        for layer in loaded.layers
        if isinstance(layer, (qnn.QuantDense, qnn.QuantConv2D))
    }
    assert quantizers == {"SteSign"}
    stochastic = keras.Sequential(
        [
            keras.Input((4,)),
            qnn.QuantDense(
                2,
                input_quantizer=qnn.KBitQuantizer(3, -2.0, 2.0),
                kernel_quantizer=qnn.StochasticBinarization(seed=7),
            ),
        ]
    )
    stochastic.save(str(tmp_path / "s.keras"))
    again = keras.models.load_model(str(tmp_path / "s.keras"), safe_mode=True)
    assert again.layers[0].kernel_quantizer.seed == 7
    assert again.layers[0].input_quantizer.k == 3 and again.layers[0].input_quantizer.clip_min == -2


@pytest.mark.backends
def test_memory_summary_counts_bits():
    model = qnn.binary_mlp((8, 8, 1), width=64, depth=2)
    report = qnn.summary(model, print_fn=None)
    binary = 64 * 64 + 64 * 64 + 64 * 10
    assert report["by_precision"][1]["parameters"] == binary
    assert report["by_precision"][1]["bytes"] == 4 * (64 * 64 // 32) * 2 + 4 * 20
    batchnorm = 4 * (64 + 64 + 10)
    assert report["by_precision"][32]["parameters"] == batchnorm
    assert report["float32_bytes"] == 4 * (binary + batchnorm)
    assert report["ratio"] == pytest.approx(report["float32_bytes"] / report["total_bytes"])
    assert report["ratio"] > 10


@pytest.mark.backends
def test_attacks_on_qnns_use_the_surrogate_and_the_engine(digits_qnns, digits, tmp_path):
    _, (x_test, y_test) = digits
    model = digits_qnns["cnn"]
    path = str(tmp_path / "cnn.npz")
    qnn.export(model, path)
    x, y = x_test[:100], y_test[:100]
    params = dict(y=y, eps=0.15, eps_iter=0.04, nb_iter=8, seed=0, clip_min=0.0, clip_max=1.0)
    ste = QNNModelWrapper(model, surrogate="ste", engine=path)
    naive = QNNModelWrapper(model, surrogate="zero", engine=path)
    # the attacks' queries run on the BLAS twin: the reference engine's logits, bit for bit
    reference = BinaryEngine.load(path)
    assert ste.engine.backend == "numpy" and ste._predictor.backend == "blas"
    numpy = backend.to_numpy
    np.testing.assert_array_equal(numpy(ste.predict_logits(x)), reference.predict(x))
    keras_predictions = model.predict(x, verbose=0).argmax(1)
    np.testing.assert_array_equal(numpy(ste.predict_classes(x)), keras_predictions)
    clean = np.mean(numpy(ste.predict_classes(x)) == y)
    broken = np.mean(
        numpy(ste.predict_classes(ProjectedGradientDescent(ste).generate_np(x, **params))) == y
    )
    masked = np.mean(
        numpy(naive.predict_classes(ProjectedGradientDescent(naive).generate_np(x, **params))) == y
    )
    assert broken < clean - 0.3  # STE gradients break the binary network
    assert masked > broken + 0.2  # naive gradients make it look robust
    with pytest.raises(
        TypeError,
        match="engine must be a BinaryEngine, the path of an exported .npz or None, got dict",
    ):
        QNNModelWrapper(model, engine={"spec": None})


@pytest.mark.slow
def test_keras_loads_qnn_files_after_importing_advlib_models(tmp_path):
    import subprocess
    import sys
    import textwrap

    model = qnn.binary_mlp((4,), width=8)
    path = str(tmp_path / "m.keras")
    model.save(path)
    script = textwrap.dedent(f"""
        import keras, advlib.models
        keras.models.load_model({path!r}, safe_mode=True)
    """)
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.mark.backends
@pytest.mark.slow  # out of the JAX leg: JAX compiles the export's probes anew (13 s)
def test_masked_layers_are_ternary_and_export_bit_exact(tmp_path):
    """EEV's BinMask on conv-small: a weight is zero exactly where its mask is
    negative, the gate passes the gradient straight through, MaskDecay counts the
    kept weights, the mask survives saving, and the exported ternary engine equals
    the Keras model on random images and on every 8-bit level. A mask on the
    logits layer is refused."""
    y, grad = forward_and_gradient(qnn.ste_step)
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(grad, np.ones(7))
    keras.utils.set_random_seed(0)
    model = qnn.conv_small((8, 8, 1), input_step=0.25, kernel_mask=True, mask_decay=1e-3)
    randomize_batchnorm(model)
    masked = [layer for layer in model.layers if getattr(layer, "mask", None) is not None]
    assert len(masked) == 3  # the two convolutions and the hidden dense layer
    rng = np.random.default_rng(0)
    for layer in masked:
        layer.mask.assign(rng.normal(size=layer.mask.shape).astype(np.float32))
    for layer in masked:
        kernel = backend.to_numpy(layer.quantized_kernel())
        np.testing.assert_array_equal(kernel == 0, backend.to_numpy(layer.mask) < 0)
    kept = sum(int((backend.to_numpy(layer.mask) >= 0).sum()) for layer in masked)
    penalty = sum(float(backend.to_numpy(loss)) for loss in model.losses)
    np.testing.assert_allclose(penalty, 1e-3 * kept, rtol=1e-5)
    images = np.concatenate(
        [
            rng.random((200, 64), dtype=np.float32),
            np.repeat(np.arange(256, dtype=np.float32)[:, None] / 255, 64, axis=1),
        ]
    ).reshape(-1, 8, 8, 1)
    exported = qnn.export(model)
    assert exported["spec"]["version"] == 3
    computed = [layer for layer in exported["spec"]["layers"] if "output" in layer]
    assert [bool(layer.get("mask")) for layer in computed] == [True, True, True, False]
    assert qnn.check_exactness(model, BinaryEngine(**exported), images)["exact"]
    path = str(tmp_path / "masked.keras")
    model.save(path)
    again = keras.models.load_model(path)
    for ours, theirs in zip(masked, [again.get_layer(layer.name) for layer in masked]):
        np.testing.assert_array_equal(backend.to_numpy(ours.mask), backend.to_numpy(theirs.mask))
    np.testing.assert_array_equal(
        backend.to_numpy(again(images[:50])), backend.to_numpy(model(images[:50]))
    )
    logits_masked = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            qnn.QuantDense(
                4, input_quantizer="uint8", kernel_quantizer="ste_sign", kernel_mask=True
            ),
        ]
    )
    with pytest.raises(ValueError, match="logits layer must keep dense"):
        qnn.export(logits_masked)
    with pytest.raises(TypeError, match="kernel_mask must be True or False"):
        qnn.QuantDense(4, kernel_mask="yes")
    with pytest.raises(ValueError, match="mask_decay"):
        qnn.QuantDense(4, kernel_mask=True, mask_decay=-1.0)


@pytest.mark.backends
def test_stepped_input_is_eevs_grid_with_a_straight_through_gradient():
    quantizer = qnn.SteppedInput(0.61)
    # EEV's round(x / step): 0.31 / 0.61 = 0.508 rounds up, 0.92 / 0.61 = 1.508 too
    x = np.array([0.0, 0.3, 0.31, 0.9, 0.92, 1.0], np.float32)
    np.testing.assert_array_equal(backend.to_numpy(quantizer(x)), [0, 0, 1, 1, 2, 2])
    # every 8-bit level against round(level / 255 / step) in float64, ties aside
    for step in (0.61, 0.1, 1 / 255, 1.0):
        exact = np.arange(256) / 255 / step
        table = qnn.SteppedInput(step).table()
        clear = np.abs(exact - np.floor(exact) - 0.5) > 1e-4
        np.testing.assert_array_equal(table[clear], np.round(exact[clear]))
    assert qnn.SteppedInput(0.61).precision == 2 and qnn.SteppedInput(1 / 255).precision == 8
    _, gradient = forward_and_gradient(quantizer, np.array([-0.5, 0.2, 0.7, 1.5], np.float32))
    np.testing.assert_allclose(gradient, [0, 1 / 0.61, 1 / 0.61, 0], rtol=1e-6)
    config = keras.saving.serialize_keras_object(quantizer)
    assert keras.saving.deserialize_keras_object(config).step == 0.61
    for bad in (0.0, 0.5 / 255, 1.5, "0.5"):
        with pytest.raises((ValueError, TypeError), match="step"):
            qnn.SteppedInput(bad)


@pytest.mark.backends
# a stepped conv network's export is checked, with masks, in the test above
def test_stepped_networks_export_bit_exact():
    """Random weights and BatchNorm statistics, so that thresholds fall anywhere:
    the engine equals the Keras model on random images and on every 8-bit level,
    and an engine whose table is off by one level does not."""
    keras.utils.set_random_seed(0)
    model = qnn.binary_mlp((8, 8, 1), width=32, depth=2, input_step=0.61)
    randomize_batchnorm(model)
    rng = np.random.default_rng(0)
    exported = qnn.export(model)
    engine = BinaryEngine(exported["spec"], exported["arrays"])
    levels = np.repeat(np.arange(256, dtype=np.float32)[:, None] / 255, 64, axis=1)
    images = np.concatenate([rng.random((200, 64), dtype=np.float32), levels]).reshape(-1, 8, 8, 1)
    assert qnn.check_exactness(model, engine, images)["exact"]
    (key,) = [name for name in exported["arrays"] if name.endswith("/levels")]
    table = exported["arrays"][key]
    shifted = dict(exported["arrays"], **{key: np.minimum(table + 1, table.max())})
    wrong = BinaryEngine(exported["spec"], shifted)
    assert not qnn.check_exactness(model, wrong, images)["exact"]
