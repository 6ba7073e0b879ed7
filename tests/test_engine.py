"""The bit-packed engine's operations against plain integer arithmetic.

Nothing here imports TensorFlow: the engine must run where only NumPy is.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from engine_nets import random_network
from hypothesis import given, settings
from hypothesis import strategies as st

from advlib.qnn.engine import BinaryEngine, pack_bits, pack_signs, unpack_bits, words_for
from advlib.qnn.engine import numpy_backend as ops
from advlib.qnn.engine import spec as spec_io
from advlib.qnn.engine.blas_backend import BlasBackend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def signs(rng, *shape):
    return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int64)


def test_engine_imports_no_tensorflow():
    code = (
        "import sys, advlib.qnn.engine, advlib.qnn.engine.spec; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 130), st.integers(0, 2**31))
def test_pack_round_trip(rows, length, seed):
    bits = np.random.default_rng(seed).random((rows, length)) < 0.5
    words = pack_bits(bits)
    assert words.dtype == np.uint32 and words.shape == (rows, words_for(length))
    np.testing.assert_array_equal(unpack_bits(words, length), bits)
    # unused high bits of the last word are zero
    assert np.all(words[:, -1] >> np.uint32(length % 32) == 0) if length % 32 else True


def test_bit_order_and_sign_convention():
    values = np.array([1.0, -2.0, 0.0, -0.0, 3.0] + [-1.0] * 30)
    words = pack_signs(values)
    # element i is bit i % 32 of word i // 32; x >= 0 (zero included) is bit 1
    assert words[0] == 0b11101 and words[1] == 0


@pytest.mark.parametrize("length", [1, 31, 32, 33, 64, 65, 200])
@pytest.mark.parametrize("rows", [1, 7])
def test_binary_dot_equals_integer_matmul(length, rows):
    rng = np.random.default_rng(length)
    a, w = signs(rng, rows, length), signs(rng, 9, length)
    acc = ops.binary_dot(pack_signs(a), pack_signs(w), length)
    np.testing.assert_array_equal(acc, a @ w.T)


@pytest.mark.parametrize("length", [1, 33, 100])
def test_bit_plane_dot_equals_integer_matmul(length):
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (6, length), dtype=np.uint8)
    w = signs(rng, 5, length)
    acc = ops.plane_dot(ops.bit_planes(x8), pack_signs(w))
    np.testing.assert_array_equal(acc, x8.astype(np.int64) @ w.T)


@pytest.mark.parametrize("length", [1, 33, 100])
def test_masked_dot_products_equal_ternary_matmul(length):
    """Ternary weights (a mask over +-1 signs): the masked popcounts of binary and
    8-bit inputs equal integer products with weights in {-1, 0, +1}."""
    rng = np.random.default_rng(length)
    a, w = signs(rng, 7, length), signs(rng, 9, length)
    kept = rng.random((9, length)) < 0.4
    ternary = np.where(kept, w, 0)
    mask = pack_signs(np.where(kept, 1.0, -1.0))
    acc = ops.binary_dot(pack_signs(a), pack_signs(w), length, mask)
    np.testing.assert_array_equal(acc, a @ ternary.T)
    x8 = rng.integers(0, 256, (6, length), dtype=np.uint8)
    acc = ops.plane_dot(ops.bit_planes(x8), pack_signs(w), mask)
    np.testing.assert_array_equal(acc, x8.astype(np.int64) @ ternary.T)


def reference_conv(x, w, stride, pads, pad_value):
    """Direct convolution of (N, H, W, C) integers with (F, kh, kw, C) weights."""
    (top, bottom), (left, right) = pads
    x = np.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)], constant_values=pad_value)
    n, h, width, _ = x.shape
    f, kh, kw, _ = w.shape
    out_h, out_w = (h - kh) // stride + 1, (width - kw) // stride + 1
    out = np.zeros((n, out_h, out_w, f), np.int64)
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, i, j] = np.einsum("nhwc,fhwc->nf", patch, w)
    return out


def single_layer(
    kind,
    in_shape,
    weights_signs,
    pads=((1, 1), (1, 1)),
    stride=1,
    pad_value=1.0,
    input_kind="binary",
):
    """A one-layer network whose logits are its accumulators (scale 1, shift 0)."""
    f = weights_signs.shape[0]
    if kind == "conv":
        kh, kw = weights_signs.shape[1:3]
        h, w, _ = in_shape
        out = [(h + sum(pads[0]) - kh) // stride + 1, (w + sum(pads[1]) - kw) // stride + 1, f]
        layer = dict(
            type="conv",
            in_shape=list(in_shape),
            out_shape=out,
            kernel=[kh, kw],
            strides=[stride, stride],
            pads=[list(p) for p in pads],
            pad_value=pad_value,
        )
        packed = pack_signs(weights_signs).reshape(f, -1)
    else:
        layer = dict(type="dense", in_shape=list(in_shape), out_shape=[f])
        packed = pack_signs(weights_signs)
    layer.update(input=input_kind, output="logits", name="l", keras_output="l")
    spec = {
        "format": spec_io.FORMAT,
        "version": spec_io.VERSION,
        "word_bits": 32,
        "input_shape": list(in_shape),
        "layers": [layer],
    }
    arrays = {
        "layer0/weights": packed,
        "layer0/scale": np.ones(f, np.float32),
        "layer0/shift": np.zeros(f, np.float32),
    }
    return BinaryEngine(spec, arrays)


@pytest.mark.parametrize("channels", [1, 3, 33])
@pytest.mark.parametrize("pad_value", [1.0, -1.0])
@pytest.mark.parametrize("stride", [1, 2])
def test_binary_conv_equals_direct_convolution(channels, pad_value, stride):
    rng = np.random.default_rng(channels)
    x = signs(rng, 3, 7, 6, channels)
    w = signs(rng, 5, 3, 3, channels)
    engine = single_layer("conv", (7, 6, channels), w, stride=stride, pad_value=pad_value)
    # binary input layers see +-1 values; feed them as the engine's packed state
    state = pack_signs(x)
    acc = engine._backend.accumulate(0, engine.spec["layers"][0], state)
    expected = reference_conv(x, w, stride, ((1, 1), (1, 1)), int(pad_value))
    np.testing.assert_array_equal(acc, expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_first_layer_conv_on_bytes_is_exact(channels):
    rng = np.random.default_rng(5)
    x8 = rng.integers(0, 256, (4, 6, 5, channels), dtype=np.uint8)
    w = signs(rng, 4, 3, 3, channels)
    engine = single_layer("conv", (6, 5, channels), w, pad_value=0.0, input_kind="uint8")
    logits = engine.predict(x8.astype(np.float32) / 255)
    expected = reference_conv(x8.astype(np.int64), w, 1, ((1, 1), (1, 1)), 0)
    np.testing.assert_array_equal(logits, expected.astype(np.float32))


def test_max_pool_is_or_of_bits():
    rng = np.random.default_rng(2)
    x = signs(rng, 2, 5, 6, 40)
    pooled = ops.max_pool_words(pack_signs(x), (2, 2), (2, 2), ((0, 0), (0, 0)))
    expected = x[:, :4].reshape(2, 2, 2, 3, 2, 40).max(axis=(2, 4))
    np.testing.assert_array_equal(unpack_bits(pooled, 40), expected > 0)


def test_flatten_follows_keras_order():
    rng = np.random.default_rng(3)
    x = signs(rng, 2, 3, 4, 5)
    flat = ops.flatten_words(pack_signs(x), (3, 4, 5))
    np.testing.assert_array_equal(unpack_bits(flat, 60), x.reshape(2, -1) > 0)


def test_thresholds_and_flips():
    acc = np.array([[-3, -1, 1, 3]]).T
    bits = ops.threshold_bits(acc, np.array([1, 1]), np.array([False, True]))
    np.testing.assert_array_equal(bits, [[False, True], [False, True], [True, True], [True, False]])


# -- bad input ----------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    w = signs(np.random.default_rng(0), 3, 10)
    engine = single_layer("dense", (10,), w, input_kind="uint8")
    path = str(tmp_path / "net.npz")
    spec_io.save(path, engine.spec, engine.arrays)
    return path, engine


def test_saved_network_loads_and_predicts(saved):
    path, engine = saved
    x = np.random.default_rng(1).random((4, 10), dtype=np.float32)
    np.testing.assert_array_equal(BinaryEngine.load(path).predict(x), engine.predict(x))


def test_truncated_or_corrupted_files(saved, tmp_path):
    path, _ = saved
    raw = open(path, "rb").read()
    for name, content in (
        ("truncated.npz", raw[: len(raw) // 2]),
        ("garbage.npz", b"\x00" * 100),
        ("empty.npz", b""),
    ):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="missing, corrupted or truncated"):
            BinaryEngine.load(str(bad))
    with pytest.raises(ValueError, match="missing, corrupted or truncated"):
        BinaryEngine.load(str(tmp_path / "absent.npz"))


def test_inconsistent_specs(saved, tmp_path):
    path, engine = saved
    spec = json.loads(json.dumps(engine.spec))
    spec["layers"][0]["in_shape"] = [11]
    bad = str(tmp_path / "chain.npz")
    np.savez(bad, spec=np.array(json.dumps(spec)), **engine.arrays)
    with pytest.raises(ValueError, match="do not chain"):
        BinaryEngine.load(bad)
    arrays = dict(engine.arrays, **{"layer0/weights": engine.arrays["layer0/weights"][:2]})
    np.savez(bad, spec=np.array(json.dumps(engine.spec)), **arrays)
    with pytest.raises(ValueError, match="layer0/weights.*shape"):
        BinaryEngine.load(bad)
    np.savez(bad, spec=np.array("{not json"), **engine.arrays)
    with pytest.raises(ValueError, match="not valid JSON"):
        BinaryEngine.load(bad)


def test_bad_inputs_to_predict(saved):
    _, engine = saved
    with pytest.raises(ValueError, match=r"shape \(n,\) \+ \(10,\), got \(4, 9\)"):
        engine.predict(np.zeros((4, 9), np.float32))
    x = np.zeros((2, 10), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        engine.predict(x)
    with pytest.raises(ValueError, match="backend must be one of"):
        BinaryEngine(engine.spec, engine.arrays, backend="fpga")


@pytest.mark.parametrize(
    "seed, flat, step, sparsity",
    [(0, False, None, None), (1, False, 0.1, None), (2, True, None, None), (3, False, None, 0.5)]
    + [(4, True, 0.25, 0.3)],
)
def test_blas_backend_equals_the_packed_reference_bit_for_bit(seed, flat, step, sparsity):
    spec, arrays = random_network(
        seed=seed, flat=flat, input_shape=(9, 7, 2), step=step, sparsity=sparsity
    )
    reference = BinaryEngine(spec, arrays)
    blas = BinaryEngine(spec, arrays, backend="blas")
    assert blas.backend == "blas"
    rng = np.random.default_rng(seed)
    # extreme images too: all levels 0 or 255 reach the largest first-layer sums
    x = np.concatenate(
        [
            rng.random((40, 9, 7, 2), dtype=np.float32),
            np.zeros((1, 9, 7, 2), np.float32),
            np.ones((1, 9, 7, 2), np.float32),
        ]
    )
    logits, hidden = reference.forward(x)
    blas_logits, blas_hidden = blas.forward(x)
    np.testing.assert_array_equal(blas_logits, logits)
    assert len(blas_hidden) == len(hidden)
    for ours, theirs in zip(blas_hidden, hidden):
        np.testing.assert_array_equal(ours, theirs)


def test_blas_backend_refuses_sums_beyond_float32s_exact_integers():
    spec, arrays = random_network(seed=0, flat=True, input_shape=(9, 7, 2))
    spec = json.loads(json.dumps(spec))
    # a first layer of 70,000 8-bit inputs can sum to 255 * 70,000 > 2**24
    first = next(layer for layer in spec["layers"] if layer["type"] == "dense")
    assert first["input"] == "uint8"
    first["in_shape"] = [70_000]
    with pytest.raises(ValueError, match=r"beyond float32's exact integers.*backend='numpy'"):
        BlasBackend(spec, arrays)


def test_on_blas_gives_the_blas_twin_where_it_is_exact_and_the_engine_where_not():
    spec, arrays = random_network(seed=0, flat=True, input_shape=(9, 7, 2))
    reference = BinaryEngine(spec, arrays)
    twin = reference.on_blas()
    assert twin.backend == "blas" and twin.on_blas() is twin
    x = np.random.default_rng(0).random((20, 9, 7, 2), dtype=np.float32)
    np.testing.assert_array_equal(twin.predict(x), reference.predict(x))
    # 66,000 8-bit inputs can sum to 255 * 66,000 > 2**24: the reference stays
    spec, arrays = random_network(
        seed=0, flat=True, input_shape=(1, 66_000, 1), dense=(4,), classes=2
    )
    wide = BinaryEngine(spec, arrays)
    assert wide.on_blas() is wide


def test_input_levels_are_read_through_their_table_and_checked(tmp_path):
    """A network on a SteppedInput grid: the engine reads each pixel's 8-bit level
    through the table (the same network with the table folded into the images
    agrees), the file keeps it, and a table that could skip a grid value, or a
    version-1 file that claims one, is refused."""
    from engine_nets import stepped_levels

    spec, arrays = random_network(seed=3, input_shape=(5, 4, 1), channels=(3, 4), step=0.25)
    assert spec["version"] == 2 and spec["layers"][0]["input_levels"] is True
    engine = BinaryEngine(spec, arrays)
    np.testing.assert_array_equal(engine.input_levels, stepped_levels(0.25))
    assert set(engine.input_levels.tolist()) == {0, 1, 2, 3, 4}
    # the same weights reading the grid values as 8-bit levels: equal on pre-mapped images
    plain_spec = json.loads(json.dumps(spec))
    del plain_spec["layers"][0]["input_levels"]
    plain = BinaryEngine(plain_spec, {k: v for k, v in arrays.items() if "levels" not in k})
    x8 = np.random.default_rng(3).integers(0, 256, (64, 5, 4, 1))
    mapped = stepped_levels(0.25)[x8].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(
        engine.predict(x8.astype(np.float32) / np.float32(255)), plain.predict(mapped)
    )
    path = str(tmp_path / "stepped.npz")
    spec_io.save(path, spec, arrays)
    np.testing.assert_array_equal(BinaryEngine.load(path).input_levels, engine.input_levels)
    skipping = dict(arrays, **{"layer0/levels": stepped_levels(0.25) * 2})
    with pytest.raises(ValueError, match="levels array must be nondecreasing in steps of 0 or 1"):
        BinaryEngine(spec, skipping)
    with pytest.raises(ValueError, match="input_levels must be true or false"):
        BinaryEngine(dict(spec, version=1), arrays)


def test_masks_are_kept_in_the_file_and_checked(tmp_path):
    """A ternary network is a version-3 file that keeps its masks; a mask with bits
    past the fan-in, a mask on the logits layer, or one in an older version is
    refused."""
    spec, arrays = random_network(seed=5, input_shape=(5, 4, 1), channels=(3, 4), sparsity=0.5)
    assert spec["version"] == 3 and spec_io.version_for(spec["layers"]) == 3
    masked = [i for i, layer in enumerate(spec["layers"]) if layer.get("mask")]
    assert masked and all(spec["layers"][i]["output"] == "bits" for i in masked)
    path = str(tmp_path / "ternary.npz")
    spec_io.save(path, spec, arrays)
    loaded = BinaryEngine.load(path)
    x = np.random.default_rng(5).random((16, 5, 4, 1), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x), BinaryEngine(spec, arrays).predict(x))
    # the masks matter: masks that keep every weight give other logits
    dense = dict(arrays)
    for i in masked:
        layer = spec["layers"][i]
        keep_all = np.ones((len(arrays[f"layer{i}/mask"]), spec_io.fan_in(layer)), bool)
        dense[f"layer{i}/mask"] = spec_io.pack_like_weights(layer, keep_all)
    assert not np.array_equal(BinaryEngine(spec, dense).predict(x), loaded.predict(x))
    first = f"layer{masked[0]}/mask"
    stray = dict(arrays, **{first: arrays[first] | np.uint32(1 << 31)})  # past 9 inputs
    with pytest.raises(ValueError, match="the mask sets bits past the fan-in"):
        BinaryEngine(spec, stray)
    with pytest.raises(ValueError, match="mask must be true or false"):
        BinaryEngine(dict(spec, version=2), arrays)
    on_logits = json.loads(json.dumps(spec))
    last = len(on_logits["layers"]) - 1
    on_logits["layers"][last]["mask"] = True
    weights = arrays[f"layer{last}/weights"]
    with pytest.raises(ValueError, match="true only for a layer with 'bits' output"):
        BinaryEngine(on_logits, dict(arrays, **{f"layer{last}/mask": weights}))
