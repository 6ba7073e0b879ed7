"""Shared fixtures. TensorFlow is imported inside fixtures only, so that the
engine's tests collect on machines with NumPy and CuPy but no TensorFlow."""

import functools
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


def pytest_configure(config):
    """Each xdist worker runs its framework on one thread, so that two workers on two
    cores do not fight over them (measured: 16% less wall time on the attack tests).
    It must run before the framework's first operation."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    chosen = os.environ.get("KERAS_BACKEND", "tensorflow")
    if chosen == "jax":
        os.environ.setdefault(
            "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
        # tests build the same programs through new closures (one model, many attack
        # objects), which jit compiles anew: JAX's persistent cache, keyed by the
        # program itself, compiles each once for both workers (JAX leg: 80 s, not 92)
        folder = os.path.join(str(config.rootpath), ".pytest_cache", "jax-compilation")
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", folder)
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    elif chosen == "torch":
        import torch

        torch.set_num_threads(1)
    else:
        import importlib.util

        # the command-line tests' subprocesses read these
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        if importlib.util.find_spec("tensorflow") is not None:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)


@pytest.fixture
def emulated_cupy(monkeypatch):
    """Installs a stand-in CuPy running the kernels under CPU emulation (tests/cudaemu);
    call it with the compute capability to report (default 90)."""
    import sys

    from cudaemu import fake_cupy

    def install(cc=90):
        fake = fake_cupy.make(cc)
        monkeypatch.setitem(sys.modules, "cupy", fake)
        return fake

    return install


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits: ((x_train, y_train), (x_test, y_test))."""
    from advlib.datasets import load

    return load("digits")


def correctly_classified(model, data, count):
    """The first `count` test examples that `model` classifies correctly."""
    _, (x_test, y_test) = data
    keep = np.flatnonzero(model.predict(x_test, verbose=0).argmax(1) == y_test)[:count]
    return x_test[keep], y_test[keep]


@pytest.fixture(scope="session")
def digits_linear(digits):
    """A two-class linear classifier of digits (0-4 against 5-9), whose geometry
    is known in closed form: (model, normal, offset), where class 1 wins exactly
    where x . normal + offset > 0."""
    import keras

    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x_train, (y_train >= 5).astype(np.int64), epochs=20, verbose=0)
    kernel, bias = model.layers[-1].get_weights()
    normal = (kernel[:, 1] - kernel[:, 0]).astype(np.float64)
    return model, normal, float(bias[1] - bias[0])


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter from the repository's root, with
    TensorFlow's logging quiet and `env` added to the environment."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env),
    )


@functools.cache
def _sources_digest() -> str:
    """What a trained fixture depends on: advlib's and these tests' sources and
    Keras's version."""
    import hashlib

    import keras

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256(keras.__version__.encode())
    for folder in ("advlib", "tests"):
        for parent, _, files in sorted(os.walk(os.path.join(root, folder))):
            for name in sorted(files):
                if name.endswith(".py"):
                    with open(os.path.join(parent, name), "rb") as handle:
                        digest.update(handle.read())
    return digest.hexdigest()[:16]


def trained_once(request, name, train):
    """The Keras model `train()` returns, trained once and loaded everywhere else:
    pytest-xdist gives each worker its own session, and the backend matrix runs
    the suite again on JAX and PyTorch, which would each train the same seeded
    model again. The file is kept in pytest's cache, under a digest of the
    sources, so that changed code trains anew; weights load on every backend."""
    import fcntl

    import keras

    import advlib.models  # noqa: F401  (registers advlib's layers for loading)

    folder = request.config.cache.mkdir("advlib-trained")
    stem = f"{name}-{_sources_digest()}"
    path = folder / f"{stem}.keras"
    with open(folder / f"{stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return keras.models.load_model(path)
        model = train()
        model.save(path)
        return model


@pytest.fixture(scope="session")
def digits_mlp(request, digits):
    """An MLP trained on digits in a few seconds (about 96% test accuracy)."""
    from advlib.models import mlp, train_classifier

    (x_train, y_train), _ = digits
    return trained_once(
        request,
        "digits_mlp",
        lambda: train_classifier(mlp((8, 8, 1), hidden=(64,)), x_train, y_train, epochs=30, seed=0),
    )


@pytest.fixture(scope="session")
def digits_eval(digits, digits_mlp):
    """200 test digits that the MLP classifies correctly."""
    return correctly_classified(digits_mlp, digits, 200)


@pytest.fixture(scope="session")
def digits_cnn(request, digits):
    """The small CNN of the examples, trained on digits (about 96% test accuracy)."""
    from advlib.models import small_cnn, train_classifier

    (x_train, y_train), _ = digits
    return trained_once(
        request,
        "digits_cnn",
        lambda: train_classifier(small_cnn((8, 8, 1)), x_train, y_train, epochs=15, seed=0),
    )


@pytest.fixture(scope="session")
def cnn_eval(digits, digits_cnn):
    """100 test digits that the CNN classifies correctly."""
    return correctly_classified(digits_cnn, digits, 100)


@pytest.fixture(scope="session")
def digits_qnns(request, digits):
    """A binary CNN and a binary MLP trained on digits: {"cnn": ..., "mlp": ...}."""
    import keras

    from advlib import qnn

    (x_train, y_train), _ = digits

    def train(kind):
        keras.utils.set_random_seed(0)
        model = (
            qnn.binary_cnn((8, 8, 1), filters=(32, 32, 64, 64), dense=128)
            if kind == "cnn"
            else qnn.binary_mlp((8, 8, 1), width=256)
        )
        model.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x_train, y_train, epochs=10 if kind == "cnn" else 12, batch_size=64, verbose=0)
        return model

    return {
        kind: trained_once(request, f"digits_binary_{kind}", lambda: train(kind))
        for kind in ("cnn", "mlp")
    }


def linear_model(weights, bias=None):
    """A functional Keras model computing flatten(x) @ weights + bias."""
    import keras

    weights = np.asarray(weights, np.float32)
    inputs = keras.Input((weights.shape[0],))
    dense = keras.layers.Dense(weights.shape[1])
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights(
        [
            weights,
            np.zeros(weights.shape[1], np.float32)
            if bias is None
            else np.asarray(bias, np.float32),
        ]
    )
    return model


def randomize_batchnorm(model, seed=0, mean_scale=5.0, variance=(0.1, 20.0)):
    """Random BatchNorm scales, offsets and statistics for an untrained binary
    network, so that its folded thresholds fall anywhere in the accumulators'
    range; returns the model."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights(
                [
                    rng.normal(size=shape).astype(np.float32),
                    rng.normal(size=shape).astype(np.float32),
                    mean_scale * rng.normal(size=shape).astype(np.float32),
                    rng.uniform(*variance, size=shape).astype(np.float32),
                ]
            )
    return model
