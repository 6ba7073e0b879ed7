"""The evaluation loop: batches, resumable state, shards and merging."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import advlib
from advlib.bench import diagnostics, ensemble, min_norm, probes as probing
from advlib.bench import protocol as protocols
from advlib.bench import report as reports

STATE_JSON, STATE_NPZ = "state.json", "state.npz"
_PER_EXAMPLE = ("index", "label", "clean_pred", "correct", "broken_by", "norm", "attacked",
                "success", "verdict", "verify_seconds", "smoothed_pred", "certified_radius",
                "min_norm")
# the verifier's answers, per eps and example, in the "verdict" array
VERDICT_CODES = {"robust": 0, "broken": 1, "unknown": 2}
NOT_VERIFIED = -1
_ATTACK_COSTS = ("forward", "backward", "seconds", "nonfinite")  # per batch, eps and attack
_PER_BATCH = _ATTACK_COSTS + ("certify_seconds", "min_norm_seconds")
NOT_CERTIFIED = -2  # in "smoothed_pred"; -1 is the smoothed classifier's abstention
LOCK = ".advlib.lock"
_IDENTITY_PROBE = 100  # examples whose predicted classes join a model's identity


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


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def engine_fingerprint(engine) -> str:
    """SHA-256 of an exported binary network: its spec and every array."""
    names = sorted(engine.arrays)
    return _sha(json.dumps(engine.spec, sort_keys=True) +
                fingerprint_arrays([engine.arrays[name] for name in names]) + ",".join(names))


def _model_settings(wrapped) -> Dict[str, Any]:
    """Everything of a wrapper that decides its predictions and gradients."""
    kind = type(wrapped)
    parts: Dict[str, Any] = {"wrapper": f"{kind.__module__}.{kind.__qualname__}"}
    keras_model = getattr(wrapped, "model", None)
    if keras_model is not None and hasattr(keras_model, "weights"):
        try:
            config = json.dumps(keras_model.get_config(), sort_keys=True, default=repr)
        except (NotImplementedError, TypeError):
            config = type(keras_model).__qualname__
        parts["architecture"] = _sha(config)
        parts["weights"] = fingerprint_arrays([w.numpy() for w in keras_model.weights])
    for name in ("output_kind", "surrogate", "temperature", "output_layer", "samples",
                 "bypassed"):
        if hasattr(wrapped, name):
            parts[name] = repr(getattr(wrapped, name))
    function = getattr(wrapped, "fn", None)
    if function is not None:
        parts["function"] = f"{getattr(function, '__module__', '?')}." \
                            f"{getattr(function, '__qualname__', type(function).__name__)}"
    if getattr(wrapped, "engine", None) is not None:
        parts["engine"] = engine_fingerprint(wrapped.engine)
    if getattr(wrapped, "inner", None) is not None:
        parts["inner"] = _model_settings(wrapped.inner)
    return parts


def model_identity(wrapped, x_probe: np.ndarray) -> Dict[str, Any]:
    """The model's part of a run's identity: its wrapper and settings, architecture,
    weights, engine, and its predicted classes on the first examples (which tell
    apart even models without weights). `fingerprint` hashes all of it."""
    parts = _model_settings(wrapped)
    logits = wrapped.predict_logits(x_probe).numpy()
    if np.array_equal(logits, wrapped.predict_logits(x_probe).numpy(), equal_nan=True):
        parts["predictions"] = fingerprint_arrays([logits.argmax(axis=1).astype(np.int64)])
    else:  # a randomized model (noise, EOT): its predictions cannot identify it
        parts["predictions"] = "randomized"
    return dict(parts, fingerprint=_sha(json.dumps(parts, sort_keys=True)))


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


def check_finite_logits(wrapped, x: np.ndarray, offset: int = 0) -> np.ndarray:
    """The model's logits on clean inputs; refuses a model that gives NaN or Inf,
    whose argmax (class 0) would count as a prediction."""
    logits = wrapped.predict_logits(x).numpy()
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        first = offset + int(np.flatnonzero(bad)[0])
        raise ValueError(f"the model returns non-finite logits (NaN or Inf) on {int(bad.sum())} "
                         f"of {len(x)} clean examples (the first is example {first}); its "
                         "predictions are meaningless there, so it cannot be evaluated.")
    return logits


def finite_json(value):
    """`value` with every NaN or infinity replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    if isinstance(value, np.generic):
        return finite_json(value.item())
    return value


