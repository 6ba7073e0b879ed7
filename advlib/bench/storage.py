"""A run's files: the locked output folder, atomic writes, the saved state that
`--resume` continues, the outputs, and loading a finished run."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import IO

import numpy as np

from advlib.bench import render
from advlib.bench.identity import LEGACY_IDENTITY
from advlib.bench.report import load_report

STATE_JSON, STATE_NPZ = "state.json", "state.npz"
LOCK = ".advlib.lock"


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


def write_atomic(path: str, content) -> None:
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
        self._handle: IO[str] | None = None

    def __enter__(self) -> OutputFolder:
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
            raise ValueError(
                f"output folder {self.path!r} is in use by another advlib run "
                f"(pid {owner}); wait for it to finish or choose another "
                "folder."
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(str(os.getpid()))
        self._handle.flush()

    def _check_contents(self) -> None:
        entries = sorted(
            e
            for e in os.listdir(self.path)
            if e != LOCK and not (e.startswith(".") and e.endswith(".tmp"))
        )
        if self.resume:  # __enter__ checked that the state is there
            return
        if STATE_JSON in entries:
            raise ValueError(
                f"{self.path!r} already holds a run's state: pass resume=True "
                "(--resume) to continue it, or choose another directory."
            )
        if entries and not self.overwrite:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ValueError(
                f"output folder {self.path!r} is not empty (it holds {shown}); "
                "choose a new or empty folder, or pass --overwrite "
                "(overwrite=True) to write over its files."
            )

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the lock
            self._handle = None


def save_state(
    out_dir: str,
    identity: dict,
    done: list[int],
    probes: dict | None,
    arrays: dict[str, np.ndarray],
) -> None:
    """Writes the state that `restore_state` reads, arrays first: a stop between the
    two writes leaves the previous list of finished batches, which the arrays cover."""
    write_atomic(os.path.join(out_dir, STATE_NPZ), arrays)
    write_atomic(
        os.path.join(out_dir, STATE_JSON),
        to_json({"identity": identity, "done": done, "probes": probes}, indent=1),
    )


def restore_state(
    out_dir: str, identity: dict, template: dict[str, np.ndarray], mine: list[int]
) -> tuple[dict[str, np.ndarray], list[int], dict | None]:
    """Loads the state saved in `out_dir`, refusing one that is not this run's or not
    intact.

    Args:
        out_dir: the run's folder.
        identity: this run's identity; the saved one must equal it key by key.
        template: this run's arrays as allocated: the saved ones must have their
            names, shapes and dtypes.
        mine: the batches this run (or shard) evaluates.

    Returns:
        (arrays, finished batches, diagnostics' probes or None).

    Raises:
        ValueError: naming the state file and what does not fit.
    """
    path = os.path.join(out_dir, STATE_JSON)
    if not os.path.exists(path):
        raise ValueError(f"--resume: no saved state in {out_dir!r}.")
    try:
        with open(path) as handle:
            saved = json.load(handle)
    except ValueError as error:
        raise ValueError(
            f"--resume: the state file {path!r} is not valid JSON ({error})."
        ) from error
    if not isinstance(saved, dict) or not isinstance(saved.get("identity"), dict):
        raise ValueError(f"--resume: the state file {path!r} has no run identity.")
    saved_identity = {**LEGACY_IDENTITY, **saved["identity"]}
    for key, value in identity.items():
        if saved_identity.get(key) != value:
            raise ValueError(
                f"--resume: the state in {out_dir!r} belongs to another "
                f"run: its {key} is {saved_identity.get(key)!r}, this run's "
                f"is {value!r}. Use another --out directory."
            )
    done = saved.get("done")
    if (
        not isinstance(done, list)
        or not all(type(b) is int for b in done)
        or len(set(done)) != len(done)
        or not set(done) <= set(mine)
    ):
        raise ValueError(
            f"--resume: the state file {path!r} lists finished batches "
            f"{done!r}, which are not distinct batches of this run "
            f"(batches {mine[:5]}{'...' if len(mine) > 5 else ''})."
        )
    if not (saved.get("probes") is None or isinstance(saved["probes"], dict)):
        raise ValueError(f"--resume: the state file {path!r} holds malformed probes.")
    arrays_path = os.path.join(out_dir, STATE_NPZ)
    try:
        with np.load(arrays_path, allow_pickle=False) as data:
            loaded = {key: data[key] for key in template if key in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"--resume: cannot read {arrays_path!r} ({error}).") from error
    for key, expected in template.items():
        found = loaded.get(key)
        if found is None or found.shape != expected.shape or found.dtype != expected.dtype:
            what = "missing" if found is None else f"{found.dtype} {found.shape}"
            raise ValueError(
                f"--resume: {arrays_path!r} does not fit this run: array "
                f"{key!r} is {what}, expected {expected.dtype} "
                f"{expected.shape}."
            )
    return loaded, list(done), saved.get("probes")


def write_outputs(report: dict, arrays: dict, out_dir: str) -> dict[str, str]:
    """report.json, examples.npz, report.md and robustness.png in `out_dir`, each
    written under a unique temporary name and renamed."""
    files = {
        name: os.path.join(out_dir, name)
        for name in ("report.json", "examples.npz", "report.md", "robustness.png")
    }
    report["files"] = {k: os.path.basename(v) for k, v in files.items()}
    write_atomic(files["examples.npz"], arrays)
    write_atomic(files["report.md"], render.markdown(report) + "\n")
    write_atomic(files["robustness.png"], lambda handle: render.plot(report, handle))
    write_atomic(files["report.json"], to_json(report))
    return files


def load_run(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """A finished run's report and per-example arrays, from its folder or report.json."""
    folder = report_folder(path)
    report = load_report(os.path.join(folder, "report.json"))
    with np.load(os.path.join(folder, "examples.npz"), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.setdefault("nonfinite", np.zeros_like(arrays["forward"]))  # schema <= 2
    report.setdefault("probes", None)  # schema 1 predates the diagnostics
    report.setdefault("ensemble", report["protocol"]["attacks"])
    return report, arrays


def report_folder(path: str) -> str:
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
