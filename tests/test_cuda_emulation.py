"""The CPU emulation of the CUDA path: a pre-Ampere GPU runs the CUDA-core
kernels end to end, the emulation is faithful enough to catch the defects it
exists for (CuPy's packbits with axis, planted kernel bugs, bad launches), and
the backend's CuPy surface is only what the stand-in provides."""

import numpy as np
import pytest
from cudaemu import emulator
from engine_nets import random_network

from advlib.qnn.engine import BinaryEngine, nvrtc, pack_signs
from advlib.qnn.engine import numpy_backend as ops

pytestmark = pytest.mark.skipif(
    not emulator.compiler(), reason="no C++ compiler (g++) to build the kernels for CPU emulation"
)


@pytest.fixture
def fake(emulated_cupy):
    return emulated_cupy


def engine_matches(spec, arrays, x, gemm):
    """Whether the CuPy backend's forward pass equals the NumPy engine's, bit for bit."""
    expected_logits, expected_hidden = BinaryEngine(spec, arrays).forward(x)
    logits, hidden = BinaryEngine(spec, arrays, backend="cupy", gemm=gemm).forward(x)
    return (
        np.array_equal(logits, expected_logits)
        and len(hidden) == len(expected_hidden)
        and all(np.array_equal(a, b) for a, b in zip(hidden, expected_hidden))
    )


@pytest.mark.parametrize("seed,flat", [(0, False), (2, True)])
def test_compute_capability_75_runs_the_cuda_core_path(fake, seed, flat):
    cupy = fake(75)
    spec, arrays = random_network(seed, flat=flat)
    x = np.random.default_rng(seed).random((23, 9, 7, 2), dtype=np.float32)
    engine = BinaryEngine(spec, arrays, backend="auto")
    assert engine.backend == "cupy" and not engine._gpu.use_tensor_cores
    assert engine_matches(spec, arrays, x, "auto")
    assert nvrtc.TENSOR_CORE_FILE not in cupy.compiled  # never even compiled
    with pytest.raises(ValueError, match="gemm='tensor' needs binary tensor cores"):
        BinaryEngine(spec, arrays, backend="cupy", gemm="tensor")
    fake(80)
    assert BinaryEngine(spec, arrays, backend="cupy")._gpu.use_tensor_cores


def test_cupy_packbits_with_axis_fails_as_cupy_does(fake, monkeypatch):
    """The defect that no test could see without a GPU: put the old unpack back and
    the whole-engine check fails, as on a real GPU."""
    fake()
    from advlib.qnn.engine.cupy_backend import CupyBackend

    def old_unpack(self, words, length):
        cp = self.cp
        bits = cp.unpackbits(cp.ascontiguousarray(words).view(cp.uint8), axis=-1, bitorder="little")
        return bits[..., :length].astype(bool)

    spec, arrays = random_network(0)
    x = np.random.default_rng(0).random((5, 9, 7, 2), dtype=np.float32)
    assert engine_matches(spec, arrays, x, "cuda")
    monkeypatch.setattr(CupyBackend, "unpack", old_unpack)
    with pytest.raises(NotImplementedError, match="axis option is not supported yet"):
        engine_matches(spec, arrays, x, "cuda")