def to_json(document, indent: int = 2) -> str:
    """Strict JSON (no NaN or Infinity) of `document`."""
    return json.dumps(finite_json(document), indent=indent, allow_nan=False)


def _write_atomic(path: str, content) -> None:
    """Writes text, a dict of arrays (as .npz) or, with a callable, whatever it
    writes to a binary handle, under a unique temporary name that is then renamed:
    `path` is never half-written, and two writers never share a temporary file."""
    folder, name = os.path.split(os.path.abspath(path))
    handle_number, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle_number, "w" if isinstance(content, str) else "wb") as handle:
            if isinstance(content, str):
                handle.write(content)
            elif callable(content):
                content(handle)
            else:
                np.savez(handle, **content)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class OutputFolder:
    """An output folder held by one run: an exclusive lock for the run's lifetime,
    and no user file overwritten unless asked.

    Args:
        path: the folder.
        resume: the folder must hold this run's saved state.
        overwrite: write over files that are not a run's state.
    """

    def __init__(self, path: str, resume: bool = False, overwrite: bool = False):
        self.path, self.resume, self.overwrite = path, resume, overwrite
        self._handle = None

    def __enter__(self) -> "OutputFolder":
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"output folder {self.path!r} is a file, not a folder.")
        if self.resume and not os.path.exists(os.path.join(self.path, STATE_JSON)):
            raise ValueError(f"--resume: no saved state in {self.path!r}.")
        os.makedirs(self.path, exist_ok=True)
        self._lock()
        try:
            self._check_contents()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _lock(self) -> None:
        path = os.path.join(self.path, LOCK)
        self._handle = open(path, "a+")
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            owner = self._handle.read().strip() or "?"
            self._handle.close()
            self._handle = None
            raise ValueError(f"output folder {self.path!r} is in use by another advlib run "
                             f"(pid {owner}); wait for it to finish or choose another "
                             "folder.") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def _check_contents(self) -> None:
        entries = sorted(e for e in os.listdir(self.path) if e != LOCK and
                         not (e.startswith(".") and e.endswith(".tmp")))
        if self.resume:  # __enter__ checked that the state is there
            return
        if STATE_JSON in entries:
            raise ValueError(f"{self.path!r} already holds a run's state: pass resume=True "
                             "(--resume) to continue it, or choose another directory.")
        if entries and not self.overwrite:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ValueError(f"output folder {self.path!r} is not empty (it holds {shown}); "
                             "choose a new or empty folder, or pass --overwrite "
                             "(overwrite=True) to write over its files.")

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the lock
            self._handle = None


