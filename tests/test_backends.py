"""The attacks, the wrappers, certification and the harness on whichever Keras
backend runs: TensorFlow in the main run, and JAX and PyTorch in the backend
matrix (`KERAS_BACKEND=jax pytest -m backends tests/test_backends.py`, as the
README's test command does). Nothing here imports a framework directly."""

import os

import keras
import numpy as np
import pytest

from advlib import attacks, backend, bench
from advlib.attacks.utils import within_threat
from advlib.certify import SmoothedClassifier
from advlib.models import CallableModelWrapper, EOTModelWrapper, KerasModelWrapper

pytestmark = pytest.mark.backends

BOUNDS = dict(clip_min=0.0, clip_max=1.0)
EPS = 0.1
# every attack with settings small enough for a test, and the least share of the
# 60 digits it must break: measured on the three backends, with room below
CASES = {
    "FastGradientMethod": (dict(eps=EPS), 0.12),
    "BasicIterativeMethod": (dict(eps=EPS, eps_iter=0.02, nb_iter=10), 0.15),
    "ProjectedGradientDescent": (dict(eps=EPS, eps_iter=0.02, nb_iter=10, seed=0), 0.15),
    "MomentumIterativeMethod": (dict(eps=EPS, eps_iter=0.02, nb_iter=10), 0.15),
    # a few gradient-free steps: at least one digit of the 60 must fall
    "SPSA": (dict(eps=EPS, nb_iter=10, spsa_samples=64, seed=0), 0.015),
    "APGD": (dict(eps=EPS, nb_iter=20, seed=0), 0.15),
    "APGDT": (dict(eps=EPS, nb_iter=10, n_target_classes=3, seed=0), 0.15),
    "SquareAttack": (dict(eps=EPS, n_queries=300, seed=0), 0.05),
    # the ensemble's mechanism at a test's budget; the full standard version on three
    # backends is benchmarks/backend_agreement.py's
    "AutoAttack": (
        dict(
            eps=EPS,
            version="custom",
            attacks_to_run=["apgd-ce", "apgd-t"],
            member_params={
                "apgd-ce": {"nb_iter": 20},
                "apgd-t": {"nb_iter": 10, "n_target_classes": 3},
            },
        ),
        0.25,
    ),
    "FAB": (dict(eps=EPS, nb_iter=20, seed=0), 0.9),
    "FABT": (dict(eps=EPS, nb_iter=20, n_target_classes=3, seed=0), 0.9),
    "SaliencyMapMethod": (dict(theta=1.0, gamma=0.2, seed=0), 0.4),
    "CarliniWagnerL2": (
        dict(max_iterations=50, binary_search_steps=4, initial_const=1.0, learning_rate=0.1),
        0.9,
    ),
    "ElasticNetMethod": (
        dict(max_iterations=50, binary_search_steps=4, initial_const=1.0, learning_rate=0.1),
        0.9,
    ),
    "DeepFool": (dict(max_iter=30), 0.9),
    "FMN": (dict(norm=2, steps=30), 0.9),
    "MadryEtAl": (dict(eps=EPS, eps_iter=0.02, nb_iter=10, seed=0), 0.15),
    "TargetedPGD": (dict(eps=EPS, eps_iter=0.02, nb_iter=10, top_classes=2, seed=0), 0.15),
}
# attacks that keep every example within eps of its input
BOUNDED = {
    "FastGradientMethod",
    "BasicIterativeMethod",
    "ProjectedGradientDescent",
    "MadryEtAl",
    "TargetedPGD",
    "MomentumIterativeMethod",
    "SPSA",
    "APGD",
    "APGDT",
    "SquareAttack",
    "AutoAttack",
}


@pytest.fixture(scope="module")
def data(digits, digits_cnn):
    """60 test digits, all classified correctly by the CNN."""
    _, (x_test, y_test) = digits
    right = digits_cnn.predict(x_test, verbose=0).argmax(1) == y_test
    return x_test[right][:60], y_test[right][:60]


def test_every_registered_attack_is_covered():
    shipped = {n for n in attacks.names() if attacks.by_name(n).__module__.startswith("advlib.")}
    assert set(CASES) == shipped


