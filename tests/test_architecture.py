"""The package's structure: an import graph without cycles, and attacks that are
found by name without a list to edit."""

import ast
import inspect
import os
import shutil
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_python

import advlib
from advlib import attacks
from advlib.attacks import Attack, by_name
from advlib.attacks.base import defining_class
from advlib.bench import ensemble
from advlib.bench import protocol as protocols

ROOT = os.path.dirname(os.path.abspath(advlib.__file__))


# The layers, lowest first: a module may import from its own component, from a
# lower layer, or along an edge of SAME_LAYER; never upwards.
LAYERS = (
    ("advlib.backend",),  # read by the package's own __init__
    ("advlib", "advlib._checks", "advlib._seeding", "advlib.stats"),
    ("advlib.losses", "advlib.datasets", "advlib.qnn"),
    ("advlib.models",),
    ("advlib.attacks",),
    ("advlib.training", "advlib.certify", "advlib.bench"),
    ("advlib.cli",),
)
SAME_LAYER = {("advlib.bench", "advlib.certify")}  # the harness certifies


def module_names(root=ROOT):
    """Every module of the package at `root`, by dotted name, with its file."""
    found = {}
    for folder, _, files in os.walk(root):
        for file in files:
            if file.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, file), os.path.dirname(root))
                name = relative[:-3].replace(os.sep, ".")
                found[name[: -len(".__init__")] if name.endswith(".__init__") else name] = (
                    os.path.join(folder, file)
                )
    return found


