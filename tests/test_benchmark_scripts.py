"""Benchmark scripts that must keep running where their hardware is absent."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_scale_runs_end_to_end_on_a_cpu_with_quick(tmp_path, digits_mlp):
    """benchmarks/gpu_scale.py --quick on JAX, without CuPy or torchattacks: every
    section runs, and what needs them is skipped by name."""
    out, model = tmp_path / "gpu_scale.json", str(tmp_path / "mlp.keras")
    digits_mlp.save(model)
    env = dict(os.environ, KERAS_BACKEND="jax")
    env.pop("PYTHONPATH", None)  # no torchattacks from a developer's path
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_scale.py", "--quick", "--model", model, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["backend"] == "jax" and document["quick"] is True
    harness, autoattack, engine = (document["results"][s] for s in "abc")
    assert harness["n"] == 10 and set(harness["attack_seconds"]) == {
        "apgd-ce @ eps 0.2",
        "square @ eps 0.2",
    }
    assert 0 <= harness["worst_case_accuracy"] <= harness["clean_accuracy"] <= 1
    assert [row["attack"] for row in autoattack["rows"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    for row in autoattack["rows"]:
        assert row["advlib_seconds"] > 0 and 0 <= row["advlib_robust"] <= 1
        assert row["torchattacks"] == "skipped: torchattacks is not installed"
    assert autoattack["mode"].startswith("fixed work")
    assert engine["CuPy engine"].startswith("skipped: CuPy is not installed")
    assert engine["float Keras model"]["seconds"] > 0
    assert "(c) Square inside the binary engine" in done.stdout
    assert "skipped: CuPy is not installed" in done.stdout
