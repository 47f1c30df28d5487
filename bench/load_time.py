"""Instance load time beyond ``import torch``, per model directory, each in a fresh process.

For every ``<repository>/<model>`` given (default: the examples, built with ``pytorch-backend
examples``), a child process imports torch, then builds one KIND_CPU instance of version 1
exactly as the server's ``initialize`` does (``build_instance``: config, parameters, artifact,
executor, warm-up). Reported: seconds to import torch, and seconds of the instance load after
it (the target for ``.pt2`` packages is at most 1 s). Each model is measured ``--repeat`` times,
interleaved, and the medians are reported; the JSON also records the machine, the git commit
and the load average (``provenance.py``). Run:
``python bench/load_time.py [MODEL_DIR ...] [--repeat N] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import provenance  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "model_repository_examples"
DEFAULT_MODELS = ("packaged_mlp", "aoti_nested", "mlp_batched", "eager_module")

CHILD = """
import json, sys, time
started = time.perf_counter()
import torch  # noqa: F401
imported = time.perf_counter()
from pathlib import Path
from pytorch_backend.config import InstanceKind
from pytorch_backend.instance import InstanceArgs, build_instance
from pytorch_backend.serving.check import read_config

model_dir = Path(sys.argv[1])
config = read_config(model_dir / "config.pbtxt")
config.setdefault("name", model_dir.name)
args = InstanceArgs(json.dumps(config), model_dir.name + "_0", InstanceKind.CPU, 0, model_dir, "1")
class Quiet:
    log_info = log_warn = log_verbose = staticmethod(lambda message: None)
    log_error = staticmethod(print)
loading = time.perf_counter()
build_instance(args, Quiet())
done = time.perf_counter()
print(json.dumps({"import_torch_s": imported - started, "load_s": done - loading,
                  "beyond_import_torch_s": done - imported}))
"""


def measure(model_dir: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir)], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        return {"model": model_dir.name, "error": done.stderr.strip().splitlines()[-1:]}
    return {"model": model_dir.name, **json.loads(done.stdout.strip().splitlines()[-1])}


def measure_repeated(models: list[Path], repeat: int) -> list[dict]:
    """Every model ``repeat`` times, interleaved; per model each figure's runs and their median."""
    runs: dict[str, list[dict]] = {}
    for _ in range(repeat):
        for model in models:
            runs.setdefault(model.name, []).append(measure(model))
    rows = []
    for name, results in runs.items():
        good = [r for r in results if "error" not in r]
        if not good:
            rows.append(results[0])
            continue
        row: dict = {"model": name, "runs": len(good)}
        for key in ("import_torch_s", "load_s", "beyond_import_torch_s"):
            values = [r[key] for r in good]
            row[key] = statistics.median(values)
            row[f"{key}_all"] = values
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", type=Path, help="model directories (version 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per model, interleaved (3)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    models = args.models or [EXAMPLES / name for name in DEFAULT_MODELS]
    machine = provenance()
    rows = measure_repeated(models, max(1, args.repeat))
    print(f"medians of {max(1, args.repeat)} runs")
    print(f"{'model':<20} {'import torch':>12} {'load':>8} {'beyond torch':>13}  beyond torch, all")
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<20} error: {row['error']}")
            continue
        every = ", ".join(f"{v:.2f}" for v in row["beyond_import_torch_s_all"])
        print(
            f"{row['model']:<20} {row['import_torch_s']:>11.2f}s {row['load_s']:>7.2f}s "
            f"{row['beyond_import_torch_s']:>12.2f}s  {every}"
        )
    if args.json:
        machine["load_average_end"] = list(os.getloadavg())
        result = {"machine": machine, "repeat": args.repeat, "rows": rows}
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
