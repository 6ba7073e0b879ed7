"""Shards of one run brought together (`merge`), and finished runs judged again
(`reassess`)."""

from __future__ import annotations

import os

import numpy as np

from advlib.bench import protocol as protocols
from advlib.bench.arrays import batch_rows, copy_batch
from advlib.bench.identity import LEGACY_IDENTITY
from advlib.bench.report import assess, summarize_arrays
from advlib.bench.storage import OutputFolder, load_run, report_folder, write_outputs


def parse_shard(shard: str | None) -> tuple[int, int] | None:
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


def reassess(path: str, diagnostics_settings: dict | None = None) -> dict:
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


def _run_key(report: dict) -> dict:
    """What the shards of one run share: everything of the identity but the shard."""
    identity = {k: v for k, v in (report.get("identity") or {}).items() if k != "shard"}
    return {
        **LEGACY_IDENTITY,
        **identity,
        "protocol_hash": report["protocol_hash"],
        "model fingerprint": report["model"]["fingerprint"],
        "data fingerprint": report["data"]["fingerprint"],
        "batch_size": report["batch_size"],
    }


def merge(
    report_paths: list[str], out_dir: str, overwrite: bool = False, extra: dict | None = None
) -> dict:
    """Combines shard reports into the report of one unsharded run.

    Args:
        report_paths: the shards' output folders (or their report.json files).
        out_dir: a new or empty folder for the merged report; never one of the
            shards' folders.
        overwrite: write into an `out_dir` that holds other files.
        extra: entries added to the merged report (the Ray engine's record).

    Raises:
        ValueError: if the shards come from different runs, overlap, or
            leave batches out, or if `out_dir` is one of them.
    """
    if not report_paths:
        raise ValueError("merge needs at least one shard's output folder.")
    folders = [report_folder(path) for path in report_paths]
    target = os.path.realpath(out_dir)
    for folder in folders:
        if os.path.realpath(folder) == target:
            raise ValueError(
                f"merge --out {out_dir!r} is one of the shards it merges; choose a new folder."
            )
    loaded = [load_run(folder) for folder in folders]
    first = loaded[0][0]
    for folder, (report, _) in zip(folders[1:], loaded[1:]):
        differ = [k for k, v in _run_key(report).items() if _run_key(first).get(k) != v]
        if differ:
            raise ValueError(
                f"the reports come from different runs (their {', '.join(differ)} differ: "
                f"{folders[0]!r} and {folder!r}); only shards of one run can be merged."
            )
    seen: dict[int, str] = {}
    for report, _ in loaded:
        for b in report["batches"]:
            if b in seen:
                raise ValueError(
                    f"batch {b} appears in two shards ({seen[b]} and {report['shard']})."
                )
            seen[b] = report["shard"]
    arrays = {key: value.copy() for key, value in loaded[0][1].items()}
    total = arrays["forward"].shape[0]
    missing = sorted(set(range(total)) - set(seen))
    if missing:
        raise ValueError(
            f"the shards leave batches {missing[:10]} unevaluated; merge all "
            f"{total} batches' shards."
        )
    size = first["batch_size"]
    for report, part in loaded[1:]:
        for b in report["batches"]:
            copy_batch(arrays, part, b, size)
    protocol = first["protocol"]
    names = [entry["name"] for entry in first["ensemble"]]
    selection = np.ones(len(arrays["index"]), bool)
    merged = dict(
        first,
        shard=None,
        batches=list(range(total)),
        complete=True,
        n=int(selection.sum()),
        n_total=int(selection.sum()),
        results=summarize_arrays(
            arrays, selection, list(range(total)), names, protocol, first.get("verify")
        ),
        merged_from=[r["shard"] for r, _ in loaded],
    )
    if isinstance(merged.get("identity"), dict):
        merged["identity"] = dict(merged["identity"], shard=None)
    merged.pop("wall_seconds_this_session", None)
    if merged.get("adaptive"):
        merged["adaptive"] = {"variants": merged["adaptive"]["variants"]}
    assess(merged, arrays, selection)
    merged.update(extra or {})
    with OutputFolder(out_dir, overwrite=overwrite):
        write_outputs(merged, arrays, out_dir)
    return merged
