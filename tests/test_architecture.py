"""The package's structure: an import graph without cycles, and attacks that are
found by name without a list to edit."""

import ast
import os

import numpy as np
import pytest
import tensorflow as tf

import advlib
from advlib import attacks
from advlib.attacks import Attack, by_name
from advlib.bench import ensemble, protocol as protocols

ROOT = os.path.dirname(os.path.abspath(advlib.__file__))


def module_names():
    """Every module of advlib, by dotted name, with its file."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for file in files:
            if file.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, file), os.path.dirname(ROOT))
                name = relative[:-3].replace(os.sep, ".")
                found[name[:-len(".__init__")] if name.endswith(".__init__") else name] = \
                    os.path.join(folder, file)
    return found


def imports_of(path, name, modules):
    """The advlib modules that `path` imports, at any depth (function-level too),
    each resolved to the most specific module it names."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
    return {t for t in targets if t in modules and t != name}


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
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
    modules = module_names()
    graph = {name: imports_of(path, name, modules) for name, path in modules.items()}
    # the graph is real: the attacks import the model wrappers, the harness the attacks
    assert "advlib.models.keras" in graph["advlib.attacks.base"]
    assert "advlib.attacks" in graph["advlib.bench.ensemble"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


class Nudge(Attack):
    """A one-file attack, as a user would add it: a step of `eps` towards the
    next class, from a random sign pattern."""

    black_box = True

    def parse_params(self, eps=0.1, norm=np.inf, clip_min=None, clip_max=None, y=None,
                     seed=None, flips=1):
        return dict(eps=eps, norm=norm, clip_min=clip_min, clip_max=clip_max, y=y, seed=seed,
                    flips=flips)

    def _generate(self, x, labels, targeted, *, eps, norm, clip_min, clip_max, seed, flips):
        signs = tf.sign(tf.random.stateless_uniform(tf.shape(x), self._seed_pair(seed), -1, 1))
        low, high = attacks.utils.bounds_as_tensors(x.dtype, clip_min, clip_max)
        return tf.clip_by_value(x + eps * flips * signs, low, high)


@pytest.fixture
def registered_nudge():
    yield by_name("Nudge")
    del attacks.base._REGISTRY["Nudge"]


def test_a_new_attack_is_found_by_name_and_runs_in_a_protocol(registered_nudge, digits_mlp,
                                                             digits_eval):
    assert registered_nudge is Nudge and "Nudge" in attacks.names()
    assert Nudge.takes_seed() and not attacks.FastGradientMethod.takes_seed()
    assert set(Nudge.harness_params()) == {"eps", "norm", "clip_min", "clip_max", "y", "seed"}
    document = protocols.load("digits-linf-0.2")
    document["attacks"] = [{"name": "nudge", "attack": "Nudge", "params": {"flips": 1}}]
    document.pop("headline")  # AutoAttack's attacks are gone
    protocol = protocols.validate(document)
    with pytest.raises(protocols.ProtocolError, match=r"unknown key\(s\) \['seed'\]"):
        protocols.validate(dict(document, attacks=[
            {"name": "nudge", "attack": "Nudge", "params": {"seed": 3}}]))
    entry = ensemble.AttackEntry.from_protocol(protocol["attacks"][0])
    params = entry.params_at(0.2, "inf", {"min": 0.0, "max": 1.0}, seed=11)
    assert params == dict(flips=1, eps=0.2, norm=np.inf, clip_min=0.0, clip_max=1.0, seed=11)
    x, y = digits_eval
    out = ensemble.run_ensemble(Nudge(digits_mlp).model, protocol, x[:50], y[:50], 0.2,
                                seed=4)
    assert out["attacked"][0].sum() > 0 and out["forward"][0] > 0
    nudged = [Nudge(digits_mlp).generate_np(x[:20], eps=0.2, seed=s) for s in (4, 4, 5)]
    np.testing.assert_array_equal(nudged[0], nudged[1])
    assert not np.array_equal(nudged[0], nudged[2])
    assert ensemble.is_black_box(protocol["attacks"][0])
    assert ensemble.expand(protocol["attacks"] + [{"name": "pgd", "attack":
                                                   "ProjectedGradientDescent"}], ["bpda"]
                           )[-1]["attack"] == "Nudge"  # black-box attacks run last
