"""The runnable scripts behind the README and the tutorials."""

import json
import os
import re
import subprocess
import sys

import pytest

from advlib import qnn
from advlib.qnn.engine import BinaryEngine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))


@pytest.mark.slow
def test_quickstart_reports_accuracy_drops(capsys):
    import quickstart

    results = quickstart.main(["--epochs", "8", "--eps", "0.15"])
    clean, fgsm, pgd = results.values()
    assert clean > 0.85
    assert fgsm < clean - 0.2
    assert pgd <= fgsm
    printed = capsys.readouterr().out
    assert re.search(r"clean\s+0\.\d{3}", printed) and "PGD-20" in printed


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_readme_opens_with_two_setup_commands_and_ci_runs_the_second():
    text = open(os.path.join(ROOT, "README.md")).read()
    head = text.split("## ")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", head, re.S)
    assert len(commands) == 2
    assert all("python3 -m venv" in c and "\n" not in c for c in commands)
    assert "pytest" in commands[1] and commands[0].endswith("advlib bench")
    out = subprocess.run(
        ["bash", "-c", "source <(sed -n '/^command=/p' .ci/run); echo \"$command\""],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == commands[1]


@pytest.mark.slow
def test_cli_version_and_info(capsys):
    from advlib.cli import main

    # the entry point itself, once, in a fresh interpreter; the rest in this process
    out = subprocess.run(
        [sys.executable, "-m", "advlib.cli", "info"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert "tensorflow" in out.stdout and "fashion-mnist:" in out.stdout
    assert "Keras backend tensorflow" in out.stdout
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("advlib ")
    with pytest.raises(SystemExit) as bad:
        main(["nonsense"])
    assert bad.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_attack_gallery_with_tiny_settings(tmp_path):
    import attack_gallery

    results, path = attack_gallery.main(
        ["--n", "12", "--epochs", "6", "--cw-iterations", "60", "--out-dir", str(tmp_path)]
    )
    assert os.path.getsize(path) > 10_000
    from matplotlib.image import imread

    assert imread(path).shape[0] > 500  # a 5-row grid
    assert set(results) == {"FGSM (Linf 0.1)", "PGD-40 (Linf 0.1)", "JSMA (gamma 0.3)", "CW-L2"}
    jsma = results["JSMA (gamma 0.3)"]
    assert jsma.success_rate > 0.5 and jsma.l0.max() <= 19
    assert results["PGD-40 (Linf 0.1)"].linf.max() <= 0.1 + 1e-6
    # a rerun into the same folder stops before training, and the figure stays
    figure = open(path, "rb").read()
    with pytest.raises(SystemExit) as stopped:
        attack_gallery.main(["--out-dir", str(tmp_path)])
    assert stopped.value.code == 2
    assert open(path, "rb").read() == figure


def test_examples_refuse_to_write_over_earlier_outputs(tmp_path, capsys):
    import argparse

    from _outputs import refuse_to_overwrite

    parser = argparse.ArgumentParser(prog="example")
    (tmp_path / "summary.json").write_text("{}")
    refuse_to_overwrite(parser, str(tmp_path), ["report.json"])  # nothing there yet
    refuse_to_overwrite(parser, str(tmp_path), ["summary.json"], overwrite=True)
    for overwrite, remedy in ((False, "or pass --overwrite"), (None, "choose another folder.")):
        with pytest.raises(SystemExit):
            refuse_to_overwrite(parser, str(tmp_path), ["summary.json", "bench"], overwrite)
        message = capsys.readouterr().err
        assert "already holds summary.json from an earlier run" in message and remedy in message
    assert (tmp_path / "summary.json").read_text() == "{}"


@pytest.mark.slow
def test_qnn_example_on_digits(tmp_path):
    import qnn_fashion_mnist

    report = qnn_fashion_mnist.main(
        [
            "--dataset",
            "digits",
            "--epochs",
            "6",
            "--width",
            "128",
            "--batch-size",
            "64",
            "--attack-n",
            "100",
            "--eps",
            "0.15",
            "--float-twin",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert report["test_accuracy"] > 0.8
    assert report["exactness"]["exact"]
    assert report["memory"]["ratio"] > 10
    attacks = report["attacks"]
    assert attacks["binary, STE gradients"]["pgd"] < attacks["binary, STE gradients"]["clean"]
    assert (
        attacks["binary, naive (zero) gradients"]["pgd"] > attacks["binary, STE gradients"]["pgd"]
    )
    assert os.path.exists(tmp_path / "binary_cnn.npz")
    assert os.path.exists(tmp_path / "binary_cnn_report.json")


@pytest.mark.slow
def test_adversarial_training_example_on_digits(tmp_path):
    import adversarial_training

    report = adversarial_training.main(
        [
            "--dataset",
            "digits",
            "--epochs",
            "3",
            "--eps",
            "0.2",
            "--eval-iter",
            "10",
            "--out-dir",
            str(tmp_path),
        ]
    )
    natural, robust = report["results"]["natural"], report["results"]["fast AT"]
    at_eps = lambda rows: next(r for r in rows if abs(r["eps"] - 0.2) < 1e-9)
    assert at_eps(robust)["pgd"] > at_eps(natural)["pgd"]
    # robust accuracy never rises with eps
    for rows in (natural, robust):
        pgd = [r["pgd"] for r in rows]
        assert all(b <= a + 0.02 for a, b in zip(pgd, pgd[1:]))
    assert os.path.getsize(report["plot"]) > 10_000
    assert len(report["robust_epoch_seconds"]) == 3


@pytest.mark.slow
def test_trustworthy_evaluation_example(tmp_path):
    import trustworthy_evaluation

    summary = trustworthy_evaluation.main(
        [
            "--n",
            "24",
            "--epochs",
            "8",
            "--no-sweep",
            "--spsa-iter",
            "10",
            "--nb-iter",
            "10",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert summary["cnn"]["flag"] == "" and summary["binary, STE"]["flag"] == ""
    assert "gradient-health" in summary["defended"]["flag"]
    assert "gradient-health" in summary["binary, naive gradients"]["flag"]
    for naive, adaptive in (
        ("defended", "defended, adaptive"),
        ("binary, naive gradients", "binary, naive gradients, adaptive"),
    ):
        assert summary[adaptive]["flag"] == ""
        assert summary[adaptive]["robust_accuracy"] < summary[naive]["robust_accuracy"]
    # the binary CNN: zero gradients fail the gradient checks, the STE passes them all,
    # and the adaptive run finds the STE's number (within two digits) on its own
    binary = {name: summary[name] for name in summary if name.startswith("binary")}
    naive_checks = binary["binary, naive gradients"]["checks"]
    assert naive_checks["unbounded"] == naive_checks["gradient-health"] == "fail"
    assert binary["binary, STE"]["checks"]["ste-window"] == "pass"
    assert (
        binary["binary, STE"]["robust_accuracy"]
        < binary["binary, naive gradients"]["robust_accuracy"]
    )
    adaptive = binary["binary, naive gradients, adaptive"]
    assert adaptive["adaptive"]["variants"] == ["ste", "identity", "smooth-1"]
    assert adaptive["robust_accuracy"] <= binary["binary, STE"]["robust_accuracy"] + 2 / 24
    assert os.path.exists(tmp_path / "defended_adaptive.md")
    assert json.load(open(tmp_path / "summary.json")).keys() == summary.keys()


@pytest.mark.slow
def test_autoattack_report_example(tmp_path):
    import autoattack_report

    summary = autoattack_report.main(["--n", "24", "--no-sweep", "--out-dir", str(tmp_path)])
    log = summary["autoattack_log"]
    assert list(log) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"][: len(log)]
    # the harness's headline and AutoAttack's own run agree (their seeds differ), and the
    # worst case is no higher
    assert abs(summary["autoattack_standard"] - list(log.values())[-1]) <= 1 / 24 + 1e-9
    assert summary["worst_case"] <= summary["autoattack_standard"] < summary["clean"]
    assert os.path.exists(tmp_path / "bench" / "report.json")


@pytest.mark.slow
def test_verify_binary_example(tmp_path, monkeypatch):
    import verify_binary

    arguments = [
        "--n",
        "30",
        "--eps",
        "0.0157",
        "0.0039",
        "--iterations",
        "10",
        "--square-queries",
        "100",
        "--verifiable",
        "0.02",
        "--out-dir",
        str(tmp_path),
    ]
    rows = verify_binary.main(arguments + ["--epochs", "10"])
    assert [row["eps"] for row in rows] == [0.0039, 0.0157]
    for row in rows:
        low, high = row["interval"]
        assert low <= high <= row["after_attacks"]
        assert row["robust"] + row["broken"] + row["unknown"] == row["verified"]
    assert rows[0]["unknown"] == 0 and rows[0]["interval"][0] == rows[0]["interval"][1]
    # a larger ball leaves more units open
    assert 0 <= rows[0]["open_units"] < rows[1]["open_units"] < 1
    assert os.path.isfile(tmp_path / "run" / "report.json")
    assert json.load(open(tmp_path / "verification.json")) == json.loads(json.dumps(rows))
    # the folder holds a run: a second run must not train over its network
    engine = (tmp_path / "binary_mlp.npz").read_bytes()
    with pytest.raises(SystemExit) as stopped:
        verify_binary.main(arguments + ["--epochs", "1"])
    assert stopped.value.code == 2
    assert (tmp_path / "binary_mlp.npz").read_bytes() == engine
    # --resume continues with the saved network: the finished run reports the same rows
    assert verify_binary.main(arguments + ["--resume"]) == rows
    with pytest.raises(SystemExit):
        verify_binary.main(["--resume", "--out-dir", str(tmp_path / "elsewhere")])
    # EEV's recipe: conv-small on a grid, with masks, PGD-trained, exported ternary (the
    # harness after it is the one the MLP's run above went through)
    model = verify_binary.train(
        "conv-small", 0, 0, 1, None, 2.0, "digits", 0.61, 1e-4, 0.1, ramp=1, counterexamples=1
    )
    engine = BinaryEngine(**qnn.export(model))
    assert engine.spec["version"] == 3 and engine.input_levels is not None
    computed = [layer for layer in engine.spec["layers"] if "output" in layer]
    assert [bool(layer.get("mask")) for layer in computed] == [True, True, True, False]
    # the command line hands the recipe to train, and the verifier SAT alone (search share 0)
    handed = []

    def fake_train(*args):
        handed.append(args)
        return model

    def stop(wrapped, document, **kwargs):
        handed.append(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_binary, "train", fake_train)
    monkeypatch.setattr(verify_binary.bench, "evaluate", stop)
    recipe = ["--network", "conv-small", "--input-step", "0.61", "--mask-decay", "1e-4"]
    recipe += ["--ramp", "5", "--counterexamples", "500"]
    with pytest.raises(KeyboardInterrupt):
        verify_binary.main(recipe + ["--adversarial", "0.1", "--out-dir", str(tmp_path / "eev")])
    assert handed[0] == ("conv-small", 32, 2, 30, None, 2.0, "digits", 0.61, 1e-4, 0.1, 5, 500)
    assert handed[1]["verify_backend"] == "sat" and handed[1]["verify_search_share"] == 0.0
    # and refuses what does not go together, before it writes anything
    for bad in (
        ["--input-step", "2"],
        ["--mask-decay", "1e-4"],
        ["--adversarial", "0.1"],
        ["--ramp", "3"],
        ["--counterexamples", "-1"],
    ):
        with pytest.raises(SystemExit) as stopped:
            verify_binary.main(bad + ["--verifiable", "0.02", "--out-dir", str(tmp_path / "b")])
        assert stopped.value.code == 2 and not os.path.exists(tmp_path / "b")


@pytest.mark.slow
def test_certified_robustness_example(tmp_path):
    import certified_robustness

    args = [
        "--dataset",
        "digits",
        "--sigma",
        "0.25",
        "0.5",
        "--epochs",
        "5",
        "--n",
        "40",
        "--samples",
        "500",
        "--quick",
        "--quiet",
        "--out-dir",
        str(tmp_path),
    ]
    summary = certified_robustness.main(args)
    for sigma in ("0.25", "0.5"):
        per_radius = summary[sigma]["certified"]["per_radius"]
        values = [p["certified_accuracy"]["value"] for p in per_radius]
        assert values == sorted(values, reverse=True) and values[0] > 0.5
        assert os.path.isfile(tmp_path / f"sigma_{sigma}" / "report.md")
    # a larger sigma abstains more and keeps more at the largest radius it reaches
    assert summary["0.5"]["certified"]["abstained"] > summary["0.25"]["certified"]["abstained"]
    assert os.path.getsize(tmp_path / "certified_vs_empirical.png") > 0
    # a second run reuses the models and the finished harness runs
    again = certified_robustness.main(args)
    assert json.loads(json.dumps(again)) == json.load(open(tmp_path / "summary.json"))
    assert again["0.25"]["certified"] == summary["0.25"]["certified"]