def ancestors(name):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def imports_of(path, name, modules):
    """The advlib modules that `path` imports, at any depth (function-level too),
    each resolved to the most specific module it names, plus the packages whose
    `__init__` such an import runs (those that do not contain `name` already)."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
    targets |= {parent for target in targets for parent in ancestors(target)} - ancestors(name)
    return {t for t in targets if t in modules and t != name}


def import_graph(root=ROOT):
    modules = module_names(root)
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def component(name):
    """The layer entry that holds module `name`: its longest listed prefix."""
    listed = [
        entry
        for layer in LAYERS
        for entry in layer
        if name == entry or name.startswith(entry + ".")
    ]
    return max(listed, key=len)


def layer_violations(graph):
    """The imports that run up the layers or sideways without an allowance, as
    'module -> component'."""
    rank = {entry: index for index, layer in enumerate(LAYERS) for entry in layer}
    found = set()
    for source, targets in graph.items():
        for target in targets:
            a, b = component(source), component(target)
            if a != b and rank[b] >= rank[a] and (a, b) not in SAME_LAYER:
                found.add(f"{source} -> {b}")
    return sorted(found)


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    # the graph is real: the attacks import the model wrappers, the harness the attacks
    assert "advlib.models.keras" in graph["advlib.attacks.base"]
    assert "advlib.attacks" in graph["advlib.bench.ensemble"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_imports_follow_the_layers():
    graph = import_graph()
    # importing a submodule runs its package's __init__: that edge is in the graph
    assert "advlib.models" in graph["advlib.certify.smoothing"]
    assert "advlib.attacks" in graph["advlib.training.callbacks"]
    assert layer_violations(graph) == []


@pytest.mark.parametrize(
    "module, planted, edge",
    [
        ("models/base.py", "from advlib.bench import runner", "advlib.models.base -> advlib.bench"),
        (
            "models/inspect.py",
            "    from advlib.attacks.utils import clip_eta",
            "advlib.models.inspect -> advlib.attacks",
        ),
        (
            "certify/smoothing.py",
            "import advlib.bench.report",
            "advlib.certify.smoothing -> advlib.bench",
        ),
    ],
)
def test_the_layer_rule_catches_a_planted_upward_import(tmp_path, module, planted, edge):
    copy = tmp_path / "advlib"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / module
    text = path.read_text()
    if planted.startswith(" "):  # inside the first function
        head, tail = text.split("\ndef ", 1)
        name_line, body = tail.split("\n", 1)
        while name_line.rstrip()[-1] != ":":  # signatures over several lines
            more, body = body.split("\n", 1)
            name_line += "\n" + more
        text = f"{head}\ndef {name_line}\n{planted}\n{body}"
    else:
        text += f"\n{planted}\n"
    path.write_text(text)
    assert layer_violations(import_graph(str(copy))) == [edge]


ABOVE_MODELS = ("advlib.attacks", "advlib.bench", "advlib.training", "advlib.certify")


@pytest.mark.parametrize(
    "layers",
    [
        # one interpreter for the two: attacks sit above models, so importing them
        # second checks each layer against what lies above it
        (
            ("advlib.models", ABOVE_MODELS),
            ("advlib.attacks", ("advlib.bench", "advlib.training", "advlib.certify")),
        ),
        pytest.param(
            (("advlib.certify", ("advlib.attacks", "advlib.bench")),), marks=pytest.mark.slow
        ),
        (("advlib.qnn.engine", ("tensorflow", "keras", "advlib.models")),),
    ],
    ids=["models-attacks", "certify", "engine"],
)
def test_importing_a_layer_loads_nothing_above_it(layers):
    packages = [package for package, _ in layers]
    code = (
        "import importlib, sys\n"
        f"for package in {packages!r}:\n"
        "    importlib.import_module(package)\n"
        "    print(sorted({m.split('.')[0] if not m.startswith('advlib') else "
        "'.'.join(m.split('.')[:2]) for m in sys.modules}))"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    snapshots = out.stdout.strip().splitlines()
    assert len(snapshots) == len(layers)
    for (package, forbidden), loaded in zip(layers, snapshots):
        assert package.rsplit(".", 1)[0] in loaded  # the probe sees what it imported
        for name in forbidden:
            assert repr(name) not in loaded, f"import {package} loads {name}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


class Nudge(Attack):
    """A one-file attack, as a user would add it: a step of `eps` towards the
    next class, from a random sign pattern."""

    black_box = True

    def parse_params(
        self, eps=0.1, norm=np.inf, clip_min=None, clip_max=None, y=None, seed=None, flips=1
    ):
        return dict(
            eps=eps, norm=norm, clip_min=clip_min, clip_max=clip_max, y=y, seed=seed, flips=flips
        )

    def _generate(self, x, labels, targeted, *, eps, norm, clip_min, clip_max, seed, flips):
        signs = tf.sign(tf.random.stateless_uniform(tf.shape(x), self._seed_pair(seed), -1, 1))
        low, high = attacks.utils.bounds_as_tensors(x.dtype, clip_min, clip_max)
        return tf.clip_by_value(x + eps * flips * signs, low, high)


@pytest.fixture
def registered_nudge():
    yield by_name("Nudge")
    del attacks.base._REGISTRY["Nudge"]


def test_a_new_attack_is_found_by_name_and_runs_in_a_protocol(
    registered_nudge, digits_mlp, digits_eval
):
    assert registered_nudge is Nudge and "Nudge" in attacks.names()
    assert Nudge.takes_seed() and not attacks.FastGradientMethod.takes_seed()
    assert set(Nudge.harness_params()) == {"eps", "norm", "clip_min", "clip_max", "y", "seed"}
    document = protocols.load("digits-linf-0.2")
    document["attacks"] = [{"name": "nudge", "attack": "Nudge", "params": {"flips": 1}}]
    document.pop("headline")  # AutoAttack's attacks are gone
    protocol = protocols.validate(document)
    with pytest.raises(protocols.ProtocolError, match=r"unknown key\(s\) \['seed'\]"):
        protocols.validate(
            dict(document, attacks=[{"name": "nudge", "attack": "Nudge", "params": {"seed": 3}}])
        )
    entry = ensemble.AttackEntry.from_protocol(protocol["attacks"][0])
    params = entry.params_at(0.2, "inf", {"min": 0.0, "max": 1.0}, seed=11)
    assert params == dict(flips=1, eps=0.2, norm=np.inf, clip_min=0.0, clip_max=1.0, seed=11)
    x, y = digits_eval
    out = ensemble.run_ensemble(Nudge(digits_mlp).model, protocol, x[:50], y[:50], 0.2, seed=4)
    assert out["attacked"][0].sum() > 0 and out["forward"][0] > 0
    nudged = [Nudge(digits_mlp).generate_np(x[:20], eps=0.2, seed=s) for s in (4, 4, 5)]
    np.testing.assert_array_equal(nudged[0], nudged[1])
    assert not np.array_equal(nudged[0], nudged[2])
    assert ensemble.is_black_box(protocol["attacks"][0])
    assert (
        ensemble.expand(
            protocol["attacks"] + [{"name": "pgd", "attack": "ProjectedGradientDescent"}], ["bpda"]
        )[-1]["attack"]
        == "Nudge"
    )  # black-box attacks run last


def _reads_of_self(function) -> set[str]:
    """The attributes of `self` that `function`'s source reads or calls."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


