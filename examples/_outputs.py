"""The examples' rule for their output files: a rerun never writes over the
files of an earlier one unless asked to (--overwrite)."""

import os
from collections.abc import Iterable


def add_overwrite_option(parser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write over the files an earlier run left in --out-dir",
    )


def refuse_to_overwrite(
    parser, out_dir: str, names: Iterable[str], overwrite: bool | None = None
) -> None:
    """Stops the script with a usage error, before any work, if `out_dir` already
    holds one of the files or folders it would write (`names`), unless
    `overwrite`. None: the script has no --overwrite option (its harness runs
    keep their state, which nothing writes over)."""
    existing = [name for name in names if os.path.exists(os.path.join(out_dir, name))]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        remedy = "" if overwrite is None else ", or pass --overwrite to write over them"
        parser.error(
            f"--out-dir {out_dir!r} already holds {shown} from an earlier run: "
            f"choose another folder{remedy}."
        )
