"""JSMA, Carlini-Wagner L2 and AttackResult on the digits CNN."""

import numpy as np
import pytest
from conftest import linear_model

from advlib.attacks import (
    BasicIterativeMethod,
    CarliniWagnerL2,
    FastGradientMethod,
    SaliencyMapMethod,
)
from advlib.attacks.saliency_map_method import random_targets
from advlib.models import KerasModelWrapper

FEATURES = 64


def logit_margin(model, x, labels):
    """Best other logit minus the logit of `labels`."""
    logits = model.predict(x, verbose=0).astype(np.float64)
    rows = np.arange(len(x))
    label_logit = logits[rows, labels].copy()
    logits[rows, labels] = -np.inf
    return logits.max(1) - label_logit


# -- JSMA --------------------------------------------------------------------------
# session-scoped, though used by this module only: a pytest-xdist worker interleaves
# modules, and a module fixture would be computed again each time it came back to it
@pytest.fixture(scope="session")
def jsma_result(digits_cnn, cnn_eval):
    x, y = cnn_eval
    return SaliencyMapMethod(digits_cnn).run(x, y=y, theta=1.0, gamma=0.3, seed=0)


def test_jsma_targeted_success(jsma_result, cnn_eval):
    _, y = cnn_eval
    assert jsma_result.targeted
    assert np.all(jsma_result.labels != y)  # random targets avoid the true class
    assert jsma_result.success_rate >= 0.9
    assert np.all(
        jsma_result.predictions[jsma_result.success] == jsma_result.labels[jsma_result.success]
    )


def test_jsma_random_targets_are_reproducible(digits_cnn, cnn_eval, jsma_result):
    x, y = cnn_eval
    again = SaliencyMapMethod(digits_cnn).run(x[:20], y=y[:20], gamma=0.3, seed=0)
    np.testing.assert_array_equal(again.labels, jsma_result.labels[:20])
    # batches of two sizes share one compiled step, and each example its result
    batched = SaliencyMapMethod(digits_cnn).run(
        x[:20], y_target=again.labels, gamma=0.3, batch_size=12, seed=0
    )
    np.testing.assert_array_equal(batched.x_adv, again.x_adv)
    np.testing.assert_array_equal(again.labels, random_targets(y[:20], 10, 0))
    other = random_targets(y, 10, 1)
    assert np.all(other != y) and not np.array_equal(other, jsma_result.labels)


@pytest.mark.parametrize(
    "theta,gamma", [(1.0, 0.05), (1.0, 0.1), (-1.0, 0.1), (0.5, 0.1), (-0.3, 0.15)]
)
def test_jsma_respects_the_l0_budget_and_direction(digits_cnn, cnn_eval, theta, gamma):
    x, y = cnn_eval
    x_adv = SaliencyMapMethod(digits_cnn).generate_np(
        x[:40], theta=theta, gamma=gamma, y=y[:40], seed=2
    )
    delta = (x_adv - x[:40]).reshape(40, -1)
    assert (delta != 0).sum(1).max() <= int(gamma * FEATURES)
    assert (delta != 0).sum(1).max() >= 2
    assert np.all(delta >= 0) if theta > 0 else np.all(delta <= 0)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # a feature moves by theta of the range per step, or lands on a bound
    steps = np.abs(delta[delta != 0]) / abs(theta)
    target = 1.0 if theta > 0 else 0.0
    on_bound = x_adv.reshape(40, -1)[delta != 0] == target
    assert np.all(on_bound | np.isclose(steps, np.round(steps), atol=1e-5))


def test_jsma_successful_examples_stop_changing(digits_cnn, cnn_eval, jsma_result):
    x, y = cnn_eval
    bigger = SaliencyMapMethod(digits_cnn).generate_np(x, y=y, theta=1.0, gamma=0.5, seed=0)
    done = jsma_result.success
    np.testing.assert_array_equal(bigger[done], jsma_result.x_adv[done])


def test_jsma_refuses_bad_input(digits_cnn, cnn_eval):
    x, y = cnn_eval
    attack = SaliencyMapMethod(digits_cnn)
    with pytest.raises(ValueError, match=r"y_target\[0\]=.*own class"):
        attack.generate_np(x[:4], y_target=y[:4])
    with pytest.raises(ValueError, match="theta must be nonzero"):
        attack.generate_np(x[:4], theta=0)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\], got 0"):
        attack.generate_np(x[:4], gamma=0)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\], got 1.5"):
        attack.generate_np(x[:4], gamma=1.5)
    with pytest.raises(ValueError, match="clip_max must be a number for JSMA"):
        attack.generate_np(x[:4], clip_max=None)


# -- Carlini-Wagner L2 ---------------------------------------------------------------
@pytest.fixture(scope="session")
def cw_result(digits_cnn, cnn_eval):
    x, y = cnn_eval
    return CarliniWagnerL2(digits_cnn).run(x[:50], y=y[:50])  # cleverhans's defaults


