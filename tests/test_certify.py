"""Randomized smoothing: its statistics against a closed form, its seeds, the
Gaussian recipe, and the harness's certify section."""

import keras
import numpy as np
import pytest
from scipy.stats import binom, norm

from advlib import bench
from advlib.bench import ensemble
from advlib.bench import protocol as protocols
from advlib.certify import ABSTAIN, SmoothedClassifier, clopper_pearson_lower
from advlib.models import small_cnn
from advlib.training import AdversarialModel

SIGMA = 0.25


def points_at_distances(x, normal, offset, distances):
    """Images moved along the normal so that their signed distance to the
    boundary is `distances` (positive: class 1's side)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    length = np.linalg.norm(normal)
    current = (flat @ normal + offset) / length
    moved = flat + (distances - current)[:, None] * normal / length
    return moved.reshape(x.shape).astype(np.float32)


def test_certified_radius_matches_the_closed_form(digits_linear, digits):
    model, normal, offset = digits_linear
    _, (x_test, _) = digits
    # in input units (sigma = 0.25), and four points on the boundary
    distances = np.concatenate([np.linspace(-0.6, 0.6, 41), np.zeros(3)])
    x = points_at_distances(x_test[:44], normal, offset, distances)
    n, alpha = 10_000, 0.001
    result = SmoothedClassifier(model, SIGMA).certify(x, n0=100, n=n, alpha=alpha, seed=0)
    p_true = norm.cdf(np.abs(distances) / SIGMA)
    side = (distances > 0).astype(np.int64)
    # what Clopper-Pearson can give from the count's plausible range (1e-4 tails)
    radius_of = lambda k: SIGMA * norm.ppf(np.maximum(clopper_pearson_lower(k, n, alpha), 0.5))
    low_k, high_k = binom.ppf(1e-4, n, p_true), binom.ppf(1 - 1e-4, n, p_true)
    certified = result.prediction != ABSTAIN
    assert np.all(result.prediction[certified] == side[certified])
    # beyond the true distance only where the bound failed, which each example's
    # does with probability alpha: at most one of 44 (P(two or more) < 1e-3);
    # this seed has one, a count of 9919 where 9887 was expected (P = 9e-4)
    assert np.sum(result.radius[certified] > np.abs(distances[certified])) <= 1
    assert np.all(result.radius <= radius_of(high_k) + 1e-9)
    # where the n0 = 100 selection samples cannot pick the wrong class (P < 1e-6),
    # the radius is no further below the distance than an unlucky count allows
    selected = np.abs(distances) >= 0.15
    assert np.all(result.radius[selected] >= radius_of(low_k)[selected] - 1e-9)
    # abstains on the boundary (where p_A = 1/2, a certificate is the bound's
    # failure), certifies where even an unlucky count clears 1/2
    must_certify = selected & (clopper_pearson_lower(low_k, n, alpha) > 0.5)
    assert must_certify.sum() >= 30 and np.all(certified[must_certify])
    assert np.all(~certified[distances == 0])
    # and the statistic's own slack is small at this n
    far = np.abs(distances) >= 0.3
    assert np.all(np.abs(distances[far]) - result.radius[far] < 0.08)


def test_predict_abstains_on_the_boundary_only(digits_linear, digits):
    model, normal, offset = digits_linear
    _, (x_test, _) = digits
    distances = np.array([0.0] * 6 + [-0.5] * 3 + [0.5] * 3)
    x = points_at_distances(x_test[:12], normal, offset, distances)
    prediction = SmoothedClassifier(model, SIGMA).predict(x, n=2000, alpha=0.001, seed=1)
    assert np.all(prediction[:6] == ABSTAIN)
    assert list(prediction[6:]) == [0, 0, 0, 1, 1, 1]


def test_seeds_reproduce_and_matter(digits_mlp, digits):
    _, (x_test, _) = digits
    smoothed = SmoothedClassifier(digits_mlp, 0.5, batch_size=300)
    first = smoothed.sample_counts(x_test[:20], 400, seed=3)
    assert first.shape == (20, 10) and np.all(first.sum(axis=1) == 400)
    assert np.array_equal(first, smoothed.sample_counts(x_test[:20], 400, seed=3))
    assert not np.array_equal(first, smoothed.sample_counts(x_test[:20], 400, seed=4))
    # several examples per pass and several passes per example count the same way
    many = SmoothedClassifier(digits_mlp, 0.5, batch_size=128).sample_counts(
        x_test[:3], 1000, seed=3
    )
    assert np.all(many.sum(axis=1) == 1000)


@pytest.mark.slow
def test_gaussian_recipe_trains_a_base_classifier_that_certifies(digits):
    (x_train, y_train), (x_test, y_test) = digits
    x, y, radii = x_test[:120], y_test[:120], [0.0, 0.25]
    certified = {}
    for recipe in ("plain", "gaussian"):
        keras.utils.set_random_seed(0)
        model = small_cnn((8, 8, 1))
        if recipe == "gaussian":
            trainer = AdversarialModel.from_recipe("gaussian", model, sigma=SIGMA, seed=0)
            trainer.compile(keras.optimizers.Adam(2e-3), metrics=["accuracy"])
            logs = trainer.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0).history
            assert logs["adv_accuracy"][-1] > 0.5  # accuracy on noisy inputs
        else:
            model.compile(
                keras.optimizers.Adam(2e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            model.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
        result = SmoothedClassifier(model, SIGMA).certify(x, n0=50, n=500, seed=0)
        certified[recipe] = result.certified_accuracy(y, radii)
    # measured: 0.79 against 0.60 at radius 0.25 (0.97 against 0.93 at 0)
    assert certified["gaussian"][1] > certified["plain"][1] + 0.1, certified
    assert certified["gaussian"][0] >= certified["plain"][0], certified


def test_the_gaussian_recipe_takes_sigma_not_eps():
    model = small_cnn((8, 8, 1))
    with pytest.raises(ValueError, match="takes sigma, not eps"):
        AdversarialModel.from_recipe("gaussian", model, eps=0.1, sigma=0.25)
    with pytest.raises(ValueError, match="needs sigma"):
        AdversarialModel.from_recipe("gaussian", model)
    with pytest.raises(ValueError, match="sigma must be in"):
        AdversarialModel.from_recipe("gaussian", model, sigma=0.0)
    with pytest.raises(ValueError, match="belongs to the 'gaussian' recipe"):
        AdversarialModel.from_recipe("fast", model, eps=0.1, sigma=0.25)


def test_bad_input_is_refused_by_name(digits_mlp, digits):
    _, (x_test, _) = digits
    with pytest.raises(ValueError, match="sigma must be in"):
        SmoothedClassifier(digits_mlp, sigma=-1.0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        SmoothedClassifier(digits_mlp, sigma=0.25, batch_size=2.5)
    smoothed = SmoothedClassifier(digits_mlp, sigma=0.25)
    with pytest.raises(ValueError, match="alpha must be in"):
        smoothed.certify(x_test[:2], alpha=1.0)
    with pytest.raises(ValueError, match="n0 must be in"):
        smoothed.certify(x_test[:2], n0=0)
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        smoothed.predict(np.zeros((2, 8, 8, 1), np.int32))
    result = smoothed.certify(x_test[:4], n0=10, n=50, seed=0)
    with pytest.raises(ValueError, match="y must have shape"):
        result.certified(np.zeros(3, np.int64), 0.5)


def certify_protocol(**certify):
    document = protocols.load("digits-l2-certified")
    document["dataset"]["n"] = 40
    document["batch_size"] = 20
    document["attacks"] = [
        {
            "name": "apgd-ce",
            "attack": "APGD",
            "params": {"nb_iter": 10, "loss": "ce", "nb_restarts": 1},
        }
    ]
    document["headline"]["attacks"] = ["apgd-ce"]
    document.update(sweep=[0.25], diagnostics={"n": 10, "spsa_iterations": 0})
    document["certify"].update(n=300, n0=30, **certify)
    return document


@pytest.mark.slow
def test_harness_reports_certified_accuracy_beside_the_attacks(digits_mlp, digits, tmp_path):
    document = certify_protocol()
    out = str(tmp_path / "run")
    report = bench.evaluate(digits_mlp, protocol=document, out_dir=out, progress=False)
    certified = report["results"]["certified"]
    assert [entry["radius"] for entry in certified["per_radius"]] == [0, 0.25, 0.5, 0.75, 1.0]
    # the same numbers as a direct certification with each batch's seed
    _, (x_test, y_test) = digits
    smoothed = SmoothedClassifier(digits_mlp, SIGMA, batch_size=1000)
    parts = [
        smoothed.certify(
            x_test[b * 20 : (b + 1) * 20],
            n0=30,
            n=300,
            alpha=0.001,
            seed=ensemble.batch_seed(0, b, 2),
        )
        for b in range(2)
    ]
    prediction = np.concatenate([p.prediction for p in parts])
    radius = np.concatenate([p.radius for p in parts])
    for entry in certified["per_radius"]:
        expected = np.mean((prediction == y_test[:40]) & (radius >= entry["radius"]))
        assert entry["certified_accuracy"]["value"] == pytest.approx(expected)
    values = [entry["certified_accuracy"]["value"] for entry in certified["per_radius"]]
    assert values == sorted(values, reverse=True) and values[0] > 0.8
    # the attacks' figures sit beside it at the eps they ran, clean at radius 0
    beside = {e["radius"]: e["empirical_robust_accuracy"] for e in certified["per_radius"]}
    assert beside[0.0]["value"] == report["results"]["clean_accuracy"]["value"]
    assert beside[0.5]["value"] == report["results"]["per_eps"][0]["robust_accuracy"]["value"]
    assert beside[0.25] is not None and beside[0.75] is None
    text = open(f"{out}/report.md").read()
    assert "certified accuracy, smoothed model" in text and "sigma=0.25" in text
    # resuming a finished run keeps its certificates
    again = bench.evaluate(digits_mlp, protocol=document, out_dir=out, resume=True, progress=False)
    assert again["results"]["certified"] == certified


def test_certify_section_is_validated():
    with pytest.raises(protocols.ProtocolError, match="threat norm must be '2'"):
        protocols.validate(
            dict(protocols.load("digits-linf-0.2"), certify={"sigma": 0.25, "n": 100})
        )
    document = certify_protocol()
    with pytest.raises(protocols.ProtocolError, match=r"lacks \['sigma'\]"):
        protocols.validate(dict(document, certify={"n": 100}))
    with pytest.raises(protocols.ProtocolError, match=r"unknown key\(s\) \['samples'\]"):
        protocols.validate(dict(document, certify={"sigma": 0.25, "n": 100, "samples": 5}))
    with pytest.raises(protocols.ProtocolError, match="alpha must be in"):
        protocols.validate(dict(document, certify={"sigma": 0.25, "n": 100, "alpha": 0}))
    with pytest.raises(protocols.ProtocolError, match="radii must be a non-empty list"):
        protocols.validate(dict(document, certify={"sigma": 0.25, "n": 100, "radii": []}))
