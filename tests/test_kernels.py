"""The CUDA kernels and the CuPy backend around them.

Everywhere: NVRTC compiles every kernel file for sm_75 to sm_90, and the same
sources run on the CPU under emulation (`tests/cudaemu`: each CUDA thread a real
thread, barriers, poisoned shared memory, the binary MMA from the PTX ISA's
fragment layouts), driven through `CupyBackend`'s own launch code with a
stand-in for CuPy. On a GPU (marker gpu) the same checks run on the device.
Every result is compared bit for bit with the NumPy engine.
"""

import platform

import numpy as np
import pytest
from cudaemu import emulator
from engine_nets import random_network

from advlib.qnn.engine import BinaryEngine, nvrtc, pack_signs
from advlib.qnn.engine import numpy_backend as ops

NVRTC_WHEELS = platform.system() == "Linux" and platform.machine() == "x86_64"
NO_COMPILER = "no C++ compiler (g++) to build the kernels for CPU emulation"


def have_gpu():
    from advlib.qnn.engine import cupy_backend

    return cupy_backend.available()[0]


GPU = have_gpu()
DEVICES = [
    pytest.param(
        "gpu",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not GPU, reason="needs CuPy and a CUDA device")],
    ),
    pytest.param("emulated", marks=pytest.mark.skipif(not emulator.compiler(), reason=NO_COMPILER)),
]


@pytest.fixture(params=DEVICES)
def device(request, emulated_cupy):
    """ "gpu" (the real CuPy) or "emulated" (the fake CuPy and the CPU emulation)."""
    if request.param == "emulated":
        emulated_cupy()
    return request.param


@pytest.fixture
def backend(device):
    from advlib.qnn.engine.cupy_backend import CupyBackend

    spec, arrays = random_network(0)
    return CupyBackend(spec, arrays)


