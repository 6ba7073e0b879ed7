"""Data set loaders: float32 images in [0, 1], NHWC, integer labels."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from advlib import _checks
from advlib.datasets.idx import read_idx

Split = tuple[np.ndarray, np.ndarray]

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# Subfolder of Keras's cache that keras.datasets uses for each set.
_KERAS_CACHE_SUBDIR = {"mnist": "", "fashion-mnist": "fashion-mnist"}


def _to_float_images(images: np.ndarray, scale: float) -> np.ndarray:
    images = images.astype(np.float32) / np.float32(scale)
    return images[..., None] if images.ndim == 3 else images


def keras_cache_dir() -> str:
    """The folder where Keras stores downloaded data sets."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "datasets")


def load_digits(test_fraction: float = 0.2) -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits with a fixed stratified split (seed 0)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = _to_float_images(bunch.images, 16.0)
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=0, stratify=labels
    )
    return (x_train, y_train), (x_test, y_test)


def _idx_folder_candidates(name: str, data_dir: str | None) -> list[str]:
    folders = []
    if data_dir is not None:
        folders.append(data_dir)
    if os.environ.get("ADVLIB_DATA"):
        env_dir = os.environ["ADVLIB_DATA"]
        folders += [os.path.join(env_dir, name), env_dir]
    folders.append(os.path.join(keras_cache_dir(), _KERAS_CACHE_SUBDIR[name]))
    if name == "fashion-mnist":
        folders.append(DEBIAN_FASHION_MNIST)
    return folders


def _read_idx_folder(folder: str) -> tuple[Split, Split]:
    splits = []
    for split in ("train", "test"):
        image_file, label_file = (os.path.join(folder, f) for f in IDX_FILES[split])
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"IDX files in {folder!r} do not fit together: images "
                f"{images.shape}, labels {labels.shape} ({split} split)."
            )
        splits.append((_to_float_images(images, 255.0), labels.astype(np.int64)))
    return splits[0], splits[1]


def _has_idx_files(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for pair in IDX_FILES.values() for f in pair)


def _download_with_keras(name: str) -> tuple[Split, Split]:
    import keras

    module = keras.datasets.mnist if name == "mnist" else keras.datasets.fashion_mnist
    (x_train, y_train), (x_test, y_test) = module.load_data()
    return (
        (_to_float_images(x_train, 255.0), y_train.astype(np.int64)),
        (_to_float_images(x_test, 255.0), y_test.astype(np.int64)),
    )


def load_mnist_like(
    name: str, data_dir: str | None = None, download: bool = True
) -> tuple[Split, Split]:
    """MNIST or Fashion-MNIST from IDX `.gz` files, downloading only as a last resort."""
    folders = _idx_folder_candidates(name, data_dir)
    for folder in folders:
        if _has_idx_files(folder):
            return _read_idx_folder(folder)
    if name == "mnist":
        cached_npz = os.path.join(keras_cache_dir(), "mnist.npz")
        folders.append(cached_npz)
        if os.path.isfile(cached_npz):
            with np.load(cached_npz) as data:
                return (
                    (_to_float_images(data["x_train"], 255.0), data["y_train"].astype(np.int64)),
                    (_to_float_images(data["x_test"], 255.0), data["y_test"].astype(np.int64)),
                )
    looked = "\n  ".join(folders)
    hint = (
        f"Put the four IDX files ({', '.join(f for p in IDX_FILES.values() for f in p)}) "
        f"in a folder and pass data_dir=, or set ADVLIB_DATA."
    )
    if name == "fashion-mnist":
        hint += " On Debian or Ubuntu: apt-get install dataset-fashion-mnist."
    if not download:
        raise FileNotFoundError(f"{name} not found. Looked in:\n  {looked}\n{hint}")
    try:
        return _download_with_keras(name)
    except Exception as error:  # no network, proxy, certificate...
        raise FileNotFoundError(
            f"{name} not found and the download through Keras failed ({error}). "
            f"Looked in:\n  {looked}\n{hint}"
        ) from error


def load_cifar10(data_dir: str | None = None, download: bool = True) -> tuple[Split, Split]:
    """CIFAR-10 through Keras's loader (cached under Keras's data folder)."""
    del data_dir  # Keras decides where CIFAR-10 lives.
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:
        raise FileNotFoundError(
            f"CIFAR-10 could not be loaded through Keras ({error}). Keras looks in "
            f"{keras_cache_dir()} and downloads from the internet when the archive "
            "is missing; copy cifar-10-batches-py.tar.gz there on offline machines."
        ) from error
    return (
        (_to_float_images(x_train, 255.0), y_train.reshape(-1).astype(np.int64)),
        (_to_float_images(x_test, 255.0), y_test.reshape(-1).astype(np.int64)),
    )


_LOADERS: dict[str, Callable[..., tuple[Split, Split]]] = {
    "digits": lambda data_dir=None, download=True: load_digits(),
    "mnist": lambda data_dir=None, download=True: load_mnist_like("mnist", data_dir, download),
    "fashion-mnist": lambda data_dir=None, download=True: load_mnist_like(
        "fashion-mnist", data_dir, download
    ),
    "cifar10": load_cifar10,
}
NAMES = tuple(_LOADERS)


def load(
    name: str = "digits", data_dir: str | None = None, download: bool = True
) -> tuple[Split, Split]:
    """Loads a data set with its fixed train/test split.

    Args:
        name: one of "digits", "mnist", "fashion-mnist" (or "fashion_mnist"), "cifar10".
        data_dir: a folder holding the IDX `.gz` files (MNIST, Fashion-MNIST).
            When absent, `$ADVLIB_DATA`, Keras's cache and, for Fashion-MNIST,
            Debian's `dataset-fashion-mnist` are searched in that order.
        download: whether to fall back on Keras's downloader.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 images in [0, 1] of
        shape (n, height, width, channels) and int64 labels of shape (n,).

    Example:
        >>> (x_train, y_train), (x_test, y_test) = load("digits")
        >>> x_train.shape[1:]
        (8, 8, 1)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}.")
    key = name.lower().replace("_", "-")
    if key not in _LOADERS:
        _checks.check_choice("name", name, NAMES)
    return _LOADERS[key](data_dir=data_dir, download=download)
