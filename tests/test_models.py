"""Model wrappers: softmax detection, logits, gradients and callables."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advlib.attacks import FastGradientMethod
from advlib.models import CallableModelWrapper, KerasModelWrapper, Model


def dense_stack(final):
    """A 5 -> 4 -> 3 network whose last step is `final`."""
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(inputs)
    return inputs, hidden, final(hidden)


SOFTMAX_ENDINGS = {
    "dense_softmax": lambda h: keras.layers.Dense(3, activation="softmax", name="head")(h),
    "softmax_layer": lambda h: keras.layers.Softmax()(keras.layers.Dense(3, name="head")(h)),
    "activation_layer": lambda h: keras.layers.Activation("softmax")(
        keras.layers.Dense(3, name="head")(h)
    ),
}


def reference_logits(model, x):
    hidden = model.get_layer("hidden")(x)
    head = model.get_layer("head")
    return hidden @ head.kernel + head.bias


@pytest.mark.parametrize("ending", sorted(SOFTMAX_ENDINGS))
def test_functional_models_are_split_before_the_softmax(ending):
    inputs, _, outputs = dense_stack(SOFTMAX_ENDINGS[ending])
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    wrapped = KerasModelWrapper(model)
    assert wrapped.output_kind == "softmax-split"
    np.testing.assert_allclose(wrapped.get_logits(x), reference_logits(model, x), atol=1e-5)
    np.testing.assert_allclose(wrapped.get_probs(x), model(x), atol=1e-6)
    assert wrapped.nb_classes == 3
    # the model itself is untouched: still outputs probabilities
    np.testing.assert_allclose(model(x).numpy().sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("ending", sorted(SOFTMAX_ENDINGS))
def test_sequential_models_are_split_before_the_softmax(ending):
    layers = [keras.Input((5,)), keras.layers.Dense(4, activation="tanh", name="hidden")]
    if ending == "dense_softmax":
        layers.append(keras.layers.Dense(3, activation="softmax", name="head"))
    else:
        layers.append(keras.layers.Dense(3, name="head"))
        layers.append(
            keras.layers.Softmax()
            if ending == "softmax_layer"
            else keras.layers.Activation("softmax")
        )
    model = keras.Sequential(layers)
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    wrapped = KerasModelWrapper(model)
    assert wrapped.output_kind == "softmax-split"
    np.testing.assert_allclose(wrapped.get_logits(x), reference_logits(model, x), atol=1e-5)


def test_nested_model_ending_in_softmax():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name="head")]
    )
    outer = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="hidden"), inner])
    x = np.ones((2, 5), np.float32)
    wrapped = KerasModelWrapper(outer)
    head = inner.get_layer("head")
    expected = outer.get_layer("hidden")(x) @ head.kernel + head.bias
    np.testing.assert_allclose(wrapped.get_logits(x), expected, atol=1e-5)


def test_logits_models_are_used_as_they_are():
    inputs, _, outputs = dense_stack(lambda h: keras.layers.Dense(3, name="head")(h))
    model = keras.Model(inputs, outputs)
    wrapped = KerasModelWrapper(model)
    assert wrapped.output_kind == "logits"
    x = np.ones((2, 5), np.float32)
    np.testing.assert_allclose(wrapped.get_logits(x), model(x), atol=1e-6)


def test_from_logits_overrides_detection():
    inputs, _, outputs = dense_stack(SOFTMAX_ENDINGS["dense_softmax"])
    model = keras.Model(inputs, outputs)
    x = np.ones((2, 5), np.float32)
    as_is = KerasModelWrapper(model, from_logits=True)
    np.testing.assert_allclose(as_is.get_logits(x), model(x), atol=1e-6)


class Subclassed(keras.Model):
    def __init__(self, probs=False):
        super().__init__()
        self.dense = keras.layers.Dense(3, activation="softmax" if probs else None)

    def call(self, x):
        return self.dense(x)


def test_subclassed_models():
    model = Subclassed()
    x = np.ones((2, 5), np.float32)
    wrapped = KerasModelWrapper(model)
    assert wrapped.output_kind == "logits"
    np.testing.assert_allclose(wrapped.get_logits(x), model(x), atol=1e-6)
    with pytest.warns(UserWarning, match="log-probabilities"):
        probs = KerasModelWrapper(Subclassed(probs=True), from_logits=False)
    out = probs.get_logits(x)
    np.testing.assert_allclose(tf.nn.softmax(out), probs.model(x), atol=1e-6)


def test_undetected_probabilities_warn():
    model = Subclassed(probs=True)
    model(np.ones((1, 5), np.float32))
    with pytest.warns(UserWarning, match="look like probabilities"):
        KerasModelWrapper(model).check_output(tf.zeros((1, 5)))


def saturated_model():
    """Softmax saturates to exactly 1.0 in float32: probabilities carry no gradient."""
    inputs = keras.Input((2,))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.array([[20.0, -20.0], [0.0, 0.0]], np.float32), np.zeros(2)])
    return model


def test_gradients_never_pass_through_saturated_probabilities():
    model = saturated_model()
    x = tf.constant([[1.0, 0.5]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        # the usual loss on probabilities clips them away from 0 and 1
        naive = -tf.math.log(tf.clip_by_value(model(x), 1e-7, 1 - 1e-7)[:, 0])
    assert np.all(tape.gradient(naive, x).numpy() == 0)  # the masking we avoid
    wrapped = KerasModelWrapper(model)
    _, grad, _ = wrapped.loss_gradient(x, tf.constant([0]), wrapped_loss(), targeted=False)
    assert np.abs(grad.numpy()[0, 0]) > 0
    x_adv = FastGradientMethod(model).generate_np(x.numpy(), eps=0.1, y=[0])
    np.testing.assert_allclose(x_adv[0, 0], 0.9, atol=1e-6)


def wrapped_loss():
    from advlib.losses import cross_entropy

    return cross_entropy


def test_callable_wrapper_logits_and_probs():
    weights = tf.constant(np.random.default_rng(3).normal(size=(5, 3)), tf.float32)
    x = np.ones((4, 5), np.float32)
    logits = CallableModelWrapper(lambda z: z @ weights, output_layer="logits")
    probs = CallableModelWrapper(lambda z: tf.nn.softmax(z @ weights), output_layer="probs")
    np.testing.assert_allclose(tf.nn.softmax(probs.get_logits(x)), logits.get_probs(x), atol=1e-6)
    np.testing.assert_array_equal(logits.predict_classes(x), probs.predict_classes(x))
    assert logits.check_output(tf.constant(x)) == 3
    with pytest.raises(ValueError, match="output_layer"):
        CallableModelWrapper(lambda z: z, output_layer="scores")


def test_custom_model_subclass():
    class Doubler(Model):
        def get_logits(self, x):
            return tf.concat([x, -x], axis=1)

    model = Doubler()
    x = np.array([[0.2], [0.7]], np.float32)
    assert model.check_output(tf.constant(x)) == 2
    x_adv = FastGradientMethod(model).generate_np(x, eps=0.1, y=[0, 0])
    np.testing.assert_allclose(x_adv, x - 0.1, atol=1e-7)
