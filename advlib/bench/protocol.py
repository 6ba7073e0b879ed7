"""Versioned evaluation protocols: the data, threat model, attacks and seeds.

A protocol is a JSON document:

    {"name": ..., "version": 1, "description": ...,
     "dataset": {"name": "fashion-mnist", "split": "test", "n": 10000},
     "threat": {"norm": "inf" | "2", "eps": 0.1},
     "clip": {"min": 0.0, "max": 1.0},
     "seed": 0, "batch_size": 500,
     "attacks": [{"name": "pgd-ce", "attack": "ProjectedGradientDescent",
                  "params": {"nb_iter": 100, "eps_iter_fraction": 0.25, ...}}, ...],
     "sweep": [0.025, 0.05], "sweep_attacks": ["pgd-ce"],
     "diagnostics": {"n": 100, "convergence_threshold": 0.01, "black_box_margin": 0.01,
                     "spsa_iterations": 100},
     "headline": {"label": "AutoAttack (standard)", "attacks": ["apgd-ce", ...],
                  "comparable_with": "RobustBench"},
     "certify": {"sigma": 0.25, "n0": 100, "n": 10000, "alpha": 0.001,
                 "radii": [0.0, 0.25, 0.5, 0.75, 1.0], "batch_size": 1000},
     "min_norm": {"attacks": [{"name": "fmn", "attack": "FMN", "params": {}}, ...],
                  "eps": [0.25, 0.5, 1.0]}}

The first `n` examples of the split are evaluated, in order. Each attack runs
on the examples that the attacks before it did not break. `eps_iter_fraction`
sets the step size as a fraction of eps, so the `sweep` (extra eps values,
for the robustness curve) scales every attack alike; `sweep_attacks`, if
given, names the attacks that run at the sweep's eps values (the others run at
the main eps only), which keeps a large evaluation's curve affordable.
`diagnostics` sets the
subset and thresholds of the gradient-masking checks
(`advlib.bench.diagnostics`; all optional). `headline` (version 3) names the
first attacks of the list that form a standard figure of its own, AutoAttack's,
which the report gives beside the worst case over all attacks. `certify` (L2
protocols) adds randomized smoothing (`advlib.certify`): the model, as the base
classifier smoothed with Gaussian noise of `sigma`, is certified on the same
examples, and the report gives the certified accuracy at each radius beside the
attacks' figures at the same eps. `min_norm` runs minimum-norm attacks (FMN, FAB,
DeepFool) unbounded on the same examples and reports the median of each
example's smallest perturbation and the robustness curve at its `eps` list
(`advlib.bench.min_norm`). Unknown keys are refused.

Earlier versions of the shipped protocols stay loadable as "name@version",
e.g. "digits-linf-0.2@2"; `compare` refuses to rank reports of different
versions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from advlib import _checks
from advlib import attacks as attacks_module

PROTOCOL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocols")
_TOP_KEYS = {
    "name",
    "version",
    "description",
    "dataset",
    "threat",
    "clip",
    "seed",
    "batch_size",
    "attacks",
    "sweep",
    "sweep_attacks",
    "diagnostics",
    "headline",
    "certify",
    "min_norm",
}
_HEADLINE_KEYS = {"label", "attacks", "comparable_with"}
CERTIFY_DEFAULTS = {
    "n0": 100,
    "alpha": 0.001,
    "radii": [0.0, 0.25, 0.5, 0.75, 1.0],
    "batch_size": 1000,
}
_CERTIFY_KEYS = {"sigma", "n"} | set(CERTIFY_DEFAULTS)
_MIN_NORM_KEYS = {"attacks", "eps"}
ARCHIVE_DIR = os.path.join(PROTOCOL_DIR, "archive")
_REQUIRED = {"name", "version", "dataset", "threat", "attacks"}
_DATASET_KEYS = {"name", "split", "n"}
_THREAT_KEYS = {"norm", "eps"}
_ATTACK_KEYS = {"name", "attack", "params"}
MAX_SEED = 2**32 - 1


class ProtocolError(ValueError):
    """A protocol file that is not valid."""


def available() -> list[str]:
    """The names of the protocols shipped with advlib."""
    names = []
    for filename in sorted(os.listdir(PROTOCOL_DIR)):
        if filename.endswith(".json"):
            with open(os.path.join(PROTOCOL_DIR, filename)) as handle:
                names.append(json.load(handle)["name"])
    return names


def _shipped_path(name: str) -> str:
    """The file of a shipped protocol: "name" (current) or "name@version" (archived)."""
    name, _, version = name.partition("@")
    stem = name.replace("/", "_")
    if not version:
        return os.path.join(PROTOCOL_DIR, stem + ".json")
    return os.path.join(ARCHIVE_DIR, f"{stem}.v{version}.json")


def load(name_or_path: str | dict[str, Any]) -> dict[str, Any]:
    """A shipped protocol by name (e.g. "digits-linf-0.2", or "digits-linf-0.2@2" for
    an earlier version), or a JSON file by path."""
    if isinstance(name_or_path, dict):
        return validate(copy.deepcopy(name_or_path))
    path = name_or_path
    if not os.path.exists(path):
        path = _shipped_path(name_or_path)
    if not os.path.exists(path):
        archived = sorted(
            f[:-5].replace(".v", "@") for f in os.listdir(ARCHIVE_DIR) if f.endswith(".json")
        )
        raise ProtocolError(
            f"protocol {name_or_path!r} is neither a file nor one of the "
            f"shipped protocols: {available()} (earlier versions: "
            f"{archived})."
        )
    try:
        with open(path) as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise ProtocolError(f"protocol file {path!r} is not valid JSON: {error}") from error
    return validate(document, source=path)


def _unknown(keys, allowed, where):
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise ProtocolError(f"{where} has unknown key(s) {extra}; allowed: {sorted(allowed)}.")


def _object(value, allowed, where) -> dict[str, Any]:
    """`value`, checked to be an object whose keys are among `allowed`."""
    if not isinstance(value, dict):
        raise ProtocolError(
            f"{where} must be an object with keys {sorted(allowed)}, got {value!r}."
        )
    _unknown(value, allowed, where)
    return value


def _section(document, key, allowed, source) -> dict[str, Any] | None:
    """The optional section `key` of the document (None where absent), checked by
    `_object`."""
    value = document.get(key)
    return None if value is None else _object(value, allowed, f"{source}: {key}")


def validate(document: dict[str, Any], source: str = "protocol") -> dict[str, Any]:
    """Checks a protocol and fills in defaults; raises ProtocolError naming the problem."""
    if not isinstance(document, dict):
        raise ProtocolError(f"{source} must be a JSON object, got {type(document).__name__}.")
    _unknown(document, _TOP_KEYS, source)
    missing = sorted(_REQUIRED - set(document))
    if missing:
        raise ProtocolError(f"{source} lacks required key(s) {missing}.")
    for section in _SECTIONS:  # in order: later sections read what earlier ones filled in
        section(document, source)
    return document


def _validate_dataset(document, source) -> None:
    from advlib.datasets import NAMES

    dataset = _object(document["dataset"], _DATASET_KEYS, f"{source}: dataset")
    if dataset.get("name") not in NAMES:
        raise ProtocolError(
            f"{source}: dataset name must be one of {list(NAMES)}, got {dataset.get('name')!r}."
        )
    dataset.setdefault("split", "test")
    if dataset["split"] not in ("train", "test"):
        raise ProtocolError(
            f"{source}: dataset split must be 'train' or 'test', got {dataset['split']!r}."
        )
    _check(source, "dataset n", dataset.get("n"), low=1, integer=True)


def _validate_threat(document, source) -> None:
    threat = _object(document["threat"], _THREAT_KEYS, f"{source}: threat")
    if str(threat.get("norm")) not in ("inf", "2"):
        raise ProtocolError(
            f"{source}: threat norm must be 'inf' or '2', got {threat.get('norm')!r}."
        )
    threat["norm"] = str(threat["norm"])
    _check(source, "threat eps", threat.get("eps"), low=0, low_open=True)
    _check(source, "version", document["version"], low=1, integer=True)


def _validate_clip(document, source) -> None:
    clip = _object(
        document.setdefault("clip", {"min": 0.0, "max": 1.0}), {"min", "max"}, f"{source}: clip"
    )
    missing_bounds = sorted({"min", "max"} - set(clip))
    if missing_bounds:
        raise ProtocolError(
            f"{source}: clip lacks {missing_bounds}; give both bounds of the "
            'input domain (null for unbounded), e.g. {"min": 0, "max": 1}.'
        )
    for key in ("min", "max"):
        _check(source, f"clip {key}", clip[key], allow_none=True)
    if clip["min"] is not None and clip["max"] is not None and clip["min"] >= clip["max"]:
        raise ProtocolError(f"{source}: clip min must be below clip max, got {clip}.")


def _validate_run(document, source) -> None:
    """The seed, the batch size, the sweep and the description, with their defaults."""
    document.setdefault("seed", 0)
    # the harness derives per-batch and per-attack seeds from it; they must stay in int64
    _check(source, "seed", document["seed"], low=0, high=MAX_SEED, integer=True)
    document.setdefault("batch_size", 500)
    _check(source, "batch_size", document["batch_size"], low=1, integer=True)
    document.setdefault("sweep", [])
    document.setdefault("description", "")
    for eps in document["sweep"]:
        _check(source, "sweep eps", eps, low=0, low_open=True)


def _validate_entries(attacks, where_list) -> None:
    """A non-empty list of attack entries with distinct names, known attacks and
    parameters that the protocol may set; fills in names and params."""
    if not isinstance(attacks, list) or not attacks:
        raise ProtocolError(f"{where_list} must be a non-empty list.")
    names = set()
    for index, entry in enumerate(attacks):
        where = f"{where_list}[{index}]"
        _object(entry, _ATTACK_KEYS, where)
        if entry.get("attack") not in attacks_module.names():
            raise ProtocolError(
                f"{where}: unknown attack {entry.get('attack')!r}; known: {attacks_module.names()}."
            )
        entry.setdefault("name", entry["attack"])
        if entry["name"] in names:
            raise ProtocolError(f"{where}: attack name {entry['name']!r} is used twice.")
        names.add(entry["name"])
        params = entry.setdefault("params", {})
        if not isinstance(params, dict):
            raise ProtocolError(f"{where}: params must be an object, got {params!r}.")
        attack = attacks_module.by_name(entry["attack"])
        allowed = (set(attack.parameters()) - set(attack.harness_params())) | {"eps_iter_fraction"}
        _unknown(params, allowed, f"{where} ({entry['attack']}) params")


def _validate_attacks(document, source) -> None:
    """The main attacks, each built at every eps as the harness will, so that a bad
    value fails now rather than after minutes of evaluation."""
    from advlib.bench.ensemble import attack_seed, batch_seed

    attacks = document["attacks"]
    _validate_entries(attacks, f"{source}: attacks")
    batches = -(-document["dataset"]["n"] // document["batch_size"])
    eps_list = eps_values(document)
    # the largest seed the harness derives
    seed = attack_seed(batch_seed(document["seed"], batches, len(eps_list)), len(attacks))
    for index, entry in enumerate(attacks):
        _check_entry_params(document, entry, f"{source}: attacks[{index}]", eps_list, seed)


def _validate_min_norm(document, source) -> None:
    section = _section(document, "min_norm", _MIN_NORM_KEYS, source)
    if section is None:
        return
    where = f"{source}: min_norm"
    _validate_entries(section.get("attacks"), f"{where}: attacks")
    eps = section.get("eps")
    if not isinstance(eps, list) or not eps:
        raise ProtocolError(
            f"{where}: eps must be a non-empty list of radii for the robustness curve, got {eps!r}."
        )
    for value in eps:
        _check(where, "eps", value, low=0)
    for index, entry in enumerate(section["attacks"]):
        _check_entry_params(
            document, entry, f"{where}: attacks[{index}]", [float(document["threat"]["eps"])], 0
        )


def _validate_certify(document, source) -> None:
    settings = _section(document, "certify", _CERTIFY_KEYS, source)
    if settings is None:
        return
    where = f"{source}: certify"
    missing = sorted({"sigma", "n"} - set(settings))
    if missing:
        raise ProtocolError(
            f"{where} lacks {missing}: the noise's sigma and the estimation "
            "samples n per example are required."
        )
    if document["threat"]["norm"] != "2":
        raise ProtocolError(
            f"{where} certifies L2 radii; the protocol's threat norm must be "
            f"'2', got {document['threat']['norm']!r}."
        )
    for key, value in CERTIFY_DEFAULTS.items():
        settings.setdefault(key, copy.deepcopy(value))
    _check(where, "sigma", settings["sigma"], low=0, low_open=True)
    for key in ("n", "n0", "batch_size"):
        _check(where, key, settings[key], low=1, integer=True)
    _check(where, "alpha", settings["alpha"], low=0, high=1, low_open=True, high_open=True)
    radii = settings["radii"]
    if not isinstance(radii, list) or not radii:
        raise ProtocolError(f"{where}: radii must be a non-empty list of L2 radii, got {radii!r}.")
    for radius in radii:
        _check(where, "radius", radius, low=0)


def _validate_sweep_attacks(document, source) -> None:
    chosen = document.get("sweep_attacks")
    if chosen is None:
        return
    names = [entry["name"] for entry in document["attacks"]]
    if not isinstance(chosen, list) or not chosen or any(n not in names for n in chosen):
        raise ProtocolError(
            f"{source}: sweep_attacks must be a non-empty list of the "
            f"protocol's attack names {names}; got {chosen!r}."
        )


def _validate_headline(document, source) -> None:
    headline = _section(document, "headline", _HEADLINE_KEYS, source)
    if headline is None:
        return
    where = f"{source}: headline"
    members = headline.get("attacks")
    names = [entry["name"] for entry in document["attacks"]]
    if not isinstance(members, list) or not members or members != names[: len(members)]:
        raise ProtocolError(
            f"{where} attacks must be the first attacks of the list, in "
            f"order (its figure is the robust accuracy after the last of "
            f"them); got {members!r}, the list begins {names[:4]}."
        )
    headline.setdefault("label", "headline")
    headline.setdefault("comparable_with", "")


def _check_entry_params(document, entry, where, eps_list, seed) -> None:
    """Builds one attack entry's parameters at every eps of `eps_list` and lets its
    attack check them."""
    from advlib.bench.ensemble import AttackEntry

    fraction = entry["params"].get("eps_iter_fraction")
    if fraction is not None:
        _check(where, "eps_iter_fraction", fraction, low=0, low_open=True)
    typed = AttackEntry.from_protocol(entry)
    for eps in eps_list:
        params = typed.params_at(eps, document["threat"]["norm"], document["clip"], seed)
        try:
            typed.attack.check_params(**params)
        except (TypeError, ValueError) as error:
            raise ProtocolError(f"{where} ({entry['name']}) at eps {eps:g}: {error}") from error


def _validate_diagnostics(document, source):
    from advlib.bench.diagnostics import DEFAULTS

    settings = _section(document, "diagnostics", DEFAULTS, source) or {}
    if "n" in settings:
        _check(source, "diagnostics n", settings["n"], low=1, integer=True)
    if "spsa_iterations" in settings:
        _check(
            source, "diagnostics spsa_iterations", settings["spsa_iterations"], low=0, integer=True
        )
    for key in ("convergence_threshold", "black_box_margin", "completeness_margin"):
        if key in settings:
            _check(source, f"diagnostics {key}", settings[key], low=0, high=1)


_SECTIONS = (
    _validate_dataset,
    _validate_threat,
    _validate_clip,
    _validate_run,
    _validate_diagnostics,
    _validate_attacks,
    _validate_headline,
    _validate_sweep_attacks,
    _validate_certify,
    _validate_min_norm,
)


def _check(source, name, value, **bounds):
    try:
        _checks.check_number(name, value, **bounds)
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"{source}: {error}") from error


def runs_at(protocol, eps_index: int, names: Sequence[str]) -> list[bool]:
    """Which of the ensemble's attacks (`names`, adaptive copies "name@variant"
    included) run at the `eps_index`-th eps of `eps_values`: all at the main eps,
    those of `sweep_attacks` (default all) in the sweep."""
    chosen = protocol.get("sweep_attacks")
    if eps_index == 0 or chosen is None:
        return [True] * len(names)
    return [name.split("@")[0] in chosen for name in names]


def protocol_hash(protocol: dict[str, Any]) -> str:
    """SHA-256 of the protocol's canonical JSON (the description excluded)."""
    content = {k: v for k, v in protocol.items() if k != "description"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def eps_values(protocol) -> list[float]:
    """The main eps first, then the sweep."""
    main = float(protocol["threat"]["eps"])
    return [main] + [float(e) for e in protocol["sweep"] if not np.isclose(e, main)]