class Evaluation:
    """One run of a protocol on a model: its identity, arrays and state files."""

    def __init__(self, wrapped, protocol, x, y, batch_size, shard, out_dir, name,
                 variants: Optional[Dict] = None, transfer_from=None,
                 verification: Optional[Dict] = None):
        self.wrapped, self.protocol, self.x, self.y = wrapped, protocol, x, y
        self.verification = verification
        self.batch_size, self.shard, self.out_dir, self.name = batch_size, shard, out_dir, name
        self.variants = variants
        self.attacks = (protocol["attacks"] if variants is None else
                        ensemble.expand(protocol["attacks"], list(variants)))
        self.names = [entry["name"] for entry in self.attacks]
        self.eps_list = protocols.eps_values(protocol)
        self.batches = -(-len(x) // batch_size)
        if shard is not None and shard[0] > self.batches:
            raise ValueError(f"shard {shard[0]}/{shard[1]} has no batches: {len(x)} examples "
                             f"in batches of {batch_size} make {self.batches} batches, so at "
                             f"most {self.batches} shards have work.")
        probe = x[:min(len(x), _IDENTITY_PROBE)]
        self.model_parts = model_identity(wrapped, probe)
        self.identity = {
            "protocol_hash": protocols.protocol_hash(protocol),
            "model_fingerprint": self.model_parts["fingerprint"],
            "data_fingerprint": fingerprint_arrays([x, y]),
            "batch_size": batch_size, "n": len(x),
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
            "adaptive": None if variants is None else list(variants),
            "transfer_from": None if transfer_from is None else
            model_identity(transfer_from, probe)["fingerprint"],
            "verify": verification}
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
                       "seconds": np.zeros((self.batches, e, a)),
                       "nonfinite": np.zeros((self.batches, e, a), np.int64)}
        if verification is not None:
            self.arrays.update(verdict=np.full((e, n), NOT_VERIFIED, np.int8),
                               verify_seconds=np.zeros((e, n)))
            from advlib.qnn.verify import NetworkEncoding
            self.encoding = NetworkEncoding(wrapped.engine)
        self.certify = protocol.get("certify")
        if self.certify is not None:
            from advlib.certify import SmoothedClassifier
            self.smoothed = SmoothedClassifier(wrapped, self.certify["sigma"],
                                               self.certify["batch_size"])
            self.arrays.update(smoothed_pred=np.full(n, NOT_CERTIFIED, np.int64),
                               certified_radius=np.zeros(n),
                               certify_seconds=np.zeros(self.batches))
        if protocol.get("min_norm") is not None:
            count = len(protocol["min_norm"]["attacks"])
            self.arrays.update(min_norm=np.full((count, n), np.inf),
                               min_norm_seconds=np.zeros((self.batches, count)))
        self.done: List[int] = []
        self.probes: Optional[Dict] = None
        self.instances: Dict = {}  # attack objects, reused across batches and eps

    # -- state ----------------------------------------------------------------
    def _path(self, name):
        return os.path.join(self.out_dir, name)

    def restore(self) -> None:
        """Loads the saved state, refusing one that is not this run's or not intact."""
        path = self._path(STATE_JSON)
        if not os.path.exists(path):
            raise ValueError(f"--resume: no saved state in {self.out_dir!r}.")
        try:
            with open(path) as handle:
                saved = json.load(handle)
        except ValueError as error:
            raise ValueError(f"--resume: the state file {path!r} is not valid JSON "
                             f"({error}).") from error
        if not isinstance(saved, dict) or not isinstance(saved.get("identity"), dict):
            raise ValueError(f"--resume: the state file {path!r} has no run identity.")
        for key, value in self.identity.items():
            if saved["identity"].get(key) != value:
                raise ValueError(f"--resume: the state in {self.out_dir!r} belongs to another "
                                 f"run: its {key} is {saved['identity'].get(key)!r}, this run's "
                                 f"is {value!r}. Use another --out directory.")
        done = saved.get("done")
        if not isinstance(done, list) or not all(type(b) is int for b in done) or \
                len(set(done)) != len(done) or not set(done) <= set(self.mine):
            raise ValueError(f"--resume: the state file {path!r} lists finished batches "
                             f"{done!r}, which are not distinct batches of this run "
                             f"(batches {self.mine[:5]}{'...' if len(self.mine) > 5 else ''}).")
        if not (saved.get("probes") is None or isinstance(saved["probes"], dict)):
            raise ValueError(f"--resume: the state file {path!r} holds malformed probes.")
        arrays_path = self._path(STATE_NPZ)
        try:
            with np.load(arrays_path, allow_pickle=False) as data:
                loaded = {key: data[key] for key in self.arrays if key in data.files}
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"--resume: cannot read {arrays_path!r} ({error}).") from error
        for key, expected in self.arrays.items():
            found = loaded.get(key)
            if found is None or found.shape != expected.shape or found.dtype != expected.dtype:
                what = "missing" if found is None else f"{found.dtype} {found.shape}"
                raise ValueError(f"--resume: {arrays_path!r} does not fit this run: array "
                                 f"{key!r} is {what}, expected {expected.dtype} "
                                 f"{expected.shape}.")
        self.arrays = loaded
        self.done = list(done)
        self.probes = saved.get("probes")

    def save(self) -> None:
        _write_atomic(self._path(STATE_NPZ), self.arrays)
        _write_atomic(self._path(STATE_JSON), to_json(
            {"identity": self.identity, "done": self.done, "probes": self.probes}, indent=1))

    # -- the loop ----------------------------------------------------------------
    def run_batch(self, b: int, on_attack=None) -> None:
        start, stop = b * self.batch_size, min((b + 1) * self.batch_size, len(self.x))
        x, y = self.x[start:stop], self.y[start:stop]
        predicted = check_finite_logits(self.wrapped, x, start).argmax(axis=1)
        self.arrays["clean_pred"][start:stop] = predicted
        self.arrays["correct"][start:stop] = predicted == y
        seed = int(self.protocol["seed"])
        for e, eps in enumerate(self.eps_list):
            hook = None if on_attack is None else (lambda name, eps=eps: on_attack(name, eps))
            runs = protocols.runs_at(self.protocol, e, self.names)
            out = ensemble.run_ensemble(self.wrapped, self.protocol, x, y, eps,
                                        seed=ensemble.batch_seed(seed, b, e), on_attack=hook,
                                        attacks=self.attacks, variants=self.variants,
                                        instances=self.instances,
                                        skip=[not run for run in runs])
            if self.verification is not None:
                self._verify(x, y, eps, out, predicted == y, start)
            self.arrays["broken_by"][e, start:stop] = out["broken_by"]
            self.arrays["norm"][e, start:stop] = out["norm"]
            self.arrays["attacked"][e, :, start:stop] = out["attacked"]
            self.arrays["success"][e, :, start:stop] = out["success"]
            for key in _ATTACK_COSTS:
                self.arrays[key][b, e] = out[key]
            if self.verification is not None:
                self.arrays["verdict"][e, start:stop] = out["verdict"]
                self.arrays["verify_seconds"][e, start:stop] = out["verify_seconds"]
        if self.certify is not None:
            self._certify(b, x, start, stop)
        if self.protocol.get("min_norm") is not None:
            out = min_norm.run(self.wrapped, self.protocol, x, y,
                               ensemble.batch_seed(seed, b, len(self.eps_list)), self.instances)
            self.arrays["min_norm"][:, start:stop] = out["norms"]
            self.arrays["min_norm_seconds"][b] = out["seconds"]
        self.done.append(b)

    def _certify(self, b, x, start, stop) -> None:
        """Randomized smoothing of the model on the batch; its seed follows the
        batch's attack seeds, at the eps index after the last."""
        settings = self.certify
        seed = ensemble.batch_seed(int(self.protocol["seed"]), b, len(self.eps_list))
        result = self.smoothed.certify(x, n0=settings["n0"], n=settings["n"],
                                       alpha=settings["alpha"], seed=seed)
        self.arrays["smoothed_pred"][start:stop] = result.prediction
        self.arrays["certified_radius"][start:stop] = result.radius
        self.arrays["certify_seconds"][b] = result.seconds

    def _verify(self, x, y, eps, out, correct, start: int) -> None:
        """The exact verifier on the examples every attack left; its counterexamples
        join the worst case as breaks by the pseudo-attack `len(names)`. Each
        example's search draws the seed it draws in `verify()` on the whole set
        (`start` is the batch's first index)."""
        from advlib.attacks.utils import within_threat
        from advlib.qnn.verify import verify

        out["verdict"] = np.full(len(x), NOT_VERIFIED, np.int8)
        out["verify_seconds"] = np.zeros(len(x))
        rows = np.flatnonzero(correct & (out["broken_by"] < 0))
        if rows.size == 0:
            return
        result = verify(self.encoding, x[rows], y[rows], eps, progress=False,
                        example_ids=start + rows, **self.verification)
        clip = self.protocol["clip"]
        for row, verdict in zip(rows, result.verdicts):
            status = verdict.status
            if status == "broken":
                adversarial = verdict.counterexample[None].astype(x.dtype)
                inside, norm = within_threat(adversarial, x[row:row + 1], eps,
                                             self.protocol["threat"]["norm"], clip["min"],
                                             clip["max"])
                if inside[0]:
                    out["broken_by"][row] = len(self.names)
                    out["norm"][row] = norm[0]
                else:  # never for a sound verifier; it would not be a proof either way
                    status = "unknown"
            out["verdict"][row] = VERDICT_CODES[status]
            out["verify_seconds"][row] = verdict.seconds

    def run_probes(self, transfer_from=None, on_step=None) -> None:
        """The diagnostics' own attacks, on the protocol's first examples; with
        --adaptive they attack through the first adaptive variant."""
        n = min(diagnostics.settings(self.protocol)["n"], len(self.x))
        check_finite_logits(self.wrapped, self.x[:n])
        attacked = next(iter(self.variants.values())) if self.variants else self.wrapped
        self.probes = probing.probe(attacked, self.wrapped, self.protocol, self.x[:n],
                                    self.y[:n], seed=int(self.protocol["seed"]),
                                    surrogate=transfer_from, on_step=on_step)

    def selection(self) -> np.ndarray:
        """The examples of the finished batches."""
        return batch_rows(self.done, self.batch_size, len(self.x))