@pytest.mark.parametrize("name", sorted(CASES))
def test_attack_breaks_the_model_within_its_threat(name, digits_cnn, data):
    x, y = data
    params, least = CASES[name]
    attack = attacks.by_name(name)(digits_cnn)
    result = attack.run(x, y, batch_size=None, **params, **BOUNDS)
    if attack.takes_seed():  # the same attack object, so that JAX compiles once
        again = attack.run(x, y, batch_size=None, **params, **BOUNDS)
        np.testing.assert_array_equal(again.x_adv, result.x_adv)
    assert result.x_adv.dtype == x.dtype and result.x_adv.shape == x.shape
    assert np.all(np.isfinite(result.x_adv))
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    if name in BOUNDED:
        within, _ = within_threat(result.x_adv, x, EPS, params.get("norm", np.inf), 0.0, 1.0)
        assert within.all()
    assert result.success_rate >= least, (name, backend.name(), result.success_rate)
    # a success is one by the model's own predictions on the returned examples
    predicted = backend.to_numpy(KerasModelWrapper(digits_cnn).predict_classes(result.x_adv))
    assert np.all(predicted[result.success] != y[result.success])


def test_generate_takes_and_returns_the_backends_tensors(digits_cnn, data):
    x, y = data
    attack = attacks.ProjectedGradientDescent(digits_cnn)
    x_adv = attack.generate(keras.ops.convert_to_tensor(x[:8]), eps=EPS, nb_iter=3, **BOUNDS)
    assert keras.ops.is_tensor(x_adv)
    assert np.abs(backend.to_numpy(x_adv) - x[:8]).max() <= EPS + 1e-6


def test_compiled_steps_keep_no_history_but_their_gradients(digits_cnn, data):
    """A compiled step's outputs feed the next step: on PyTorch, where steps run
    eagerly, outputs that kept their autograd graph would chain every step's
    graph and activations (a leak of gigabytes over Square's queries)."""
    x, y = data
    model = KerasModelWrapper(digits_cnn)

    def step(x, labels):
        logits = model.get_logits(x)
        _, gradient, _ = model.loss_gradient(x, labels, attacks.losses.cross_entropy)
        return logits, gradient

    logits, gradient = backend.compiled(step)(
        keras.ops.convert_to_tensor(x[:8]), keras.ops.convert_to_tensor(y[:8])
    )
    assert not getattr(logits, "requires_grad", False)
    assert not getattr(gradient, "requires_grad", False)
    assert np.abs(backend.to_numpy(gradient)).sum() > 0


def test_gradients_follow_weights_changed_after_the_first_call(digits, data):
    """A compiled step sees the current weights (JAX would otherwise compile them in)."""
    from advlib.models import small_cnn

    x, y = data
    model = small_cnn((8, 8, 1))
    model(x[:1])
    wrapped = KerasModelWrapper(model)
    attack = attacks.FastGradientMethod(wrapped)
    before = attack.generate_np(x[:16], y=y[:16], eps=EPS)
    model.set_weights([w * -1.0 for w in model.get_weights()])
    after = attack.generate_np(x[:16], y=y[:16], eps=EPS)
    assert not np.array_equal(before, after)
    fresh = attacks.FastGradientMethod(KerasModelWrapper(model)).generate_np(
        x[:16], y=y[:16], eps=EPS
    )
    np.testing.assert_array_equal(after, fresh)


def test_callable_and_eot_wrappers_give_the_keras_wrappers_gradients(digits_cnn, data):
    from advlib.losses import cross_entropy

    x, y = (keras.ops.convert_to_tensor(a) for a in data)
    reference = KerasModelWrapper(digits_cnn).loss_gradient(x, y, cross_entropy)[1]
    wrappers = (
        CallableModelWrapper(lambda batch: digits_cnn(batch, training=False)),
        # the mean of identical deterministic calls is the model itself
        EOTModelWrapper(digits_cnn, samples=3),
    )
    for wrapped in wrappers:
        gradient = wrapped.loss_gradient(x, y, cross_entropy)[1]
        np.testing.assert_allclose(
            backend.to_numpy(gradient), backend.to_numpy(reference), rtol=1e-4, atol=1e-6
        )


