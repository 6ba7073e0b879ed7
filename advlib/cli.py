"""The `advlib` command line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import advlib


def _info(args) -> int:
    """Prints versions and where each data set would be read from."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy
    import tensorflow as tf
    import keras

    from advlib.datasets import loaders

    print(f"advlib {advlib.__version__}")
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, numpy {numpy.__version__}")
    devices = [d.name for d in tf.config.list_physical_devices()]
    print(f"devices: {', '.join(devices)}")
    for name in ("mnist", "fashion-mnist"):
        found = [f for f in loaders._idx_folder_candidates(name, args.data_dir)
                 if loaders._has_idx_files(f)]
        print(f"{name}: {found[0] if found else 'not found locally (downloaded on first use)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advlib", description=advlib.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"advlib {advlib.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, devices and data set locations")
    info.add_argument("--data-dir", default=None, help="a folder of IDX files to check first")
    info.set_defaults(handler=_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
