"""The backend layer: which Keras backend runs, and the errors for one advlib cannot use."""

import json
import re

import keras
import numpy as np
import pytest
from conftest import run_python

from advlib import backend
from advlib.attacks import FastGradientMethod
from advlib.models import KerasModelWrapper


def test_the_chosen_backend_is_read_as_keras_reads_it(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert backend.chosen() == "tensorflow"  # no keras.json
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert backend.chosen() == "jax"
    (tmp_path / "keras.json").write_text("{not json")
    assert backend.chosen() == "tensorflow"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # the variable wins, as in Keras
    assert backend.chosen() == "torch"
    assert backend.name() == keras.backend.backend() == "tensorflow"


@pytest.mark.parametrize("name,extra", [("jax", "advlib[jax]"), ("torch", "advlib[torch]")])
def test_a_missing_backend_names_its_extra(monkeypatch, name, extra):
    found = {"jax": None, "torch": None}
    monkeypatch.setattr(
        backend.importlib.util, "find_spec", lambda module: found.get(module, "installed")
    )
    with pytest.raises(ImportError, match=f"'{name}'.*pip install '{re.escape(extra)}'"):
        backend.require_installed(name)
    backend.require_installed("tensorflow")  # installed, so no error
    backend.require_installed("openvino")  # not one advlib knows: Keras will say


def test_importing_advlib_with_an_uninstalled_backend_names_the_extra():
    # the backend is hidden from this process, whether or not it is installed
    code = "import sys; sys.modules['torch'] = None; import advlib"
    out = run_python(code, KERAS_BACKEND="torch")
    assert out.returncode == 1
    assert "ImportError: Keras's backend is 'torch'" in out.stderr
    assert "pip install 'advlib[torch]'" in out.stderr


def test_models_and_attacks_refuse_a_backend_they_do_not_run_on(monkeypatch, digits_mlp):
    # Keras's inference-only OpenVINO backend has no gradients
    monkeypatch.setattr(backend, "name", lambda: "openvino")
    for make in (lambda: KerasModelWrapper(digits_mlp), lambda: FastGradientMethod(digits_mlp)):
        with pytest.raises(
            backend.BackendError, match="tensorflow or jax or torch backend.*runs on 'openvino'"
        ):
            make()
    monkeypatch.undo()
    x = np.zeros((2, 8, 8, 1), np.float32)
    assert FastGradientMethod(digits_mlp).generate_np(x, eps=0.1).shape == x.shape
