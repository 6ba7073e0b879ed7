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


def _load_model(path: str, custom_objects_module: Optional[str]):
    """Loads a .keras file in safe mode; custom objects only from an explicit module."""
    import importlib

    import keras

    import advlib.bench.testbeds  # noqa: F401  registers advlib's layers (QNNs, testbeds)
    import advlib.models  # noqa: F401
    custom = {}
    if custom_objects_module:
        module = importlib.import_module(custom_objects_module)
        custom = getattr(module, "CUSTOM_OBJECTS", None) or {
            name: value for name, value in vars(module).items()
            if not name.startswith("_") and callable(value)}
    if not os.path.isfile(path):
        raise ValueError(f"model file {path!r} does not exist.")
    try:
        return keras.models.load_model(path, custom_objects=custom, safe_mode=True)
    except Exception as error:
        raise ValueError(f"cannot load model {path!r} (safe mode): {type(error).__name__}: "
                         f"{error}") from error


def _bench_run(args) -> int:
    import time

    from advlib import bench
    from advlib.models import QNNModelWrapper

    protocol = bench.load_protocol(args.protocol)  # fails early on a bad protocol
    if args.model is None:
        model, source = bench.reference_model()
        name = "reference digits CNN"
    else:
        model, source, name = _load_model(args.model, args.custom_objects), args.model, None
    if args.engine or args.surrogate:
        model = QNNModelWrapper(model, surrogate=args.surrogate or "ste",
                                temperature=args.temperature, engine=args.engine)
    transfer = None if args.transfer_from is None else _load_model(args.transfer_from,
                                                                   args.custom_objects)
    out = args.out or os.path.join("advlib-bench", protocol["name"].replace("/", "_"),
                                   time.strftime("%Y%m%d-%H%M%S"))
    report = bench.evaluate(model, protocol=protocol, out_dir=out, resume=args.resume,
                            shard=args.shard, batch_size=args.batch_size,
                            progress=not args.no_progress, model_name=name,
                            adaptive=args.adaptive, transfer_from=transfer)
    print()
    print(bench.markdown(report))
    print(f"\nmodel: {source}\nreport: {os.path.join(out, 'report.json')} (and report.md, "
          f"examples.npz, robustness.png)")
    return 0


def _bench_merge(args) -> int:
    from advlib import bench

    report = bench.merge(args.reports, args.out)
    print(bench.markdown(report))
    print(f"\nmerged {len(args.reports)} shards into {args.out}")
    return 0


def _bench_compare(args) -> int:
    import json

    from advlib import bench

    reports = []
    for path in args.reports:
        with open(os.path.join(path, "report.json") if os.path.isdir(path) else path) as handle:
            reports.append(json.load(handle))
    print(bench.compare(reports, force=args.force))
    return 0


def _bench_list(args) -> int:
    from advlib import bench

    for name in bench.available():
        protocol = bench.load_protocol(name)
        print(f"{name:<24} {protocol['description']}")
    return 0


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advlib bench", description="Standardized robustness evaluation. Also: "
        "'advlib bench merge DIR... --out DIR', 'advlib bench compare A B...', "
        "'advlib bench list'.")
    parser.add_argument("--model", help="a .keras file (default: the reference digits CNN, "
                                        "trained once and cached)")
    parser.add_argument("--protocol", default="digits-linf-0.2",
                        help="a shipped protocol's name or a JSON file")
    parser.add_argument("--out", help="output directory (default: a new one under "
                                      "./advlib-bench/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--shard", help="i/n: evaluate every n-th batch from the i-th")
    parser.add_argument("--batch-size", type=int, help="override the protocol's batch size")
    parser.add_argument("--custom-objects", help="module whose CUSTOM_OBJECTS (or public "
                                                 "callables) the model needs")
    parser.add_argument("--engine", help="exported .npz of a binary network: predictions "
                                         "come from the exact binary engine")
    parser.add_argument("--surrogate", choices=("ste", "identity", "smooth", "zero"),
                        help="QNNs: the sign's backward pass that the attacks use (default "
                             "ste; zero is the naive gradient)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="QNNs: temperature of --surrogate smooth")
    parser.add_argument("--adaptive", action="store_true",
                        help="also attack through BPDA / sign-surrogate gradients and "
                             "report the worst case")
    parser.add_argument("--transfer-from", metavar="PATH",
                        help="a .keras surrogate (e.g. a QNN's float twin) for the transfer "
                             "diagnostic")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_bench_run)
    return parser


def _bench(argv: List[str]) -> int:
    if argv and argv[0] == "merge":
        parser = argparse.ArgumentParser(prog="advlib bench merge")
        parser.add_argument("reports", nargs="+", help="shard output directories")
        parser.add_argument("--out", required=True)
        parser.set_defaults(handler=_bench_merge)
        argv = argv[1:]
    elif argv and argv[0] == "compare":
        parser = argparse.ArgumentParser(prog="advlib bench compare")
        parser.add_argument("reports", nargs="+", help="report.json files or directories")
        parser.add_argument("--force", action="store_true",
                            help="rank reports of different protocols anyway")
        parser.set_defaults(handler=_bench_compare)
        argv = argv[1:]
    elif argv and argv[0] == "list":
        parser = argparse.ArgumentParser(prog="advlib bench list")
        parser.set_defaults(handler=_bench_list)
        argv = argv[1:]
    else:
        parser = bench_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"advlib bench: error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advlib", description=advlib.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"advlib {advlib.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, devices and data set locations")
    info.add_argument("--data-dir", default=None, help="a folder of IDX files to check first")
    info.set_defaults(handler=_info)
    commands.add_parser("bench", help="standardized robustness evaluation (advlib bench -h)",
                        add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
