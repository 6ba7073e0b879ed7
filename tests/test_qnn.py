"""Quantizers, quantized layers, training, saving and the engine's exactness."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advlib import qnn
from advlib.attacks import ProjectedGradientDescent
from advlib.models import QNNModelWrapper
from advlib.qnn.engine import BinaryEngine

X = tf.constant([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])


def forward_and_gradient(fn, x=X):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y.numpy(), tape.gradient(y, x).numpy()


def test_ste_sign_values_and_gradient():
    y, grad = forward_and_gradient(qnn.ste_sign)
    np.testing.assert_array_equal(y, [-1, -1, -1, 1, 1, 1, 1])  # never 0, unlike tf.sign
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0])


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ste", [0, 1, 1, 1, 1, 1, 0]),
        ("identity", [1, 1, 1, 1, 1, 1, 1]),
        ("zero", [0, 0, 0, 0, 0, 0, 0]),
        ("smooth", list((1 - np.tanh(X.numpy() / 0.5) ** 2) / 0.5)),
    ],
)
def test_sign_surrogates_change_only_the_gradient(name, expected):
    layer = qnn.SteSign()
    with qnn.sign_surrogate(name, temperature=0.5):
        y, grad = forward_and_gradient(layer)
    np.testing.assert_array_equal(y, [-1, -1, -1, 1, 1, 1, 1])
    np.testing.assert_allclose(grad, expected, rtol=1e-4)
    with pytest.raises(ValueError, match="surrogate must be one of"), qnn.sign_surrogate("magic"):
        pass


def test_stochastic_binarization():
    weights = tf.fill([20000], 0.5)
    draws = [qnn.StochasticBinarization(seed=3)(weights, training=True).numpy() for _ in range(2)]
    np.testing.assert_array_equal(draws[0], draws[1])  # seeded
    assert set(np.unique(draws[0])) == {-1.0, 1.0}
    assert abs(np.mean(draws[0] == 1) - 0.75) < 0.02  # P(+1) = hard_sigmoid(0.5)
    other = qnn.StochasticBinarization(seed=4)(weights, training=True).numpy()
    assert not np.array_equal(draws[0], other)
    np.testing.assert_array_equal(qnn.StochasticBinarization()(X, training=False), qnn.ste_sign(X))
    _, grad = forward_and_gradient(lambda x: qnn.StochasticBinarization()(x, training=True))
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0])


def test_k_bit_quantizer():
    y, grad = forward_and_gradient(qnn.KBitQuantizer(2))
    np.testing.assert_allclose(y, [-1, -1, -1 / 3, 1 / 3, 1 / 3, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0])
    levels = np.unique(qnn.KBitQuantizer(3)(tf.linspace(-1.0, 1.0, 1000)).numpy())
    assert len(levels) == 8
    for bad in (0, 9, 2.5):
        with pytest.raises(ValueError, match="k must be an integer from 1 to 8"):
            qnn.KBitQuantizer(bad)


def test_uint8_input():
    x = tf.constant([0.0, 0.5, 1 / 255, 1.0, 1.2])
    y, grad = forward_and_gradient(qnn.Uint8Input(), x)
    np.testing.assert_array_equal(y, [0, 128, 1, 255, 255])
    np.testing.assert_array_equal(grad, [255, 255, 255, 255, 0])


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
    out = layer(x).numpy()[0, ..., 0]
    # a corner sees 4 inputs of -1 and 5 padded +1: 1; the centre sees 9 x -1
    assert out[0, 0] == 1 and out[1, 1] == -9 and out[0, 1] == -3
    plain = qnn.QuantConv2D(1, 3, padding="same", use_bias=False)
    plain.build(x.shape)
    plain.kernel.assign(np.ones((3, 3, 1, 1), np.float32))
    assert plain(x).numpy()[0, 0, 0, 0] == -4  # Keras's zeros


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_binary_networks_learn_digits(digits_qnns, digits, kind):
    _, (x_test, y_test) = digits
    model = digits_qnns[kind]
    assert model.evaluate(x_test, y_test, verbose=0)[1] >= 0.85
    for layer in model.layers:
        if isinstance(layer, (qnn.QuantDense, qnn.QuantConv2D)):
            kernel = layer.kernel.numpy()
            assert np.abs(kernel).max() <= 1.0  # latent weights clipped after updates


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


@pytest.mark.parametrize("seed", [0, 1])
def test_engine_is_exact_on_random_odd_shapes(seed, tmp_path):
    model = random_binary_model(seed)
    path = str(tmp_path / "random.npz")
    qnn.export(model, path)
    engine = BinaryEngine.load(path)
    x = np.random.default_rng(seed).random((37, 9, 7, 2), dtype=np.float32)
    report = qnn.check_exactness(model, engine, x, batch_size=16)
    assert report["exact"], report
    assert report["max_logit_rel_error"] <= 1e-4


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


def test_attacks_on_qnns_use_the_surrogate_and_the_engine(digits_qnns, digits, tmp_path):
    _, (x_test, y_test) = digits
    model = digits_qnns["cnn"]
    path = str(tmp_path / "cnn.npz")
    qnn.export(model, path)
    x, y = x_test[:150], y_test[:150]
    params = dict(y=y, eps=0.15, eps_iter=0.02, nb_iter=20, seed=0, clip_min=0.0, clip_max=1.0)
    ste = QNNModelWrapper(model, surrogate="ste", engine=path)
    naive = QNNModelWrapper(model, surrogate="zero", engine=path)
    # the attacks' queries run on the BLAS twin: the reference engine's logits, bit for bit
    reference = BinaryEngine.load(path)
    assert ste.engine.backend == "numpy" and ste._predictor.backend == "blas"
    np.testing.assert_array_equal(ste.predict_logits(x).numpy(), reference.predict(x))
    keras_predictions = model.predict(x, verbose=0).argmax(1)
    np.testing.assert_array_equal(ste.predict_classes(x).numpy(), keras_predictions)
    clean = np.mean(ste.predict_classes(x).numpy() == y)
    broken = np.mean(
        ste.predict_classes(ProjectedGradientDescent(ste).generate_np(x, **params)).numpy() == y
    )
    masked = np.mean(
        naive.predict_classes(ProjectedGradientDescent(naive).generate_np(x, **params)).numpy() == y
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