def test_a_model_of_another_framework_is_refused(data):
    x, _ = data
    wrong = "jax" if backend.name() != "jax" else "torch"
    import importlib  # the test extra brings all three frameworks

    framework = importlib.import_module(backend.BACKENDS[wrong][0])
    foreign = (
        (lambda batch: framework.numpy.zeros((2, 10)))
        if wrong == "jax"
        else (lambda batch: framework.zeros((2, 10)))
    )
    with pytest.raises(backend.BackendError, match="a model of one backend cannot run"):
        attacks.FastGradientMethod(CallableModelWrapper(foreign)).generate_np(x[:2], eps=EPS)


def test_certification_is_reproducible_and_certifies_correct_predictions(digits_cnn, data):
    x, y = data
    smoothed = SmoothedClassifier(digits_cnn, sigma=0.25, batch_size=500)
    result = smoothed.certify(x[:20], n0=50, n=500, alpha=0.01, seed=0)
    again = smoothed.certify(x[:20], n0=50, n=500, alpha=0.01, seed=0)
    np.testing.assert_array_equal(result.prediction, again.prediction)
    np.testing.assert_array_equal(result.radius, again.radius)
    assert result.certified(y[:20], 0.0).mean() >= 0.7
    assert np.all(result.radius[result.abstained] == 0)
    assert np.all(result.radius[~result.abstained] > 0)


def quick_protocol():
    from test_bench import quick_protocol as harness_tests_protocol

    document = harness_tests_protocol()
    # the harness's mechanics with two attacks on 90 digits: the compilations dominate on JAX
    document["attacks"] = [a for a in document["attacks"] if a["name"] in ("fgsm", "pgd-cw")]
    document["dataset"]["n"] = 90
    document["diagnostics"]["n"] = 30
    return document


# JAX compiles every attack of every run anew (a minute here): the JAX leg of the
# README's command leaves it to the slow tier; TensorFlow and PyTorch run it in CI
@pytest.mark.slow
def test_harness_resumes_shards_and_merges(digits_cnn, tmp_path):
    run = dict(protocol=quick_protocol(), batch_size=45, progress=False)
    whole = bench.evaluate(digits_cnn, out_dir=str(tmp_path / "whole"), **run)
    assert whole["complete"] and whole["environment"]["backend"] == backend.name()
    resumed = bench.evaluate(digits_cnn, out_dir=str(tmp_path / "whole"), resume=True, **run)
    assert resumed["results"] == whole["results"]
    shards = [str(tmp_path / f"shard{i}") for i in (1, 2)]
    for i, folder in enumerate(shards, 1):
        bench.evaluate(digits_cnn, out_dir=folder, shard=f"{i}/2", **run)
    merged = bench.merge(shards, str(tmp_path / "merged"))
    assert merged["results"]["robust_accuracy"] == whole["results"]["robust_accuracy"]
    assert os.path.exists(tmp_path / "merged" / "report.json")


def test_torch_modules_are_evaluated_as_they_are(tmp_path):
    import torch  # the test extra brings it whatever the backend

    from advlib.models import from_torch, load_torch_weights

    torch.manual_seed(0)

    def architecture():
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10)
        )

    net = architecture()
    if backend.name() != "torch":
        with pytest.raises(backend.BackendError, match="from_torch run on Keras's torch"):
            from_torch(net, (1, 8, 8))
        return
    x = np.random.default_rng(0).random((6, 1, 8, 8)).astype("float32")
    y = np.arange(6)
    x_adv = attacks.FastGradientMethod(from_torch(net, (1, 8, 8))).generate_np(x, y=y, eps=EPS)
    # the reference: the module's own gradient, by autograd
    inputs = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(net(inputs), torch.tensor(y), reduction="sum").backward()
    np.testing.assert_array_equal(x_adv, x + np.float32(EPS) * np.sign(inputs.grad.numpy()))
    # weights come only as a state dict; a pickled module is refused before it runs
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    loaded = load_torch_weights(str(tmp_path / "weights.pt"), architecture())
    np.testing.assert_array_equal(loaded(torch.tensor(x)).detach(), net(torch.tensor(x)).detach())
    torch.save(net, tmp_path / "module.pt")
    with pytest.raises(ValueError, match="holds more than weights"):
        load_torch_weights(str(tmp_path / "module.pt"), architecture())