def batch_rows(batches, batch_size: int, n: int) -> np.ndarray:
    """A mask of the examples that belong to `batches`."""
    mask = np.zeros(n, bool)
    for b in batches:
        mask[b * batch_size:(b + 1) * batch_size] = True
    return mask


def summarize_arrays(arrays, selection, batches_done, names, protocol, verification=None):
    view = {key: (arrays[key][..., selection] if key in _PER_EXAMPLE else
                  arrays[key][batches_done].sum(axis=0)) for key in arrays}
    eps_list = protocols.eps_values(protocol)
    ran = [protocols.runs_at(protocol, e, names) for e in range(len(eps_list))]
    return reports.summarize(view, names, eps_list, ran, verification,
                             protocol.get("certify"), protocol.get("min_norm"))


def assess(report: Dict, arrays: Dict, selection: np.ndarray) -> Dict:
    """Adds the diagnostics, and their flag on the headline, to a report."""
    standing = ~(selection & (arrays["broken_by"][0] >= 0))
    checks = diagnostics.assess(report["probes"], report["results"], report["ensemble"],
                                report["protocol"], report.get("nb_classes"), standing)
    report["diagnostics"] = checks
    report["headline_flag"] = diagnostics.headline_flag(checks)
    report["results"]["headline"] = reports.headline(report)
    if report.get("adaptive"):
        report["adaptive"] = adaptive_summary(report)
    return report


