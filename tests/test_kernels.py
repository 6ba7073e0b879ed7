"""The CUDA kernels: compiled with NVRTC everywhere (no GPU needed), and
checked bit for bit against the NumPy engine where a GPU is present (marker gpu)."""

import platform

import numpy as np
import pytest

from advlib.qnn.engine import BinaryEngine, nvrtc, pack_signs
from advlib.qnn.engine import numpy_backend as ops
from engine_nets import random_network

NVRTC_WHEELS = platform.system() == "Linux" and platform.machine() == "x86_64"


def have_gpu():
    from advlib.qnn.engine import cupy_backend
    return cupy_backend.available()[0]


gpu = pytest.mark.skipif(not have_gpu(), reason="needs CuPy and a CUDA device")


# -- everywhere ----------------------------------------------------------------------
@pytest.mark.skipif(not NVRTC_WHEELS, reason="nvidia-cuda-nvrtc-cu12 ships for Linux x86-64")
@pytest.mark.parametrize("arch", nvrtc.ARCHITECTURES)
def test_every_kernel_compiles(arch):
    library = nvrtc.load_library()  # a missing NVRTC fails the suite here
    sources = nvrtc.sources()
    assert {"binary_gemm.cu", "binary_mma.cu", "packing.cu"} <= set(sources)
    for name, source in sources.items():
        cubin = nvrtc.compile_source(source, name, arch, library)
        assert cubin[:4] == b"\x7fELF"


@pytest.mark.skipif(not NVRTC_WHEELS, reason="nvidia-cuda-nvrtc-cu12 ships for Linux x86-64")
def test_compile_errors_carry_the_log():
    with pytest.raises(nvrtc.CompileError, match="broken.cu does not compile for sm_90"):
        nvrtc.compile_source('extern "C" __global__ void f() { undefined_thing(); }',
                             "broken.cu", "sm_90")


@pytest.mark.skipif(have_gpu(), reason="checks the fallback on machines without a GPU")
def test_auto_backend_falls_back_to_numpy_with_a_notice(capsys):
    spec, arrays = random_network(0)
    engine = BinaryEngine(spec, arrays, backend="auto")
    assert engine.backend == "numpy"
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "falling back to the NumPy backend" in notice[0]
    x = np.random.default_rng(0).random((3, 9, 7, 2), dtype=np.float32)
    np.testing.assert_array_equal(engine.predict(x),
                                  BinaryEngine(spec, arrays).predict(x))
    with pytest.raises(RuntimeError, match="backend='cupy' needs CuPy and a GPU"):
        BinaryEngine(spec, arrays, backend="cupy")


# -- on a GPU --------------------------------------------------------------------------
def signs(rng, *shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def backend():
    from advlib.qnn.engine.cupy_backend import CupyBackend
    spec, arrays = random_network(0)
    return CupyBackend(spec, arrays)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m,n,length", [(1, 1, 1), (7, 5, 31), (33, 65, 33), (64, 64, 64),
                                        (1, 130, 4097), (257, 96, 257), (3000, 70, 1000)])
@pytest.mark.parametrize("tensor_cores", [False, True])
def test_gemm_equals_numpy(backend, m, n, length, tensor_cores):
    if tensor_cores and backend.kernels.compute_capability < 80:
        pytest.skip("binary tensor cores need sm_80")
    cp = backend.cp
    rng = np.random.default_rng(m + n + length)
    a, w = pack_signs(signs(rng, m, length)), pack_signs(signs(rng, n, length))
    expected = ops.binary_dot(a, w, length)
    out = backend.gemm(cp.asarray(a), cp.asarray(w), length, tensor_cores=tensor_cores)
    np.testing.assert_array_equal(out.get(), expected)
    threshold = rng.integers(-length, length + 1, n).astype(np.int64)
    flip = rng.random(n) < 0.5
    bits = backend.gemm(cp.asarray(a), cp.asarray(w), length, tensor_cores=tensor_cores,
                        epilogue=("bits", cp.asarray(threshold), cp.asarray(flip)))
    np.testing.assert_array_equal(bits.get(),
                                  ops.pack_bits(ops.threshold_bits(expected, threshold, flip)))
    scale, shift = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    logits = backend.gemm(cp.asarray(a), cp.asarray(w), length, tensor_cores=tensor_cores,
                          epilogue=("logits", cp.asarray(scale), cp.asarray(shift)))
    np.testing.assert_array_equal(logits.get(), expected.astype(np.float32) * scale + shift)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("length", [1, 33, 784])
def test_packing_and_bit_planes_equal_numpy(backend, length):
    rng = np.random.default_rng(length)
    x = rng.normal(size=(17, length)).astype(np.float32)
    x[0, 0] = 0.0
    np.testing.assert_array_equal(backend.pack_signs(backend.cp.asarray(x)).get(),
                                  pack_signs(x))
    x8 = rng.integers(0, 256, (17, length), dtype=np.uint8)
    planes = backend.bit_planes(backend.cp.asarray(x8))
    np.testing.assert_array_equal(planes.get(), ops.bit_planes(x8))
    w = pack_signs(signs(rng, 9, length))
    acc = backend.gemm(planes, backend.cp.asarray(w), length, planes=8)
    np.testing.assert_array_equal(acc.get(), x8.astype(np.int64) @ np.where(
        ops.unpack_bits(w, length), 1, -1).T)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("seed,flat", [(0, False), (1, False), (2, True), (3, True)])
@pytest.mark.parametrize("batch", [1, 37, 1000])
def test_whole_engine_is_bit_exact(seed, flat, batch):
    spec, arrays = random_network(seed, flat=flat)
    reference = BinaryEngine(spec, arrays, backend="numpy")
    x = np.random.default_rng(seed).random((batch, 9, 7, 2), dtype=np.float32)
    expected_logits, expected_hidden = reference.forward(x)
    for gemm in ("cuda", "tensor"):
        engine = BinaryEngine(spec, arrays, backend="cupy", gemm=gemm)
        logits, hidden = engine.forward(x)
        np.testing.assert_array_equal(logits, expected_logits)
        for ours, theirs in zip(hidden, expected_hidden):
            np.testing.assert_array_equal(ours, theirs)
