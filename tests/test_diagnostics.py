"""The gradient-masking diagnostics: each passes on an honest model and fires on
a model (or protocol) built to trip it; --adaptive exposes the masking."""

import json
import os

import keras
import numpy as np
import pytest

from advlib import bench
from advlib.bench import diagnostics
from advlib.bench import protocol as protocols
from advlib.cli import main
from advlib.models import (
    BPDAModelWrapper,
    EOTModelWrapper,
    KerasModelWrapper,
    QNNModelWrapper,
    find_masking_layers,
    inspect,
    small_cnn,
)
from advlib.models.testbeds import AlwaysOnNoise, InputQuantization, defended

CHECKED = [
    "iterative-vs-single-step",
    "convergence",
    "monotone-in-eps",
    "unbounded",
    "black-box-vs-white-box",
    "gradient-health",
    "determinism",
]


def small_protocol(eps=0.2, sweep=(0.1,), n=60, **attack_changes):
    document = protocols.load("digits-linf-0.2@2")
    document["dataset"]["n"], document["batch_size"] = n, n
    document["threat"]["eps"], document["sweep"] = eps, list(sweep)
    # a fifth of the protocol's budget: the checks' verdicts are those of the full one
    document["diagnostics"] = {"n": 40, "spsa_iterations": 20}
    for entry in document["attacks"]:
        if entry["attack"] == "SPSA":
            entry["params"].update(nb_iter=20, spsa_samples=64)
        elif "nb_iter" in entry["params"]:
            entry["params"]["nb_iter"] = 20
        for name, params in attack_changes.items():
            if entry["name"] == name:
                entry["params"].update(params)
    return document


def statuses(report):
    return {check["id"]: check["status"] for check in report["diagnostics"]}


# session-scoped, though used by this module only: a pytest-xdist worker interleaves
# modules, and a module fixture would be computed again each time it came back to it
@pytest.fixture(scope="session")
def masked(digits_cnn):
    return defended(digits_cnn, InputQuantization(levels=5, name="quantize"))


@pytest.fixture(scope="session")
def natural_report(digits_cnn):
    return bench.evaluate(digits_cnn, small_protocol(), progress=False, transfer_from=digits_cnn)


@pytest.fixture(scope="session")
def masked_reports(masked, digits_cnn, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("masked"))
    naive = bench.evaluate(
        masked, small_protocol(), progress=False, transfer_from=digits_cnn, out_dir=folder
    )
    adaptive = bench.evaluate(masked, small_protocol(), progress=False, adaptive=True)
    return naive, adaptive, folder


@pytest.fixture(scope="session")
def adversarially_trained(digits):
    from advlib.training import AdversarialModel

    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = small_cnn((8, 8, 1))
    robust = AdversarialModel.from_recipe("madry", model, eps=0.1)
    robust.compile(keras.optimizers.Adam(2e-3))
    robust.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
    return model


@pytest.mark.slow
def test_natural_cnn_passes_every_check(natural_report):
    found = statuses(natural_report)
    assert all(found[check] == "pass" for check in CHECKED), found
    assert found["transfer"] == "pass" and found["ste-window"] == "skip"
    assert natural_report["headline_flag"] == ""
    assert "| determinism | pass |" in bench.markdown(natural_report)


@pytest.mark.slow
def test_adversarially_trained_cnn_passes_every_check(adversarially_trained, digits_cnn):
    report = bench.evaluate(
        adversarially_trained,
        small_protocol(eps=0.1, sweep=(0.05, 0.2)),
        progress=False,
        transfer_from=digits_cnn,
    )
    found = statuses(report)
    assert all(found[check] == "pass" for check in CHECKED + ["transfer"]), found
    assert report["results"]["robust_accuracy"]["value"] > 0.5  # a robust model, not a broken one


