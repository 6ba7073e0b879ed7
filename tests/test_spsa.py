"""SPSA: the gradient estimate, the threat model, batching, seeds and the binary engine."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_model

from advlib.attacks import SPSA, ProjectedGradientDescent
from advlib.losses import margin_loss
from advlib.models import KerasModelWrapper, QNNModelWrapper

BOUNDS = dict(clip_min=0.0, clip_max=1.0)


def test_gradient_estimate_converges_to_the_true_gradient():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(20, 3)).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(4, 20)).astype(np.float32)
    labels = tf.constant([0, 1, 2, 0])
    spsa = SPSA(linear_model(weights))
    spsa.model.check_output(tf.constant(x))
    estimate = spsa._estimate_gradient(
        tf.constant(x),
        labels,
        False,
        1e-3,
        20000,
        [np.array([0, 1])],
        np.arange(4),
    ).numpy()
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        loss = -margin_loss(labels=labels, logits=spsa.model.get_logits(xt))
    exact = tape.gradient(loss, xt).numpy()
    cosine = (
        (estimate * exact).sum(1) / np.linalg.norm(estimate, axis=1) / np.linalg.norm(exact, axis=1)
    )
    assert cosine.min() > 0.95
    # spsa_iters estimates per step are averaged; an example's rows follow it
    one = lambda pair, rows: spsa._estimate_gradient(
        tf.constant(x), labels, False, 1e-3, 64, [pair], rows
    ).numpy()
    both = spsa._estimate_gradient(
        tf.constant(x), labels, False, 1e-3, 64, [[0, 1], [0, 2]], np.arange(4)
    ).numpy()
    mean = (one([0, 1], np.arange(4)) + one([0, 2], np.arange(4))) / 2
    np.testing.assert_allclose(both, mean, rtol=1e-5, atol=1e-7)
    subset = one([0, 1], np.array([1, 3]))
    np.testing.assert_array_equal(subset[[0, 2]], 0)
    # the same directions; the model's rounding may differ with the batch
    np.testing.assert_allclose(
        subset[[1, 3]], one([0, 1], np.arange(4))[[1, 3]], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("norm,eps", [(np.inf, 0.2), (2, 1.5)])
def test_breaks_the_cnn_within_the_threat_model(digits_cnn, cnn_eval, norm, eps):
    x, y = cnn_eval
    result = SPSA(digits_cnn).run(
        x[:60],
        y[:60],
        batch_size=60,
        eps=eps,
        norm=norm,
        nb_iter=40,
        spsa_samples=64,
        early_stop_loss_threshold=0.0,
        seed=0,
        **BOUNDS,
    )
    delta = (result.x_adv - x[:60]).reshape(60, -1)
    size = np.abs(delta).max(1) if norm == np.inf else np.linalg.norm(delta, axis=1)
    assert np.all(size <= eps * (1 + 1e-5) + 1e-6)
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert result.success.mean() >= 0.6
    assert result.backward_passes == 0


def test_targeted_reaches_the_targets(digits_cnn, cnn_eval):
    x, y = cnn_eval
    targets = (y[:40] + 1) % 10
    result = SPSA(digits_cnn).run(
        x[:40],
        batch_size=40,
        y_target=targets,
        eps=0.3,
        nb_iter=60,
        spsa_samples=64,
        learning_rate=0.02,
        early_stop_loss_threshold=0.0,
        seed=0,
        **BOUNDS,
    )
    assert result.targeted and result.success.mean() >= 0.5


def test_seed_reproduces_and_early_stop_saves_passes(digits_cnn, cnn_eval):
    x, y = cnn_eval
    params = dict(eps=0.2, nb_iter=30, spsa_samples=32, y=y[:30], seed=1, **BOUNDS)
    spsa = SPSA(digits_cnn)
    first = spsa.generate_np(x[:30], batch_size=30, **params)
    np.testing.assert_array_equal(first, spsa.generate_np(x[:30], batch_size=30, **params))
    wrapped = KerasModelWrapper(digits_cnn)
    fooled = lambda x_adv: wrapped.predict_classes(x_adv).numpy() != y[:30]
    spsa.forward_passes = 0
    full = fooled(spsa.generate_np(x[:30], batch_size=30, **params))
    full_passes = spsa.forward_passes
    spsa.forward_passes = 0
    stopped = fooled(
        spsa.generate_np(x[:30], batch_size=30, early_stop_loss_threshold=0.0, **params)
    )
    assert full.sum() >= 5 and spsa.forward_passes < full_passes
    # an example stops at its first success and is returned adversarial; until then
    # it follows the same path as without early stopping
    np.testing.assert_array_equal(stopped, full | stopped)
    assert stopped.sum() >= full.sum()


def test_returns_the_best_iterate_not_the_last(digits_cnn, cnn_eval):
    x, y = cnn_eval
    attack = SPSA(digits_cnn)
    x_adv = attack.generate_np(
        x[:30], batch_size=30, y=y[:30], eps=0.2, nb_iter=20, spsa_samples=32, seed=0, **BOUNDS
    )
    wrapped = KerasModelWrapper(digits_cnn)
    final_margin = -margin_loss(labels=tf.constant(y[:30]), logits=wrapped.get_logits(x_adv))
    start = attack.generate_np(
        x[:30], batch_size=30, y=y[:30], eps=0.2, nb_iter=0, spsa_samples=32, seed=0, **BOUNDS
    )
    start_margin = -margin_loss(labels=tf.constant(y[:30]), logits=wrapped.get_logits(start))
    assert np.all(final_margin.numpy() <= start_margin.numpy() + 1e-5)


def test_black_box_attack_runs_through_the_binary_engine(digits_qnns, digits, tmp_path):
    from advlib.qnn import export

    _, (x_test, y_test) = digits
    path = str(tmp_path / "cnn.npz")
    export(digits_qnns["cnn"], path)
    wrapped = QNNModelWrapper(digits_qnns["cnn"], engine=path)
    calls = []
    # the queries go to the engine's bit-exact BLAS twin
    original = wrapped._predictor.predict
    wrapped._predictor.predict = lambda x, *a, **k: calls.append(len(x)) or original(x, *a, **k)
    x, y = x_test[:20], y_test[:20]
    result = SPSA(wrapped).run(
        x, y, batch_size=20, eps=0.2, nb_iter=8, spsa_samples=16, seed=0, **BOUNDS
    )
    assert sum(calls) >= 20 * 16 * 8  # every probe point went through the engine
    engine_says = wrapped.engine.predict(result.x_adv).argmax(1)  # the packed reference
    np.testing.assert_array_equal(result.predictions, engine_says)
    assert result.success.any()


@pytest.mark.parametrize(
    "params,match",
    [
        (dict(spsa_samples=3), "spsa_samples must be even"),
        (dict(spsa_samples=0), "spsa_samples"),
        (dict(delta=0.0), "delta"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(norm=1), "norm must be np.inf or 2"),
        (dict(nb_iter=2.5), "nb_iter"),
        (dict(early_stop_loss_threshold="low"), "early_stop_loss_threshold"),
    ],
)
def test_bad_parameters_are_named(digits_cnn, cnn_eval, params, match):
    x, _ = cnn_eval
    with pytest.raises((ValueError, TypeError), match=match):
        SPSA(digits_cnn).generate_np(x[:2], eps=0.1, **params)


@pytest.mark.slow
def test_pgd_and_spsa_agree_on_a_smooth_model(digits_cnn, cnn_eval):
    """On a model with honest gradients SPSA finds nothing that PGD misses."""
    x, y = cnn_eval
    x, y = x[:60], y[:60]
    pgd = ProjectedGradientDescent(digits_cnn).run(
        x, y, batch_size=60, eps=0.1, eps_iter=0.025, nb_iter=40, seed=0, **BOUNDS
    )
    spsa = SPSA(digits_cnn).run(
        x,
        y,
        batch_size=60,
        eps=0.1,
        nb_iter=40,
        spsa_samples=64,
        early_stop_loss_threshold=0.0,
        seed=0,
        **BOUNDS,
    )
    assert np.sum(spsa.success & ~pgd.success) <= 2


def test_one_process_attacks_inputs_of_different_ranks(digits_cnn, cnn_eval):
    """SPSA's compiled pieces are module-level, shared by every model: vectors,
    then images, must not leave them traced for inputs of unknown rank."""
    rng = np.random.default_rng(0)
    vectors = rng.uniform(0.3, 0.7, size=(4, 20)).astype(np.float32)
    linear = SPSA(linear_model(rng.normal(size=(20, 3)).astype(np.float32)))
    small = dict(nb_iter=3, spsa_samples=8, seed=0, **BOUNDS)
    linear.generate_np(vectors, y=np.array([0, 1, 2, 0]), eps=0.1, **small)
    x, y = cnn_eval
    # two batch sizes of images, after the vectors
    result = SPSA(digits_cnn).run(x[:30], y[:30], eps=0.2, batch_size=20, **small)
    assert np.abs(result.x_adv - x[:30]).max() <= 0.2 + 1e-6
