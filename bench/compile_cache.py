"""Load and warm-up time of nn.Module models with ``COMPILE_CACHE``: cold, from the cache of a
previous run, and from the artifacts shipped by ``package(..., compile_cache=True)``.

Models: the ``eager_module`` example (``EagerMlp``) and a ResNet-18-sized module built here
(torchvision is not needed). Every load is one KIND_CPU instance built in a fresh process as the
server's ``initialize`` does (``build_instance``: compile and warm-up), with its own empty
``TORCHINDUCTOR_CACHE_DIR`` unless the scenario reuses one; everything lives in a temporary
folder. Run: ``python bench/compile_cache.py [--models eager,resnet] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "bench" / "results" / "compile_cache.json"

RESNET = '''
import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a, self.b = _conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, 1)
        self.skip = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(torch.relu(self.a(x))) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18's layout (11.7 M parameters): stem, 4 stages of 2 blocks, pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        widths, blocks, cin = (64, 128, 256, 512), [], 64
        for i, width in enumerate(widths):
            blocks += [Block(cin, width, 1 if i == 0 else 2), Block(width, width, 1)]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.blocks(self.stem(x)).mean((2, 3)), 1))
'''

CONFIG = """name: "{name}"
backend: "pytorch_python"
max_batch_size: {batch}
input [{{ name: "x" data_type: TYPE_FP32 dims: {dims} }}]
output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {outputs} ] }}]
parameters {{ key: "MODULE_CLASS" value {{ string_value: "{cls}" }} }}
"""

CHILD = """
import json, re, sys, time
from pathlib import Path
from pytorch_backend.config import InstanceKind
from pytorch_backend.instance import InstanceArgs, build_instance
from pytorch_backend.serving.check import read_config

model_dir = Path(sys.argv[1])
config = read_config(model_dir / "config.pbtxt")
lines = []
class Sink:
    log_info = log_warn = log_error = log_verbose = staticmethod(lines.append)
args = InstanceArgs(json.dumps(config), config["name"] + "_0", InstanceKind.CPU, 0, model_dir, "1")
started = time.perf_counter()
build_instance(args, Sink())
print(json.dumps({"load_s": time.perf_counter() - started, "lines": lines}))
"""


def write_model(folder: Path, source: str, cls: str, dims: list[int], outputs: int, batch: int):
    """A model directory: ``1/model.py``, ``1/model.pt`` (seeded weights), ``config.pbtxt``."""
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(source)
    scope: dict = {}
    exec(compile(source, str(folder / "1" / "model.py"), "exec"), scope)  # noqa: S102
    torch.manual_seed(0)
    torch.save(scope[cls]().state_dict(), folder / "1" / "model.pt")
    text = CONFIG.format(name=folder.name, batch=batch, dims=dims, outputs=outputs, cls=cls)
    (folder / "config.pbtxt").write_text(text)


def load(model_dir: Path, writable: Path, work: Path) -> dict:
    """One instance load in a fresh process; seconds and what the compile cache did."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["PYTORCH_BACKEND_COMPILE_CACHE"] = str(writable)  # inductor's cache goes in there too
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir)],
        capture_output=True, text=True, check=False, env=env, cwd=work, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    lines = result.pop("lines")
    warm = [re.search(r"compiled in ([0-9.]+) s", line) for line in lines]
    result["warmup_s"] = next(float(m.group(1)) for m in warm if m)
    result["restored"] = any("compile cache: restored" in line for line in lines)
    result["cache_lines"] = [line for line in lines if "compile cache" in line]
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}


def bench(model_dir: Path, work: Path) -> dict:
    from pytorch_backend.serving.precompile import compile_into

    results = {"cold": load(model_dir, work / "cache", work)}
    results["previous_run_cache"] = load(model_dir, work / "cache", work)
    packaged = work / "packaged" / model_dir.name
    shutil.copytree(model_dir, packaged)
    started = time.perf_counter()
    compile_into(packaged.parent / model_dir.name, 1, lambda line: None)
    package_s = time.perf_counter() - started
    results["packaged"] = load(packaged, work / "empty", work)
    size = sum(p.stat().st_size for p in (packaged / "1" / "compile_cache").rglob("*"))
    results["packaged"].update(package_compile_s=round(package_s, 1), package_bytes=size)
    return results


def table(report: dict) -> str:
    """The README's table: load and warm-up seconds per model and scenario."""
    rows = [
        "| model | cold: load / warm-up | previous run's cache | packaged `compile_cache/` "
        "| packaging compile |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, runs in report["models"].items():
        cells = [f"{runs[k]['load_s']:.1f} s / {runs[k]['warmup_s']:.1f} s" for k in SCENARIOS]
        packaged = runs["packaged"]
        size = f"{packaged['package_compile_s']:.0f} s, {packaged['package_bytes'] / 1e6:.1f} MB"
        rows.append(f"| {name} | {' | '.join(cells)} | {size} |")
    return "\n".join(rows)


SCENARIOS = ("cold", "previous_run_cache", "packaged")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="eager,resnet")
    parser.add_argument("--json", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the table of --json; no run")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.json.read_text())))
        return 0
    example = (REPO_ROOT / "src/pytorch_backend/serving/example_module.py").read_text()
    models = {
        "eager_module": (example, "EagerMlp", [4], 3, 8),
        "resnet18_224": (RESNET, "ResNet18", [3, 224, 224], 1000, 4),
    }
    chosen = {"eager": "eager_module", "resnet": "resnet18_224"}
    report = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "models": {},
    }
    if args.json.is_file():  # a run of some models keeps the others' results
        report["models"] = json.loads(args.json.read_text()).get("models", {})
    for key in args.models.split(","):
        name = chosen[key]
        with tempfile.TemporaryDirectory(prefix="bench_compile_cache_") as tmp:
            work = Path(tmp)
            write_model(work / "models" / name, *models[name])
            report["models"][name] = bench(work / "models" / name, work)
        print(json.dumps({name: report["models"][name]}, indent=1), flush=True)
        report["load_average_at_end"] = list(os.getloadavg())
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")  # after each model
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