@pytest.mark.slow
def test_masking_defence_is_flagged(masked_reports):
    naive, _, _ = masked_reports
    found = statuses(naive)
    for check in ("unbounded", "black-box-vs-white-box", "gradient-health", "transfer"):
        assert found[check] == "fail", (check, found)
    gradients = naive["probes"]["gradients"]
    assert gradients["zero"] == gradients["n"] > 0
    assert "failed checks" in naive["headline_flag"] and "gradient-health" in naive["headline_flag"]
    table = bench.markdown(naive)
    assert naive["headline_flag"] in table and "**FAIL**" in table
    assert naive["results"]["robust_accuracy"]["value"] > 0.3  # the number it would have reported
    # SPSA's probe, on the diagnostic subset, sees through the masking too
    spsa = {c["id"]: c for c in naive["diagnostics"]}["black-box-vs-white-box"]["evidence"]["spsa"]
    assert spsa["broken"] > 0 and set(spsa["missed_by_ensemble"]) <= set(spsa["broken_at"])


@pytest.mark.slow
def test_checks_are_judged_again_from_the_saved_run(masked_reports):
    naive, _, folder = masked_reports
    again = bench.reassess(folder)
    assert again["diagnostics"] == json.loads(json.dumps(naive["diagnostics"]))
    assert again["headline_flag"] == naive["headline_flag"]
    # a looser margin turns the two checks that read it, and only those, from fail to pass
    loose = bench.reassess(os.path.join(folder, "report.json"), {"black_box_margin": 1.0})
    changed = {k for k, v in statuses(loose).items() if statuses(naive)[k] != v}
    assert changed == {"black-box-vs-white-box", "transfer"}
    assert {statuses(loose)[k] for k in changed} == {"pass"}
    with pytest.raises(protocols.ProtocolError, match="black_box_margin must be in"):
        bench.reassess(folder, {"black_box_margin": 2.0})


@pytest.mark.slow
def test_the_command_line_reassesses_a_run(masked_reports, capsys):
    _, _, folder = masked_reports
    assert main(["bench", "reassess", folder, "--black-box-margin", "1.0"]) == 0
    assert "| black-box-vs-white-box | pass |" in capsys.readouterr().out
    assert main(["bench", "reassess", folder, "--black-box-margin", "2"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "black_box_margin must be in [0, 1], got 2.0" in error[0]


@pytest.mark.slow
def test_adaptive_mode_exposes_the_masking(masked_reports):
    naive, adaptive, _ = masked_reports
    assert adaptive["adaptive"]["variants"] == ["bpda"]
    assert adaptive["adaptive"]["robust_after"] < adaptive["adaptive"]["robust_before"] - 0.3
    assert (
        adaptive["results"]["robust_accuracy"]["value"]
        < naive["results"]["robust_accuracy"]["value"] - 0.3
    )
    assert adaptive["headline_flag"] == ""
    found = statuses(adaptive)
    assert all(found[check] == "pass" for check in CHECKED), found
    assert [e["name"] for e in adaptive["ensemble"]][-1] == "spsa"  # the cross-check comes last
    assert "Adaptive attacks through bpda" in bench.markdown(adaptive)


@pytest.mark.slow
def test_closed_ste_windows_are_reported(digits_qnns, digits):
    """The same function with pre-activations scaled 20x: every window closes."""
    model = digits_qnns["cnn"]
    scaled = keras.models.clone_model(model)
    scaled.set_weights(model.get_weights())
    for layer in scaled.layers[:-1]:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma * 20, beta * 20, mean, variance])
    _, (x_test, _) = digits
    np.testing.assert_array_equal(
        QNNModelWrapper(model).predict_classes(x_test),
        QNNModelWrapper(scaled).predict_classes(x_test),
    )
    healthy = inspect.ste_window(QNNModelWrapper(model), x_test[:60])
    closed = inspect.ste_window(QNNModelWrapper(scaled), x_test[:60])
    assert healthy["closed"] < diagnostics.WINDOW_WARN < diagnostics.WINDOW_FAIL < closed["closed"]
    assert diagnostics._window_check(closed)["status"] == "fail"
    assert diagnostics._window_check(healthy)["status"] == "pass"