@pytest.mark.slow
def test_cw_defaults_break_every_example(cw_result, digits_cnn, cnn_eval):
    x, y = cnn_eval
    assert cw_result.success_rate == 1.0
    assert np.all(logit_margin(digits_cnn, cw_result.x_adv, y[:50]) > 0)
    assert cw_result.x_adv.min() >= 0.0 and cw_result.x_adv.max() <= 1.0
    assert np.isfinite(cw_result.x_adv).all()
    # far smaller than the L2 size of the FGSM perturbation that breaks these digits
    assert np.median(cw_result.l2) < 1.0


@pytest.mark.slow
def test_cw_confidence_margin(digits_cnn, cnn_eval):
    x, y = cnn_eval
    result = CarliniWagnerL2(digits_cnn).run(
        x[:30], y=y[:30], confidence=3.0, max_iterations=300, initial_const=1.0
    )
    assert result.success_rate > 0.8
    margins = logit_margin(digits_cnn, result.x_adv, y[:30])
    assert np.all(margins[result.success] >= 3.0)
    unbroken = ~result.success
    np.testing.assert_array_equal(result.x_adv[unbroken], x[:30][unbroken])


def test_cw_failures_return_the_original(digits_cnn, cnn_eval):
    x, y = cnn_eval
    result = CarliniWagnerL2(digits_cnn).run(
        x[:20], y=y[:20], binary_search_steps=1, max_iterations=2, initial_const=1e-4
    )
    assert not result.success.all()
    np.testing.assert_array_equal(result.x_adv[~result.success], x[:20][~result.success])
    assert np.all(result.l2[~result.success] == 0)


@pytest.mark.slow
def test_cw_targeted(digits_cnn, cnn_eval):
    x, y = cnn_eval
    target = (y[:20] + 3) % 10
    # cleverhans's defaults break every example (above); a larger step needs fewer
    result = CarliniWagnerL2(digits_cnn).run(
        x[:20], y_target=target, max_iterations=200, learning_rate=0.05
    )
    assert result.success_rate >= 0.9
    assert np.all(result.predictions[result.success] == target[result.success])
    with pytest.raises(ValueError, match="own class"):
        CarliniWagnerL2(digits_cnn).generate_np(x[:5], y_target=y[:5])


@pytest.mark.slow
def test_cw_batched_equals_one_at_a_time(digits_cnn, cnn_eval):
    x, y = cnn_eval
    params = dict(y=y[:6], max_iterations=100, binary_search_steps=3, initial_const=1.0)
    batched = CarliniWagnerL2(digits_cnn).generate_np(x[:6], batch_size=6, **params)
    single = CarliniWagnerL2(digits_cnn).generate_np(x[:6], batch_size=1, **params)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    inner = CarliniWagnerL2(digits_cnn).generate(x[:6], batch_size=2, **params).numpy()
    np.testing.assert_allclose(batched, inner, atol=1e-4)


def test_cw_on_vectors_without_bounds():
    weights = np.random.default_rng(0).normal(size=(5, 3))
    model = linear_model(weights)
    x = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32) * 3
    result = CarliniWagnerL2(model).run(
        x, clip_min=None, clip_max=None, max_iterations=200, learning_rate=0.05, initial_const=1.0
    )
    assert result.x_adv.shape == x.shape
    assert result.success_rate == 1.0


@pytest.mark.parametrize(
    "params,name",
    [
        (dict(binary_search_steps=0), "binary_search_steps"),
        (dict(max_iterations=0), "max_iterations"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(initial_const=-1.0), "initial_const"),
        (dict(confidence=-1.0), "confidence"),
    ],
)
def test_cw_refuses_bad_parameters(digits_cnn, cnn_eval, params, name):
    x, _ = cnn_eval
    with pytest.raises(ValueError, match=name):
        CarliniWagnerL2(digits_cnn).generate_np(x[:2], **params)


# -- AttackResult --------------------------------------------------------------------
@pytest.mark.parametrize(
    "attack_class,params",
    [
        (FastGradientMethod, dict(eps=0.2)),
        (BasicIterativeMethod, dict(eps=0.2, eps_iter=0.05, nb_iter=5)),
        (SaliencyMapMethod, dict(gamma=0.2, seed=0)),
    ],
)
def test_attack_result_matches_a_numpy_recomputation(digits_cnn, cnn_eval, attack_class, params):
    x, y = cnn_eval
    result = attack_class(digits_cnn).run(x, y=y, batch_size=32, **params)
    delta = (result.x_adv - x).reshape(len(x), -1).astype(np.float64)
    np.testing.assert_array_equal(result.l0, (delta != 0).sum(1))
    np.testing.assert_allclose(result.l2, np.sqrt((delta**2).sum(1)))
    np.testing.assert_allclose(result.linf, np.abs(delta).max(1))
    predictions = digits_cnn.predict(result.x_adv, verbose=0).argmax(1)
    np.testing.assert_array_equal(result.predictions, predictions)
    expected = predictions == result.labels if result.targeted else predictions != y
    np.testing.assert_array_equal(result.success, expected)
    assert result.wall_time > 0
    summary = result.summary()
    assert summary["success_rate"] == pytest.approx(expected.mean())
    if expected.any():
        assert summary["median_l2"] == pytest.approx(np.median(result.l2[expected]))


