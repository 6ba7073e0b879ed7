"""Every bad input gets a ValueError or TypeError naming what is wrong."""

import keras
import numpy as np
import pytest
from conftest import linear_model

from advlib.attacks import (
    BasicIterativeMethod,
    FastGradientMethod,
    MomentumIterativeMethod,
    ProjectedGradientDescent,
)

ATTACKS = [
    FastGradientMethod,
    BasicIterativeMethod,
    ProjectedGradientDescent,
    MomentumIterativeMethod,
]


@pytest.fixture(scope="module")
def model():
    return linear_model(np.random.default_rng(0).normal(size=(6, 3)))


@pytest.fixture
def x():
    return np.full((4, 6), 0.5, np.float32)


@pytest.mark.parametrize("attack_class", ATTACKS)
@pytest.mark.parametrize(
    "params,error,words",
    [
        (dict(eps=-0.1), ValueError, ["eps", "-0.1"]),
        (dict(eps="big"), TypeError, ["eps", "big"]),
        (dict(norm=3), ValueError, ["norm", "3", "np.inf, 1 or 2"]),
        (dict(ord="l3"), ValueError, ["norm", "l3"]),
        (dict(clip_min=1.0, clip_max=0.0), ValueError, ["clip_min", "clip_max"]),
        (dict(y=[0, 1, 2]), ValueError, ["y", "(4)", "(3,)"]),
        (dict(y=[0, 1, 2, 3]), ValueError, ["y", "class 3", "0..2"]),
        (dict(y=[0, 1, 2, -1]), ValueError, ["y", "-1"]),
        (dict(y=[0.5, 1, 2, 0]), TypeError, ["y", "integer"]),
        (dict(y_target=[[1, 1, 0]] * 4), ValueError, ["y_target", "one-hot"]),
        (dict(y=[0, 1, 2, 0], y_target=[1, 1, 1, 1]), ValueError, ["y", "y_target", "together"]),
        (dict(targeted=True), ValueError, ["targeted", "y_target"]),
        (dict(epsilon=0.1), TypeError, ["epsilon", "allowed"]),
    ],
)
def test_bad_parameters(model, x, attack_class, params, error, words):
    with pytest.raises(error) as info:
        attack_class(model).generate_np(x, **params)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("attack_class", ATTACKS[1:])
@pytest.mark.parametrize(
    "params,name",
    [
        (dict(nb_iter=0), "nb_iter"),
        (dict(nb_iter=2.5), "nb_iter"),
        (dict(eps_iter=-1.0), "eps_iter"),
    ],
)
def test_bad_iteration_parameters(model, x, attack_class, params, name):
    with pytest.raises((ValueError, TypeError), match=name):
        attack_class(model).generate_np(x, **params)


@pytest.mark.parametrize("attack_class", ATTACKS)
def test_inputs_outside_the_clip_range(model, x, attack_class):
    with pytest.raises(ValueError, match=r"above clip_max=1.0 \(maximum 1.5\)"):
        attack_class(model).generate_np(x + 1.0, clip_min=0.0, clip_max=1.0)
    with pytest.raises(ValueError, match="below clip_min=0.0"):
        attack_class(model).generate_np(x - 1.0, clip_min=0.0, clip_max=1.0)
    # within the 1e-6 tolerance is accepted
    attack_class(model).generate_np(x * 0 + 1.0 + 5e-7, clip_min=0.0, clip_max=1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(model, x, bad):
    x[2, 3] = bad
    with pytest.raises(ValueError, match=r"x must contain only finite values.*\(2, 3\)"):
        FastGradientMethod(model).generate_np(x)


def test_non_float_inputs(model):
    with pytest.raises(TypeError, match="x must be a floating-point array, got dtype int"):
        FastGradientMethod(model).generate_np(np.ones((2, 6), np.int32))


def test_unbatched_input(model):
    with pytest.raises(ValueError, match="rank >= 2"):
        FastGradientMethod(model).generate_np(np.ones(6, np.float32))


def test_model_output_not_class_scores(x):
    inputs = keras.Input((6,))
    images = keras.Model(inputs, keras.layers.Reshape((2, 3))(inputs))
    with pytest.raises(ValueError, match=r"2-D batch of class scores.*\(None, 2, 3\)"):
        FastGradientMethod(images)
    scalar = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="nb_classes >= 2"):
        FastGradientMethod(scalar).generate_np(x)


def test_not_a_model():
    with pytest.raises(TypeError, match="model must be"):
        FastGradientMethod(lambda z: z)


def test_bad_batch_size(model, x):
    with pytest.raises(ValueError, match="batch_size"):
        FastGradientMethod(model).generate_np(x, batch_size=0)


def test_per_example_labels_must_match_the_batch(model, x):
    with pytest.raises(ValueError, match=r"y must have one entry per example \(4\)"):
        FastGradientMethod(model).generate_np(x, y=np.zeros(7, int), batch_size=2)