@pytest.mark.slow
def test_weak_pgd_is_caught_by_single_step_and_convergence_checks(digits_cnn):
    """Both checks pass on the shipped protocol (test_natural_cnn_passes_every_check)."""
    weak = dict(nb_iter=2, eps_iter_fraction=0.1, rand_init=False)
    protocol = small_protocol(
        sweep=(), **{"pgd-ce": dict(weak, nb_restarts=1), "pgd-cw": weak, "pgd-targeted": weak}
    )
    # an under-powered ensemble: no FGSM or SPSA to make up for the weak PGDs
    protocol["attacks"] = [a for a in protocol["attacks"] if a["name"].startswith("pgd")]
    report = bench.evaluate(digits_cnn, protocol, progress=False)
    found = statuses(report)
    # no black-box attack in the ensemble, but SPSA's probe still cross-checks it
    black_box = {c["id"]: c for c in report["diagnostics"]}["black-box-vs-white-box"]
    assert found["black-box-vs-white-box"] == "fail"
    assert "per_eps" not in black_box["evidence"]
    assert len(black_box["evidence"]["spsa"]["missed_by_ensemble"]) > 1
    assert found["iterative-vs-single-step"] == "warn", report["diagnostics"]
    assert found["convergence"] == "warn"
    assert report["probes"]["fgsm"] > report["probes"]["pgd"]


@pytest.mark.slow
def test_randomized_model_gets_a_determinism_warning_pointing_to_eot(digits_cnn, cnn_eval):
    noisy = defended(digits_cnn, AlwaysOnNoise(0.05))
    report = bench.evaluate(noisy, small_protocol(sweep=()), progress=False)
    check = next(c for c in report["diagnostics"] if c["id"] == "determinism")
    assert check["status"] == "warn" and "EOTModelWrapper" in check["message"]
    assert check["evidence"]["max_abs_difference"] > 0
    x, _ = cnn_eval
    single = KerasModelWrapper(noisy).predict_logits(x[:50]).numpy()
    averaged = EOTModelWrapper(noisy, samples=16).predict_logits(x[:50]).numpy()
    clean = KerasModelWrapper(digits_cnn).predict_logits(x[:50]).numpy()
    assert np.abs(averaged - clean).mean() < np.abs(single - clean).mean()
    from advlib.bench.adaptive import variants

    assert list(variants(KerasModelWrapper(noisy), x[:20])) == ["eot-8"]
    assert list(variants(KerasModelWrapper(digits_cnn), x[:20])) == []


def test_monotone_check_fires_on_a_rising_curve():
    def results(counts):
        return {
            "per_eps": [
                {"eps": eps, "robust_accuracy": {"count": c, "n": 100}} for eps, c in counts
            ]
        }

    assert diagnostics._monotone(results([(0.1, 50), (0.2, 30), (0.3, 10)]))["status"] == "pass"
    assert diagnostics._monotone(results([(0.1, 50), (0.2, 51)]))["status"] == "pass"
    assert diagnostics._monotone(results([(0.1, 50), (0.3, 60)]))["status"] == "fail"
    assert diagnostics._monotone(results([(0.1, 50)]))["status"] == "skip"


def test_testbed_parameters_are_checked():
    with pytest.raises(ValueError, match="levels"):
        InputQuantization(levels=1)
    with pytest.raises(TypeError, match="levels"):
        InputQuantization(levels=2.5)
    with pytest.raises(ValueError, match="stddev"):
        AlwaysOnNoise(stddev=-1.0)


def test_bpda_wrapper_keeps_the_forward_pass_and_restores_the_gradient(masked, cnn_eval):
    x, y = cnn_eval
    assert find_masking_layers(masked, x[:32]) == ["quantize"]
    wrapped = BPDAModelWrapper(masked, sample=x[:32])
    np.testing.assert_array_equal(
        wrapped.predict_logits(x).numpy(), KerasModelWrapper(masked).predict_logits(x).numpy()
    )
    import tensorflow as tf

    from advlib.losses import cross_entropy

    _, naive, _ = KerasModelWrapper(masked).loss_gradient(
        tf.constant(x), tf.constant(y), cross_entropy
    )
    _, bpda, _ = wrapped.loss_gradient(tf.constant(x), tf.constant(y), cross_entropy)
    assert not np.any(naive.numpy()) and np.all(np.abs(bpda.numpy()).sum(axis=(1, 2, 3)) > 0)
    with pytest.raises(ValueError, match="not layers of model"):
        BPDAModelWrapper(masked, layers=["no_such_layer"])
    with pytest.raises(ValueError, match="needs layers"):
        BPDAModelWrapper(masked)
    with pytest.raises(ValueError, match="samples"):
        EOTModelWrapper(masked, samples=0)