def signs(rng, *shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


# -- NVRTC, everywhere ----------------------------------------------------------------
@pytest.mark.skipif(not NVRTC_WHEELS, reason="nvidia-cuda-nvrtc-cu12 ships for Linux x86-64")
@pytest.mark.parametrize("arch", nvrtc.ARCHITECTURES)
def test_every_kernel_compiles(arch):
    assert nvrtc.ARCHITECTURES == ("sm_75", "sm_80", "sm_86", "sm_90")
    library = nvrtc.load_library()  # a missing NVRTC fails the suite here
    sources = nvrtc.sources()
    assert {"binary_gemm.cu", "binary_mma.cu", "packing.cu"} <= set(sources)
    for name, source in sources.items():
        if arch in nvrtc.architectures_for(name):
            cubin = nvrtc.compile_source(source, name, arch, library)
            assert cubin[:4] == b"\x7fELF"
        else:  # the tensor-core file, below sm_80: why it is a module of its own
            with pytest.raises(nvrtc.CompileError, match="m16n8k256|mma"):
                nvrtc.compile_source(source, name, arch, library)


@pytest.mark.skipif(not NVRTC_WHEELS, reason="nvidia-cuda-nvrtc-cu12 ships for Linux x86-64")
def test_compile_errors_carry_the_log():
    with pytest.raises(nvrtc.CompileError, match="broken.cu does not compile for sm_90"):
        nvrtc.compile_source(
            'extern "C" __global__ void f() { undefined_thing(); }', "broken.cu", "sm_90"
        )


def test_the_tensor_core_kernels_live_alone():
    sources = nvrtc.sources()
    names = {file: set(nvrtc.kernel_names(source)) for file, source in sources.items()}
    assert names[nvrtc.TENSOR_CORE_FILE] == {"mma_int", "mma_bits", "mma_logits"}
    assert "row_popcounts" in names["packing.cu"]
    for file, source in sources.items():
        if file != nvrtc.TENSOR_CORE_FILE:
            assert "mma.sync" not in source and "asm" not in source


@pytest.mark.skipif(GPU, reason="checks the fallback on machines without a GPU")
def test_auto_backend_falls_back_to_numpy_with_a_warning():
    spec, arrays = random_network(0)
    with pytest.warns(RuntimeWarning, match="falling back to the NumPy backend") as caught:
        engine = BinaryEngine(spec, arrays, backend="auto")
    assert engine.backend == "numpy" and len(caught) == 1
    x = np.random.default_rng(0).random((3, 9, 7, 2), dtype=np.float32)
    np.testing.assert_array_equal(engine.predict(x), BinaryEngine(spec, arrays).predict(x))
    with pytest.raises(RuntimeError, match="backend='cupy' needs CuPy and a GPU"):
        BinaryEngine(spec, arrays, backend="cupy")


# -- the kernels, on a GPU or emulated --------------------------------------------------
GEMM_SHAPES = [
    (1, 1, 1),
    (7, 5, 31),
    (33, 65, 33),
    (64, 64, 64),
    (1, 130, 4097),
    (257, 96, 257),
    (3000, 70, 1000),
]


@pytest.mark.parametrize("m,n,length", GEMM_SHAPES)
@pytest.mark.parametrize("tensor_cores", [False, True])
def test_gemm_equals_numpy(backend, device, m, n, length, tensor_cores):
    if tensor_cores and backend.kernels.compute_capability < 80:
        pytest.skip("binary tensor cores need sm_80")
    if device == "emulated" and m * n > 100_000:
        pytest.skip("too large to emulate in the suite (thread per CUDA thread)")
    cp = backend.cp
    rng = np.random.default_rng(m + n + length)
    a, w = pack_signs(signs(rng, m, length)), pack_signs(signs(rng, n, length))
    expected = ops.binary_dot(a, w, length)
    a_device, w_device = cp.asarray(a), cp.asarray(w)
    gemm = lambda **epilogue: backend.gemm(
        a_device, w_device, length, tensor_cores=tensor_cores, **epilogue
    )
    out = gemm()
    np.testing.assert_array_equal(out.get(), expected)
    threshold = rng.integers(-length, length + 1, n).astype(np.int64)
    flip = rng.random(n) < 0.5
    bits = gemm(epilogue=("bits", cp.asarray(threshold), cp.asarray(flip)))
    np.testing.assert_array_equal(
        bits.get(), ops.pack_bits(ops.threshold_bits(expected, threshold, flip))
    )
    scale, shift = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    logits = gemm(epilogue=("logits", cp.asarray(scale), cp.asarray(shift)))
    np.testing.assert_array_equal(logits.get(), expected.astype(np.float32) * scale + shift)


@pytest.mark.parametrize("tensor_cores", [False, True])
def test_non_contiguous_operands(backend, tensor_cores):
    """Strided views (a column slice, a transposed copy) give the dense results."""
    if tensor_cores and backend.kernels.compute_capability < 80:
        pytest.skip("binary tensor cores need sm_80")
    cp = backend.cp
    rng = np.random.default_rng(5)
    a, w = pack_signs(signs(rng, 40, 300)), pack_signs(signs(rng, 24, 300))
    wide_a = cp.asarray(np.concatenate([a, a ^ 0xFFFF], axis=1))
    strided_a = wide_a[:, : a.shape[1]]
    strided_w = cp.asarray(np.ascontiguousarray(w.T)).T
    assert not strided_a.flags.c_contiguous and not strided_w.flags.c_contiguous
    out = backend.gemm(strided_a, strided_w, 300, tensor_cores=tensor_cores)
    np.testing.assert_array_equal(out.get(), ops.binary_dot(a, w, 300))
    np.testing.assert_array_equal(
        backend.row_popcounts(strided_a).get(), np.bitwise_count(a).sum(axis=1)
    )


@pytest.mark.parametrize("length", [1, 33, 784])
def test_packing_and_bit_planes_equal_numpy(backend, length):
    rng = np.random.default_rng(length)
    x = rng.normal(size=(17, length)).astype(np.float32)
    x[0, 0] = 0.0
    np.testing.assert_array_equal(backend.pack_signs(backend.cp.asarray(x)).get(), pack_signs(x))
    x8 = rng.integers(0, 256, (17, length), dtype=np.uint8)
    planes = backend.bit_planes(backend.cp.asarray(x8))
    np.testing.assert_array_equal(planes.get(), ops.bit_planes(x8))
    w = pack_signs(signs(rng, 9, length))
    acc = backend.gemm(planes, backend.cp.asarray(w), length, planes=8)
    np.testing.assert_array_equal(
        acc.get(), x8.astype(np.int64) @ np.where(ops.unpack_bits(w, length), 1, -1).T
    )
    packed = pack_signs(x)
    np.testing.assert_array_equal(
        backend.unpack(backend.cp.asarray(packed), length).get(), ops.unpack_bits(packed, length)
    )


@pytest.mark.parametrize("shape", [(2, 3, 3, 5), (3, 4, 2, 33), (1, 5, 7, 64)])
def test_flatten_equals_numpy(backend, shape):
    rng = np.random.default_rng(sum(shape))
    words = pack_signs(signs(rng, *shape))
    out = backend.flatten(backend.cp.asarray(words), list(shape[1:]))
    np.testing.assert_array_equal(out.get(), ops.flatten_words(words, list(shape[1:])))


@pytest.mark.parametrize("seed, flat", [(4, False), (5, True)])
def test_ternary_layers_are_bit_exact(device, seed, flat):
    """Masked (ternary) layers run as pairs of +-1 units through the same kernels,
    then `threshold_pairs` adds each pair up: both GEMM paths equal the NumPy
    engine, which computes them with masked popcounts, bit for bit."""
    spec, arrays = random_network(seed, flat=flat, sparsity=0.6)
    assert any(layer.get("mask") for layer in spec["layers"])
    x = np.random.default_rng(seed).random((4, 9, 7, 2), dtype=np.float32)
    x[0] = 1.0  # every first-layer sum at its largest
    expected_logits, expected_hidden = BinaryEngine(spec, arrays).forward(x)
    for gemm in ("cuda", "tensor"):
        logits, hidden = BinaryEngine(spec, arrays, backend="cupy", gemm=gemm).forward(x)
        np.testing.assert_array_equal(logits, expected_logits)
        for ours, theirs in zip(hidden, expected_hidden, strict=True):
            np.testing.assert_array_equal(ours, theirs)


def whole_engine_cases(device):
    batches = (1, 37, 1000) if device == "gpu" else (1, 9)
    return [
        (seed, flat, batch)
        for seed, flat in [(0, False), (1, False), (2, True), (3, True)]
        for batch in batches
    ]


# the two largest networks are in the slow tier
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in (1, 3) else c for c in range(12)]
)
def test_whole_engine_is_bit_exact(device, case):
    cases = whole_engine_cases(device)
    if case >= len(cases):
        pytest.skip("batch 1000 runs on a GPU only")
    seed, flat, batch = cases[case]
    spec, arrays = random_network(seed, flat=flat)
    reference = BinaryEngine(spec, arrays, backend="numpy")
    x = np.random.default_rng(seed).random((batch, 9, 7, 2), dtype=np.float32)
    expected_logits, expected_hidden = reference.forward(x)
    for gemm in ("cuda", "tensor"):
        engine = BinaryEngine(spec, arrays, backend="cupy", gemm=gemm)
        logits, hidden = engine.forward(x)
        np.testing.assert_array_equal(logits, expected_logits)
        assert len(hidden) == len(expected_hidden)
        for ours, theirs in zip(hidden, expected_hidden):
            np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(engine.predict_classes(x), reference.predict_classes(x))
