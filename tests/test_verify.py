"""The exact verifier of binary networks, against brute force over the input box."""

import itertools

import numpy as np
import pytest
from engine_nets import random_network

from advlib.qnn.engine import BinaryEngine
from advlib.qnn.verify import NetworkEncoding, check_counterexamples, verify
from advlib.qnn.verify.search import search_counterexample

SHAPE = (2, 3, 1)  # six pixels: up to 5 levels each at eps 2/255, 15,625 points


def brute_force_broken(engine, encoding, x, label, eps) -> bool:
    """Whether any point of the quantized box is misclassified by the engine."""
    low, high = encoding.input_box(x.reshape(-1), eps)
    grid = np.array(
        list(itertools.product(*[range(a, b + 1) for a, b in zip(low, high)])), np.float32
    ) / np.float32(255)
    return bool((engine.predict_classes(grid.reshape((-1,) + x.shape)) != label).any())


@pytest.mark.parametrize("backend", ["milp", "sat"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("flat", [False, True])
def test_every_answer_matches_brute_force(seed, flat, backend):
    """Random networks with odd shapes, +1 and -1 padding, max-pooling, flipped
    thresholds (negative BatchNorm scales) and thresholds outside the accumulator's
    range (zero scales): every robust / broken answer equals enumeration."""
    spec, arrays = random_network(
        seed, input_shape=SHAPE, channels=(3, 5), dense=(6,), classes=4, flat=flat
    )
    engine = BinaryEngine(spec, arrays)
    encoding = NetworkEncoding(engine)
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 256, (8,) + SHAPE) / 255).astype(np.float32)
    y = engine.predict_classes(x)
    y[::4] = (y[::4] + 1) % 4  # some start misclassified
    for eps in (1 / 255, 2 / 255):
        # no search: every answer comes from the complete backend under test
        result = verify(encoding, x, y, eps, time_limit=60, backend=backend, search_share=0)
        for i, verdict in enumerate(result.verdicts):
            expected = (
                "broken" if brute_force_broken(engine, encoding, x[i], y[i], eps) else "robust"
            )
            assert verdict.status == expected, (i, eps, verdict.reason)
        broken = [i for i, v in enumerate(result.verdicts) if v.status == "broken"]
        assert check_counterexamples(engine, x, result, eps) == broken
        counts = result.counts()
        assert counts["robust"] + counts["broken"] == len(x) and counts["unknown"] == 0
        low, high = result.robust_interval()
        assert low == high == counts["robust"] / len(x)


def grid_broken(engine, x, label, eps) -> bool:
    """Brute force over the quantized box, vectorized (for three-pixel inputs), on
    the BLAS engine: bit-exact with the NumPy reference (test_engine.py) and
    seven times faster over these grids."""
    low, high = NetworkEncoding.input_box(x.reshape(-1), eps)
    axes = np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(low, high)], indexing="ij")
    grid = np.stack(axes, -1).reshape((-1,) + x.shape).astype(np.float32) / np.float32(255)
    return bool((engine.on_blas().predict_classes(grid) != label).any())


def test_reified_cardinality_with_repeated_literals_matches_enumeration():
    """The SAT backend writes z => (at least k of lits) as one native constraint in
    which z appears k times; check that Minicard counts repeated literals, for
    every assignment of small random constraints."""
    from pysat.solvers import Solver

    from advlib.qnn.verify import sat as verify_sat

    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 7))
        lits = (np.arange(1, n + 1) * np.where(rng.random(n) < 0.5, -1, 1)).astype(np.int64)
        k = int(rng.integers(-1, n + 2))
        solver = Solver(name=verify_sat._SOLVER)
        builder = verify_sat._Builder(solver)
        builder.new(n)
        z = builder.at_least(lits, k)
        for values in itertools.product([False, True], repeat=n):
            assumption = [v if t else -v for v, t in zip(range(1, n + 1), values)]
            count = sum(values[abs(lit) - 1] == (lit > 0) for lit in lits)
            if isinstance(z, bool):
                assert z == (count >= k)
                continue
            assert solver.solve(assumptions=assumption + [z]) == (count >= k)
            assert solver.solve(assumptions=assumption + [-z]) == (count < k)
        solver.delete()


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
    from advlib.qnn.verify import milp as module

    spec, arrays = random_network(2, input_shape=SHAPE, channels=(3, 5), dense=(6,), classes=4)
    engine = BinaryEngine(spec, arrays)
    x = (np.random.default_rng(1).integers(0, 256, (6,) + SHAPE) / 255).astype(np.float32)
    monkeypatch.setattr(module, "_solve", lambda *args: "time limit")
    result = verify(engine, x, engine.predict_classes(x), 0.5, search_share=0)
    assert set(result.statuses) <= {"unknown", "robust"} and "unknown" in result.statuses
    low, high = result.robust_interval()
    assert low < high