def test_diagnostics_settings_are_validated():
    document = small_protocol()
    document["diagnostics"] = {"n": 10, "typo": 1}
    with pytest.raises(protocols.ProtocolError, match="unknown key"):
        protocols.validate(document)
    document["diagnostics"] = {"black_box_margin": 2.0}
    with pytest.raises(protocols.ProtocolError, match="black_box_margin"):
        protocols.validate(document)
    document = small_protocol()
    document["attacks"][-1]["params"]["nb_iters"] = 3
    with pytest.raises(protocols.ProtocolError, match="nb_iters"):
        protocols.validate(document)


@pytest.mark.slow
def test_cli_adaptive_on_a_saved_defended_model(masked, tmp_path, capsys):
    path = str(tmp_path / "defended.keras")
    masked.save(path)
    protocol = str(tmp_path / "small.json")
    json.dump(small_protocol(sweep=(), n=60), open(protocol, "w"))
    # the naive run's failed checks are test_masking_defence_is_flagged's
    command = ["bench", "--model", path, "--protocol", protocol, "--no-progress", "--adaptive"]
    assert main(command + ["--out", str(tmp_path / "adaptive")]) == 0
    adaptive = capsys.readouterr().out
    assert "Adaptive attacks through bpda" in adaptive and "failed checks" not in adaptive
    report = json.load(open(os.path.join(tmp_path, "adaptive", "report.json")))
    assert report["results"]["robust_accuracy"]["value"] < 0.1


def test_black_box_check_reads_every_eps():
    def results(main, sweep):
        rows = [(0.2, main)] + [(0.1, sweep)]
        return {
            "clean_accuracy": {"count": 100},
            "per_eps": [
                {"eps": eps, "attacks": [{"broken": b, "attacked": 50}]} for eps, b in rows
            ],
        }

    attacks = [{"attack": "SPSA"}]
    config = diagnostics.settings({})
    check = lambda main, sweep: diagnostics._black_box(results(main, sweep), attacks, config)
    assert check(0, 1)["status"] == "pass"
    assert (
        check(0, 5)["status"] == "warn" and "in the sweep: 5 of 50 at 0.1" in check(0, 5)["message"]
    )
    assert check(5, 0)["status"] == "fail"
    assert (
        diagnostics._black_box(results(5, 0), [{"attack": "ProjectedGradientDescent"}], config)[
            "status"
        ]
        == "skip"
    )
    # a sweep eps where the black-box attack did not run (sweep_attacks) is not read
    skipped = results(0, 5)
    skipped["per_eps"][1]["attacks"][0]["ran"] = False
    check_skipped = diagnostics._black_box(skipped, attacks, config)
    assert check_skipped["status"] == "pass" and "in the sweep" not in check_skipped["message"]


def test_spsa_probe_counts_only_what_the_whole_ensemble_left():
    results = {
        "clean_accuracy": {"count": 100},
        "per_eps": [{"eps": 0.2, "attacks": [{"broken": 0, "attacked": 50}]}],
    }
    config = diagnostics.settings({})
    pgd_only = [{"attack": "ProjectedGradientDescent"}]
    spsa = {"broken": 4, "broken_at": [3, 5, 8, 9]}
    standing = np.zeros(100, bool)
    standing[[5, 8, 9]] = True
    survivors = lambda places: [i for i in places if standing[i]]
    check = diagnostics._black_box(results, pgd_only, config, spsa, survivors, attacked=60)
    assert check["status"] == "fail" and check["evidence"]["spsa"]["missed_by_ensemble"] == [
        5,
        8,
        9,
    ]
    assert "SPSA on the diagnostic subset broke 4 of 60, 3 of them left" in check["message"]
    standing[[8, 9]] = False  # one example is within the noise of random starts
    assert (
        diagnostics._black_box(results, pgd_only, config, spsa, survivors, 60)["status"] == "pass"
    )
    with pytest.raises(protocols.ProtocolError, match="spsa_iterations"):
        protocols.validate(dict(small_protocol(), diagnostics={"spsa_iterations": -1}))