# Planted bugs, one at a time: (file, original text, replacement, what it breaks).
MUTANTS = [
    (
        "binary_gemm.cu",
        "counted[i][j] += __popc(av[i] ^ bv[j]);",
        "counted[i][j] += __popc(av[i] & bv[j]);",
        "XOR -> AND in the binary GEMM",
    ),
    (
        "binary_gemm.cu",
        "return remaining >= 32 ? 0xffffffffu : ((1u << remaining) - 1u);",
        "return 0xffffffffu;",
        "+1 padding sets the unused channel bits",
    ),
    (
        "binary_gemm.cu",
        "bool bit = flip[col] ? (acc <= threshold[col]) : (acc >= threshold[col]);",
        "bool bit = flip[col] ? (acc < threshold[col]) : (acc >= threshold[col]);",
        "a flipped threshold off by one",
    ),
    ("binary_gemm.cu", "* (1LL << plane);", "* (1LL << (plane & 6));", "a wrong bit-plane weight"),
    (
        "binary_mma.cu",
        "unsigned int a1 = word_at(a, m, words, row0 + g + 8, k + t);",
        "unsigned int a1 = word_at(a, m, words, row0 + g, k + t);",
        "a wrong MMA fragment row",
    ),
    (
        "binary_mma.cu",
        "unsigned int b1 = word_at(b, n, words, col0 + g, k + t + 4);",
        "unsigned int b1 = word_at(b, n, words, col0 + g, k + t);",
        "a wrong MMA fragment column",
    ),
    (
        "packing.cu",
        "(source[first + i] >= 0.0f ? 1u : 0u)",
        "(source[first + i] > 0.0f ? 1u : 0u)",
        "sign(0) packed as -1",
    ),
    (
        "packing.cu",
        "bits |= x[(((long long)image * height + h) * width + w) * words + word];",
        "bits &= x[(((long long)image * height + h) * width + w) * words + word];",
        "max-pooling as AND",
    ),
    (
        "packing.cu",
        "long long pixel = flat / channels;",
        "long long pixel = flat % channels;",
        "a wrong flatten order",
    ),
    (
        "packing.cu",
        "out[index] = (unsigned char)((x[row * words + i / 32] >> (i % 32)) & 1u);",
        "out[index] = (unsigned char)((x[row * words + i / 32] >> (i % 31)) & 1u);",
        "a wrong unpacking shift",
    ),
]


def kernel_checks(backend, cp):
    """Small runs of every kernel family; True if all equal the NumPy engine."""
    rng = np.random.default_rng(11)
    a, w = pack_signs(rng.normal(size=(21, 300))), pack_signs(rng.normal(size=(19, 300)))
    x = rng.normal(size=(9, 40)).astype(np.float32)
    x[0, :3] = 0.0
    threshold = rng.integers(-40, 41, 19).astype(np.int64)
    flip = rng.random(19) < 0.5
    exact = ops.binary_dot(a, w, 300)
    maps = pack_signs(rng.normal(size=(2, 5, 4, 33)))
    results = [
        np.array_equal(backend.pack_signs(cp.asarray(x)).get(), pack_signs(x)),
        np.array_equal(
            backend.flatten(cp.asarray(maps), [5, 4, 33]).get(), ops.flatten_words(maps, [5, 4, 33])
        ),
        np.array_equal(backend.unpack(cp.asarray(a), 300).get(), ops.unpack_bits(a, 300)),
    ]
    for tensor in (False, True):
        results.append(
            np.array_equal(
                backend.gemm(cp.asarray(a), cp.asarray(w), 300, tensor_cores=tensor).get(), exact
            )
        )
        results.append(
            np.array_equal(
                backend.gemm(
                    cp.asarray(a),
                    cp.asarray(w),
                    300,
                    tensor_cores=tensor,
                    epilogue=("bits", cp.asarray(threshold), cp.asarray(flip)),
                ).get(),
                ops.pack_bits(ops.threshold_bits(exact, threshold, flip)),
            )
        )
    for seed, flat in [(1, False), (3, True)]:
        spec, arrays = random_network(seed, flat=flat)
        sample = np.random.default_rng(seed).random((6, 9, 7, 2), dtype=np.float32)
        results.append(engine_matches(spec, arrays, sample, "cuda"))
    return all(results)


def test_the_checks_pass_on_the_real_kernels(fake):
    cp = fake()
    from advlib.qnn.engine.cupy_backend import CupyBackend

    assert kernel_checks(CupyBackend(), cp)


@pytest.mark.parametrize(
    "file,original,planted,what",
    # three of the planted bugs in the edit loop, every one in the full suite
    [
        pytest.param(*m, id=m[3], marks=() if i < 3 else pytest.mark.slow)
        for i, m in enumerate(MUTANTS)
    ],
)
def test_planted_kernel_bugs_are_caught(fake, monkeypatch, file, original, planted, what):
    sources = nvrtc.sources()
    assert sources[file].count(original) == 1, f"mutant {what!r} no longer applies"
    mutated = dict(sources, **{file: sources[file].replace(original, planted)})
    monkeypatch.setattr(nvrtc, "sources", lambda: mutated)
    cp = fake()
    from advlib.qnn.engine.cupy_backend import CupyBackend

    try:
        caught = not kernel_checks(CupyBackend(), cp)
    except emulator.EmulationError:
        caught = True
    assert caught, f"the planted bug ({what}) went unnoticed"