def adaptive_summary(report: Dict) -> Dict:
    """Robust accuracy before and after the adaptive attacks, at the main eps."""
    attacks = report["results"]["per_eps"][0]["attacks"]
    entries = report["ensemble"]
    last = lambda keep: max((i for i, e in enumerate(entries) if keep(e)), default=None)
    before = last(lambda e: "variant" not in e and not ensemble.is_black_box(e))
    after = last(lambda e: not ensemble.is_black_box(e))
    value = lambda i: None if i is None else attacks[i]["robust_accuracy_after"]["value"]
    return {"variants": report["adaptive"]["variants"], "robust_before": value(before),
            "robust_after": value(after)}


def build_report(evaluation: Evaluation, model_name: str) -> Dict:
    selection = evaluation.selection()
    done = sorted(evaluation.done)
    results = summarize_arrays(evaluation.arrays, selection, done, evaluation.names,
                               evaluation.protocol, evaluation.verification)
    variants = evaluation.variants
    return assess({
        "schema_version": reports.SCHEMA_VERSION,
        "protocol": evaluation.protocol,
        "protocol_hash": evaluation.identity["protocol_hash"],
        "model": {"name": model_name, "fingerprint": evaluation.identity["model_fingerprint"],
                  "identity": {k: v for k, v in evaluation.model_parts.items()
                               if k != "fingerprint"}},
        "identity": evaluation.identity,
        "data": {**evaluation.protocol["dataset"],
                 "fingerprint": evaluation.identity["data_fingerprint"]},
        "environment": environment(),
        "seeds": {"protocol": evaluation.protocol["seed"],
                  "per_batch": "(seed * 10007 + batch) * 16 + eps_index, then * 1000 + attack"},
        "batch_size": evaluation.batch_size,
        "shard": evaluation.identity["shard"],
        "batches": done,
        "complete": set(done) == set(evaluation.mine),
        "n": int(selection.sum()),
        "n_total": len(evaluation.x),
        "results": results,
        "ensemble": evaluation.attacks,
        "nb_classes": evaluation.wrapped.nb_classes,
        "probes": evaluation.probes,
        "adaptive": None if variants is None else {"variants": list(variants)},
        "verify": evaluation.verification,
        "headline_flag": "",
    }, evaluation.arrays, selection)


