"""A finished run in another tool's format: RobustBench's leaderboard entry."""

from __future__ import annotations

import math
import os

from advlib.bench.report import load_report
from advlib.bench.storage import report_folder, to_json, write_atomic

# The fields of `robustbench.utils.ModelInfo` (robustbench 1.1.1) that an L-p
# leaderboard entry carries, in the order of RobustBench's own model_info files;
# the corruption fields belong to the corruption leaderboards only.
ROBUSTBENCH_FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "footnote",
)

# what the user may set; the others come from the run
ROBUSTBENCH_OPTIONS = {
    "link": str,
    "name": str,
    "authors": str,
    "additional_data": bool,
    "number_forward_passes": int,
    "venue": str,
    "architecture": str,
    "reported": str,
    "footnote": str,
}

THREAT_FOLDERS = {"inf": "Linf", "2": "L2"}


def eps_string(eps: float) -> str:
    """RobustBench's spelling of an eps: '8/255' for a multiple of 1/255 that has
    no short decimal, else the shortest decimal ('0.5', '0.1').

    Example:
        >>> eps_string(8 / 255), eps_string(0.5)
        ('8/255', '0.5')
    """
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}.")
    short = f"{eps:.3g}"
    if float(short) == eps:
        return short
    steps = round(eps * 255)
    if math.isclose(steps / 255, eps, rel_tol=1e-9, abs_tol=0.0):
        return f"{steps}/255"
    return repr(eps)


def percent(value: float) -> str:
    """An accuracy in [0, 1] as RobustBench writes it: a percentage with two decimals."""
    return f"{100 * float(value):.2f}"


def robustbench_entry(path: str, **options) -> dict:
    """The RobustBench `model_info` JSON of one finished, unsharded run.

    `clean_acc` and `autoattack_acc` are the run's clean accuracy and its headline
    figure (AutoAttack's standard ensemble) at the protocol's eps; `dataset` and
    `eps` come from its protocol. The fields a run cannot know (the paper, its
    authors, the architecture) come from `options`.

    Args:
        path: the run's output folder or its report.json.
        **options: `link`, `name`, `authors`, `venue`, `architecture`,
            `reported`, `footnote` (strings), `additional_data` (bool, default
            False), `number_forward_passes` (the model's forward passes per
            prediction, default 1).

    Returns:
        A dict with exactly the fields of `ROBUSTBENCH_FIELDS`.

    Raises:
        ValueError: for a shard, an unfinished run, a run whose protocol has no
            AutoAttack headline comparable with RobustBench, or a bad option.

    Example:
        >>> entry = robustbench_entry("runs/a", name="My paper", architecture="WRN-28-10")
        >>> entry["autoattack_acc"]
        '59.53'
    """
    return _entry(_exportable_report(path), **options)


def _exportable_report(path: str) -> dict:
    """The report of a finished, unsharded run (its arrays are not needed)."""
    report = load_report(os.path.join(report_folder(path), "report.json"))
    _check_exportable(report, path)
    return report


def _entry(report: dict, **options) -> dict:
    entry: dict = dict.fromkeys(ROBUSTBENCH_FIELDS)
    entry.update(
        link="",
        name=report["model"].get("name") or "",
        authors="",
        additional_data=False,
        number_forward_passes=1,
        venue="",
        architecture="",
        reported="",
    )
    for key, value in options.items():
        entry[key] = _checked_option(key, value)
    protocol = report["protocol"]
    entry["dataset"] = protocol["dataset"]["name"]
    entry["eps"] = eps_string(protocol["threat"]["eps"])
    entry["clean_acc"] = percent(report["results"]["clean_accuracy"]["value"])
    entry["autoattack_acc"] = percent(report["results"]["headline"]["robust_accuracy"]["value"])
    return entry


def _checked_option(key: str, value):
    if key not in ROBUSTBENCH_OPTIONS:
        raise ValueError(
            f"{key!r} is not a RobustBench field that can be set; allowed: "
            f"{', '.join(ROBUSTBENCH_OPTIONS)} (dataset, eps and the accuracies come "
            "from the run)."
        )
    kind = ROBUSTBENCH_OPTIONS[key]
    if value is None:
        return None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a whole number >= 1, got {value!r}.")
    elif not isinstance(value, kind):
        raise TypeError(f"{key} must be a {kind.__name__}, got {type(value).__name__}.")
    return value


def _check_exportable(report: dict, path: str) -> None:
    if report.get("shard"):
        raise ValueError(
            f"{path!r} is shard {report['shard']} of a run; RobustBench reports the "
            "whole test set: merge the shards first (advlib bench merge)."
        )
    if not report.get("complete", False) or report.get("n") != report.get("n_total"):
        raise ValueError(
            f"{path!r} is a partial run ({report.get('n')} of {report.get('n_total')} "
            "examples evaluated); finish it with --resume before exporting."
        )
    headline = report["results"].get("headline") or {}
    if headline.get("comparable_with") != "RobustBench":
        raise ValueError(
            f"the protocol of {path!r} ({report['protocol']['name']}) has no headline "
            "comparable with RobustBench (AutoAttack's standard ensemble); use a "
            "protocol of version 3 or later, such as cifar10-linf-8_255."
        )
    if (headline.get("robust_accuracy") or {}).get("value") is None:
        raise ValueError(
            f"the run in {path!r} has no AutoAttack figure of its own: "
            f"{headline.get('note', 'its ensemble was reordered')}."
        )
    if str(report["protocol"]["threat"]["norm"]) not in THREAT_FOLDERS:
        raise ValueError(
            f"RobustBench has L-inf and L2 leaderboards; the run in {path!r} is under "
            f"the L{report['protocol']['threat']['norm']} norm."
        )


def leaderboard_path(entry: dict, norm, model_id: str) -> str:
    """Where RobustBench's repository keeps the entry: model_info/DATASET/THREAT/ID.json."""
    return os.path.join(
        "model_info", entry["dataset"], THREAT_FOLDERS[str(norm)], f"{model_id}.json"
    )


def export(
    path: str,
    out: str,
    format: str = "robustbench",
    overwrite: bool = False,
    model_id: str | None = None,
    **options,
) -> tuple[dict, str]:
    """Writes a finished run in another tool's format.

    Args:
        path: the run's output folder or its report.json.
        out: the file to write (never over an existing file unless `overwrite`).
        format: "robustbench", the only format so far.
        overwrite: replace an existing `out`.
        model_id: the leaderboard's model ID (default: `out`'s file name).
        **options: the format's own fields (see `robustbench_entry`).

    Returns:
        The exported document, and where RobustBench's repository keeps it.

    Example:
        >>> entry, where = export("runs/a", "Smith2026Robust.json", name="Robust by design")
        >>> where
        'model_info/cifar10/Linf/Smith2026Robust.json'
    """
    if format != "robustbench":
        raise ValueError(f"format must be 'robustbench', got {format!r}.")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"{out!r} exists; choose another file or pass overwrite (--overwrite).")
    report = _exportable_report(path)
    entry = _entry(report, **options)
    write_atomic(out, to_json(entry) + "\n")
    model_id = model_id or os.path.splitext(os.path.basename(out))[0]
    return entry, leaderboard_path(entry, report["protocol"]["threat"]["norm"], model_id)