def _torch_digits_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(288, 10)
    )


@pytest.mark.skipif(backend.name() != "torch", reason="PyTorch modules run on KERAS_BACKEND=torch")
def test_square_draws_over_height_and_width_in_either_layout(digits):
    from advlib.models import from_torch

    net = _torch_digits_net()
    _, (x, y) = digits
    x, y = x[:20], y[:20]
    first = from_torch(net, (1, 8, 8))
    last = from_torch(net, (1, 8, 8), data_format="channels_last")
    params = dict(eps=0.3, n_queries=40, seed=0, y=y, **BOUNDS)
    channels_first = np.transpose(x, (0, 3, 1, 2))
    from_first = attacks.SquareAttack(first).generate_np(channels_first, **params)
    from_last = attacks.SquareAttack(last).generate_np(x, **params)
    # the same squares, wherever the channels are: a square drawn over (channels,
    # height) instead would differ
    np.testing.assert_array_equal(np.transpose(from_first, (0, 2, 3, 1)), from_last)
    assert np.any(from_last != x)
    with pytest.raises(ValueError, match="data_format"):
        from_torch(net, (1, 8, 8), data_format="nchw")


def test_advlib_bench_evaluates_a_torch_state_dict(tmp_path, digits, capsys):
    import json

    import torch

    from advlib import cli

    torch.save(_torch_digits_net().state_dict(), tmp_path / "net.pt")
    (tmp_path / "arch.py").write_text(
        "import torch\n\n\ndef Net():\n    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), "
        "torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(288, 10))\n"
    )
    document = quick_protocol()
    document["attacks"] = document["attacks"][:1]
    document["dataset"]["n"], document["diagnostics"]["n"] = 45, 10
    protocol = tmp_path / "protocol.json"
    protocol.write_text(json.dumps(document))
    command = ["bench", "--model", str(tmp_path / "net.pt"), "--protocol", str(protocol)]
    command += ["--out", str(tmp_path / "run"), "--no-progress"]
    if backend.name() != "torch":
        assert cli.main([*command, "--torch-module", str(tmp_path / "arch.py:Net")]) == 2
        assert "KERAS_BACKEND=torch" in capsys.readouterr().err
        return
    assert cli.main(command) == 2
    assert "--torch-module FILE.py:NAME" in capsys.readouterr().err
    assert cli.main([*command, "--torch-module", str(tmp_path / "arch.py:Net")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    # the module's own accuracy on the protocol's digits, channels first
    _, (x, y) = digits
    n = document["dataset"]["n"]
    net = _torch_digits_net().eval()
    with torch.no_grad():
        logits = net(torch.tensor(np.transpose(x[:n], (0, 3, 1, 2))))
    clean = float(np.mean(logits.numpy().argmax(1) == y[:n]))
    assert report["results"]["clean_accuracy"]["value"] == pytest.approx(clean)
    assert report["environment"]["backend"] == "torch"


@pytest.mark.slow  # JAX trains and compiles the script's attacks anew: TensorFlow and PyTorch
def test_the_backends_tutorials_script(capsys):
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
    import backends as script

    results = script.main(["--quick"])
    models = ["Keras model"] + (["torch.nn.Module"] if backend.name() == "torch" else [])
    assert list(results)[1:] == models
    for model in models:
        robust = {name: accuracy for name, (accuracy, _) in results[model].items()}
        assert robust["PGD-20"] <= robust["FGSM"] + 0.05 and robust["APGD-CE"] < 0.9
    assert robust["FGSM"] < results["clean"] - 0.1
    assert f"Keras backend: {backend.name()}" in capsys.readouterr().out