def _instance_state(cls) -> set[str]:
    """What the methods of `cls` (and its bases) assign to `self`."""
    assigned = set()
    for klass in cls.__mro__[:-1]:  # all but object
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            targets += [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "self":
                    assigned.add(target.attr)
    return assigned


def _compiled_methods(cls) -> set[str]:
    names = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("advlib.attacks"):
            tree = ast.parse(inspect.getsource(inspect.getmodule(klass)))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", "") == "_compiled"
                    and node.args
                    and isinstance(node.args[0], ast.Attribute)
                ):
                    names.add(node.args[0].attr)
    return {name for name in names if hasattr(cls, name)}


def _reached_by(cls, method: str) -> tuple[set[str], set[str]]:
    """The instance attributes other than `model` that `method` reads, and the
    methods of `cls` it calls, following those calls."""
    state, seen, todo = _instance_state(cls) - {"model"}, set(), [method]
    found = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        function = getattr(cls, name)
        for attr in _reads_of_self(getattr(function, "__func__", function)):
            if attr in state:
                found.add(attr)
            elif callable(getattr(cls, attr, None)):
                todo.append(attr)
    return found, seen


def _state_read_by(cls, method: str) -> set[str]:
    return _reached_by(cls, method)[0]


def _overridden_under(cls, method: str) -> set[str]:
    """The methods that `method` calls which `cls` overrides below the class
    defining `method`: attacks share a compiled method with that class's."""
    owner = defining_class(cls, method)
    return {
        name
        for name in _reached_by(cls, method)[1]
        if getattr(cls, name) is not getattr(owner, name)
    }


SHIPPED = [name for name in attacks.names() if by_name(name).__module__.startswith("advlib.")]


@pytest.mark.parametrize("name", SHIPPED)
def test_compiled_methods_read_nothing_of_the_attack_but_its_model(name):
    """Attacks of one class on one model share their compiled methods
    (`Attack._compiled`), which are bound to the first attack made: a method that
    read the attack's own state would see the first attack's, not the caller's."""
    cls = by_name(name)
    compiled = _compiled_methods(cls)
    assert compiled or cls.black_box or name == "AutoAttack"
    for method in compiled:
        assert _state_read_by(cls, method) == set(), f"{name}.{method} reads instance state"
        assert _overridden_under(cls, method) == set(), f"{name} overrides what {method} calls"


def test_the_state_audit_sees_state_read_through_a_helper():
    class Leaky(attacks.SquareAttack, register=False):
        def __init__(self, model):
            super().__init__(model)
            self.scale = 2.0

        def _windows(self, *args):
            return self._scaled(*args)

        def _scaled(self, *args):
            return self.scale

    assert _state_read_by(Leaky, "_chunk_fn") == {"scale"}


def test_the_sharing_audit_sees_an_overridden_helper():
    class Tweaked(attacks.CarliniWagnerL2, register=False):
        @staticmethod
        def _to_input(w, low, high, use_tanh):
            return w

    assert _overridden_under(Tweaked, "_steps_fn") == {"_to_input"}
    assert _overridden_under(attacks.CarliniWagnerL2, "_steps_fn") == set()