def test_a_float_tie_hands_its_point_to_the_search(monkeypatch):
    """A decider that ends on a float tie keeps its point; the search starts there,
    even with search_share 0, and its counterexample is checked by the engine.
    Without a tie, search_share 0 leaves the example unknown."""
    import advlib.qnn.verify as verify_module
    from advlib.qnn.verify import search
    from advlib.qnn.verify.result import Verdict

    spec, arrays = random_network(0, input_shape=SHAPE, channels=(3, 5), dense=(6,), classes=4)
    engine = BinaryEngine(spec, arrays)
    x = (np.random.default_rng(0).integers(0, 256, (16,) + SHAPE) / 255).astype(np.float32)
    y = engine.predict_classes(x)
    found = verify(engine, x, y, 4 / 255)
    broken = [i for i, v in enumerate(found.verdicts) if v.status == "broken"]
    assert broken
    points = {i: found.verdicts[i].counterexample for i in broken}
    starts = []
    original = search.search_counterexample
    monkeypatch.setattr(
        search,
        "search_counterexample",
        lambda *args, start=None, **kwargs: (
            starts.append(start) or original(*args, start=start, **kwargs)
        ),
    )
    for tie in (True, False):
        answers = iter(broken)

        def fake(question, time_limit):
            point = points[next(answers)]
            return Verdict("unknown", question.label, tie=point if tie else None, reason="tie")

        monkeypatch.setitem(verify_module.BACKENDS, "milp", fake)
        starts.clear()
        result = verify(engine, x[broken], y[broken], 4 / 255, search_share=0)
        if not tie:
            assert set(result.statuses) == {"unknown"} and starts == []
            continue
        assert set(result.statuses) == {"broken"}
        assert all(np.array_equal(s, points[i]) for s, i in zip(starts, broken))
        images = np.stack([v.counterexample for v in result.verdicts])
        assert (engine.predict_classes(images) != y[broken]).all()
        assert np.abs(images - x[broken]).max() <= 4 / 255 + 1e-6


