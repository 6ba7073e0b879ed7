"""The harness on many workers: one shard per Ray task, then the merged report.

Each task loads the model itself (a Keras model does not travel between
processes), evaluates its shard into its own folder under `OUT/shards/`, and
saves its state after every batch. A task whose worker dies is retried by Ray,
and the retry resumes from the saved state; the merged report goes to `OUT`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from advlib.bench import protocol as protocols
from advlib.bench.shards import merge
from advlib.bench.storage import STATE_JSON, OutputFolder, write_atomic

SHARDS = "shards"


def shard_folders(out_dir: str, n: int) -> list[str]:
    """The folders of a run's `n` shards: OUT/shards/1-of-n, ..."""
    return [os.path.join(out_dir, SHARDS, f"{i}-of-{n}") for i in range(1, n + 1)]


def _tries_path(folder: str) -> str:
    """Beside the shard's folder, not in it: a new run needs that folder empty."""
    return folder + ".tries.json"


def import_ray():
    """Ray, or a ValueError saying how to install it (it is an extra)."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--ray needs Ray, an optional dependency: pip install 'advlib[ray]'."
        ) from None
    return ray


def run_shard(build: Callable, protocol: dict, folder: str, shard: str, options: dict) -> dict:
    """One Ray task: evaluates `shard` into `folder`, resuming its saved state.

    Args:
        build: called in the worker; returns (model, transfer model or None).
        protocol: the protocol as a dict.
        folder: the shard's output folder.
        shard: "i/n".
        options: further arguments of `advlib.bench.evaluate`.

    Returns:
        The shard's tries, the batches it found finished, its process and host.
    """
    import socket

    from advlib.bench.runner import evaluate

    log_path = _tries_path(folder)
    log = _read_json(log_path) or {"tries": 0, "resumed_from": []}
    state = _read_json(os.path.join(folder, STATE_JSON))
    finished = len(state["done"]) if state else 0
    log["tries"] += 1
    log["resumed_from"].append(finished)
    write_atomic(log_path, json.dumps(log))
    model, transfer = build()
    evaluate(
        model,
        protocol,
        out_dir=folder,
        shard=shard,
        resume=state is not None,
        progress=False,
        transfer_from=transfer,
        **options,
    )
    return dict(log, shard=shard, pid=os.getpid(), host=socket.gethostname())


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def evaluate_on_ray(
    build: Callable,
    protocol: str | dict,
    out_dir: str,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    retries: int = 2,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **options,
) -> dict:
    """`advlib.bench.evaluate` as Ray tasks, one shard each, merged when all are done.

    Args:
        build: a picklable function returning (model, transfer model or None),
            called in every worker, e.g. `functools.partial(load_model, path)`
            wrapped to return a pair.
        protocol: a shipped protocol's name, a JSON file, or a dict.
        out_dir: the merged report goes here, the shards under `out_dir/shards/`.
        address: a Ray cluster's address; None starts a local Ray.
        workers: the number of shards (default: the cluster's GPUs, or its
            CPUs divided by `cpus_per_worker`). With `resume`, the run's own.
        cpus_per_worker: CPUs each task takes where the cluster has no GPU
            (with GPUs, each task takes one GPU).
        retries: how often a failed task is tried again (a dead worker or an
            error), each time resuming from its shard's saved state.
        resume: continue the run in `out_dir`: finished shards are kept,
            the others resume.
        overwrite: write into an `out_dir` that holds other files.
        progress: a progress bar over the shards.
        **options: further arguments of `advlib.bench.evaluate` (batch_size,
            model_name, adaptive, verify, ...), except `shard` and `resume`.

    Returns:
        The merged report; its `ray` entry gives each shard's tries and the
        batches it found finished when it resumed.

    Raises:
        ValueError: if a shard still fails after its retries (all are named,
            with their errors; the finished shards are kept for `resume`).

    Example:
        >>> report = evaluate_on_ray(load, "fashion-mnist-linf-0.1", "runs/ray", workers=8)
    """
    from advlib import _checks

    for key in ("shard", "resume", "out_dir"):
        if key in options:
            raise TypeError(f"evaluate_on_ray sets {key} itself; do not pass it.")
    _checks.check_number("workers", workers, low=1, integer=True, allow_none=True)
    _checks.check_number("cpus_per_worker", cpus_per_worker, low=0.01)
    _checks.check_number("retries", retries, low=0, integer=True)
    protocol = protocols.load(protocol)
    existing = _existing_shards(out_dir) if resume else None
    if resume and existing is None:
        raise ValueError(f"--resume: {out_dir!r} holds no Ray run (no {SHARDS}/ folder).")
    if not resume:
        _check_new_folder(out_dir, overwrite)
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        # a benchmark run reports nothing to Ray's makers unless the user says so
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": _forwarded_environment()},
        )
    try:
        cluster = ray.cluster_resources()
        gpus = cluster.get("GPU", 0)
        n = existing or workers or max(1, int(gpus or cluster["CPU"] // cpus_per_worker))
        resources = {"num_gpus": 1} if gpus else {"num_cpus": cpus_per_worker}
        task = ray.remote(max_retries=retries, retry_exceptions=True, **resources)(run_shard)
        folders = shard_folders(out_dir, n)
        os.makedirs(os.path.join(out_dir, SHARDS), exist_ok=True)
        started = time.time()
        pending = {
            task.remote(build, protocol, folder, f"{i}/{n}", options): f"{i}/{n}"
            for i, folder in enumerate(folders, 1)
            if not _finished(folder)
        }
        outcomes, failures = _collect(ray, pending, n, progress)
    finally:
        if started_here:
            ray.shutdown()
    if failures:
        listed = "; ".join(f"shard {s}: {message}" for s, message in sorted(failures.items()))
        raise ValueError(
            f"{len(failures)} of {n} shards failed after {retries + 1} tries ({listed}). "
            f"The finished shards are kept in {os.path.join(out_dir, SHARDS)!r}; "
            "--resume (resume=True) runs only the others."
        )
    tries = {
        f"{i}/{n}": _read_json(_tries_path(folder)) or {"tries": 0, "resumed_from": []}
        for i, folder in enumerate(folders, 1)
    }
    ray_info = {
        "address": address or "local",
        "shards": n,
        "resources_per_task": resources,
        "wall_seconds": time.time() - started,
        "tries": tries,
        "workers": {s: {"pid": o["pid"], "host": o["host"]} for s, o in outcomes.items()},
    }
    return merge(folders, out_dir, overwrite=True, extra={"ray": ray_info})


def _collect(ray, pending: dict, n: int, progress: bool) -> tuple[dict, dict]:
    """Waits for every task; a failed one (after Ray's retries) is kept by shard."""
    outcomes, failures = {}, {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - len(pending), desc="shards", unit="shard")
    try:
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            shard = pending[done[0]]
            try:
                outcomes[shard] = ray.get(done[0])
            except Exception as error:  # the task's own error, or its worker's death
                failures[shard] = _last_line(error)
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt:
        for reference in pending:
            ray.cancel(reference, force=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return outcomes, failures


def _last_line(error: BaseException) -> str:
    """The cause of a Ray task's failure in one line (Ray wraps it in a traceback)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def _finished(folder: str) -> bool:
    report = _read_json(os.path.join(folder, "report.json"))
    return bool(report and report.get("complete"))


def _existing_shards(out_dir: str) -> int | None:
    """The shard count of the Ray run in `out_dir`, from its folder names."""
    root = os.path.join(out_dir, SHARDS)
    if not os.path.isdir(root):
        return None
    counts = {
        int(name.split("-of-")[1])
        for name in os.listdir(root)
        if "-of-" in name and os.path.isdir(os.path.join(root, name))
    }
    if len(counts) != 1:
        return None
    return counts.pop()


def _check_new_folder(out_dir: str, overwrite: bool) -> None:
    """A fresh run's folder: not a finished or interrupted Ray run, and otherwise
    held to `OutputFolder`'s rules (a folder, empty unless `overwrite`)."""
    if os.path.isdir(os.path.join(out_dir, SHARDS)):
        raise ValueError(
            f"{out_dir!r} already holds a Ray run's shards: pass --resume (resume=True) "
            "to continue it, or choose another folder."
        )
    with OutputFolder(out_dir, overwrite=overwrite):
        pass


def _forwarded_environment() -> dict[str, str]:
    """What the workers must share with the driver: the backend, the cache of
    trained reference models, and quieter logs."""
    keys = ("KERAS_BACKEND", "ADVLIB_CACHE", "TF_CPP_MIN_LOG_LEVEL", "KERAS_HOME")
    return {key: os.environ[key] for key in keys if key in os.environ}