def test_launches_are_checked_against_the_signature(fake):
    cp = fake()
    from advlib.qnn.engine.cupy_backend import CupyBackend

    kernel = CupyBackend().kernels["row_popcounts"]
    assert kernel.signature == ["p4", "p4", "i4", "i4"]
    rows, out = cp.asarray(np.ones((4, 3), np.uint32)), cp.empty(4, cp.int32)
    kernel((1,), (32,), (rows, out, np.int32(4), np.int32(3)))
    np.testing.assert_array_equal(out.get(), [3, 3, 3, 3])
    cases = [
        ((np.ones((4, 3), np.uint32), out, np.int32(4), np.int32(3)), "device array"),
        (
            (cp.asarray(np.ones((3, 8), np.uint32))[:, :4], out, np.int32(3), np.int32(4)),
            "not C-contiguous",
        ),
        ((cp.asarray(np.ones((4, 3), np.uint8)), out, np.int32(4), np.int32(3)), "4-byte elements"),
        ((rows, out, np.int64(4), np.int32(3)), "4-byte integer"),
        ((rows, out, 4, np.int32(3)), "NumPy scalar"),
        ((rows, out, np.int32(4)), "takes 4 arguments"),
    ]
    for args, message in cases:
        with pytest.raises(emulator.EmulationError, match=message):
            kernel((1,), (32,), args)
    with pytest.raises(emulator.EmulationError, match="more than 1024 threads"):
        kernel((1,), (64, 32), (rows, out, np.int32(4), np.int32(3)))
    with pytest.raises(emulator.EmulationError, match="outside CUDA's limits"):
        kernel((1, 70000), (32,), (rows, out, np.int32(4), np.int32(3)))


def test_shared_memory_is_poisoned_and_barriers_hold(fake):
    """A kernel that reads shared memory before a barrier sees 0xA5 garbage, and one
    whose threads return early still passes its barriers."""
    source = r"""
    extern "C" __global__ void stage(const int* in, int* out, int n, int early) {
        __shared__ int tile[64];
        int i = threadIdx.x;
        if (early && i >= n) return;   // leaves the barrier below
        int before = tile[i];
        tile[i] = in[i];
        __syncthreads();
        out[i] = tile[(i + 1) % n] + (before == (int)0xA5A5A5A5 ? 0 : 1000);
    }"""
    kernel = emulator.load(source, "stage.cu")["stage"]
    cp = fake()
    values = cp.asarray(np.arange(64, dtype=np.int32))
    for early in (0, 1):
        for _launch in range(2):  # the second launch sees poison again, not the first's data
            out = cp.zeros(64, cp.int32)
            kernel((1,), (64,), (values, out, np.int32(48 if early else 64), np.int32(early)))
            n = 48 if early else 64
            np.testing.assert_array_equal(out.get()[:n], (np.arange(n) + 1) % n)


def test_an_instruction_without_emulation_is_refused_by_name():
    source = r"""
    extern "C" __global__ void f(int* out) {
        int v;
        asm volatile("mma.sync.aligned.m8n8k128.row.col.s32.b1.b1.s32.xor.popc {%0}, {%1};"
                     : "=r"(v) : "r"(v));
        out[0] = v;
    }"""
    with pytest.raises(emulator.EmulationError, match="m8n8k128"):
        emulator.load(source, "f.cu")


def test_the_backend_uses_only_the_checked_cupy_surface():
    """The backend's CuPy calls are those the stand-in offers (and the module
    docstring lists as checked against CuPy's source)."""
    import ast
    import inspect

    from advlib.qnn.engine import cupy_backend

    tree = ast.parse(inspect.getsource(cupy_backend))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("cp", "cupy")
    }
    used |= {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr in ("cp", "cupy")
    }
    offered = {
        "asarray",
        "ascontiguousarray",
        "empty",
        "zeros",
        "RawModule",
        "cuda",
        "uint8",
        "uint32",
        "int32",
        "int64",
        "float32",
    }
    assert used <= offered, used - offered
    assert "packbits" not in used and "unpackbits" not in used and "concatenate" not in used
