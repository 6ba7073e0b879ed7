"""The `advlib` command line."""

from __future__ import annotations

import argparse
import os
import sys

import advlib


def _info(args) -> int:
    """Prints versions and where each data set would be read from."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from advlib.bench.identity import environment
    from advlib.datasets import loaders

    env = environment()
    name = env["backend"]
    print(f"advlib {advlib.__version__}, Keras backend {name}")
    print(f"{name} {env[name]}, keras {env['keras']}, numpy {env['numpy']}")
    print(f"devices: {env['device']}")
    for name in ("mnist", "fashion-mnist"):
        found = [
            f
            for f in loaders._idx_folder_candidates(name, args.data_dir)
            if loaders._has_idx_files(f)
        ]
        print(f"{name}: {found[0] if found else 'not found locally (downloaded on first use)'}")
    return 0


def _import_module(spec: str, flag: str):
    """A .py file or an importable module, found the same way however advlib was
    launched (the working directory first)."""
    import importlib
    import importlib.util

    if spec.endswith(".py") or os.path.sep in spec:
        if not os.path.isfile(spec):
            raise ValueError(f"{flag} file {spec!r} does not exist.")
        found = importlib.util.spec_from_file_location("advlib_user_module", spec)
        if found is None or found.loader is None:
            raise ValueError(f"{flag} file {spec!r} cannot be imported as Python.")
        module = importlib.util.module_from_spec(found)
        found.loader.exec_module(module)
        return module
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(spec)
    except ImportError as error:
        raise ValueError(
            f"{flag}: cannot import module {spec!r} ({error}); "
            "give an importable module name or a .py file."
        ) from error
    finally:
        sys.path.remove(os.getcwd())


def _custom_objects(spec: str | None) -> dict:
    """The CUSTOM_OBJECTS dict of a .py file or an importable module."""
    if not spec:
        return {}
    custom = getattr(_import_module(spec, "--custom-objects"), "CUSTOM_OBJECTS", None)
    if not isinstance(custom, dict) or not all(isinstance(k, str) for k in custom):
        raise ValueError(
            f"--custom-objects {spec!r} must define CUSTOM_OBJECTS, a dict from "
            f"names to classes or functions; found {type(custom).__name__}."
        )
    return custom


TORCH_SUFFIXES = (".pt", ".pth")


def _torch_model(path: str, architecture: str | None, protocol: dict):
    """A PyTorch state dict in the architecture that `FILE.py:NAME` builds, wrapped
    to take the protocol's (height, width, channels) images."""
    from advlib.bench.inputs import load_examples
    from advlib.models import from_torch, load_torch_weights

    _require_file(path)
    if not architecture or ":" not in architecture:
        raise ValueError(
            f"--model {path!r} holds PyTorch weights only; name the architecture with "
            f"--torch-module FILE.py:NAME (or module:NAME), a torch.nn.Module class or "
            f"a function that builds one without arguments; got {architecture!r}."
        )
    spec, _, name = architecture.rpartition(":")
    build = getattr(_import_module(spec, "--torch-module"), name, None)
    if not callable(build):
        raise ValueError(f"--torch-module: {spec!r} defines no class or function {name!r}.")
    module = load_torch_weights(path, build())
    example = load_examples(protocol)[0][0]
    if example.ndim == 3:  # images: the module takes them channels first
        shape, layout = (example.shape[2], *example.shape[:2]), "channels_last"
    else:
        shape, layout = example.shape, "channels_first"
    return from_torch(module, tuple(int(d) for d in shape), data_format=layout)


def _load_model(path: str, custom_objects_spec: str | None):
    """Loads a .keras file with advlib's safe loader; the custom objects module is
    imported only once the file is known to exist."""
    from advlib.models.loading import load_model

    _require_file(path)
    return load_model(path, _custom_objects(custom_objects_spec))


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise ValueError(
            f"model file {path!r} does not exist"
            f"{' (it is a directory)' if os.path.isdir(path) else ''}."
        )