@pytest.mark.parametrize(
    "flat, step, sparsity",
    [
        pytest.param(False, None, None, marks=pytest.mark.slow),
        (True, None, None),
        (False, 0.05, None),
        (False, 0.05, 0.5),
        (True, 0.25, 0.5),
    ],
)
def test_every_method_agrees_with_brute_force_at_a_large_eps(monkeypatch, flat, step, sparsity):
    """Three pixels at eps 0.1 (51 levels each): boxes where many examples break,
    so that a wrong 'robust' or a missed counterexample would show. Both complete
    backends must give enumeration's answers; then, with the complete programs
    made to time out so that every counterexample comes from the local search,
    the search must break each example that enumeration breaks and no other,
    every counterexample re-checked. (One enumeration serves both: it is the
    test's cost.) With a SteppedInput grid (`step`), the deciders see a few grid
    values per pixel, while enumeration still runs over every 8-bit level; with
    `sparsity`, the hidden layers are ternary (masked)."""
    from advlib.qnn.verify import milp as module

    shape = (1, 3, 1)
    statuses, found = [], 0
    # seeds whose networks break some of the examples and not all
    for seed in (0, 1) if sparsity is None else (2, 3):
        spec, arrays = random_network(
            seed,
            input_shape=shape,
            channels=(4, 6),
            dense=(8,),
            classes=4,
            flat=flat,
            step=step,
            sparsity=sparsity,
        )
        engine = BinaryEngine(spec, arrays)
        encoding = NetworkEncoding(engine)
        if step is not None:
            low, high = encoding.level_box(np.full(3, 0.5, np.float32), 0.1)
            assert (high - low).max() <= int(np.ceil(0.2 / step)) < 51
        x = (np.random.default_rng(seed).integers(0, 256, (8,) + shape) / 255).astype(np.float32)
        y = engine.predict_classes(x)
        expected = [
            "broken" if grid_broken(engine, x[i], y[i], 0.1) else "robust" for i in range(len(x))
        ]
        broken = [i for i, status in enumerate(expected) if status == "broken"]
        for backend in ("milp", "sat"):
            result = verify(encoding, x, y, 0.1, time_limit=60, backend=backend, search_share=0)
            assert list(result.statuses) == expected, backend
            assert check_counterexamples(engine, x, result, 0.1) == broken
        statuses += expected

        with monkeypatch.context() as patch:
            patch.setattr(module, "_solve", lambda *args: "time limit")
            result = verify(engine, x, y, 0.1, time_limit=0.5, search_share=0.9, seed=seed)
        for i, verdict in enumerate(result.verdicts):
            if expected[i] == "broken":
                assert verdict.status == "broken", (seed, i, verdict.reason)
                found += "local search" in verdict.reason
            else:
                assert verdict.status in ("robust", "unknown"), (seed, i)
        assert check_counterexamples(engine, x, result, 0.1) == broken
        # started from a counterexample, the search returns it without a step
        for i in broken:
            start = result.verdicts[i].counterexample
            again = search_counterexample(
                encoding, x[i], int(y[i]), 0.1, time_limit=1e-9, start=start
            )
            np.testing.assert_array_equal(
                engine.predict_classes(again[None]), engine.predict_classes(start[None])
            )
            assert np.abs(again - x[i]).max() <= 0.1 + 1e-7
    assert statuses.count("broken") >= 2 and statuses.count("robust") >= 2
    assert found >= 2


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(eps=0.1, search_share=1.0), ValueError, r"search_share must be in \[0, 1\)"),
        (dict(eps=0.1, seed=-1), ValueError, "seed must be"),
        (dict(eps=-0.1), ValueError, "eps must be in"),
        (dict(eps=0.1, time_limit=0), ValueError, "time_limit"),
        (dict(eps=0.1, x=np.zeros((2, 3, 3, 1), np.float32)), ValueError, r"x must have shape"),
        (dict(eps=0.1, x=np.full((2,) + SHAPE, 2.0, np.float32)), ValueError, "clip_max"),
        (dict(eps=0.1, y=[0, 9]), ValueError, "class 9"),
        (dict(eps=0.1, backend="bdd"), ValueError, r"backend must be one of \['milp', 'sat'\]"),
        (dict(eps=0.1, example_ids=[3]), ValueError, "example_ids must be 2 non-negative"),
        (dict(eps=0.1, example_ids=[0.5, 1]), ValueError, "example_ids must be 2 non-negative"),
    ],
)
def test_bad_input_is_refused_by_name(kwargs, error, message):
    spec, arrays = random_network(0, input_shape=SHAPE, channels=(3, 5), dense=(6,), classes=4)
    arguments = dict(x=np.zeros((2,) + SHAPE, np.float32), y=[0, 1])
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        verify(BinaryEngine(spec, arrays), **arguments)
    with pytest.raises(TypeError, match="engine must be"):
        NetworkEncoding(object())


# -- in the harness ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_binary_mlp(digits, tmp_path_factory):
    """A 64-32-32-10 binary MLP on digits and its exported engine."""
    import keras

    from advlib import qnn

    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = qnn.binary_mlp((8, 8, 1), width=32, depth=2)
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x_train, y_train, epochs=20, batch_size=64, verbose=0)
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.npz")
    qnn.export(model, path)
    return model, path


def weak_protocol(eps, sweep=()):
    """FGSM alone, so that the verifier has examples to decide."""
    return {
        "name": "weak",
        "version": 1,
        "dataset": {"name": "digits", "n": 40},
        "threat": {"norm": "inf", "eps": eps},
        "sweep": list(sweep),
        "batch_size": 40,
        "attacks": [{"attack": "FastGradientMethod"}],
        "diagnostics": {"n": 10, "spsa_iterations": 0},
    }


def spy_on_search_seeds(monkeypatch, images):
    """Records, per call of the verifier's search, the index of its image among
    `images` and the seed it was given."""
    from advlib.qnn.verify import search as verify_search

    calls, search = [], verify_search.search_counterexample

    def recording(encoding, x, *args, seed=0, **kwargs):
        index = [i for i, image in enumerate(images) if np.array_equal(image, x)]
        calls.append((index[0], seed))
        return search(encoding, x, *args, seed=seed, **kwargs)

    monkeypatch.setattr(verify_search, "search_counterexample", recording)
    return calls


def test_a_subset_draws_the_seeds_of_the_whole_set(monkeypatch):
    spec, arrays = random_network(1, input_shape=SHAPE, channels=(3, 5), dense=(6,), classes=4)
    engine = BinaryEngine(spec, arrays)
    x = (np.random.default_rng(2).integers(0, 256, (6,) + SHAPE) / 255).astype(np.float32)
    y = engine.predict_classes(x)
    calls = spy_on_search_seeds(monkeypatch, x)
    verify(engine, x[[1, 4]], y[[1, 4]], 0.05, time_limit=0.2, seed=7, example_ids=[1, 4])
    first = {}
    for index, seed in calls:
        first.setdefault(index, seed)
    assert first == {1: 8, 4: 11}


