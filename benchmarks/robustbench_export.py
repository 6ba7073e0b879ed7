"""`advlib bench export --format robustbench`, loaded by RobustBench itself.

Exports a finished run (`--run`, or a short digits run made here) and builds
`robustbench.utils.ModelInfo` (robustbench 1.1.1) from the JSON, field by field:
every field must exist in the dataclass, keep its value, and the accuracies must
parse as RobustBench's leaderboard code parses them (`float(x) / 100`). Prints
the fields side by side and writes JSON to `--out`.

robustbench pulls PyTorch, torchvision and timm, so it lives in its own
environment, never in advlib's:

    python3 -m venv /tmp/rb && /tmp/rb/bin/pip install robustbench==1.1.1 \\
        torch torchvision --extra-index-url https://download.pytorch.org/whl/cpu
    python benchmarks/robustbench_export.py --robustbench-python /tmp/rb/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# run by robustbench's interpreter: the entry in, ModelInfo's view of it out
LOADER = """
import ast, dataclasses, importlib.metadata, importlib.util, json, os, sys, typing
try:
    from robustbench.utils import ModelInfo
    how = "from robustbench.utils import ModelInfo"
except Exception as error:  # robustbench imports torchvision and timm at the top
    # the same class, from the package's own file, where its heavy imports fail
    spec = importlib.util.find_spec("robustbench")
    path = os.path.join(os.path.dirname(spec.origin), "utils.py")
    tree = ast.parse(open(path).read())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelInfo")
    scope = {"dataclasses": dataclasses, "Optional": typing.Optional}
    exec(compile(ast.Module([node], []), path, "exec"), scope)
    ModelInfo = scope["ModelInfo"]
    how = f"ModelInfo's definition in {path} (importing robustbench failed: {error!r})"
entry = json.load(open(sys.argv[1]))
info = ModelInfo(**entry)
print(json.dumps({"version": importlib.metadata.version("robustbench"), "how": how,
                  "fields": [f.name for f in dataclasses.fields(ModelInfo)],
                  "loaded": dataclasses.asdict(info),
                  "clean": float(info.clean_acc) / 100,
                  "autoattack": float(info.autoattack_acc) / 100}))
"""


def short_run(folder: str) -> str:
    """A finished digits-linf-0.2 run (AutoAttack's headline) on 60 digits."""
    from advlib import bench

    protocol = bench.load_protocol("digits-linf-0.2")
    protocol["dataset"]["n"] = protocol["batch_size"] = 60
    protocol["sweep"] = []
    model, _ = bench.reference_model(verbose=False)
    bench.evaluate(model, protocol, out_dir=folder, progress=False)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished run's folder (default: a short digits run)")
    parser.add_argument(
        "--robustbench-python",
        default=sys.executable,
        help="an interpreter that can import robustbench 1.1.1 (default: this one)",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results", "robustbench_export.json"))
    args = parser.parse_args(argv)
    from advlib.bench.export import ROBUSTBENCH_FIELDS, export

    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or short_run(os.path.join(scratch, "run"))
        path = os.path.join(scratch, "Advlib2026Digits.json")
        entry, _ = export(
            run,
            path,
            name="advlib's reference digits CNN",
            architecture="small CNN",
            link="https://example.org/advlib",
            authors="advlib",
            venue="",
        )
        done = subprocess.run(
            [args.robustbench_python, "-c", LOADER, path], capture_output=True, text=True
        )
    if done.returncode != 0:
        raise SystemExit(f"robustbench could not load the entry:\n{done.stderr[-2000:]}")
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for field in ROBUSTBENCH_FIELDS:
        ours, theirs = entry[field], loaded["loaded"].get(field, "(no such field)")
        rows.append({"field": field, "advlib": ours, "ModelInfo": theirs, "same": ours == theirs})
    missing = [f for f in ROBUSTBENCH_FIELDS if f not in loaded["fields"]]
    unset = [f for f in loaded["fields"] if f not in ROBUSTBENCH_FIELDS]
    print(f"robustbench {loaded['version']}: ModelInfo has {len(loaded['fields'])} fields")
    print(f"loaded through {loaded['how']}")
    print("| field | advlib's export | ModelInfo | same |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['field']} | {row['advlib']!r} | {row['ModelInfo']!r} | {row['same']} |")
    print(
        f"\nclean {loaded['clean']:.4f}, AutoAttack {loaded['autoattack']:.4f} as RobustBench "
        f"parses them; fields advlib leaves out: {unset} (the corruption leaderboards')"
    )
    result = {
        "robustbench_version": loaded["version"],
        "loaded_through": loaded["how"],
        "rows": rows,
        "all_same": all(r["same"] for r in rows) and not missing,
        "fields_missing_from_modelinfo": missing,
        "modelinfo_fields_not_exported": unset,
        "parsed": {"clean": loaded["clean"], "autoattack": loaded["autoattack"]},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    if not result["all_same"]:
        raise SystemExit("the export and ModelInfo disagree")
    return result


if __name__ == "__main__":
    main()
