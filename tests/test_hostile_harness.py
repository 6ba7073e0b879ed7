"""The harness against broken models, tampered state, busy or foreign output
folders, bad protocols and bad command lines: refused by name, nothing lost,
nothing silently wrong."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from advlib import bench, cli
from advlib._checks import check_number
from advlib.attacks import SPSA, CarliniWagnerL2, ProjectedGradientDescent
from advlib.attacks.result import AttackResult
from advlib.bench import identity, render, storage
from advlib.bench import protocol as protocols
from advlib.models import CallableModelWrapper, QNNModelWrapper, as_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_protocol(**changes):
    """40 digits in batches of 10, FGSM and a 3-step PGD: seconds per run."""
    document = protocols.load("digits-linf-0.2@2")
    document.update(
        dataset={"name": "digits", "split": "test", "n": 40},
        batch_size=10,
        sweep=[],
        diagnostics={"n": 20},
        attacks=[
            {"name": "fgsm", "attack": "FastGradientMethod", "params": {}},
            {
                "name": "pgd",
                "attack": "ProjectedGradientDescent",
                "params": {"nb_iter": 3, "eps_iter_fraction": 0.5},
            },
        ],
    )
    document.update(changes)
    return document


def run(model, out=None, **options):
    return bench.evaluate(
        model,
        protocol=options.pop("protocol", tiny_protocol()),
        out_dir=None if out is None else str(out),
        progress=False,
        **options,
    )


def strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds the non-JSON constant {constant}")

    with open(path) as handle:
        return json.load(handle, parse_constant=refuse)


@pytest.fixture(scope="module")
def finished(digits_mlp, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    return run(digits_mlp, out), out


def linear_fn(extra=None):
    weights = tf.constant(np.random.default_rng(0).normal(size=(64, 10)), tf.float32)

    def fn(x):
        logits = tf.reshape(x, (-1, 64)) @ weights
        return logits if extra is None else logits + extra(x)

    return fn


# -- the identity of a run --------------------------------------------------------------
@pytest.mark.slow
def test_identity_covers_engine_surrogate_and_weightless_models(digits_qnns, digits):
    import tempfile

    from advlib.qnn import export
    from advlib.qnn.engine import BinaryEngine

    _, (x, _) = digits
    x = x[:50]
    qnn = digits_qnns["mlp"]
    with tempfile.TemporaryDirectory() as folder:
        export(qnn, os.path.join(folder, "net.npz"))
        engine = BinaryEngine.load(os.path.join(folder, "net.npz"))
    ids = {
        name: identity.model_identity(model, x)["fingerprint"]
        for name, model in {
            "keras": QNNModelWrapper(qnn),
            "identity": QNNModelWrapper(qnn, surrogate="identity"),
            "engine": QNNModelWrapper(qnn, engine=engine),
            "callable a": CallableModelWrapper(linear_fn()),
            # the same function's code, other predictions: told apart by its predicted classes
            "callable b": CallableModelWrapper(
                linear_fn(lambda x: 100 * tf.one_hot(3, 10) * tf.ones_like(x[:, 0, :1, 0]))
            ),
        }.items()
    }
    assert len(set(ids.values())) == len(ids), ids
    assert (
        identity.model_identity(QNNModelWrapper(qnn, engine=engine), x)["fingerprint"]
        == ids["engine"]
    )


def test_a_randomized_model_keeps_its_identity_across_runs(digits_cnn, digits, tmp_path):
    from advlib.models.testbeds import AlwaysOnNoise, defended

    _, (x, _) = digits
    noisy = defended(digits_cnn, AlwaysOnNoise(0.3, name="noise"))
    first, second = (identity.model_identity(as_model(noisy), x[:100]) for _ in range(2))
    assert first["predictions"] == "randomized" and first == second
    with pytest.raises(ValueError, match="no saved state"):
        run(noisy, tmp_path / "never", resume=True)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_resume_refuses_a_state_made_by_another_engine_or_surrogate(digits_qnns, tmp_path):
    qnn = digits_qnns["mlp"]
    out = tmp_path / "run"
    run(QNNModelWrapper(qnn), out, shard="1/2")
    for other in (
        QNNModelWrapper(qnn, surrogate="identity"),
        QNNModelWrapper(qnn, surrogate="smooth", temperature=0.5),
    ):
        with pytest.raises(ValueError, match="belongs to another run: its model_fingerprint"):
            run(other, out, shard="1/2", resume=True)
    report = strict_json(out / "report.json")
    assert report["identity"]["model_fingerprint"] == report["model"]["fingerprint"]
    assert report["model"]["identity"]["surrogate"] == "'ste'"


@pytest.mark.slow
def test_merge_refuses_shards_of_different_settings(finished, digits_mlp, tmp_path):
    parts = []
    for i in (1, 2):
        parts.append(tmp_path / f"s{i}")
        run(digits_mlp, parts[-1], shard=f"{i}/2")
    original = json.load(open(parts[1] / "report.json"))
    assert original["identity"]["backend"] == "tensorflow"
    for key, value in (("adaptive", ["ste"]), ("backend", "jax")):
        report = json.loads(json.dumps(original))
        report["identity"][key] = value
        (parts[1] / "report.json").write_text(json.dumps(report))
        with pytest.raises(ValueError, match=f"different runs \\(their {key} differ"):
            bench.merge([str(p) for p in parts], str(tmp_path / "merged"))


# -- NaN and Inf ----------------------------------------------------------------------
def test_non_finite_clean_logits_are_refused(tmp_path):
    nan_on_bright = lambda x: tf.where(x[:, :1, 3, 0] > 0.5, np.nan, 0.0) * tf.ones((1, 10))
    model = CallableModelWrapper(linear_fn(nan_on_bright))
    with pytest.raises(ValueError, match="non-finite logits"):
        run(model, tmp_path / "nan")
    assert not (tmp_path / "nan" / "report.json").exists()


@tf.custom_gradient
def nan_backward(x):
    """The identity, whose gradient is NaN."""
    return tf.identity(x), lambda upstream: upstream * np.nan


@pytest.mark.parametrize(
    "attack,params,iterates",
    [
        (
            ProjectedGradientDescent,
            dict(norm=np.inf, eps=0.2, nb_iter=3, rand_init=False, clip_min=0.0, clip_max=1.0),
            True,
        ),
        (ProjectedGradientDescent, dict(norm=2, eps=1.0, nb_iter=3, rand_init=False), True),
        # CW keeps only successful iterates, so a NaN one is never kept (and never counted)
        (CarliniWagnerL2, dict(max_iterations=5, binary_search_steps=1), False),
    ],
)
def test_nan_gradients_never_give_nan_examples(digits, attack, params, iterates):
    model = CallableModelWrapper(lambda x: linear_fn()(nan_backward(x)))
    _, (x, y) = digits
    x, y = x[:20], y[:20]
    result = attack(model).run(x, y, **params)
    assert np.isfinite(result.x_adv).all()
    assert (result.nonfinite_fallbacks > 0) == iterates
    # every step was NaN, so every example kept its start: only clean errors succeed
    clean_wrong = model.predict_classes(x).numpy() != y
    np.testing.assert_array_equal(result.success, clean_wrong)


def test_a_nan_example_is_no_success():
    x = np.zeros((2, 3), np.float32)
    x_adv = np.array([[np.nan] * 3, [0.1, 0, 0]], np.float32)
    result = AttackResult.from_arrays(
        x, x_adv, np.array([1, 1]), False, np.array([0, 0]), 0, 0, 0.0
    )
    assert result.success.tolist() == [False, True]


def test_reports_are_strict_json(finished, tmp_path):
    report, out = finished
    report = json.loads(json.dumps(report))
    report["results"]["per_eps"][0]["attacks"][0]["median_norm"] = float("nan")
    report["probes"]["determinism"]["max_abs_difference"] = float("inf")
    with np.load(out / "examples.npz") as data:
        arrays = {key: data[key] for key in data.files}
    storage.write_outputs(report, arrays, str(tmp_path))
    written = strict_json(tmp_path / "report.json")
    assert written["results"]["per_eps"][0]["attacks"][0]["median_norm"] is None
    strict_json(out / "report.json")


# -- output folders -----------------------------------------------------------------
def test_a_folder_with_other_files_is_not_overwritten(digits_mlp, tmp_path):
    theirs = {"report.json": '{"mine": true}', "report.md": "my notes"}
    for name, text in theirs.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match="not empty .*--overwrite"):
        run(digits_mlp, tmp_path)
    assert {name: (tmp_path / name).read_text() for name in theirs} == theirs
    report = run(digits_mlp, tmp_path, overwrite=True)
    assert strict_json(tmp_path / "report.json")["n"] == report["n"] == 40


def test_a_locked_folder_is_refused(digits_mlp, tmp_path):
    with (
        storage.OutputFolder(str(tmp_path)),
        pytest.raises(ValueError, match=rf"in use by another advlib run \(pid {os.getpid()}"),
    ):
        run(digits_mlp, tmp_path)
    assert run(digits_mlp, tmp_path)["complete"]


@pytest.mark.slow
def test_two_runs_into_one_folder(digits_mlp, tmp_path):
    model_file = str(tmp_path / "mlp.keras")
    digits_mlp.save(model_file)
    protocol_file = tmp_path / "protocol.json"
    protocol_file.write_text(
        json.dumps(
            tiny_protocol(dataset={"name": "digits", "split": "test", "n": 120}, batch_size=24)
        )
    )
    out = str(tmp_path / "shared")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [
        sys.executable,
        "-m",
        "advlib.cli",
        "bench",
        "--model",
        model_file,
        "--protocol",
        str(protocol_file),
        "--out",
        out,
        "--no-progress",
    ]
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    codes = [p.wait(timeout=300) for p in processes]
    errors = [p.stderr.read() for p in processes]
    assert sorted(codes) == [0, 2], errors
    refused = errors[codes.index(2)]
    assert "in use by another advlib run" in refused or "already holds a run's state" in refused, (
        refused
    )
    assert "Traceback" not in refused
    report = strict_json(os.path.join(out, "report.json"))
    assert report["complete"] and report["n"] == 120


def test_atomic_writes_use_unique_temporary_files(tmp_path):
    target = str(tmp_path / "report.md")
    failures = []

    def writer(text):
        try:
            for _ in range(200):
                storage.write_atomic(target, text)
        except Exception as error:
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(text,)) for text in ("a" * 5000, "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert open(target).read() in ("a" * 5000, "b")
    assert os.listdir(tmp_path) == ["report.md"]


def test_a_failed_plot_leaves_the_old_figure(finished, tmp_path, monkeypatch):
    report, out = finished
    png = tmp_path / "robustness.png"
    png.write_bytes(b"the old figure")

    def broken_plot(report, handle):
        handle.write(b"half a png")
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(render, "plot", broken_plot)
    with np.load(out / "examples.npz") as data:
        arrays = {key: data[key] for key in data.files}
    with pytest.raises(RuntimeError):
        storage.write_outputs(json.loads(json.dumps(report)), arrays, str(tmp_path))
    assert png.read_bytes() == b"the old figure"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


@pytest.mark.slow
def test_merge_never_writes_into_its_inputs(finished, digits_mlp, tmp_path):
    parts = []
    for i in (1, 2):
        parts.append(str(tmp_path / f"s{i}"))
        part = run(digits_mlp, parts[-1], shard=f"{i}/2")
        assert part["complete"] and part["n"] == 20 and part["n_total"] == 40
    with pytest.raises(ValueError, match="is one of the shards"):
        bench.merge(parts, parts[0])
    with pytest.raises(ValueError, match="neither a shard's output folder"):
        bench.merge([parts[0], os.path.join(parts[1], "typo")], str(tmp_path / "m"))
    merged = bench.merge(parts, str(tmp_path / "m"))
    assert merged["complete"] and merged["n"] == 40
    with pytest.raises(ValueError, match="not empty"):
        bench.merge(parts, str(tmp_path / "m"))
    table = bench.compare([finished[0], strict_json(os.path.join(parts[0], "report.json"))])
    assert "| 20 of 40, shard 1/2 |" in table and "partial" in table


# -- protocols --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change,message",
    [
        (dict(clip={}), "clip lacks ['max', 'min']"),
        (dict(clip={"min": 1.0, "max": 0.0}), "clip min must be below clip max"),
        (dict(seed=2**70), "seed must be in"),
        (dict(version="two"), "version must be an integer"),
        (
            dict(attacks=[{"attack": "ProjectedGradientDescent", "params": {"nb_iter": -3}}]),
            "attacks[0] (ProjectedGradientDescent) at eps 0.2: nb_iter must be in [1",
        ),
        (
            dict(attacks=[{"attack": "SPSA", "params": {"spsa_samples": 3}}]),
            "spsa_samples must be even",
        ),
        (
            dict(
                sweep=[0.1],
                attacks=[{"attack": "FastGradientMethod", "params": {"loss_fn": "hinge"}}],
            ),
            "loss_fn",
        ),
    ],
)
def test_protocols_are_checked_in_full_at_load_time(tmp_path, change, message, monkeypatch):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(tiny_protocol(**change)))
    with pytest.raises(bench.ProtocolError) as info:
        bench.load_protocol(str(path))
    assert message in str(info.value)


# -- shards, batch sizes, saved state -----------------------------------------------
def test_shards_and_batch_sizes_are_checked(digits_mlp, tmp_path):
    with pytest.raises(ValueError, match="shard 5/6 has no batches"):
        run(digits_mlp, tmp_path / "a", shard="5/6")
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, inf\], got 0"):
        run(digits_mlp, tmp_path / "b", batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, inf\], got -5"):
        run(digits_mlp, tmp_path / "c", batch_size=-5)
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.parametrize(
    "tamper,message",
    [
        (lambda state, arrays: state.update(done=[0, 0, 1]), "not distinct batches"),
        (lambda state, arrays: state.update(done=[7]), "not distinct batches"),
        (lambda state, arrays: arrays.update(correct=np.ones(41, bool)), "array 'correct'"),
        (
            lambda state, arrays: arrays.update(broken_by=arrays["broken_by"].astype(np.float64)),
            "array 'broken_by'",
        ),
        (lambda state, arrays: arrays.pop("success"), "array 'success' is missing"),
    ],
)
def test_a_tampered_state_is_refused(digits_mlp, tmp_path, tamper, message):
    out = tmp_path / "run"
    run(digits_mlp, out, shard="1/2")
    state = json.load(open(out / "state.json"))
    with np.load(out / "state.npz") as data:
        arrays = {key: data[key] for key in data.files}
    tamper(state, arrays)
    (out / "state.json").write_text(json.dumps(state))
    np.savez(out / "state.npz", **arrays)
    with pytest.raises(ValueError, match="state") as info:
        run(digits_mlp, out, shard="1/2", resume=True)
    assert message in str(info.value) and str(out) in str(info.value)


def test_compare_refuses_malformed_reports(finished):
    report = json.loads(json.dumps(finished[0]))
    del report["results"]["robust_accuracy"]
    with pytest.raises(ValueError, match="results. lacks 'robust_accuracy'"):
        bench.compare([finished[0], report])
    with pytest.raises(ValueError, match="not a JSON object"):
        bench.compare([[]])


# -- the command line -----------------------------------------------------------------
def cli_run(args, capsys):
    code = cli.main(["bench"] + args)
    return code, capsys.readouterr().err


def test_cli_errors_are_one_line(finished, digits_mlp, tmp_path, capsys, monkeypatch):
    model_file = str(tmp_path / "m.keras")
    digits_mlp.save(model_file)
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 broken")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "protocol.json").write_text(json.dumps(tiny_protocol()))
    base = ["--model", model_file, "--protocol", str(tmp_path / "protocol.json"), "--no-progress"]
    cases = [
        (
            base + ["--custom-objects", "no_such_module_here", "--out", str(tmp_path / "o1")],
            "cannot import module 'no_such_module_here'",
        ),
        (base + ["--out", str(tmp_path / "a-file")], "is a file, not a folder"),
        (["--model", str(tmp_path), "--out", str(tmp_path / "o2")], "is a directory"),
        (base + ["--engine", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o3")], "bad.npz"),
        (["compare", str(tmp_path / "list.json")], "not a JSON object"),
        (["compare", str(tmp_path / "missing.json")], "neither a report.json"),
        (base + ["--batch-size", "0", "--out", str(tmp_path / "o4")], "batch_size"),
        (base + ["--shard", "9/9", "--out", str(tmp_path / "o5")], "has no batches"),
    ]
    for args, message in cases:
        code, err = cli_run(args, capsys)
        assert code == 2 and message in err, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
    for error in (
        ZeroDivisionError("division by zero"),
        MemoryError(),
        KeyError("n"),
        PermissionError(13, "Permission denied", "/x/report.json"),
    ):

        def broken(args, error=error):
            raise error

        monkeypatch.setattr(cli, "_bench_list", broken)
        code, err = cli_run(["list"], capsys)
        assert code == 2 and err.startswith("advlib bench: error: ") and err.count("\n") == 1
    assert "/x/report.json: Permission denied" in cli.describe_error(
        PermissionError(13, "Permission denied", "/x/report.json")
    )


def test_custom_objects_come_last_and_only_from_custom_objects(digits_mlp, tmp_path, capsys):
    marker = tmp_path / "imported"
    module = tmp_path / "objects.py"
    module.write_text(f"open({str(marker)!r}, 'w').close()\ndef helper():\n    return 1\n")
    code, err = cli_run(
        [
            "--model",
            str(tmp_path / "missing.keras"),
            "--custom-objects",
            str(module),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "missing.keras" in err and "does not exist" in err
    assert not marker.exists()
    model_file = str(tmp_path / "m.keras")
    digits_mlp.save(model_file)
    code, err = cli_run(
        ["--model", model_file, "--custom-objects", str(module), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and "must define CUSTOM_OBJECTS" in err
    module.write_text("CUSTOM_OBJECTS = {}\n")
    assert cli._custom_objects(str(module)) == {}


# -- numbers and attacks ----------------------------------------------------------------
def test_huge_integers_get_clear_errors():
    with pytest.raises(ValueError, match=r"nb_iter must be in \[1, 100\]"):
        check_number("nb_iter", 10**30, low=1, high=100, integer=True)
    assert check_number("n", 10**30, integer=True) == 10**30
    with pytest.raises(ValueError, match="seed must be in"):
        ProjectedGradientDescent.check_params(seed=2**64)


def test_spsa_on_half_precision_and_with_no_iterations(digits_cnn, digits):
    _, (x, _) = digits
    x = x[:6]
    half = SPSA(digits_cnn).generate_np(
        x.astype(np.float16), eps=0.1, nb_iter=3, spsa_samples=8, clip_min=0.0, clip_max=1.0, seed=0
    )
    assert half.dtype == np.float16 and np.isfinite(half).all()
    assert np.abs(half.astype(np.float32) - x).max() <= 0.1 + 1e-3  # float16 rounding
    same = SPSA(digits_cnn).generate_np(x, eps=0.1, nb_iter=0, clip_min=0.0, clip_max=1.0, seed=0)
    np.testing.assert_array_equal(same, x)


def test_cw_batch_size_none_through_generate_np(digits_cnn, digits):
    _, (x, _) = digits
    cw = CarliniWagnerL2(digits_cnn)
    whole = cw.generate_np(x[:4], batch_size=None, max_iterations=5, binary_search_steps=1)
    pieces = cw.generate_np(x[:4], batch_size=4, max_iterations=5, binary_search_steps=1)
    np.testing.assert_array_equal(whole, pieces)
    result = cw.run(x[:4], batch_size=None, max_iterations=5, binary_search_steps=1)
    assert result.x_adv.shape == x[:4].shape