def test_attack_result_counts_passes(digits_cnn, cnn_eval):
    x, y = cnn_eval
    n = len(x)
    result = BasicIterativeMethod(digits_cnn).run(x, y=y, eps=0.1, eps_iter=0.02, nb_iter=7)
    assert result.backward_passes == 7 * n
    assert result.forward_passes == 7 * n + n  # the steps, then the final predictions
    without_labels = BasicIterativeMethod(digits_cnn).run(x, eps=0.1, eps_iter=0.02, nb_iter=7)
    assert without_labels.forward_passes == 7 * n + 2 * n


def brute_force_pair(alpha, beta, domain, increase):
    sign = 1 if increase else -1
    best, pair = 0.0, None
    n = len(alpha)
    for p in range(n):
        for q in range(n):
            if p == q or not (domain[p] and domain[q]):
                continue
            a, b = sign * (alpha[p] + alpha[q]), sign * (beta[p] + beta[q])
            if a > 0 and b < 0 and -a * b > best:
                best, pair = -a * b, (p, q)
    return pair


@pytest.mark.parametrize("block", [1, 5, 23])  # one feature, a ragged last block, all
@pytest.mark.parametrize("increase", [True, False])
def test_blocked_pair_search_equals_brute_force(increase, block, monkeypatch):
    import tensorflow as tf

    import advlib.attacks.saliency_map_method as jsma

    monkeypatch.setattr(jsma, "_PAIR_BLOCK", 7 * 23 * 5)
    assert jsma.pair_block(7, 23) == 5 and jsma.pair_block(1, 23) == 23
    rng = np.random.default_rng(0)
    alpha = rng.normal(size=(7, 23)).astype(np.float32)
    beta = rng.normal(size=(7, 23)).astype(np.float32)
    domain = rng.random((7, 23)) > 0.3
    domain[6] = False
    domain[6, :2] = True  # a single admissible pair
    p, q, found = jsma.best_pair(
        tf.constant(alpha), tf.constant(beta), tf.constant(domain), increase, block
    )
    for i in range(7):
        expected = brute_force_pair(alpha[i], beta[i], domain[i], increase)
        assert bool(found[i]) == (expected is not None)
        if expected is not None:
            assert {int(p[i]), int(q[i])} == set(expected)


def test_probability_saliency_pair_is_the_top_two_target_gradients():
    import tensorflow as tf

    import advlib.attacks.saliency_map_method as jsma

    rng = np.random.default_rng(1)
    alpha = rng.normal(size=(5, 30)).astype(np.float32)
    domain = rng.random((5, 30)) > 0.2
    for increase in (True, False):
        p, q, found = jsma.best_pair_from_target_gradient(
            tf.constant(alpha), tf.constant(domain), increase
        )
        for i in range(5):
            # the general search with beta = -alpha picks the same pair
            expected = brute_force_pair(alpha[i], -alpha[i], domain[i], increase)
            assert bool(found[i]) == (expected is not None)
            if expected is not None:
                assert {int(p[i]), int(q[i])} == set(expected)


def test_jsma_with_logits_saliency(digits_cnn, cnn_eval):
    x, y = cnn_eval
    result = SaliencyMapMethod(digits_cnn).run(x[:40], y=y[:40], gamma=0.3, seed=0, use_logits=True)
    assert result.success_rate >= 0.6
    assert result.l0.max() <= int(0.3 * FEATURES)


def test_jsma_and_cw_steps_trace_once(digits_cnn, cnn_eval):
    x, y = cnn_eval
    # a wrapper of its own: other tests' attacks on digits_cnn share the model's traces
    model = KerasModelWrapper(digits_cnn)
    jsma = SaliencyMapMethod(model)
    jsma.generate_np(x[:16], y=y[:16], gamma=0.2, seed=0)
    jsma.generate_np(x[16:32], y=y[16:32], gamma=0.3, seed=1)
    assert jsma._step.experimental_get_tracing_count() == 1
    cw = CarliniWagnerL2(model)
    cw.generate_np(x[:8], y=y[:8], max_iterations=5, binary_search_steps=2)
    cw.generate_np(
        x[8:16],
        y=y[8:16],
        max_iterations=5,
        binary_search_steps=2,
        confidence=1.0,
        learning_rate=0.1,
        initial_const=3.0,
    )
    assert cw._step.experimental_get_tracing_count() == 1
