"""Behaviour of FGM, BIM, PGD and MIM on analytic models and a digits MLP."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_model

from advlib.attacks import (
    BasicIterativeMethod,
    CarliniWagnerL2,
    FastGradientMethod,
    MadryEtAl,
    MomentumIterativeMethod,
    ProjectedGradientDescent,
    clip_eta,
    optimize_linear,
    project_l1_ball,
    random_lp_vector,
)
from advlib.models import CallableModelWrapper, KerasModelWrapper, as_model

ITERATIVE = [BasicIterativeMethod, ProjectedGradientDescent, MomentumIterativeMethod]
ALL_ATTACKS = [FastGradientMethod] + ITERATIVE
BOUNDS = dict(clip_min=0.0, clip_max=1.0)


def lp(delta, norm):
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return np.abs(flat).max(1) if norm == np.inf else np.linalg.norm(flat, ord=norm, axis=1)


def accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(1) == y))


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(12, 4)).astype(np.float32)
    x = rng.uniform(0.2, 0.8, size=(16, 12)).astype(np.float32)
    return linear_model(weights), weights, x


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# -- exact agreement with the analytic gradient --------------------------------
@pytest.mark.parametrize("norm", [np.inf, 2, 1])
def test_fgm_matches_analytic_linear_model(linear, norm):
    model, weights, x = linear
    y = np.arange(len(x)) % 4
    grad = (softmax(x @ weights) - np.eye(4)[y]) @ weights.T  # d CE / dx
    eps = 0.05
    if norm == np.inf:
        step = eps * np.sign(grad)
    elif norm == 2:
        step = eps * grad / np.linalg.norm(grad, axis=1, keepdims=True)
    else:
        top = np.abs(grad) == np.abs(grad).max(1, keepdims=True)
        step = eps * np.sign(grad) * top / top.sum(1, keepdims=True)
    x_adv = FastGradientMethod(model).generate_np(x, eps=eps, norm=norm, y=y)
    np.testing.assert_allclose(x_adv, x + step, atol=1e-6)


def test_fgsm_moves_every_coordinate_by_eps_where_gradient_is_nonzero(linear):
    model, _, x = linear
    x_adv = FastGradientMethod(model).generate_np(x, eps=0.1)
    np.testing.assert_allclose(np.abs(x_adv - x), 0.1, atol=1e-6)


def test_targeted_fgm_descends_the_target_loss(linear):
    model, weights, x = linear
    target = np.full(len(x), 2)
    grad = (softmax(x @ weights) - np.eye(4)[target]) @ weights.T
    x_adv = FastGradientMethod(model).generate_np(x, eps=0.05, y_target=target)
    np.testing.assert_allclose(x_adv, x - 0.05 * np.sign(grad), atol=1e-6)
    # cleverhans 4's convention gives the same answer
    same = FastGradientMethod(model).generate_np(x, eps=0.05, y=target, targeted=True)
    np.testing.assert_array_equal(same, x_adv)


def test_default_labels_are_the_model_predictions(digits_mlp, digits):
    _, (x, y) = digits
    x = x[:64]
    predicted = digits_mlp.predict(x, verbose=0).argmax(1)
    attack = FastGradientMethod(digits_mlp)
    np.testing.assert_array_equal(
        attack.generate_np(x, eps=0.1), attack.generate_np(x, eps=0.1, y=predicted)
    )


def test_one_hot_labels_equal_integer_labels(digits_mlp, digits_eval):
    x, y = digits_eval
    attack = FastGradientMethod(digits_mlp)
    np.testing.assert_array_equal(
        attack.generate_np(x, eps=0.1, y=y), attack.generate_np(x, eps=0.1, y=np.eye(10)[y])
    )


# -- perturbation bounds and clipping ------------------------------------------
@pytest.mark.parametrize("attack_class", ALL_ATTACKS)
@pytest.mark.parametrize("norm,eps", [(np.inf, 0.1), (2, 1.0), (1, 4.0)])
def test_perturbation_within_eps_and_bounds(digits_mlp, digits_eval, attack_class, norm, eps):
    x, y = digits_eval
    params = dict(eps=eps, norm=norm, y=y, **BOUNDS)
    if attack_class is not FastGradientMethod:
        params.update(eps_iter=eps / 4, nb_iter=8)
    x_adv = attack_class(digits_mlp).generate_np(x, **params)
    assert np.all(lp(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert accuracy(digits_mlp, x_adv, y) < 1.0


def test_clip_bounds_other_than_unit_interval(linear):
    model, _, x = linear
    x_adv = ProjectedGradientDescent(model).generate_np(
        x, eps=0.5, eps_iter=0.2, nb_iter=5, clip_min=0.1, clip_max=0.9, seed=0
    )
    assert x_adv.min() >= 0.1 - 1e-7 and x_adv.max() <= 0.9 + 1e-7
    unbounded = ProjectedGradientDescent(model).generate_np(
        x, eps=0.5, eps_iter=0.2, nb_iter=5, seed=0
    )
    assert unbounded.min() < 0.1 or unbounded.max() > 0.9


# -- strength --------------------------------------------------------------------
def test_fgsm_breaks_the_digits_mlp(digits_mlp, digits):
    _, (x, y) = digits
    x_adv = FastGradientMethod(digits_mlp).generate_np(x, eps=0.3, y=y, **BOUNDS)
    assert accuracy(digits_mlp, x, y) > 0.9
    assert accuracy(digits_mlp, x_adv, y) < 0.2


def mean_loss(model, x, y):
    import keras

    logits = model.predict(x, verbose=0)
    return float(
        keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True).numpy().mean()
    )


@pytest.mark.parametrize("attack_class", ITERATIVE + [MadryEtAl])
def test_iterative_attacks_beat_fgsm(digits_mlp, digits_eval, attack_class):
    x, y = digits_eval
    fgsm = FastGradientMethod(digits_mlp).generate_np(x, eps=0.15, y=y, **BOUNDS)
    seed = dict(seed=0) if issubclass(attack_class, ProjectedGradientDescent) else {}
    iterative = attack_class(digits_mlp).generate_np(
        x, eps=0.15, eps_iter=0.015, nb_iter=40, y=y, **seed, **BOUNDS
    )
    assert accuracy(digits_mlp, iterative, y) <= accuracy(digits_mlp, fgsm, y)
    # the near-linear MLP leaves a small accuracy gap, but a clear one in loss
    assert mean_loss(digits_mlp, iterative, y) > 1.03 * mean_loss(digits_mlp, fgsm, y)


@pytest.mark.parametrize("attack_class", ITERATIVE)
def test_targeted_success(digits_mlp, digits_eval, attack_class):
    x, y = digits_eval
    target = (y + 1) % 10
    x_adv = attack_class(digits_mlp).generate_np(
        x, eps=0.3, eps_iter=0.03, nb_iter=20, y_target=target, **BOUNDS
    )
    success = np.mean(digits_mlp.predict(x_adv, verbose=0).argmax(1) == target)
    assert success > 0.9


def test_restarts_keep_the_most_damaging_result(digits_mlp, digits_eval):
    x, y = digits_eval
    attack = ProjectedGradientDescent(digits_mlp)
    # eps 0.08: the restarts add about 9 of 200 (at 0.06 only 1, a margin that
    # thread scheduling in training could erase)
    params = dict(eps=0.08, eps_iter=0.08 / 3, nb_iter=3, y=y, seed=5, **BOUNDS)
    single = attack.generate_np(x, **params)
    several = attack.generate_np(x, nb_restarts=4, **params)
    fooled_single = digits_mlp.predict(single, verbose=0).argmax(1) != y
    fooled_several = digits_mlp.predict(several, verbose=0).argmax(1) != y
    assert np.all(fooled_several[fooled_single])  # restart 0 is the single run
    assert fooled_several.sum() > fooled_single.sum()


def test_momentum_without_decay_is_bim_under_linf(digits_mlp, digits_eval):
    x, y = digits_eval
    params = dict(eps=0.1, eps_iter=0.02, nb_iter=5, y=y, **BOUNDS)
    bim = BasicIterativeMethod(digits_mlp).generate_np(x, **params)
    mim = MomentumIterativeMethod(digits_mlp).generate_np(x, decay_factor=0.0, **params)
    np.testing.assert_array_equal(bim, mim)
    mim_default = MomentumIterativeMethod(digits_mlp).generate_np(x, **params)
    assert not np.array_equal(bim, mim_default)


# -- API contract -------------------------------------------------------------------
@pytest.mark.parametrize("attack_class", ALL_ATTACKS)
def test_generate_and_generate_np_agree(digits_mlp, digits_eval, attack_class):
    x, y = digits_eval
    attack = attack_class(digits_mlp)
    params = dict(eps=0.1, y=y, **BOUNDS)
    if attack_class is not FastGradientMethod:
        params.update(eps_iter=0.02, nb_iter=5)
    if attack_class is ProjectedGradientDescent:
        params.update(seed=1)
    tensor = attack.generate(tf.constant(x), **params)
    assert isinstance(tensor, tf.Tensor)
    np.testing.assert_allclose(
        attack.generate_np(x, batch_size=len(x), **params), tensor.numpy(), atol=1e-6
    )
    if attack_class is not ProjectedGradientDescent:  # random starts depend on the batch
        batched = attack.generate_np(x, batch_size=17, **params)
        assert np.mean(np.abs(batched - tensor.numpy()) < 1e-6) > 0.999


@pytest.mark.parametrize("attack_class", ALL_ATTACKS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(linear, attack_class, dtype):
    model, _, x = linear
    x_adv = attack_class(model).generate_np(x.astype(dtype), eps=0.1)
    assert x_adv.dtype == dtype
    assert attack_class(model).generate(x.astype(dtype), eps=0.1).dtype == dtype


@pytest.mark.parametrize("attack_class", [ProjectedGradientDescent, MadryEtAl])
def test_seed_reproduces_random_starts(digits_mlp, digits_eval, attack_class):
    x, y = digits_eval
    params = dict(eps=0.1, eps_iter=0.02, nb_iter=3, y=y, **BOUNDS)
    attack = attack_class(digits_mlp)
    first = attack.generate_np(x, seed=3, **params)
    np.testing.assert_array_equal(first, attack.generate_np(x, seed=3, **params))
    assert not np.array_equal(first, attack.generate_np(x, seed=4, **params))


def test_changing_numbers_does_not_retrace(digits_mlp, digits_eval):
    x, y = digits_eval
    # a wrapper of its own: other tests' attacks on digits_mlp share the model's traces
    attack = BasicIterativeMethod(KerasModelWrapper(digits_mlp))
    attack.generate(x[:50], eps=0.1, eps_iter=0.01, nb_iter=2, y=y[:50], **BOUNDS)
    traces = attack._step.experimental_get_tracing_count()
    attack.generate(
        x[50:100],
        eps=0.2,
        eps_iter=0.03,
        nb_iter=3,
        y=(y[50:100] + 1) % 10,
        clip_min=-1.0,
        clip_max=2.0,
    )
    attack.generate(x[100:150], eps=0.05, eps_iter=0.02, nb_iter=2, y_target=y[:50])
    targeted_traces = 1  # targeted is structural: one more trace, once
    assert attack._step.experimental_get_tracing_count() == traces + targeted_traces
    attack.generate(x[:50], eps=0.07, eps_iter=0.01, nb_iter=2, y_target=y[50:100])
    assert attack._step.experimental_get_tracing_count() == traces + targeted_traces
    # nor does a new batch size: the first trace left the batch dimension open
    attack.generate(x[:7], eps=0.07, eps_iter=0.01, nb_iter=2, y=y[:7])
    attack.generate(x[:93], eps=0.07, eps_iter=0.01, nb_iter=2, y_target=y[:93])
    assert attack._step.experimental_get_tracing_count() == traces + targeted_traces == 2


def test_inputs_of_any_rank(linear):
    model, _, x = linear
    images = x.reshape(-1, 3, 4, 1)
    # The same Dense kernel on both paths: only the rank differs, so results must too.
    flat_model = CallableModelWrapper(lambda z: model(tf.reshape(z, [-1, 12])))
    for attack_class in ALL_ATTACKS:
        params = dict(eps=0.1, y=np.zeros(len(x), int))
        if attack_class is ProjectedGradientDescent:
            params["seed"] = 0  # the same random start on both paths
        x_adv = attack_class(flat_model).generate_np(images, **params)
        assert x_adv.shape == images.shape
        np.testing.assert_allclose(
            x_adv.reshape(len(x), -1), attack_class(model).generate_np(x, **params), atol=1e-6
        )


def test_eps_zero_returns_x_unchanged(digits_mlp, digits_eval):
    x, _ = digits_eval
    for attack_class in ALL_ATTACKS:
        np.testing.assert_array_equal(attack_class(digits_mlp).generate_np(x, eps=0.0), x)


def test_empty_batch_returns_empty_batch(digits_mlp):
    empty = np.zeros((0, 8, 8, 1), np.float32)
    for attack_class in ALL_ATTACKS:
        out = attack_class(digits_mlp).generate_np(empty, eps=0.1)
        assert out.shape == empty.shape and out.dtype == np.float32


# -- helpers --------------------------------------------------------------------
def reference_l1_projection(v, eps):
    """Projection onto the L1 ball by bisection on the soft threshold."""
    if np.abs(v).sum() <= eps:
        return v
    low, high = 0.0, np.abs(v).max()
    for _ in range(200):
        theta = (low + high) / 2
        if np.maximum(np.abs(v) - theta, 0).sum() > eps:
            low = theta
        else:
            high = theta
    return np.sign(v) * np.maximum(np.abs(v) - high, 0)


def test_l1_projection_is_exact():
    rng = np.random.default_rng(1)
    eta = rng.normal(size=(20, 3, 5)).astype(np.float64)
    eta[0] *= 0.01  # already inside the ball
    projected = project_l1_ball(tf.constant(eta), tf.constant(2.0, tf.float64)).numpy()
    for row, out in zip(eta, projected):
        np.testing.assert_allclose(
            out.ravel(), reference_l1_projection(row.ravel(), 2.0), atol=1e-9
        )
    np.testing.assert_array_equal(projected[0], eta[0])


@pytest.mark.parametrize("norm", [np.inf, 1, 2])
def test_random_start_lies_in_the_ball_and_fills_it(norm):
    sample = random_lp_vector((2000, 10), norm, tf.constant(0.5), np.array([7, 0])).numpy()
    norms = lp(sample, norm)
    assert norms.max() <= 0.5 + 1e-6
    # uniform in a 10-d ball: P(norm <= r) = (r / eps)^10, so most mass is near the surface
    assert np.median(norms) > 0.5 * 0.5 ** (1 / 10) * 0.95


def test_clip_eta_and_optimize_linear_norms():
    grad = tf.constant(np.random.default_rng(2).normal(size=(6, 10)))
    for norm in (np.inf, 1, 2):
        step = optimize_linear(grad, 0.3, norm).numpy()
        np.testing.assert_allclose(lp(step, norm), 0.3)
        np.testing.assert_allclose(lp(clip_eta(grad * 10, norm, 0.3).numpy(), norm), 0.3)


def test_margin_loss_and_its_use_in_pgd(digits_mlp, digits_eval):
    from advlib.losses import margin_loss

    logits = np.array([[2.0, 5.0, 1.0], [0.5, -1.0, 3.0]], np.float32)
    np.testing.assert_allclose(
        margin_loss(labels=tf.constant([1, 0]), logits=logits), [2.0 - 5.0, 3.0 - 0.5]
    )
    x, y = digits_eval
    x_adv = ProjectedGradientDescent(digits_mlp).generate_np(
        x, y=y, eps=0.15, eps_iter=0.015, nb_iter=40, loss_fn="cw", seed=0, **BOUNDS
    )
    assert accuracy(digits_mlp, x_adv, y) < 0.3
    with pytest.raises(ValueError, match="loss_fn must be"):
        ProjectedGradientDescent(digits_mlp).generate_np(x, loss_fn="hinge")


def test_targeted_pgd_tries_the_top_classes(digits_mlp, digits_eval):
    from advlib.attacks import TargetedPGD

    x, y = digits_eval
    attack = TargetedPGD(digits_mlp)
    result = attack.run(x, y, eps=0.15, eps_iter=0.03, nb_iter=10, top_classes=2, seed=0, **BOUNDS)
    assert result.success_rate > 0.5 and result.linf.max() <= 0.15 + 1e-6
    assert not result.targeted  # untargeted robustness, checked by targeted runs
    one = attack.run(x, y, eps=0.15, eps_iter=0.03, nb_iter=10, top_classes=1, seed=0, **BOUNDS)
    assert np.all(result.success[one.success])  # more targets only add breaks
    with pytest.raises(TypeError, match="unknown parameter"):
        attack.generate_np(x, y_target=y)


def test_attacks_on_one_model_share_their_traces(digits_mlp, digits_eval):
    x, y = digits_eval
    params = dict(eps=0.1, eps_iter=0.02, nb_iter=2, y=y[:50], **BOUNDS)
    wrapped = KerasModelWrapper(digits_mlp)
    first = BasicIterativeMethod(wrapped)
    expected = first.generate_np(x[:50], **params)
    traces = first._step.experimental_get_tracing_count()
    second = BasicIterativeMethod(wrapped)
    np.testing.assert_array_equal(second.generate_np(x[:50], **params), expected)
    assert second._step is first._step and traces == second._step.experimental_get_tracing_count()
    # each attack keeps its own counts
    assert first.forward_passes == second.forward_passes == 100
    # the classes that inherit the step share it; one that defines its own compiles it
    assert ProjectedGradientDescent(wrapped)._step is first._step
    assert CarliniWagnerL2(wrapped)._step is not first._step
    # a bare Keras model always gets the same wrapper
    assert as_model(digits_mlp) is as_model(digits_mlp) is not wrapped
    assert BasicIterativeMethod(digits_mlp)._step is BasicIterativeMethod(digits_mlp)._step
