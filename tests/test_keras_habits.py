"""Keras habits that advlib must follow: compile(loss, metrics), global seeding, and
Larq's spelling of quantized layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advlib import qnn
from advlib.attacks import SPSA, ProjectedGradientDescent, SaliencyMapMethod
from advlib.qnn import QuantConv2D, QuantDense, SteSign, StochasticBinarization, WeightClip
from advlib.training import AdversarialModel

EPS = 0.1


def small_model(softmax=False):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax" if softmax else None),
        ]
    )


def robust(model, recipe="fast", **overrides):
    return AdversarialModel.from_recipe(recipe, model, eps=EPS, seed=3, **overrides)


# -- compile(loss=..., metrics=...) ---------------------------------------------------
@pytest.mark.slow
def test_the_everyday_compile_line_trains_and_reports_clean_and_adversarial_metrics(digits):
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = small_model()
    trainer = robust(model)
    trainer.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = trainer.fit(
        x_train, y_train, epochs=3, batch_size=64, verbose=0, validation_data=(x_test, y_test)
    ).history
    for name in ("accuracy", "adv_accuracy", "val_accuracy", "val_adv_accuracy", "loss"):
        assert name in history, sorted(history)
    assert history["loss"][-1] < history["loss"][0]
    # val_accuracy is the model's accuracy on the validation set, recomputed here
    accuracy = np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test)
    assert history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert history["val_adv_accuracy"][-1] < history["val_accuracy"][-1]


def test_the_given_loss_is_the_training_loss(digits):
    """The same attack (same seed), so the same adversarial batch: the given
    cross-entropy reproduces the default exactly; a doubled one doubles both parts."""
    _, (x_test, y_test) = digits
    keras.utils.set_random_seed(1)
    model = small_model()
    logs = {}
    for name, loss in (
        ("default", None),
        ("given", keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        (
            "doubled",
            lambda y, p: 2 * keras.losses.sparse_categorical_crossentropy(y, p, from_logits=True),
        ),
    ):
        trainer = robust(model)
        trainer.compile(optimizer="adam", loss=loss)
        logs[name] = trainer.evaluate(
            x_test, y_test, batch_size=len(x_test), verbose=0, return_dict=True
        )
    for part in ("loss", "clean_loss", "adv_loss"):
        assert logs["given"][part] == pytest.approx(logs["default"][part], rel=1e-6)
        assert logs["doubled"][part] == pytest.approx(2 * logs["default"][part], rel=1e-5)


def test_trades_keeps_its_kl_term_and_uses_the_given_loss_for_the_natural_part(digits):
    _, (x_test, y_test) = digits
    keras.utils.set_random_seed(2)
    model = small_model()
    logs = []
    for scale in (1.0, 3.0):
        trainer = robust(model, "trades", nb_iter=2)
        trainer.compile(
            loss=lambda y, p, s=scale: (
                s * keras.losses.sparse_categorical_crossentropy(y, p, from_logits=True)
            )
        )
        logs.append(
            trainer.evaluate(x_test, y_test, batch_size=len(x_test), verbose=0, return_dict=True)
        )
    kl = [log["loss"] - log["clean_loss"] for log in logs]
    assert kl[0] > 0 and kl[1] == pytest.approx(kl[0], rel=1e-4)
    assert logs[1]["clean_loss"] == pytest.approx(3 * logs[0]["clean_loss"], rel=1e-5)


@pytest.mark.slow
def test_one_hot_labels_train_with_categorical_crossentropy(digits):
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    model = small_model(softmax=True)
    trainer = robust(model)
    trainer.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy", keras.metrics.CategoricalAccuracy(name="cat")],
    )
    history = trainer.fit(
        x_train,
        keras.utils.to_categorical(y_train, 10),
        epochs=4,
        batch_size=64,
        verbose=0,
        validation_data=(x_test, keras.utils.to_categorical(y_test, 10)),
    )
    history = history.history
    accuracy = np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test)
    assert accuracy > 0.6
    assert history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert history["val_cat"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert history["val_adv_cat"][-1] == pytest.approx(history["val_adv_accuracy"][-1])
    with pytest.raises(ValueError, match="needs one-hot labels of shape"):
        trainer.fit(x_train, y_train, epochs=1, verbose=0)
    trainer.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="needs class indices, got one-hot y"):
        trainer.fit(x_train, keras.utils.to_categorical(y_train, 10), epochs=1, verbose=0)


def test_a_loss_on_the_wrong_outputs_is_refused():
    with pytest.raises(ValueError, match=r"expects probabilities .* returns logits"):
        robust(small_model()).compile(loss=keras.losses.CategoricalCrossentropy())
    with pytest.raises(ValueError, match=r"expects logits .* returns probabilities"):
        robust(small_model(softmax=True)).compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )


# -- keras.utils.set_random_seed ------------------------------------------------------
def draws(digits_mlp, x, y):
    """Everything advlib draws at random when no seed is given."""
    pgd = ProjectedGradientDescent(digits_mlp).generate_np(
        x, eps=0.2, nb_iter=2, clip_min=0.0, clip_max=1.0
    )
    spsa = SPSA(digits_mlp).generate_np(
        x[:4], eps=0.2, nb_iter=2, spsa_samples=8, clip_min=0.0, clip_max=1.0
    )
    targets = SaliencyMapMethod(digits_mlp).run(x[:8], y[:8], gamma=0.05).labels
    stochastic = StochasticBinarization()(
        tf.constant(x[:4].reshape(4, -1) * 2 - 1), training=True
    ).numpy()
    trainer = AdversarialModel.from_recipe("fast", small_model(), eps=EPS)
    return [pgd, spsa, targets, stochastic, np.array(trainer.seed)]


def test_keras_seeding_makes_every_random_draw_reproducible(digits_mlp, digits_eval):
    x, y = digits_eval[0][:16], digits_eval[1][:16]
    runs = []
    for seed in (7, 7, 8):
        keras.utils.set_random_seed(seed)
        runs.append(draws(digits_mlp, x, y))
    for first, again, other in zip(*runs):
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)
    # an explicit seed stays stateless: the global state does not matter
    explicit = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        explicit.append(
            ProjectedGradientDescent(digits_mlp).generate_np(
                x, eps=0.2, nb_iter=2, clip_min=0.0, clip_max=1.0, seed=5
            )
        )
    np.testing.assert_array_equal(*explicit)


# -- Larq's spelling --------------------------------------------------------------------
def larq_tutorial_model(quantizer="ste_sign"):
    """The model of Larq's introductory MNIST tutorial, with `import larq as lq`
    replaced by advlib's layers (and Keras 3's Input instead of input_shape)."""
    kwargs = dict(
        input_quantizer=quantizer, kernel_quantizer=quantizer, kernel_constraint="weight_clip"
    )
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            QuantConv2D(
                32,
                (3, 3),
                kernel_quantizer=quantizer,
                kernel_constraint="weight_clip",
                use_bias=False,
            ),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.BatchNormalization(scale=False),
            QuantConv2D(64, (3, 3), use_bias=False, **kwargs),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.BatchNormalization(scale=False),
            QuantConv2D(64, (3, 3), use_bias=False, **kwargs),
            keras.layers.BatchNormalization(scale=False),
            keras.layers.Flatten(),
            QuantDense(64, use_bias=False, **kwargs),
            keras.layers.BatchNormalization(scale=False),
            QuantDense(10, use_bias=False, **kwargs),
            keras.layers.BatchNormalization(scale=False),
            keras.layers.Activation("softmax"),
        ]
    )


@pytest.mark.parametrize(
    "quantizer",
    [
        "ste_sign",
        pytest.param(qnn.ste_sign, marks=pytest.mark.slow),
        pytest.param(SteSign, marks=pytest.mark.slow),
    ],
)
def test_larq_tutorial_model_ports_by_changing_the_import(digits, quantizer, tmp_path):
    (x_train, y_train), _ = digits
    images = np.pad(x_train[:256], ((0, 0), (10, 10), (10, 10), (0, 0))) * 2 - 1
    keras.utils.set_random_seed(0)
    model = larq_tutorial_model(quantizer)
    quant = [layer for layer in model.layers if isinstance(layer, (QuantConv2D, QuantDense))]
    assert all(isinstance(layer.kernel_quantizer, SteSign) for layer in quant)
    assert all(isinstance(layer.kernel_constraint, WeightClip) for layer in quant)
    assert quant[0].input_quantizer is None
    assert all(isinstance(layer.input_quantizer, SteSign) for layer in quant[1:])
    model.compile(
        keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(images, y_train[:256], epochs=1, batch_size=64, verbose=0)
    # the constraint keeps the latent weights in [-1, 1], as Larq's weight_clip does
    assert max(float(np.abs(layer.kernel.numpy()).max()) for layer in quant) <= 1.0
    path = str(tmp_path / "larq.keras")
    model.save(path)
    from advlib.models import load_model

    again = load_model(path)
    np.testing.assert_array_equal(
        again.predict(images[:8], verbose=0), model.predict(images[:8], verbose=0)
    )


def test_quantizer_errors_list_the_real_choices():
    with pytest.raises(ValueError) as error:
        QuantDense(4, kernel_quantizer="approx_sign")
    message = str(error.value)
    assert "Ellipsis" not in message and "'8bit'" in message and "'ste_sign'" in message
    with pytest.raises(ValueError, match="quantizer must be"):
        QuantDense(4, kernel_quantizer=np.sign)
