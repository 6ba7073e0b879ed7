"""Data set loaders and the IDX reader, on files the tests write themselves."""

import gzip
import os

import numpy as np
import pytest

from advlib import datasets
from advlib.datasets import load, read_idx, write_idx
from advlib.datasets.loaders import IDX_FILES


def write_mnist_like(folder, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        image_file, label_file = IDX_FILES[split]
        write_idx(os.path.join(folder, image_file), images)
        write_idx(os.path.join(folder, label_file), labels)
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the machine's own data: empty Keras cache, no ADVLIB_DATA."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("ADVLIB_DATA", raising=False)
    monkeypatch.setattr(datasets.loaders, "DEBIAN_FASHION_MNIST", str(tmp_path / "debian"))

    def no_network(name):
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets.loaders, "_download_with_keras", no_network)


def test_digits_shapes_range_and_fixed_split():
    (x_train, y_train), (x_test, y_test) = load("digits")
    assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert set(np.unique(y_test)) == set(range(10))
    (again, _), _ = load("digits")
    np.testing.assert_array_equal(x_train, again)


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, suffix):
    array = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    path = str(tmp_path / f"a-idx3-ubyte{suffix}")
    write_idx(path, array)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_errors(tmp_path):
    path = str(tmp_path / "bad.gz")
    write_idx(path, np.zeros((4, 3), np.uint8))
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    with gzip.open(path, "wb") as handle:
        handle.write(raw[:-2])
    with pytest.raises(ValueError, match="10 data bytes.*shape \\(4, 3\\)"):
        read_idx(path)
    with gzip.open(path, "wb") as handle:
        handle.write(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(path)
    with open(str(tmp_path / "plain.gz"), "wb") as handle:
        handle.write(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read IDX"):
        read_idx(str(tmp_path / "plain.gz"))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "fashion_mnist"])
def test_mnist_like_from_data_dir(tmp_path, name):
    arrays = write_mnist_like(str(tmp_path / "files"))
    (x_train, y_train), (x_test, y_test) = load(name, data_dir=str(tmp_path / "files"))
    assert x_train.shape == (12, 28, 28, 1) and x_test.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(x_train[..., 0] * 255, arrays["train"][0], atol=1e-4)
    np.testing.assert_array_equal(y_test, arrays["test"][1])
    assert x_train.dtype == np.float32 and x_train.min() >= 0 and x_train.max() <= 1


def test_search_order(tmp_path, monkeypatch):
    explicit, env, debian = (str(tmp_path / d) for d in ("explicit", "env", "debian"))
    write_mnist_like(explicit, n_train=3)
    write_mnist_like(os.path.join(env, "fashion-mnist"), n_train=4)
    write_mnist_like(
        os.path.join(str(tmp_path / "keras_home"), "datasets", "fashion-mnist"), n_train=5
    )
    write_mnist_like(debian, n_train=6)
    monkeypatch.setenv("ADVLIB_DATA", env)
    count = lambda **kw: len(load("fashion-mnist", **kw)[0][0])
    assert count(data_dir=explicit) == 3
    assert count() == 4
    monkeypatch.delenv("ADVLIB_DATA")
    assert count() == 5
    os.remove(
        os.path.join(
            str(tmp_path / "keras_home"), "datasets", "fashion-mnist", IDX_FILES["test"][0]
        )
    )
    assert count() == 6


def test_mnist_from_keras_cache_npz(tmp_path):
    cache = tmp_path / "keras_home" / "datasets"
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(
        cache / "mnist.npz",
        x_train=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        y_train=np.array([1, 2, 3], np.uint8),
        x_test=np.zeros((2, 28, 28), np.uint8),
        y_test=np.array([4, 5], np.uint8),
    )
    (x_train, y_train), (_, y_test) = load("mnist")
    assert x_train.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(y_test, [4, 5])


def test_missing_files_without_network_explain_where_to_look(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load("fashion-mnist", data_dir=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "network unreachable" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "ADVLIB_DATA" in message


def test_unknown_name():
    with pytest.raises(ValueError, match="name must be one of.*'svhn'"):
        load("svhn")
