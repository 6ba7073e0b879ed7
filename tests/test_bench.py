"""The benchmark harness: a full digits run, resume, shards, compare, bad input."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from advlib import bench, cli
from advlib.bench import protocol as protocols
from advlib.bench.shards import parse_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "digits-linf-0.2@2"  # v2: the fast ensemble, for the harness mechanics


def quick_protocol(**changes):
    """The digits protocol with fewer attack steps and a shorter SPSA probe (the
    diagnostics on 60 digits, SPSA's probe 20 steps), for the harness's mechanics."""
    document = protocols.load(QUICK)
    for entry in document["attacks"]:
        if "nb_iter" in entry["params"]:
            entry["params"]["nb_iter"] = 10
    document["sweep"] = [0.1]
    document["diagnostics"] = dict(document["diagnostics"], n=60, spsa_iterations=20)
    document.update(changes)
    return document


# session-scoped, though used by this module only: a pytest-xdist worker interleaves
# modules, and a module fixture would be computed again each time it came back to it
@pytest.fixture(scope="session")
def full_run(digits_cnn, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    report = bench.evaluate(
        digits_cnn, protocol=quick_protocol(), out_dir=out, batch_size=90, progress=False
    )
    return report, out


@pytest.mark.slow
def test_full_digits_run(full_run, digits, digits_cnn):
    report, out = full_run
    _, (x_test, y_test) = digits
    results = report["results"]
    clean = np.mean(digits_cnn.predict(x_test, verbose=0).argmax(1) == y_test)
    assert results["clean_accuracy"]["value"] == pytest.approx(clean)
    assert report["n"] == 360 and report["complete"]
    main = results["per_eps"][0]
    after = [a["robust_accuracy_after"]["value"] for a in main["attacks"]]
    assert all(b <= a for a, b in zip(after, after[1:]))  # each attack only removes
    assert main["robust_accuracy"]["value"] == after[-1] < 0.2
    low, high = main["robust_accuracy"]["ci95"]
    assert low <= main["robust_accuracy"]["value"] <= high
    for key in ("schema_version", "protocol_hash", "environment", "seeds"):
        assert key in report
    assert report["model"]["fingerprint"] != "unknown"
    assert {"tensorflow", "keras", "numpy"} <= set(report["environment"])
    for name in ("report.json", "report.md", "examples.npz", "robustness.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with np.load(os.path.join(out, "examples.npz")) as data:
        robust = data["correct"] & (data["broken_by"][0] < 0)
        assert robust.mean() == pytest.approx(main["robust_accuracy"]["value"])
        broken = data["broken_by"][0] >= 0
        assert np.all(data["norm"][0][broken] <= 0.2 + 1e-5)
    assert "robust (worst case), eps=0.2" in open(os.path.join(out, "report.md")).read()


@pytest.mark.slow
def test_sweep_is_monotone(full_run):
    report, _ = full_run
    by_eps = sorted(report["results"]["per_eps"], key=lambda e: e["eps"])
    values = [e["robust_accuracy"]["value"] for e in by_eps]
    assert values[0] >= values[-1] and len(values) == 2


@pytest.mark.slow
def test_shards_merge_into_the_single_run(full_run, digits_cnn, tmp_path):
    report, out = full_run
    shards = []
    for i in (1, 2):
        folder = str(tmp_path / f"shard{i}")
        part = bench.evaluate(
            digits_cnn,
            protocol=quick_protocol(),
            out_dir=folder,
            batch_size=90,
            shard=f"{i}/2",
            progress=False,
        )
        assert part["complete"] and part["shard"] == f"{i}/2" and part["n_total"] == 360
        shards.append(folder)
    merged = bench.merge(shards, str(tmp_path / "merged"))
    assert merged["results"]["robust_accuracy"] == report["results"]["robust_accuracy"]
    for ours, theirs in zip(merged["results"]["per_eps"], report["results"]["per_eps"]):
        for a, b in zip(ours["attacks"], theirs["attacks"]):
            assert a["robust_accuracy_after"] == b["robust_accuracy_after"]
            assert a["forward_passes"] == b["forward_passes"]
    assert merged["diagnostics"] == report["diagnostics"]  # every shard probes the same subset
    with (
        np.load(os.path.join(out, "examples.npz")) as one,
        np.load(str(tmp_path / "merged" / "examples.npz")) as many,
    ):
        for key in ("correct", "broken_by", "success", "attacked"):
            np.testing.assert_array_equal(one[key], many[key])
    with pytest.raises(ValueError, match="leave batches"):
        bench.merge(shards[:1], str(tmp_path / "partial"))
    with pytest.raises(ValueError, match="appears in two shards"):
        bench.merge(shards + shards[:1], str(tmp_path / "twice"))


def run_cli(args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "advlib.cli", "bench"] + args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    env = dict(os.environ, ADVLIB_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="3")
    previous = os.environ.get("ADVLIB_CACHE")
    os.environ["ADVLIB_CACHE"] = cache
    try:
        bench.reference_model(verbose=False)  # trained once, shared by the subprocesses
    finally:
        if previous is None:
            del os.environ["ADVLIB_CACHE"]
        else:
            os.environ["ADVLIB_CACHE"] = previous
    return env


@pytest.fixture(scope="session")
def kill_protocol(cli_env, tmp_path_factory):
    """A short protocol as a file, and its uninterrupted run on the model the command
    line loads: what the killed and resumed runs must equal."""
    folder = tmp_path_factory.mktemp("kill")
    protocol_file = str(folder / "quick.json")
    # a short SPSA probe: the probes are compared, not judged, here
    protocol = quick_protocol(diagnostics={"n": 30, "spsa_iterations": 10})
    protocol["dataset"]["n"] = 120  # four batches of 30
    # two attacks: resuming is what is tested, not the ensemble
    protocol["attacks"] = [a for a in protocol["attacks"] if a["name"] in ("fgsm", "pgd-cw")]
    json.dump(protocol, open(protocol_file, "w"))
    with pytest.MonkeyPatch.context() as patch:  # the model the command line loads
        patch.setenv("ADVLIB_CACHE", cli_env["ADVLIB_CACHE"])
        model, _ = bench.reference_model(verbose=False)
    straight = str(folder / "straight")
    report = bench.evaluate(model, protocol_file, out_dir=straight, batch_size=30, progress=False)
    return protocol_file, straight, report


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_numbers(cli_env, kill_protocol, tmp_path):
    protocol_file, straight, _ = kill_protocol
    common = ["--protocol", protocol_file, "--batch-size", "30", "--no-progress"]

    interrupted = str(tmp_path / "interrupted")
    process = run_cli(common + ["--out", interrupted], cli_env)
    state = os.path.join(interrupted, "state.json")
    deadline = time.time() + 240
    while time.time() < deadline:
        if os.path.exists(state) and len(json.load(open(state))["done"]) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.load(open(state))["done"]
    assert 2 <= len(done) < 4, "the run was not interrupted half-way"
    assert not os.path.exists(os.path.join(interrupted, "report.json"))
    resumed = run_cli(common + ["--out", interrupted, "--resume"], cli_env)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = json.load(open(os.path.join(straight, "report.json")))
    b = json.load(open(os.path.join(interrupted, "report.json")))
    assert a["results"]["robust_accuracy"] == b["results"]["robust_accuracy"]
    assert a["results"]["clean_accuracy"] == b["results"]["clean_accuracy"]
    assert a["diagnostics"] == b["diagnostics"] and a["probes"] == b["probes"]
    for x, y in zip(a["results"]["per_eps"], b["results"]["per_eps"]):
        assert [t["robust_accuracy_after"] for t in x["attacks"]] == [
            t["robust_accuracy_after"] for t in y["attacks"]
        ]
    with (
        np.load(os.path.join(straight, "examples.npz")) as one,
        np.load(os.path.join(interrupted, "examples.npz")) as two,
    ):
        for key in ("broken_by", "success", "norm"):
            np.testing.assert_array_equal(one[key], two[key])


def without_times(document):
    """A report section as JSON would hold it, without its (wall-clock) seconds."""
    if isinstance(document, dict):
        return {k: without_times(v) for k, v in document.items() if k != "seconds"}
    if isinstance(document, (list, tuple)):
        return [without_times(v) for v in document]
    return document


def lock_owner(folder):
    """The pid in a run folder's lock file (the process that evaluates into it)."""
    try:
        with open(os.path.join(folder, ".advlib.lock")) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def kill_shard_worker(folder, previous, deadline):
    """SIGKILLs the worker evaluating into `folder` (one other than `previous`) once
    it has finished a batch; returns its pid."""
    state = os.path.join(folder, "state.json")
    while time.time() < deadline:
        owner = lock_owner(folder)
        finished = os.path.exists(state) and len(json.load(open(state))["done"]) >= 1
        if owner not in (None, previous) and finished:
            os.kill(owner, signal.SIGKILL)
            return owner
        time.sleep(0.02)
    raise AssertionError(f"no worker finished a batch in {folder} in time")


def test_ray_shards_that_fail_after_their_retries_are_reported_by_shard(tmp_path, monkeypatch):
    """What the driver does once Ray gives up on a task (its retries spent): the
    shard is named with its error, and the finished shards stay for --resume. Ray
    itself is stood in for: its retries are tested by the run below."""
    from advlib.bench import distributed

    class FakeRay:
        def __init__(self):
            self.calls = 0

        def is_initialized(self):
            return True

        def cluster_resources(self):
            return {"CPU": 2.0}

        def remote(self, **options):
            assert options["max_retries"] == 3 and options["retry_exceptions"]
            assert options["num_cpus"] == 1.0
            return lambda function: type("Task", (), {"remote": staticmethod(lambda *a: a[3])})

        def wait(self, waiting, num_returns):
            return waiting[:1], waiting[1:]

        def get(self, shard):
            if shard == "2/3":
                raise RuntimeError("worker died\nMemoryError: out of memory")
            return {"pid": 1, "host": "h", "tries": 1, "resumed_from": [0]}

    monkeypatch.setattr(distributed, "import_ray", FakeRay)
    out = str(tmp_path / "run")
    with pytest.raises(ValueError) as error:
        distributed.evaluate_on_ray(
            None, quick_protocol(), out, workers=3, retries=3, progress=False
        )
    message = str(error.value)
    assert "1 of 3 shards failed after 4 tries (shard 2/3: RuntimeError: MemoryError" in message
    assert "--resume" in message and os.path.isdir(os.path.join(out, "shards"))
    assert not os.path.exists(os.path.join(out, "report.json"))
    with pytest.raises(ValueError, match="already holds a Ray run"):
        distributed.evaluate_on_ray(None, quick_protocol(), out, workers=3, progress=False)
    with pytest.raises(ValueError, match="workers must be"):
        distributed.evaluate_on_ray(None, quick_protocol(), str(tmp_path / "b"), workers=0)


@pytest.mark.slow
def test_ray_shards_merge_into_the_single_run_and_a_killed_worker_resumes(
    cli_env, kill_protocol, tmp_path
):
    pytest.importorskip("ray", reason="Ray is an extra: pip install 'advlib[ray]'")
    protocol_file, straight_folder, straight = kill_protocol  # four batches: two per shard
    out = str(tmp_path / "ray")
    common = ["--protocol", protocol_file, "--batch-size", "30", "--no-progress", "--out", out]
    common += ["--ray", "--workers", "2", "--cpus-per-worker", "1", "--retries", "1"]
    # shard 1's worker is killed after its first batch: Ray retries the task, which
    # resumes from the shard's saved state
    process = run_cli(common, cli_env)
    kill_shard_worker(os.path.join(out, "shards", "1-of-2"), None, time.time() + 240)
    assert process.wait(timeout=240) == 0, process.stderr.read()
    report = json.load(open(os.path.join(out, "report.json")))
    tries = report["ray"]["tries"]
    assert tries["2/2"] == {"tries": 1, "resumed_from": [0]}
    assert tries["1/2"]["tries"] == 2 and tries["1/2"]["resumed_from"][0] == 0
    assert tries["1/2"]["resumed_from"][1] == 1, tries
    assert report["merged_from"] == ["1/2", "2/2"] and report["n"] == 120
    assert without_times(report["results"]) == without_times(straight["results"])
    with (
        np.load(os.path.join(straight_folder, "examples.npz")) as one,
        np.load(os.path.join(out, "examples.npz")) as many,
    ):
        assert sorted(one.files) == sorted(many.files)
        for key in one.files:
            if key not in ("seconds",):
                np.testing.assert_array_equal(one[key], many[key], err_msg=key)


@pytest.mark.slow
def test_cli_bad_inputs_write_nothing(cli_env, tmp_path, capsys, monkeypatch):
    from advlib import cli

    monkeypatch.setenv("ADVLIB_CACHE", cli_env["ADVLIB_CACHE"])
    out = str(tmp_path / "never")
    cases = [
        (["--model", str(tmp_path / "missing.keras")], "does not exist"),
        (["--protocol", "no-such-protocol"], "neither a file nor one of the shipped"),
        (["--shard", "4/3"], "outside 1..n"),
        (["--shard", "x"], "must look like 'i/n'"),
    ]
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    cases.append((["--model", str(corrupt)], "not a .keras archive"))
    if importlib.util.find_spec("ray") is not None:  # refused before Ray starts
        cases += [
            (["--ray", "--model", str(corrupt)], "not a .keras archive"),
            (["--ray", "--shard", "1/2"], "--shard and --ray exclude each other"),
            (["--ray", "--workers", "0"], "workers must be in [1, inf], got 0"),
        ]
    for args, message in cases:
        assert cli.main(["bench"] + args + ["--out", out, "--no-progress"]) == 2
        assert message in capsys.readouterr().err
        assert not os.path.exists(out)


def test_models_that_do_not_fit_the_protocol(tmp_path):
    wrong_shape = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    with pytest.raises(ValueError, match=r"expects inputs of shape \(None, 28, 28, 1\)"):
        bench.evaluate(
            wrong_shape, protocol=quick_protocol(), out_dir=str(tmp_path / "a"), progress=False
        )
    few_classes = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    with pytest.raises(ValueError, match="has 5 classes"):
        bench.evaluate(
            few_classes, protocol=quick_protocol(), out_dir=str(tmp_path / "b"), progress=False
        )
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


@pytest.mark.slow
def test_resume_refuses_another_run(full_run, digits_cnn, digits_mlp):
    _, out = full_run
    with pytest.raises(ValueError, match="belongs to another run: its model_fingerprint"):
        bench.evaluate(
            digits_mlp,
            protocol=quick_protocol(),
            out_dir=out,
            batch_size=90,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="its protocol_hash"):
        bench.evaluate(
            digits_cnn,
            protocol=quick_protocol(seed=1),
            out_dir=out,
            batch_size=90,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="already holds a run's state"):
        bench.evaluate(
            digits_cnn, protocol=quick_protocol(), out_dir=out, batch_size=90, progress=False
        )


def test_resume_refuses_a_state_of_another_backend(full_run, digits_cnn, tmp_path):
    _, out = full_run
    state = json.load(open(os.path.join(out, "state.json")))
    assert state["identity"]["backend"] == "tensorflow"
    resume = lambda folder: bench.evaluate(
        digits_cnn,
        protocol=quick_protocol(),
        out_dir=str(folder),
        batch_size=90,
        resume=True,
        progress=False,
    )
    for backend, error in (("jax", "its backend is 'jax', this run's is 'tensorflow'"), (None, "")):
        folder = tmp_path / str(backend)
        shutil.copytree(out, folder)
        if backend is None:  # a state saved before advlib recorded the backend: TensorFlow's
            del state["identity"]["backend"]
        else:
            state["identity"]["backend"] = backend
        (folder / "state.json").write_text(json.dumps(state))
        if error:
            with pytest.raises(ValueError, match=error):
                resume(folder)
        else:
            assert resume(folder)["complete"]


@pytest.mark.slow
def test_compare_ranks_and_refuses_mismatched_protocols(full_run, digits_mlp, tmp_path):
    report, _ = full_run
    other = bench.evaluate(digits_mlp, protocol=quick_protocol(), batch_size=90, progress=False)
    table = bench.compare([report, other])
    rows = [line for line in table.splitlines() if line.startswith(("| 1 ", "| 2 "))]
    assert len(rows) == 2
    different = bench.evaluate(
        digits_mlp,
        protocol=quick_protocol(threat={"norm": "inf", "eps": 0.1}),
        batch_size=90,
        progress=False,
    )
    with pytest.raises(ValueError, match="different protocols"):
        bench.compare([report, different])
    assert "| 2 |" in bench.compare([report, different], force=True)


def test_protocols_validate_and_refuse_unknown_keys(tmp_path):
    assert set(bench.available()) >= {
        "mnist-linf-0.3",
        "fashion-mnist-linf-0.1",
        "cifar10-linf-8/255",
        "cifar10-l2-0.5",
        "digits-linf-0.2",
        "digits-l2-certified",
        "fashion-mnist-l2-certified",
    }
    for name in bench.available():
        protocol = bench.load_protocol(name)
        assert protocol["name"] == name
        assert protocols.protocol_hash(protocol) == protocols.protocol_hash(
            bench.load_protocol(name)
        )
    cases = [
        (dict(colour="red"), "unknown key(s) ['colour']"),
        (dict(attacks=[{"attack": "NewtonFool"}]), "unknown attack 'NewtonFool'"),
        (
            dict(attacks=[{"attack": "ProjectedGradientDescent", "params": {"nb_iters": 3}}]),
            "params has unknown key(s) ['nb_iters']",
        ),
        (dict(threat={"norm": "1", "eps": 0.1}), "threat norm must be 'inf' or '2'"),
        (dict(threat={"norm": "inf", "eps": -1}), "threat eps must be in"),
        (dict(dataset={"name": "svhn", "n": 10}), "dataset name must be one of"),
    ]
    for change, message in cases:
        path = tmp_path / "custom.json"
        path.write_text(json.dumps(quick_protocol(**change)))
        with pytest.raises(bench.ProtocolError) as info:
            bench.load_protocol(str(path))
        assert message in str(info.value)
    path.write_text("{broken")
    with pytest.raises(bench.ProtocolError, match="not valid JSON"):
        bench.load_protocol(str(path))


def test_shard_specs():
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
    for bad in ("0/3", "4/3", "1/0", "a/b", "3"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_wilson_interval():
    low, high = bench.wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert bench.wilson_interval(0, 10)[0] == 0.0


def small_v3(n=60, queries=300):
    """Version 3 of the digits protocol on `n` digits, Square with fewer queries."""
    document = protocols.load("digits-linf-0.2")
    document["dataset"]["n"] = document["batch_size"] = n
    document["sweep"] = []
    document["diagnostics"] = dict(document["diagnostics"], spsa_iterations=20)
    for entry in document["attacks"]:
        if entry["attack"] == "SquareAttack":
            entry["params"]["n_queries"] = queries
    return document


@pytest.mark.slow
def test_version_3_reports_the_autoattack_figure_beside_the_worst_case(
    digits_cnn, tmp_path, capsys
):
    assert protocols.load("digits-linf-0.2")["version"] == 3
    assert protocols.load("digits-linf-0.2@2")["version"] == 2  # the earlier version loads
    report = bench.evaluate(
        digits_cnn, protocol=small_v3(), progress=False, out_dir=str(tmp_path / "v3")
    )
    standard = report["results"]["headline"]
    assert standard["label"] == "AutoAttack (standard)"
    assert standard["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    after_square = report["results"]["per_eps"][0]["attacks"][3]
    assert after_square["name"] == "square"
    assert standard["robust_accuracy"] == after_square["robust_accuracy_after"]
    assert report["results"]["robust_accuracy"]["value"] <= standard["robust_accuracy"]["value"]
    table = bench.markdown(report)
    assert "AutoAttack (standard), comparable with RobustBench, eps=0.2" in table
    black_box = {c["id"]: c for c in report["diagnostics"]}["black-box-vs-white-box"]
    assert black_box["message"].startswith("SquareAttack broke")
    # an adaptive run reorders the ensemble (black-box last): no separable figure
    from advlib.bench.report import headline

    reordered = dict(
        report, ensemble=report["ensemble"][:3] + report["ensemble"][4:] + report["ensemble"][3:4]
    )
    assert headline(reordered)["robust_accuracy"] is None
    assert "not separable" in headline(reordered)["note"]
    # v2 and v3 reports are never ranked together
    older = bench.evaluate(
        digits_cnn,
        protocol=quick_protocol(
            dataset={"name": "digits", "split": "test", "n": 60}, batch_size=60, sweep=[]
        ),
        progress=False,
    )
    with pytest.raises(ValueError, match="different protocols"):
        bench.compare([report, older])
    check_robustbench_export(report, str(tmp_path / "v3"), tmp_path, capsys)


def check_robustbench_export(report, run, tmp_path, capsys):
    """The run as RobustBench's leaderboard entry, through the API and the command
    line; shards, partial runs and existing files refused."""
    from advlib.bench import export

    entry = export.robustbench_entry(run, name="Digits CNN", architecture="small CNN")
    # ModelInfo's fields (robustbench 1.1.1), corruption fields aside, in its order
    assert list(entry) == [
        "link", "name", "authors", "additional_data", "number_forward_passes", "dataset",
        "venue", "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote",
    ]  # fmt: skip
    clean = report["results"]["clean_accuracy"]["value"]
    autoattack = report["results"]["headline"]["robust_accuracy"]["value"]
    assert entry["clean_acc"] == f"{100 * clean:.2f}" and len(entry["clean_acc"].split(".")[1]) == 2
    assert entry["autoattack_acc"] == f"{100 * autoattack:.2f}"
    assert float(entry["autoattack_acc"]) < float(entry["clean_acc"])
    assert (entry["dataset"], entry["eps"], entry["number_forward_passes"]) == ("digits", "0.2", 1)
    assert entry["name"] == "Digits CNN" and entry["additional_data"] is False
    with pytest.raises(ValueError, match="number_forward_passes"):
        export.robustbench_entry(run, number_forward_passes=0)
    with pytest.raises(ValueError, match="'clean_acc' is not a RobustBench field"):
        export.robustbench_entry(run, clean_acc="99.00")
    out = str(tmp_path / "Digits2026Cnn.json")
    assert cli.main(["bench", "export", run, "--out", out, "--number-forward-passes", "3"]) == 0
    with open(out) as handle:
        assert json.load(handle) == dict(export.robustbench_entry(run), number_forward_passes=3)
    assert "model_info/digits/Linf/Digits2026Cnn.json" in capsys.readouterr().out
    assert cli.main(["bench", "export", run, "--out", out]) == 2  # never over a file
    assert "exists" in capsys.readouterr().err
    # a shard, and a run stopped before its end, are refused
    with open(os.path.join(run, "report.json")) as handle:
        document = json.load(handle)
    for name, change, message in (
        ("shard", {"shard": "1/2"}, "merge the shards first"),
        ("partial", {"complete": False, "n": 30}, "partial run"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(os.path.join(run, "examples.npz"), folder)
        (folder / "report.json").write_text(json.dumps(dict(document, **change)))
        with pytest.raises(ValueError, match=message):
            export.robustbench_entry(str(folder))


def test_robustbench_eps_spelling():
    from advlib.bench.export import eps_string

    assert [eps_string(e) for e in (8 / 255, 4 / 255, 0.5, 0.1, 0.3, 0.2)] == [
        "8/255", "4/255", "0.5", "0.1", "0.3", "0.2",
    ]  # fmt: skip
    assert eps_string(1 / 3) == "85/255" and eps_string(0.123456) == "0.123456"
    with pytest.raises(ValueError, match="eps must be a finite number"):
        eps_string(float("nan"))


@pytest.mark.slow
def test_sweep_attacks_run_only_at_the_sweep_eps(digits_cnn):
    document = small_v3(n=60, queries=100)
    document.update(
        sweep=[0.1],
        sweep_attacks=["apgd-ce", "square"],
        diagnostics={"n": 20, "spsa_iterations": 0},
    )
    report = bench.evaluate(digits_cnn, protocol=document, progress=False)
    main, sweep = report["results"]["per_eps"]
    assert all(a["ran"] for a in main["attacks"])
    ran = {a["name"]: a["ran"] for a in sweep["attacks"]}
    assert ran == {
        "apgd-ce": True,
        "apgd-t": False,
        "fab-t": False,
        "square": True,
        "pgd-cw": False,
        "pgd-targeted": False,
    }
    for attack in sweep["attacks"]:
        if not attack["ran"]:
            assert attack["attacked"] == attack["broken"] == attack["forward_passes"] == 0
    assert sweep["attacks"][0]["attacked"] == main["attacks"][0]["attacked"] > 0
    # AutoAttack's figure exists only where all its attacks ran
    headline = report["results"]["headline"]["per_eps"]
    assert headline[0]["robust_accuracy"] is not None and headline[1]["robust_accuracy"] is None
    black_box = {c["id"]: c for c in report["diagnostics"]}["black-box-vs-white-box"]
    assert [row["eps"] for row in black_box["evidence"]["per_eps"]] == [0.2, 0.1]
    assert "spsa" not in report["probes"]  # spsa_iterations 0 leaves the probe out
    with pytest.raises(protocols.ProtocolError, match=r"sweep_attacks must be .* got \['pgd'\]"):
        protocols.validate(dict(small_v3(), sweep_attacks=["pgd"]))


def test_a_headline_must_lead_the_attack_list():
    document = small_v3()
    document["headline"]["attacks"] = ["apgd-t", "apgd-ce"]
    with pytest.raises(protocols.ProtocolError, match="headline attacks must be the first"):
        protocols.validate(document)
    document["headline"] = {"attacks": ["apgd-ce"], "colour": "red"}
    with pytest.raises(protocols.ProtocolError, match=r"unknown key\(s\) \['colour'\]"):
        protocols.validate(document)
