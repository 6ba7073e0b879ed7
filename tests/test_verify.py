"""The exact verifier of binary networks, against brute force over the input box."""

import itertools

import numpy as np
import pytest

from advlib.qnn.engine import BinaryEngine
from advlib.qnn.verify import NetworkEncoding, check_counterexamples, verify
from engine_nets import random_network

SHAPE = (2, 3, 1)  # six pixels: up to 5 levels each at eps 2/255, 15,625 points


def brute_force_broken(engine, encoding, x, label, eps) -> bool:
    """Whether any point of the quantized box is misclassified by the engine."""
    low, high = encoding.input_box(x.reshape(-1), eps)
    grid = np.array(list(itertools.product(*[range(a, b + 1) for a, b in zip(low, high)])),
                    np.float32) / np.float32(255)
    return bool((engine.predict_classes(grid.reshape((-1,) + x.shape)) != label).any())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("flat", [False, True])
def test_every_answer_matches_brute_force(seed, flat):
    """Random networks with odd shapes, +1 and -1 padding, max-pooling, flipped
    thresholds (negative BatchNorm scales) and thresholds outside the accumulator's
    range (zero scales): every robust / broken answer equals enumeration."""
    spec, arrays = random_network(seed, input_shape=SHAPE, channels=(3, 5), dense=(6,),
                                  classes=4, flat=flat)
    engine = BinaryEngine(spec, arrays)
    encoding = NetworkEncoding(engine)
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 256, (8,) + SHAPE) / 255).astype(np.float32)
    y = engine.predict_classes(x)
    y[::4] = (y[::4] + 1) % 4  # some start misclassified
    for eps in (1 / 255, 2 / 255):
        result = verify(encoding, x, y, eps, time_limit=60)
        for i, verdict in enumerate(result.verdicts):
            expected = "broken" if brute_force_broken(engine, encoding, x[i], y[i], eps) \
                else "robust"
            assert verdict.status == expected, (i, eps, verdict.reason)
        broken = [i for i, v in enumerate(result.verdicts) if v.status == "broken"]
        assert check_counterexamples(engine, x, result, eps) == broken
        counts = result.counts()
        assert counts["robust"] + counts["broken"] == len(x) and counts["unknown"] == 0
        low, high = result.robust_interval()
        assert low == high == counts["robust"] / len(x)


def test_both_answers_occur_and_bounds_decide_some():
    spec, arrays = random_network(0, input_shape=SHAPE, channels=(3, 5), dense=(6,), classes=4)
    engine = BinaryEngine(spec, arrays)
    x = (np.random.default_rng(0).integers(0, 256, (16,) + SHAPE) / 255).astype(np.float32)
    y = engine.predict_classes(x)
    result = verify(engine, x, y, 1 / 255)
    assert {"robust", "broken"} <= set(result.statuses)
    assert max(v.fixed for v in result.verdicts) > 0
    assert verify(engine, x, y, 0.0).counts()["robust"] == len(x)  # eps 0: nothing moves


def test_the_time_limit_gives_unknown(monkeypatch):
    from advlib.qnn import verify as module

    spec, arrays = random_network(2, input_shape=SHAPE, channels=(3, 5), dense=(6,), classes=4)
    engine = BinaryEngine(spec, arrays)
    x = (np.random.default_rng(1).integers(0, 256, (6,) + SHAPE) / 255).astype(np.float32)
    monkeypatch.setattr(module, "_solve", lambda *args: "time limit")
    result = verify(engine, x, engine.predict_classes(x), 0.5)
    assert set(result.statuses) <= {"unknown", "robust"} and "unknown" in result.statuses
    low, high = result.robust_interval()
    assert low < high


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(eps=-0.1), ValueError, "eps must be in"),
    (dict(eps=0.1, time_limit=0), ValueError, "time_limit"),
    (dict(eps=0.1, x=np.zeros((2, 3, 3, 1), np.float32)), ValueError, r"x must have shape"),
    (dict(eps=0.1, x=np.full((2,) + SHAPE, 2.0, np.float32)), ValueError, "clip_max"),
    (dict(eps=0.1, y=[0, 9]), ValueError, "class 9"),
])
def test_bad_input_is_refused_by_name(kwargs, error, message):
    spec, arrays = random_network(0, input_shape=SHAPE, channels=(3, 5), dense=(6,), classes=4)
    arguments = dict(x=np.zeros((2,) + SHAPE, np.float32), y=[0, 1])
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        verify(BinaryEngine(spec, arrays), **arguments)
    with pytest.raises(TypeError, match="engine must be"):
        NetworkEncoding(object())