@pytest.mark.slow
def test_the_harness_reports_the_certified_interval_and_the_missed_counterexamples(
    tiny_binary_mlp, digits, monkeypatch
):
    from advlib import bench
    from advlib.models import QNNModelWrapper

    model, path = tiny_binary_mlp
    _, (x_test, _) = digits
    calls = spy_on_search_seeds(monkeypatch, x_test[:40])
    # the naive (zero) gradient: FGSM breaks nothing, every decision is the verifier's
    wrapped = QNNModelWrapper(model, surrogate="zero", engine=path)
    report = bench.evaluate(
        wrapped,
        weak_protocol(1 / 255, sweep=[4 / 255]),
        progress=False,
        verify=True,
        verify_time_limit=20,
        verify_search_share=0.25,
    )
    engine = BinaryEngine.load(path)
    _, (x_test, y_test) = digits
    x, y = x_test[:40], y_test[:40]
    correct = engine.predict_classes(x) == y
    main, wider = report["results"]["per_eps"]
    for entry in (main, wider):
        verification = entry["verification"]
        assert entry["attacks"][0]["broken"] == 0
        assert verification["verified"] == correct.sum()
        assert (
            verification["robust"] + verification["broken"] + verification["unknown"]
            == correct.sum()
        )
        # the worst case counts the verifier's counterexamples, and is the interval's top
        low, high = verification["interval"]
        assert entry["robust_accuracy"]["value"] == pytest.approx(high)
        assert low == pytest.approx(verification["robust"] / 40)
    # at 1/255 everything is decided: the figure is exact, and it matches a direct run
    direct = verify(engine, x[correct], y[correct], 1 / 255, time_limit=20, search_share=0.25)
    assert main["verification"]["exact"]
    assert main["verification"]["robust"] == direct.counts()["robust"]
    assert wider["verification"]["broken"] > 0
    checks = {c["id"]: c for c in report["diagnostics"]}
    assert checks["attack-completeness"]["status"] in ("warn", "fail")
    assert "counterexamples the attacks missed" in checks["attack-completeness"]["message"]
    table = bench.markdown(report)
    assert "certified by the exact verifier (milp), eps=0.003922" in table
    assert "(limit 20 s, search share 0.25)" in table
    assert "robust (worst case), eps=0.003922** (exact)" in table
    # each digit's search draws the seed verify() gives it on all 40, not its
    # position among the verified ones (a digit's first search uses its index)
    assert not correct.all()
    first = {}
    for index, seed in calls:
        first.setdefault(index, seed)
    assert first and all(seed == index for index, seed in first.items())


def test_verify_refuses_models_without_an_engine_and_l2_protocols(tiny_binary_mlp, digits_cnn):
    from advlib import bench
    from advlib.models import QNNModelWrapper

    with pytest.raises(
        ValueError, match="verify=True needs a binary network with an exported engine"
    ):
        bench.evaluate(digits_cnn, weak_protocol(0.01), progress=False, verify=True)
    model, path = tiny_binary_mlp
    wrapped = QNNModelWrapper(model, engine=path)
    l2 = dict(weak_protocol(0.5), threat={"norm": "2", "eps": 0.5})
    with pytest.raises(ValueError, match="decides L-inf balls"):
        bench.evaluate(wrapped, l2, progress=False, verify=True)
    with pytest.raises(ValueError, match="verify_backend must be one of"):
        bench.evaluate(
            wrapped, weak_protocol(0.01), progress=False, verify=True, verify_backend="cplex"
        )
    with pytest.raises(ValueError, match="verify_search_share must be"):
        bench.evaluate(
            wrapped, weak_protocol(0.01), progress=False, verify=True, verify_search_share=1.0
        )


def test_completeness_check_reads_every_verified_eps():
    from advlib.bench import diagnostics

    def results(main, sweep):
        rows = [(0.1, main), (0.05, sweep)]
        return {
            "clean_accuracy": {"count": 100},
            "per_eps": [
                {"eps": eps, "verification": {"broken": broken, "verified": 30, "unknown": 2}}
                for eps, broken in rows
            ],
        }

    config = diagnostics.settings({})
    check = lambda main, sweep: diagnostics._completeness(results(main, sweep), config)
    assert check(0, 1)["status"] == "pass"
    assert check(0, 3)["status"] == "warn"
    assert check(3, 0)["status"] == "fail"
    assert diagnostics._completeness({"per_eps": [{"eps": 0.1}]}, config)["status"] == "skip"