def write_outputs(report: Dict, arrays: Dict, out_dir: str) -> Dict[str, str]:
    """report.json, examples.npz, report.md and robustness.png in `out_dir`, each
    written under a unique temporary name and renamed."""
    files = {name: os.path.join(out_dir, name) for name in
             ("report.json", "examples.npz", "report.md", "robustness.png")}
    report["files"] = {k: os.path.basename(v) for k, v in files.items()}
    _write_atomic(files["examples.npz"], arrays)
    _write_atomic(files["report.md"], reports.markdown(report) + "\n")
    _write_atomic(files["robustness.png"], lambda handle: reports.plot(report, handle))
    _write_atomic(files["report.json"], to_json(report))
    return files


def evaluate(model, protocol="digits-linf-0.2", out_dir: Optional[str] = None,
             resume: bool = False, shard: Optional[str] = None,
             batch_size: Optional[int] = None, progress: bool = True,
             model_name: Optional[str] = None, adaptive: bool = False,
             transfer_from=None, overwrite: bool = False, verify: bool = False,
             verify_time_limit: float = 30.0, verify_backend: str = "milp",
             verify_search_share: float = 0.5) -> Dict:
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
        overwrite: write into an `out_dir` that holds other files (never
            needed for a new or empty folder). The folder is locked for the
            run's lifetime, so a second run into it is refused.
        verify: for a binary network with an exported engine
            (`QNNModelWrapper(model, engine=...)`), run the exact verifier
            (`advlib.qnn.verify`) at every eps on the examples every attack
            left: the report gives the certified interval [proved robust, not
            broken], the attack-completeness check, and the verifier's
            counterexamples join the worst case. L-inf protocols only.
        verify_time_limit: seconds per example; past it the example is unknown.
        verify_backend: "milp" (SciPy's HiGHS) or "sat" (PySAT; see
            `advlib.qnn.verify.verify` for which decides what faster).
        verify_search_share: the share of each example's time for the local
            search for counterexamples (`advlib.qnn.verify.verify`'s
            `search_share`): 0.9 where the complete backend decides nothing in
            time, as on binary CNNs with thousands of open units.

    Returns:
        The report (see `advlib.bench.report`), as also written to out_dir.
    """
    from advlib import _checks
    from advlib.models.keras import as_model

    protocol = protocols.load(protocol)
    shard_spec = parse_shard(shard)
    _checks.check_number("batch_size", batch_size, low=1, integer=True, allow_none=True)
    wrapped = as_model(model)
    transfer = None if transfer_from is None else as_model(transfer_from)
    x, y = load_examples(protocol)
    check_model_fits(wrapped, x, y, protocol)
    size = protocol["batch_size"] if batch_size is None else int(batch_size)
    verification = _verification_settings(wrapped, protocol, verify, verify_time_limit,
                                          verify_backend, verify_search_share)
    variants = None
    if adaptive:
        from advlib.bench.adaptive import variants as adaptive_variants
        variants = adaptive_variants(wrapped, x[:min(len(x), 64)])
    evaluation = Evaluation(wrapped, protocol, x, y, size, shard_spec, out_dir, model_name,
                            variants, transfer, verification)
    if out_dir is None:
        return _evaluate(evaluation, progress, transfer, model_name, model)
    with OutputFolder(out_dir, resume=resume, overwrite=overwrite):
        if resume:
            evaluation.restore()
        return _evaluate(evaluation, progress, transfer, model_name, model)


def _verification_settings(wrapped, protocol, verify, time_limit, backend,
                           search_share) -> Optional[Dict]:
    """The verifier's settings of a run (None without --verify), checked up front."""
    from advlib import _checks
    from advlib.qnn import verify_sat
    from advlib.qnn.verify import BACKENDS

    if not verify:
        return None
    if getattr(wrapped, "engine", None) is None:
        raise ValueError("verify=True needs a binary network with an exported engine: pass "
                         "QNNModelWrapper(model, engine='model.npz') (--engine on the command "
                         f"line); got a {type(wrapped).__name__} without one.")
    if protocol["threat"]["norm"] != "inf":
        raise ValueError(f"verify=True decides L-inf balls; protocol {protocol['name']!r} uses "
                         f"the L{protocol['threat']['norm']} norm.")
    _checks.check_number("verify_time_limit", time_limit, low=0, low_open=True)
    _checks.check_choice("verify_backend", backend, BACKENDS)
    _checks.check_number("verify_search_share", search_share, low=0, high=1, high_open=True)
    if backend == "sat":
        verify_sat.require()
    return {"backend": backend, "time_limit": float(time_limit),
            "search_share": float(search_share)}


