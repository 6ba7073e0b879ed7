"""The same weights give the same examples on TensorFlow, JAX and PyTorch: FGSM's
to 1e-6 wherever the gradient entry is not vanishingly small, and PGD's (no
random start) as closely as float32 rounding allows over its steps."""

import os

import numpy as np
import pytest
from conftest import run_python

from advlib import attacks, backend

ATTACK = """
import sys
import numpy as np
from advlib import attacks
from advlib.models import small_cnn
data = np.load(sys.argv[1])
model = small_cnn((8, 8, 1))
model(data["x"][:1])
model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
x, y = data["x"], data["y"]
fgsm = attacks.FastGradientMethod(model).generate_np(x, y=y, eps=0.1, clip_min=0.0, clip_max=1.0)
pgd = attacks.BasicIterativeMethod(model).generate_np(
    x, y=y, eps=0.1, eps_iter=0.02, nb_iter=5, clip_min=0.0, clip_max=1.0
)
np.savez(sys.argv[2], fgsm=fgsm, pgd=pgd)
"""


@pytest.fixture(scope="module")
def shared(digits, digits_cnn, tmp_path_factory):
    """The CNN's weights and 100 test digits, written for the other backends."""
    _, (x_test, y_test) = digits
    folder = tmp_path_factory.mktemp("agreement")
    weights = {f"w{i}": backend.to_numpy(w.value) for i, w in enumerate(digits_cnn.weights)}
    path = str(folder / "shared.npz")
    np.savez(path, x=x_test[:100], y=y_test[:100], **weights)
    return path, x_test[:100], y_test[:100]


def examples_on(name, path):
    out = path.replace("shared.npz", f"{name}.npz")
    code = ATTACK.replace("sys.argv[1]", repr(path)).replace("sys.argv[2]", repr(out))
    done = run_python(code, KERAS_BACKEND=name)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(out) as data:
        return data["fgsm"], data["pgd"]


@pytest.mark.parametrize("other", ["jax", "torch"])
def test_the_same_weights_give_the_same_examples(shared, digits_cnn, other):
    path, x, y = shared
    assert backend.name() == "tensorflow"
    fgsm, pgd = examples_on(other, path)
    ours = attacks.FastGradientMethod(digits_cnn).generate_np(
        x, y=y, eps=0.1, clip_min=0.0, clip_max=1.0
    )
    # where a gradient entry is tiny its sign is a matter of rounding: at 1e-7, 2 to 10
    # of about 6,350 entries flipped between TensorFlow (oneDNN) and the other two,
    # depending on the training; at 1e-6, none
    from advlib.losses import cross_entropy
    from advlib.models import KerasModelWrapper

    gradient = backend.to_numpy(
        KerasModelWrapper(digits_cnn).loss_gradient(x, y.astype(np.int64), cross_entropy)[1]
    )
    clear = np.abs(gradient) >= 1e-6
    assert clear.mean() > 0.5
    np.testing.assert_allclose(fgsm[clear], ours[clear], atol=1e-6)
    assert np.mean(np.abs(fgsm - ours)[np.abs(gradient) >= 1e-7] > 1e-6) < 5e-3
    ours_pgd = attacks.BasicIterativeMethod(digits_cnn).generate_np(
        x, y=y, eps=0.1, eps_iter=0.02, nb_iter=5, clip_min=0.0, clip_max=1.0
    )
    # each step's sign may flip where an entry is tiny: few entries, never past eps
    assert np.mean(np.abs(pgd - ours_pgd) > 1e-6) < 0.01
    assert np.abs(pgd - x).max() <= 0.1 + 1e-6
    assert os.path.exists(path)
