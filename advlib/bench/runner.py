"""The evaluation loop: batches, resumable state, shards and merging."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

import advlib
from advlib.bench import diagnostics, ensemble, protocol as protocols, report as reports

STATE_JSON, STATE_NPZ = "state.json", "state.npz"
_PER_EXAMPLE = ("index", "label", "clean_pred", "correct", "broken_by", "norm", "attacked",
                "success")
_PER_BATCH = ("forward", "backward", "seconds")


def parse_shard(shard: Optional[str]) -> Optional[Tuple[int, int]]:
    """'i/n' -> (i, n) with 1 <= i <= n."""
    if shard is None:
        return None
    try:
        i, n = (int(part) for part in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like 'i/n' (e.g. '2/4'), got {shard!r}.") from None
    if n < 1 or not 1 <= i <= n:
        raise ValueError(f"shard {shard!r} is outside 1..n: i must be between 1 and n={n}.")
    return i, n


def fingerprint_arrays(arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def model_fingerprint(wrapped) -> str:
    keras_model = getattr(wrapped, "model", None)
    if keras_model is None or not hasattr(keras_model, "weights"):
        return "unknown"
    return fingerprint_arrays([w.numpy() for w in keras_model.weights])


def environment() -> Dict:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {"advlib": advlib.__version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "device": f"{len(gpus)} GPU(s)" if gpus else "CPU"}


def load_examples(protocol) -> Tuple[np.ndarray, np.ndarray]:
    from advlib.datasets import load

    spec = protocol["dataset"]
    train, test = load(spec["name"])
    x, y = test if spec["split"] == "test" else train
    if spec["n"] > len(x):
        raise ValueError(f"protocol {protocol['name']!r} asks for {spec['n']} examples of "
                         f"{spec['name']} ({spec['split']}), which has {len(x)}.")
    return x[:spec["n"]], y[:spec["n"]]


def check_model_fits(wrapped, x, y, protocol) -> None:
    expected = tuple(x.shape[1:])
    keras_model = getattr(wrapped, "model", None)
    declared = getattr(keras_model, "input_shape", None)
    if isinstance(declared, tuple) and len(declared) == len(expected) + 1 and \
            any(d is not None and d != e for d, e in zip(declared[1:], expected)):
        raise ValueError(f"the model expects inputs of shape {declared}, but protocol "
                         f"{protocol['name']!r} evaluates {protocol['dataset']['name']} images "
                         f"of shape (n,) + {expected}.")
    import tensorflow as tf
    classes = wrapped.check_output(tf.convert_to_tensor(x[:1]))
    if classes <= int(y.max()):
        raise ValueError(f"the model has {classes} classes, but {protocol['dataset']['name']} "
                         f"has labels up to {int(y.max())}.")


def _write_atomic(path: str, content) -> None:
    """Writes text, or a dict of arrays as .npz, so that `path` is never half-written."""
    temporary = path + ".tmp"
    if isinstance(content, str):
        with open(temporary, "w") as handle:
            handle.write(content)
    else:
        with open(temporary, "wb") as handle:
            np.savez(handle, **content)
    os.replace(temporary, path)


class Evaluation:
    """One run of a protocol on a model: its identity, arrays and state files."""

    def __init__(self, wrapped, protocol, x, y, batch_size, shard, out_dir, name,
                 variants: Optional[Dict] = None):
        self.wrapped, self.protocol, self.x, self.y = wrapped, protocol, x, y
        self.batch_size, self.shard, self.out_dir, self.name = batch_size, shard, out_dir, name
        self.variants = variants
        self.attacks = (protocol["attacks"] if variants is None else
                        ensemble.expand(protocol["attacks"], list(variants)))
        self.names = [entry["name"] for entry in self.attacks]
        self.eps_list = protocols.eps_values(protocol)
        self.batches = -(-len(x) // batch_size)
        self.identity = {
            "protocol_hash": protocols.protocol_hash(protocol),
            "model_fingerprint": model_fingerprint(wrapped),
            "data_fingerprint": fingerprint_arrays([x, y]),
            "batch_size": batch_size, "n": len(x),
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
            "adaptive": None if variants is None else list(variants)}
        self.mine = [b for b in range(self.batches)
                     if shard is None or b % shard[1] == shard[0] - 1]
        e, a, n = len(self.eps_list), len(self.names), len(x)
        self.arrays = {"index": np.arange(n), "label": y.astype(np.int64),
                       "clean_pred": np.full(n, -1, np.int64), "correct": np.zeros(n, bool),
                       "broken_by": np.full((e, n), -1, np.int16),
                       "norm": np.full((e, n), np.nan), "attacked": np.zeros((e, a, n), bool),
                       "success": np.zeros((e, a, n), bool),
                       "forward": np.zeros((self.batches, e, a), np.int64),
                       "backward": np.zeros((self.batches, e, a), np.int64),
                       "seconds": np.zeros((self.batches, e, a))}
        self.done: List[int] = []
        self.probes: Optional[Dict] = None
        self.instances: Dict = {}  # attack objects, reused across batches and eps

    # -- state ----------------------------------------------------------------
    def _path(self, name):
        return os.path.join(self.out_dir, name)

    def restore(self) -> None:
        path = self._path(STATE_JSON)
        if not os.path.exists(path):
            raise ValueError(f"--resume: no saved state in {self.out_dir!r}.")
        with open(path) as handle:
            saved = json.load(handle)
        for key, value in self.identity.items():
            if saved["identity"].get(key) != value:
                raise ValueError(f"--resume: the state in {self.out_dir!r} belongs to another "
                                 f"run: its {key} is {saved['identity'].get(key)!r}, this run's "
                                 f"is {value!r}. Use another --out directory.")
        with np.load(self._path(STATE_NPZ)) as data:
            for key in self.arrays:
                self.arrays[key] = data[key]
        self.done = list(saved["done"])
        self.probes = saved.get("probes")

    def save(self) -> None:
        _write_atomic(self._path(STATE_NPZ), self.arrays)
        _write_atomic(self._path(STATE_JSON),
                      json.dumps({"identity": self.identity, "done": self.done,
                                 "probes": self.probes}, indent=1))

    # -- the loop ----------------------------------------------------------------
    def run_batch(self, b: int, on_attack=None) -> None:
        start, stop = b * self.batch_size, min((b + 1) * self.batch_size, len(self.x))
        x, y = self.x[start:stop], self.y[start:stop]
        predicted = self.wrapped.predict_classes(x).numpy()
        self.arrays["clean_pred"][start:stop] = predicted
        self.arrays["correct"][start:stop] = predicted == y
        seed = int(self.protocol["seed"])
        for e, eps in enumerate(self.eps_list):
            hook = None if on_attack is None else (lambda name, eps=eps: on_attack(name, eps))
            out = ensemble.run_ensemble(self.wrapped, self.protocol, x, y, eps,
                                        seed=(seed * 10007 + b) * 16 + e, on_attack=hook,
                                        attacks=self.attacks, variants=self.variants,
                                        instances=self.instances)
            self.arrays["broken_by"][e, start:stop] = out["broken_by"]
            self.arrays["norm"][e, start:stop] = out["norm"]
            self.arrays["attacked"][e, :, start:stop] = out["attacked"]
            self.arrays["success"][e, :, start:stop] = out["success"]
            for key in _PER_BATCH:
                self.arrays[key][b, e] = out[key]
        self.done.append(b)

    def run_probes(self, transfer_from=None, on_step=None) -> None:
        """The diagnostics' own attacks, on the protocol's first examples; with
        --adaptive they attack through the first adaptive variant."""
        n = min(diagnostics.settings(self.protocol)["n"], len(self.x))
        attacked = next(iter(self.variants.values())) if self.variants else self.wrapped
        self.probes = diagnostics.probe(attacked, self.wrapped, self.protocol, self.x[:n],
                                        self.y[:n], seed=int(self.protocol["seed"]),
                                        surrogate=transfer_from, on_step=on_step)

    def selection(self) -> np.ndarray:
        """The examples of the finished batches."""
        mask = np.zeros(len(self.x), bool)
        for b in self.done:
            mask[b * self.batch_size:(b + 1) * self.batch_size] = True
        return mask


def summarize_arrays(arrays, selection, batches_done, names, eps_list):
    view = {key: (arrays[key][..., selection] if key in _PER_EXAMPLE else
                  arrays[key][batches_done].sum(axis=0)) for key in arrays}
    return reports.summarize(view, names, eps_list)


def assess(report: Dict, arrays: Dict, selection: np.ndarray) -> Dict:
    """Adds the diagnostics, and their flag on the headline, to a report."""
    standing = ~(selection & (arrays["broken_by"][0] >= 0))
    checks = diagnostics.assess(report["probes"], report["results"], report["ensemble"],
                                report["protocol"], report.get("nb_classes"), standing)
    report["diagnostics"] = checks
    report["headline_flag"] = diagnostics.headline_flag(checks)
    if report.get("adaptive"):
        report["adaptive"] = adaptive_summary(report)
    return report


def adaptive_summary(report: Dict) -> Dict:
    """Robust accuracy before and after the adaptive attacks, at the main eps."""
    attacks = report["results"]["per_eps"][0]["attacks"]
    entries = report["ensemble"]
    last = lambda keep: max((i for i, e in enumerate(entries) if keep(e)), default=None)
    before = last(lambda e: "variant" not in e and e["attack"] not in ensemble.BLACK_BOX)
    after = last(lambda e: e["attack"] not in ensemble.BLACK_BOX)
    value = lambda i: None if i is None else attacks[i]["robust_accuracy_after"]["value"]
    return {"variants": report["adaptive"]["variants"], "robust_before": value(before),
            "robust_after": value(after)}


def build_report(evaluation: Evaluation, model_name: str) -> Dict:
    selection = evaluation.selection()
    done = sorted(evaluation.done)
    results = summarize_arrays(evaluation.arrays, selection, done, evaluation.names,
                               evaluation.eps_list)
    variants = evaluation.variants
    return assess({
        "schema_version": reports.SCHEMA_VERSION,
        "protocol": evaluation.protocol,
        "protocol_hash": evaluation.identity["protocol_hash"],
        "model": {"name": model_name, "fingerprint": evaluation.identity["model_fingerprint"]},
        "data": {**evaluation.protocol["dataset"],
                 "fingerprint": evaluation.identity["data_fingerprint"]},
        "environment": environment(),
        "seeds": {"protocol": evaluation.protocol["seed"],
                  "per_batch": "(seed * 10007 + batch) * 16 + eps_index, then * 1000 + attack"},
        "batch_size": evaluation.batch_size,
        "shard": evaluation.identity["shard"],
        "batches": done,
        "complete": len(done) == evaluation.batches,
        "n": int(selection.sum()),
        "results": results,
        "ensemble": evaluation.attacks,
        "nb_classes": evaluation.wrapped.nb_classes,
        "probes": evaluation.probes,
        "adaptive": None if variants is None else {"variants": list(variants)},
        "headline_flag": "",
    }, evaluation.arrays, selection)


def write_outputs(report: Dict, arrays: Dict, out_dir: str) -> Dict[str, str]:
    """report.json, examples.npz, report.md and robustness.png in `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    files = {name: os.path.join(out_dir, name) for name in
             ("report.json", "examples.npz", "report.md", "robustness.png")}
    report["files"] = {k: os.path.basename(v) for k, v in files.items()}
    _write_atomic(files["examples.npz"], arrays)
    _write_atomic(files["report.md"], reports.markdown(report) + "\n")
    reports.plot(report, files["robustness.png"])
    _write_atomic(files["report.json"], json.dumps(report, indent=2))
    return files


def evaluate(model, protocol="digits-linf-0.2", out_dir: Optional[str] = None,
             resume: bool = False, shard: Optional[str] = None,
             batch_size: Optional[int] = None, progress: bool = True,
             model_name: Optional[str] = None, adaptive: bool = False,
             transfer_from=None) -> Dict:
    """Evaluates a live model under a protocol; returns the report.

    Args:
        model: a Keras model or an `advlib.models.Model` (a `QNNModelWrapper`
            with an engine judges predictions by exact binary inference).
        protocol: a shipped protocol's name, a JSON file, or a dict.
        out_dir: where the state (after every batch) and the report go. None
            keeps everything in memory.
        resume: continue the run saved in `out_dir`.
        shard: "i/n" evaluates every n-th batch from the i-th (1-based).
        batch_size: overrides the protocol's (part of the run's identity).
        progress: show a progress bar.
        model_name: the name in the report (default: the Keras model's).
        adaptive: also attack through adaptive variants of the model (sign
            surrogates for QNNs, BPDA through layers with zero gradients; see
            `advlib.bench.adaptive`). The worst case over all attacks is reported.
        transfer_from: a surrogate model (e.g. a QNN's float twin) for the
            transfer diagnostic.

    Returns:
        The report (see `advlib.bench.report`), as also written to out_dir.
    """
    from advlib.models.base import as_model

    protocol = protocols.load(protocol)
    shard_spec = parse_shard(shard)
    wrapped = as_model(model)
    x, y = load_examples(protocol)
    check_model_fits(wrapped, x, y, protocol)
    size = batch_size or protocol["batch_size"]
    variants = None
    if adaptive:
        from advlib.bench.adaptive import variants as adaptive_variants
        variants = adaptive_variants(wrapped, x[:min(len(x), 64)])
    evaluation = Evaluation(wrapped, protocol, x, y, size, shard_spec, out_dir, model_name,
                            variants)
    if out_dir is not None:
        if resume:
            evaluation.restore()
        elif os.path.exists(os.path.join(out_dir, STATE_JSON)):
            raise ValueError(f"{out_dir!r} already holds a run's state: pass resume=True "
                             "(--resume) to continue it, or choose another directory.")
        os.makedirs(out_dir, exist_ok=True)
    todo = [b for b in evaluation.mine if b not in evaluation.done]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        total = sum(min(size, len(x) - b * size) for b in evaluation.mine)
        bar = tqdm(total=total, initial=total - sum(min(size, len(x) - b * size) for b in todo),
                   desc=protocol["name"], unit="ex", dynamic_ncols=True)
    on_attack = (None if bar is None else
                 lambda name, eps: bar.set_postfix_str(f"{name} @ eps={eps:.4g}"))
    start = time.perf_counter()
    if evaluation.probes is None:
        step = None if bar is None else lambda name: bar.set_postfix_str(f"diagnostics: {name}")
        evaluation.run_probes(None if transfer_from is None else as_model(transfer_from), step)
        if out_dir is not None:
            evaluation.save()
    for b in todo:
        evaluation.run_batch(b, on_attack)
        if out_dir is not None:
            evaluation.save()
        if bar is not None:
            bar.update(min(size, len(x) - b * size))
    if bar is not None:
        bar.close()
    name = model_name or getattr(getattr(wrapped, "model", None), "name", type(model).__name__)
    report = build_report(evaluation, name)
    report["wall_seconds_this_session"] = time.perf_counter() - start
    if out_dir is not None:
        write_outputs(report, evaluation.arrays, out_dir)
    return report


def merge(report_paths: List[str], out_dir: str) -> Dict:
    """Combines shard reports into the report of one unsharded run.

    Raises:
        ValueError: if the shards come from different runs, overlap, or
            leave batches out.
    """
    loaded = []
    for path in report_paths:
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        with open(os.path.join(folder, "report.json")) as handle:
            report = json.load(handle)
        with np.load(os.path.join(folder, "examples.npz")) as data:
            arrays = {key: data[key] for key in data.files}
        loaded.append((report, arrays))
    first = loaded[0][0]
    for report, _ in loaded[1:]:
        if (report["protocol_hash"], report["model"]["fingerprint"],
                report["data"]["fingerprint"], report["batch_size"]) != (
                first["protocol_hash"], first["model"]["fingerprint"],
                first["data"]["fingerprint"], first["batch_size"]):
            raise ValueError("the reports come from different runs (protocol, model, data or "
                             "batch size differ); only shards of one run can be merged.")
    seen: Dict[int, str] = {}
    for report, _ in loaded:
        for b in report["batches"]:
            if b in seen:
                raise ValueError(f"batch {b} appears in two shards ({seen[b]} and "
                                 f"{report['shard']}).")
            seen[b] = report["shard"]
    arrays = {key: value.copy() for key, value in loaded[0][1].items()}
    total = arrays["forward"].shape[0]
    missing = sorted(set(range(total)) - set(seen))
    if missing:
        raise ValueError(f"the shards leave batches {missing[:10]} unevaluated; merge all "
                         f"{total} batches' shards.")
    size = first["batch_size"]
    for report, part in loaded[1:]:
        for b in report["batches"]:
            rows = slice(b * size, (b + 1) * size)
            for key in _PER_EXAMPLE:
                arrays[key][..., rows] = part[key][..., rows]
            for key in _PER_BATCH:
                arrays[key][b] = part[key][b]
    protocol = first["protocol"]
    # reports of schema 1 predate adaptive ensembles and diagnostics
    first.setdefault("ensemble", first["protocol"]["attacks"])
    first.setdefault("probes", None)
    names = [entry["name"] for entry in first["ensemble"]]
    eps_list = protocols.eps_values(protocol)
    selection = np.ones(len(arrays["index"]), bool)
    merged = dict(first, shard=None, batches=list(range(total)), complete=True,
                  n=int(selection.sum()),
                  results=summarize_arrays(arrays, selection, list(range(total)), names,
                                           eps_list),
                  merged_from=[r["shard"] for r, _ in loaded])
    merged.pop("wall_seconds_this_session", None)
    if merged.get("adaptive"):
        merged["adaptive"] = {"variants": merged["adaptive"]["variants"]}
    assess(merged, arrays, selection)
    write_outputs(merged, arrays, out_dir)
    return merged