def _models(args, protocol):
    """The model the command line names (wrapped for binary engines), its
    transfer surrogate, its source and its name in the report."""
    from advlib import bench
    from advlib.models import QNNModelWrapper

    if args.model is None:
        model, source = bench.reference_model()
        name = "reference digits CNN"
    else:
        source, name = args.model, None
        if args.model.endswith(TORCH_SUFFIXES):
            model = _torch_model(args.model, args.torch_module, protocol)
        elif args.torch_module:
            raise ValueError(
                f"--torch-module names the architecture of a PyTorch state dict "
                f"({'/'.join(TORCH_SUFFIXES)}); --model {args.model!r} is not one."
            )
        else:
            model = _load_model(args.model, args.custom_objects)
    if args.engine or args.surrogate:
        model = QNNModelWrapper(
            model,
            surrogate=args.surrogate or "ste",
            temperature=args.temperature,
            engine=args.engine,
        )
    transfer = (
        None if args.transfer_from is None else _load_model(args.transfer_from, args.custom_objects)
    )
    return model, transfer, source, name


def worker_models(args, protocol: dict, cwd: str):
    """A Ray worker's (model, transfer): loaded as the driver's command line says,
    from the driver's working directory."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    model, transfer, _, _ = _models(args, protocol)
    return model, transfer


def _evaluate_options(args, name) -> dict:
    return dict(
        batch_size=args.batch_size,
        model_name=name,
        adaptive=args.adaptive,
        verify=args.verify,
        verify_time_limit=args.verify_time_limit,
        verify_backend=args.verify_backend,
        verify_search_share=args.verify_search_share,
    )


def _bench_run(args) -> int:
    import time

    from advlib import bench

    protocol = bench.load_protocol(args.protocol)  # fails early on a bad protocol
    out = args.out or os.path.join(
        "advlib-bench", protocol["name"].replace("/", "_"), time.strftime("%Y%m%d-%H%M%S")
    )
    if args.ray is not None:
        report, source = _bench_ray(args, protocol, out)
    else:
        model, transfer, source, name = _models(args, protocol)
        report = bench.evaluate(
            model,
            protocol=protocol,
            out_dir=out,
            resume=args.resume,
            shard=args.shard,
            progress=not args.no_progress,
            transfer_from=transfer,
            overwrite=args.overwrite,
            **_evaluate_options(args, name),
        )
    print()
    print(bench.markdown(report))
    print(
        f"\nmodel: {source}\nreport: {os.path.join(out, 'report.json')} (and report.md, "
        f"examples.npz, robustness.png)"
    )
    return 0


def _bench_ray(args, protocol: dict, out: str):
    """The run as Ray tasks, one shard each (`advlib.bench.distributed`)."""
    import functools

    from advlib.bench.distributed import evaluate_on_ray, import_ray

    if args.shard:
        raise ValueError("--shard and --ray exclude each other: --ray makes the shards itself.")
    import_ray()  # before any model is trained or loaded
    for key in ("model", "engine", "transfer_from"):  # the workers' paths, from anywhere
        if getattr(args, key) is not None:
            setattr(args, key, os.path.abspath(getattr(args, key)))
    # loaded once here, so that a file every worker would fail on fails before Ray
    # starts; the reference model is trained and cached here, for every worker to load
    _, _, source, name = _models(args, protocol)
    args.model = os.path.abspath(source)
    report = evaluate_on_ray(
        functools.partial(worker_models, args, protocol, os.getcwd()),
        protocol,
        out,
        address=None if args.ray == "local" else args.ray,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        retries=args.retries,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        **_evaluate_options(args, name),
    )
    return report, args.model


def _bench_merge(args) -> int:
    from advlib import bench

    report = bench.merge(args.reports, args.out, overwrite=args.overwrite)
    print(bench.markdown(report))
    print(f"\nmerged {len(args.reports)} shards into {args.out}")
    return 0


def _bench_compare(args) -> int:
    from advlib import bench
    from advlib.bench.report import load_report

    reports = []
    for path in args.reports:
        file = os.path.join(path, "report.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ValueError(f"{path!r} is neither a report.json nor a folder holding one.")
        reports.append(load_report(file))
    print(bench.compare(reports, force=args.force))
    return 0


def _bench_reassess(args) -> int:
    from advlib import bench

    settings = {
        key: value
        for key, value in (
            ("black_box_margin", args.black_box_margin),
            ("convergence_threshold", args.convergence_threshold),
        )
        if value is not None
    }
    print(bench.markdown(bench.reassess(args.report, settings)))
    return 0


def _bench_export(args) -> int:
    from advlib.bench import export
    from advlib.bench.storage import report_folder

    out = args.out or os.path.join(report_folder(args.run), f"{args.format}.json")
    options = {
        key: getattr(args, key)
        for key in export.ROBUSTBENCH_OPTIONS
        if getattr(args, key, None) is not None
    }
    entry, where = export.export(
        args.run, out, args.format, overwrite=args.overwrite, model_id=args.model_id, **options
    )
    print(export.to_json(entry))
    print(f"\nwrote {out}; in RobustBench's repository it goes to {where}")
    return 0


def _bench_list(args) -> int:
    from advlib import bench

    for name in bench.available():
        protocol = bench.load_protocol(name)
        print(f"{name:<24} {protocol['description']}")
    return 0


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advlib bench",
        description="Standardized robustness evaluation. Also: "
        "'advlib bench merge DIR... --out DIR', 'advlib bench compare A B...', "
        "'advlib bench reassess DIR [--black-box-margin M]', "
        "'advlib bench export DIR --format robustbench', "
        "'advlib bench list'.",
    )
    parser.add_argument(
        "--model",
        help="a .keras file, or a PyTorch state dict (.pt, .pth) with --torch-module "
        "(default: the reference digits CNN, trained once and cached)",
    )
    parser.add_argument(
        "--torch-module",
        metavar="FILE.py:NAME",
        help="the architecture of a .pt model: a torch.nn.Module class or a function "
        "building one without arguments; it takes images channels first (needs "
        "KERAS_BACKEND=torch)",
    )
    parser.add_argument(
        "--protocol", default="digits-linf-0.2", help="a shipped protocol's name or a JSON file"
    )
    parser.add_argument("--out", help="output directory (default: a new one under ./advlib-bench/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into an --out folder that holds other files"
    )
    parser.add_argument("--shard", help="i/n: evaluate every n-th batch from the i-th")
    parser.add_argument("--batch-size", type=int, help="override the protocol's batch size")
    parser.add_argument(
        "--custom-objects", help="module whose CUSTOM_OBJECTS (or public callables) the model needs"
    )
    parser.add_argument(
        "--engine",
        help="exported .npz of a binary network: predictions come from the exact binary engine",
    )
    parser.add_argument(
        "--surrogate",
        choices=("ste", "identity", "smooth", "zero"),
        help="QNNs: the sign's backward pass that the attacks use (default "
        "ste; zero is the naive gradient)",
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="QNNs: temperature of --surrogate smooth"
    )
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="also attack through BPDA / sign-surrogate gradients and report the worst case",
    )
    parser.add_argument(
        "--transfer-from",
        metavar="PATH",
        help="a .keras surrogate (e.g. a QNN's float twin) for the transfer diagnostic",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="binary networks (with --engine): decide the examples every "
        "attack left with the exact verifier, and report the certified "
        "interval at every eps",
    )
    parser.add_argument(
        "--verify-time-limit",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="--verify: seconds per example before it counts as unknown (default 30)",
    )
    parser.add_argument(
        "--verify-backend",
        choices=("milp", "sat"),
        default="milp",
        help="--verify: the solver (default milp: SciPy's HiGHS; sat needs python-sat)",
    )
    parser.add_argument(
        "--verify-search-share",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="--verify: the share of each example's time for the local search "
        "for counterexamples (default 0.5; 0.9 where the solver decides "
        "nothing in time, as on binary CNNs)",
    )
    ray = parser.add_argument_group("many workers (Ray; pip install 'advlib[ray]')")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the shards as Ray tasks and merge them into --out: on the cluster at "
        "ADDRESS, or on a local Ray started for the run; --resume continues it",
    )
    ray.add_argument(
        "--workers",
        type=int,
        help="--ray: the number of shards (default: the cluster's GPUs, else its "
        "CPUs / --cpus-per-worker)",
    )
    ray.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="--ray: CPUs per task on a cluster without GPUs (default 1; with GPUs "
        "each task takes one GPU)",
    )
    ray.add_argument(
        "--retries",
        type=int,
        default=2,
        help="--ray: tries after a task fails or its worker dies, each resuming "
        "from the shard's state (default 2)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_bench_run)
    return parser


def _bench_subcommands():
    """name -> (handler, its arguments as (flags, options) pairs)."""
    return {
        "merge": (
            _bench_merge,
            [
                (("reports",), dict(nargs="+", help="shard output directories")),
                (("--out",), dict(required=True, help="a new folder for the merged report")),
                (
                    ("--overwrite",),
                    dict(
                        action="store_true",
                        help="write into an --out folder that holds other files",
                    ),
                ),
            ],
        ),
        "compare": (
            _bench_compare,
            [
                (("reports",), dict(nargs="+", help="report.json files or directories")),
                (
                    ("--force",),
                    dict(action="store_true", help="rank reports of different protocols anyway"),
                ),
            ],
        ),
        "reassess": (
            _bench_reassess,
            [
                (("report",), dict(help="a finished run's folder or its report.json")),
                (("--black-box-margin",), dict(type=float, help="replaces the protocol's")),
                (("--convergence-threshold",), dict(type=float, help="replaces the protocol's")),
            ],
        ),
        "export": (
            _bench_export,
            [
                (("run",), dict(help="a finished, unsharded run's folder or its report.json")),
                (
                    ("--format",),
                    dict(choices=("robustbench",), default="robustbench", help="the format"),
                ),
                (("--out",), dict(help="the file to write (default: RUN/robustbench.json)")),
                (
                    ("--overwrite",),
                    dict(action="store_true", help="replace an existing --out file"),
                ),
                (
                    ("--model-id",),
                    dict(
                        help="the leaderboard's model ID, e.g. Smith2026Robust (default: "
                        "--out's file name)"
                    ),
                ),
                (("--name",), dict(help="the paper's title (default: the run's model name)")),
                (("--link",), dict(help="the paper's URL")),
                (("--authors",), dict(help="the authors, comma-separated")),
                (("--venue",), dict(help="e.g. 'NeurIPS 2020'")),
                (("--architecture",), dict(help="e.g. 'WideResNet-28-10'")),
                (("--reported",), dict(help="the robust accuracy the paper reports, in %%")),
                (("--footnote",), dict(help="a footnote for the leaderboard")),
                (
                    ("--additional-data",),
                    dict(action="store_true", default=None, help="trained with extra data"),
                ),
                (
                    ("--number-forward-passes",),
                    dict(type=int, help="forward passes per prediction (default 1)"),
                ),
            ],
        ),
        "list": (_bench_list, []),
    }


def _bench(argv: list[str]) -> int:
    subcommands = _bench_subcommands()
    if argv and argv[0] in subcommands:
        handler, arguments = subcommands[argv[0]]
        parser = argparse.ArgumentParser(prog=f"advlib bench {argv[0]}")
        for flags, options in arguments:
            parser.add_argument(*flags, **options)
        parser.set_defaults(handler=handler)
        argv = argv[1:]
    else:
        parser = bench_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return _run_handler("advlib bench", args)


def describe_error(error: BaseException) -> str:
    """One line for the user: the file, if any, and the cause."""
    import zipfile

    if isinstance(error, (ValueError, TypeError)) and not isinstance(error, zipfile.BadZipFile):
        return " ".join(str(error).split())
    if isinstance(error, OSError) and getattr(error, "filename", None):
        return f"{error.filename}: {error.strerror or type(error).__name__}"
    if isinstance(error, MemoryError):
        return "out of memory: the input asks for more memory than this machine has."
    if isinstance(error, ModuleNotFoundError):
        return f"cannot import module {error.name!r}: {error}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _run_handler(program: str, args) -> int:
    """Runs a command; every failure becomes one line and exit code 2 (set
    ADVLIB_DEBUG=1 for the traceback)."""
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(
            f"{program}: interrupted; finished batches are saved (--resume continues).",
            file=sys.stderr,
        )
        return 130
    except Exception as error:
        if os.environ.get("ADVLIB_DEBUG"):
            raise
        print(f"{program}: error: {describe_error(error)}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advlib", description=advlib.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"advlib {advlib.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, devices and data set locations")
    info.add_argument("--data-dir", default=None, help="a folder of IDX files to check first")
    info.set_defaults(handler=_info)
    commands.add_parser(
        "bench", help="standardized robustness evaluation (advlib bench -h)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    return _run_handler("advlib", args)


if __name__ == "__main__":
    sys.exit(main())
