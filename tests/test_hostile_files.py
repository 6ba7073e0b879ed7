"""Hostile files: model archives that try to run code, forged engine files and
IDX headers, and an unsafe Keras. Each is refused with a clear error and
nothing runs."""

import json
import os
import re
import tracemalloc
import zipfile

import keras
import numpy as np
import pytest

from advlib.datasets.idx import read_idx
from advlib.models import loading
from advlib.models.loading import UnsafeModelError, load_model
from advlib.qnn.engine import BinaryEngine
from advlib.qnn.engine import spec as spec_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    path = str(tmp_path_factory.mktemp("models") / "plain.keras")
    model.save(path)
    return path


def rewrite(source, target, config_change=None, extra=None):
    """Copies a .keras archive, editing its config.json and adding members."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename == "config.json" and config_change is not None:
                config = json.loads(data)
                config_change(config)
                data = json.dumps(config).encode()
            new.writestr(item.filename, data)
        for name, data in (extra or {}).items():
            new.writestr(name, data)
    return str(target)


def add_to_first_layer(entry):
    def change(config):
        config["config"]["layers"][1]["config"]["kernel_regularizer"] = entry

    return change


def test_setup_requires_a_keras_without_known_bypasses():
    text = open(os.path.join(ROOT, "setup.py")).read()
    floor = re.search(r'"keras>=([0-9.]+)"', text).group(1)
    assert tuple(int(p) for p in floor.split(".")) >= loading.MIN_SAFE_KERAS >= (3, 14, 0)
    assert re.search(r'"numpy>=2', text), "np.bitwise_count needs NumPy 2"


def test_an_old_keras_is_refused_by_name(saved_model, monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.8.0")
    with pytest.raises(UnsafeModelError, match=r"Keras 3\.8\.0 .*keras>=3\.14"):
        load_model(saved_model)


def test_a_plain_model_loads(saved_model):
    model = load_model(saved_model)
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("case", ["cve-2025-1550", "cve-2025-8747", "cve-2025-9906", "lambda"])
def test_configs_that_would_run_code_are_refused(saved_model, tmp_path, case):
    marker = tmp_path / "ran"
    entries = {
        # any importable callable named as a serialized object
        "cve-2025-1550": {
            "module": "os",
            "class_name": "system",
            "config": f"touch {marker}",
            "registered_name": "system",
        },
        # a Keras utility that writes files, called through the config
        "cve-2025-8747": {
            "module": "keras.utils",
            "class_name": "function",
            "config": "get_file",
            "registered_name": "get_file",
        },
        # safe mode switched off from inside the file
        "cve-2025-9906": {
            "module": "keras.config",
            "class_name": "function",
            "config": "enable_unsafe_deserialization",
            "registered_name": "enable_unsafe_deserialization",
        },
    }
    if case == "lambda":

        def change(config):
            config["config"]["layers"].insert(
                1,
                {
                    "module": "keras.layers",
                    "class_name": "Lambda",
                    "config": {
                        "name": "evil",
                        "function": {
                            "class_name": "__lambda__",
                            "config": {"code": "", "defaults": None, "closure": None},
                        },
                    },
                },
            )
    else:
        change = add_to_first_layer(entries[case])
    evil = rewrite(saved_model, tmp_path / "evil.keras", change)
    with pytest.raises(UnsafeModelError) as info:
        load_model(evil)
    assert "evil.keras" in str(info.value)
    assert not marker.exists()


def test_archive_members_outside_the_archive_are_refused(saved_model, tmp_path):
    target = tmp_path / "inside" / "escape.txt"
    for name in ("../escape.txt", "/tmp/advlib-escape.txt", "assets/../../escape.txt"):
        os.makedirs(tmp_path / "inside", exist_ok=True)
        evil = rewrite(saved_model, tmp_path / "inside" / "evil.keras", extra={name: b"x"})
        with pytest.raises(UnsafeModelError, match="leaves the archive"):
            load_model(evil)
        assert not target.exists() and not (tmp_path / "escape.txt").exists()


def test_h5_files_are_refused_before_they_are_read(tmp_path):
    marker = tmp_path / "ran"
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda t: t * 2, name="payload")(inputs)
    h5 = str(tmp_path / "legacy.h5")
    keras.Model(inputs, outputs).save(h5)
    with pytest.raises(UnsafeModelError, match="only .keras files"):
        load_model(h5)
    disguised = tmp_path / "legacy.keras"
    disguised.write_bytes(open(h5, "rb").read())
    with pytest.raises(UnsafeModelError, match="not a .keras archive"):
        load_model(str(disguised))
    assert not marker.exists()


# -- engine files -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_file(tmp_path_factory):
    from engine_nets import random_network

    spec, arrays = random_network(3)
    path = str(tmp_path_factory.mktemp("engine") / "net.npz")
    spec_io.save(path, spec, arrays)
    return path


def copy_npz(source, target, replace=None, extra=None):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            data = (replace or {}).get(item.filename, old.read(item.filename))
            new.writestr(item.filename, data)
        for name, writer in (extra or {}).items():
            with new.open(name, "w", force_zip64=True) as handle:
                writer(handle)
    return str(target)


def test_unused_members_are_never_decompressed(engine_file, tmp_path):
    def bomb(handle):  # 256 MB of zeros, a few hundred KB compressed
        block = bytes(2**20)
        for _ in range(256):
            handle.write(block)

    path = copy_npz(engine_file, tmp_path / "bomb.npz", extra={"junk.npy": bomb})
    assert os.path.getsize(path) < 2**21
    tracemalloc.start()
    try:
        engine = BinaryEngine.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20
    x = np.random.default_rng(0).random((3,) + engine.input_shape).astype(np.float32)
    np.testing.assert_array_equal(engine.predict(x), BinaryEngine.load(engine_file).predict(x))


def test_a_forged_array_header_is_refused_without_allocating(engine_file, tmp_path):
    with zipfile.ZipFile(engine_file) as archive:
        name = next(n for n in archive.namelist() if n.endswith("weights.npy"))
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.uint32))
    header["shape"] = (2**40,)
    import io

    forged = io.BytesIO()
    np.lib.format.write_array_header_1_0(forged, header)
    path = copy_npz(engine_file, tmp_path / "forged.npz", replace={name: forged.getvalue()})
    with pytest.raises(ValueError, match=r"dtype uint32 and shape \(1099511627776,\)"):
        BinaryEngine.load(path)


def test_declared_sizes_beyond_the_cap_are_refused(engine_file):
    with pytest.raises(ValueError, match="more than max_bytes"):
        spec_io.load(engine_file, max_bytes=100)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s["layers"].__setitem__(0, ["dense"]), "must be a mapping"),
        (lambda s: s["layers"][0].__setitem__("in_shape", [0]), "positive integers"),
        (lambda s: s.__setitem__("input_shape", "64"), "input_shape"),
        (lambda s: s.__setitem__("layers", {}), "lists no layers"),
    ],
)
def test_spec_fields_are_validated(engine_file, tmp_path, edit, message):
    with zipfile.ZipFile(engine_file) as archive:
        spec = json.loads(str(np.lib.format.read_array(archive.open("spec.npy"))))
    edit(spec)
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array(json.dumps(spec)))
    path = copy_npz(engine_file, tmp_path / "bad.npz", replace={"spec.npy": buffer.getvalue()})
    with pytest.raises(ValueError, match=message):
        BinaryEngine.load(path)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("strides", [0, 1], "strides must be two positive integers"),
        ("kernel", [3, -1], "kernel must be two positive integers"),
        ("pads", [[1, 1], [1]], "pads must be"),
        ("pad_value", 7, "pad_value must be"),
    ],
)
def test_conv_fields_are_validated(field, value, message):
    from engine_nets import random_network

    spec, arrays = random_network(1)
    conv = next(layer for layer in spec["layers"] if layer["type"] == "conv")
    conv[field] = value
    with pytest.raises(ValueError, match=message):
        spec_io.validate(spec, arrays)


def test_an_idx_header_that_would_overflow_is_refused(tmp_path):
    path = tmp_path / "huge-idx"
    path.write_bytes(
        bytes([0, 0, 8, 4]) + np.array([2**32 - 1] * 4, ">u4").tobytes() + b"\x00" * 16
    )
    with pytest.raises(ValueError, match="declares shape"):
        read_idx(str(path))