def _evaluate(evaluation: Evaluation, progress: bool, transfer, model_name, model) -> Dict:
    out_dir, size, x = evaluation.out_dir, evaluation.batch_size, evaluation.x
    todo = [b for b in evaluation.mine if b not in evaluation.done]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        total = sum(min(size, len(x) - b * size) for b in evaluation.mine)
        bar = tqdm(total=total, initial=total - sum(min(size, len(x) - b * size) for b in todo),
                   desc=evaluation.protocol["name"], unit="ex", dynamic_ncols=True)
    on_attack = (None if bar is None else
                 lambda name, eps: bar.set_postfix_str(f"{name} @ eps={eps:.4g}"))
    start = time.perf_counter()
    if evaluation.probes is None:
        step = None if bar is None else lambda name: bar.set_postfix_str(f"diagnostics: {name}")
        evaluation.run_probes(transfer, step)
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
    wrapped = evaluation.wrapped
    name = model_name or getattr(getattr(wrapped, "model", None), "name", type(model).__name__)
    report = build_report(evaluation, name)
    report["wall_seconds_this_session"] = time.perf_counter() - start
    if out_dir is not None:
        write_outputs(report, evaluation.arrays, out_dir)
    return report


def load_run(path: str) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """A finished run's report and per-example arrays, from its folder or report.json."""
    folder = _report_folder(path)
    report = reports.load_report(os.path.join(folder, "report.json"))
    with np.load(os.path.join(folder, "examples.npz"), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.setdefault("nonfinite", np.zeros_like(arrays["forward"]))  # schema <= 2
    report.setdefault("probes", None)  # schema 1 predates the diagnostics
    report.setdefault("ensemble", report["protocol"]["attacks"])
    return report, arrays


def reassess(path: str, diagnostics_settings: Optional[Dict] = None) -> Dict:
    """The gradient-masking checks of a finished run, judged again from its saved
    report and arrays: no model and no attack is needed.

    Args:
        path: the run's output folder, or its report.json.
        diagnostics_settings: thresholds that replace the protocol's
            (`convergence_threshold`, `black_box_margin`), e.g. to see a run
            under a stricter margin.

    Returns:
        The report with its `diagnostics` and `headline_flag` recomputed; the
        files on disk are not changed.

    Example:
        >>> report = bench.reassess("runs/a", {"black_box_margin": 0.0})
    """
    report, arrays = load_run(path)
    if diagnostics_settings:
        settings = dict(report["protocol"].get("diagnostics", {}), **diagnostics_settings)
        protocol = protocols.validate(dict(report["protocol"], diagnostics=settings))
        report["protocol"] = protocol
    selection = batch_rows(report["batches"], report["batch_size"], len(arrays["index"]))
    return assess(report, arrays, selection)


def _report_folder(path: str) -> str:
    """The folder of a shard's report: `path` itself, or the folder of a report.json."""
    if os.path.isdir(path):
        folder = path
    elif os.path.basename(path) == "report.json" and os.path.isfile(path):
        folder = os.path.dirname(path) or "."
    else:
        raise ValueError(f"{path!r} is neither a shard's output folder nor its report.json.")
    for name in ("report.json", "examples.npz"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ValueError(f"{folder!r} holds no {name}: not a finished run's output folder.")
    return folder


def merge(report_paths: List[str], out_dir: str, overwrite: bool = False) -> Dict:
    """Combines shard reports into the report of one unsharded run.

    Args:
        report_paths: the shards' output folders (or their report.json files).
        out_dir: a new or empty folder for the merged report; never one of the
            shards' folders.
        overwrite: write into an `out_dir` that holds other files.

    Raises:
        ValueError: if the shards come from different runs, overlap, or
            leave batches out, or if `out_dir` is one of them.
    """
    if not report_paths:
        raise ValueError("merge needs at least one shard's output folder.")
    folders = [_report_folder(path) for path in report_paths]
    target = os.path.realpath(out_dir)
    for folder in folders:
        if os.path.realpath(folder) == target:
            raise ValueError(f"merge --out {out_dir!r} is one of the shards it merges; choose "
                             "a new folder.")
    loaded = [load_run(folder) for folder in folders]
    first = loaded[0][0]
    run_key = lambda r: (r["protocol_hash"], r["model"]["fingerprint"],
                         r["data"]["fingerprint"], r["batch_size"],
                         {k: v for k, v in (r.get("identity") or {}).items() if k != "shard"})
    for folder, (report, _) in zip(folders[1:], loaded[1:]):
        if run_key(report) != run_key(first):
            raise ValueError(f"the reports come from different runs (protocol, model, data, "
                             f"batch size or settings differ: {folders[0]!r} and {folder!r}); "
                             "only shards of one run can be merged.")
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
                if key in arrays:
                    arrays[key][..., rows] = part[key][..., rows]
            for key in _PER_BATCH:
                if key in arrays:
                    arrays[key][b] = part[key][b]
    protocol = first["protocol"]
    names = [entry["name"] for entry in first["ensemble"]]
    selection = np.ones(len(arrays["index"]), bool)
    merged = dict(first, shard=None, batches=list(range(total)), complete=True,
                  n=int(selection.sum()), n_total=int(selection.sum()),
                  results=summarize_arrays(arrays, selection, list(range(total)), names,
                                           protocol, first.get("verify")),
                  merged_from=[r["shard"] for r, _ in loaded])
    if isinstance(merged.get("identity"), dict):
        merged["identity"] = dict(merged["identity"], shard=None)
    merged.pop("wall_seconds_this_session", None)
    if merged.get("adaptive"):
        merged["adaptive"] = {"variants": merged["adaptive"]["variants"]}
    assess(merged, arrays, selection)
    with OutputFolder(out_dir, overwrite=overwrite):
        write_outputs(merged, arrays, out_dir)
    return merged
