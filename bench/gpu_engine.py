"""The engine in process on a device, no Triton: a load-and-answer check and a benchmark.

``check``: one model (the bench MLP) served as TorchScript, as a ``.pt2`` package compiled here
with this machine's torch, and by the eager runtime (nn.Module + ``torch.compile``), each loaded
through ``build_instance`` on the device (``KIND_GPU`` on ``cuda:N``); a batch of requests is
answered and compared with the module called directly. Writes one entry per kind.

``bench``: per model (the bench MLP and CNN, and a ResNet-50-sized bottleneck CNN on 3x224x224)
and batch size, ``B`` requests of one row each through ``Instance.infer`` (validation, gather,
forward, checks, split; outputs stay on the device) against raw torch (``torch.cat`` + copy to
the device + forward, and the forward on inputs already there), with ``CUDA_GRAPHS`` off and on
and pinned staging on and off (off: the engine's staging removed after the load, so inputs go
through ``torch.cat`` + ``.to(device)``). Times are medians of synchronised calls.

Run: ``python bench/gpu_engine.py check --out check.json``, ``python bench/gpu_engine.py bench
--out bench.json``; ``--device cpu`` runs the same code on the CPU (a test does, with tiny sizes).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_models import CNN_SOURCE, MLP_SOURCE, BenchModel  # noqa: E402

from pytorch_backend.config import InstanceKind  # noqa: E402
from pytorch_backend.instance import Instance, InstanceArgs, build_instance  # noqa: E402
from pytorch_backend.requests import RequestInputs  # noqa: E402

INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"
MAX_BATCH = 64

RESNET_SOURCE = '''\
"""ResNet-50-sized: bottleneck blocks [3, 4, 6, 3], widths 64-512 (x4), 3x224x224 -> 1000."""

import torch
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, inp: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(inp, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out),
        )
        self.skip = nn.Sequential()
        if stride != 1 or inp != out:
            self.skip = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                  nn.MaxPool2d(3, 2, 1)]
        inp = 64
        for index, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for block in range(blocks):
                stride = 2 if block == 0 and index > 0 else 1
                layers.append(Bottleneck(inp, width, stride))
                inp = width * 4
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(inp, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))
'''

MODELS = {
    "mlp": BenchModel("mlp", "MLP", MLP_SOURCE, (256,), (256,)),
    "cnn": BenchModel("cnn", "CNN", CNN_SOURCE, (3, 64, 64), (10,)),
    "resnet50": BenchModel("resnet50", "ResNet", RESNET_SOURCE, (3, 224, 224), (1000,)),
}


class Sink:
    """Keeps what instances log (printed only when a load fails)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log_info(self, message: str) -> None:
        self.lines.append(message)

    log_warn = log_error = log_verbose = log_info


def config(model: BenchModel, kind: str, parameters: dict[str, str], gpu: bool) -> dict:
    platform = {"ts": "pytorch_libtorch", "pt2": "torch_aoti", "eager": ""}[kind]
    return {
        "name": f"{model.name}_{kind}",
        "backend": "pytorch_python",
        "platform": platform,
        "max_batch_size": MAX_BATCH,
        "input": [{"name": INPUT, "data_type": "TYPE_FP32", "dims": list(model.input_dims)}],
        "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": list(model.output_dims)}],
        "instance_group": [{"kind": "KIND_GPU" if gpu else "KIND_CPU", "count": 1}],
        "dynamic_batching": {},
        "parameters": {k: {"string_value": v} for k, v in parameters.items()},
    }


def write_model(root: Path, model: BenchModel, kind: str, device: torch.device) -> Path:
    """``root/<model>_<kind>/1/`` with the artifact of ``kind`` (a .pt2 compiled for ``device``)."""
    version = root / f"{model.name}_{kind}" / "1"
    version.mkdir(parents=True, exist_ok=True)
    module = model.make()
    if kind == "ts":
        torch.jit.save(torch.jit.script(module), str(version / "model.pt"))
    elif kind == "eager":
        (version / "model.py").write_text(model.source)
        torch.save(module.state_dict(), str(version / "model.pt"))
    else:
        from torch._inductor import aoti_compile_and_package

        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        example = model.example(4).to(device)
        program = torch.export.export(
            module.to(device), (example,), dynamic_shapes={"x": {0: batch}}
        )
        aoti_compile_and_package(program, package_path=str(version / "model.pt2"))
    return version.parent


def load(model_dir: Path, cfg: dict, device: torch.device) -> Instance:
    gpu = device.type == "cuda"
    kind = InstanceKind.GPU if gpu else InstanceKind.CPU
    args = InstanceArgs(
        json.dumps(cfg), f"{cfg['name']}_0", kind, device.index or 0, model_dir, "1"
    )
    sink = Sink()
    try:
        return build_instance(args, sink)
    except Exception as error:
        raise RuntimeError(f"{error}\n" + "\n".join(sink.lines[-20:])) from None


def requests(model: BenchModel, batch: int) -> list[RequestInputs]:
    rows = model.example(batch, seed=batch)
    return [RequestInputs({INPUT: rows[i : i + 1]}) for i in range(batch)]


def answer(instance: Instance, batch: list[RequestInputs]) -> torch.Tensor:
    outcomes = instance.infer(batch)
    for outcome in outcomes:
        if not isinstance(outcome, dict):
            raise RuntimeError(f"a request failed: {outcome}")
    return torch.cat([outcome[OUTPUT] for outcome in outcomes])  # type: ignore[index,misc]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(call: Callable[[], object], device: torch.device, seconds: float) -> float:
    """Median ms of ``call`` (synchronised) over about ``seconds`` (at least 5 runs)."""
    call()
    sync(device)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 1000):
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def check(args: argparse.Namespace, root: Path) -> dict:
    device = torch.device(args.device)
    model = MODELS["mlp"]
    batch = requests(model, 8)
    with torch.inference_mode():
        expected = model.make()(torch.cat([r.inputs[INPUT] for r in batch])).to(device)
    result: dict = {}
    for kind in args.kinds.split(","):
        entry: dict = {}
        started = time.perf_counter()
        try:
            model_dir = write_model(root, model, kind, device)
            entry["build_s"] = round(time.perf_counter() - started, 2)
            instance = load(model_dir, config(model, kind, {}, device.type == "cuda"), device)
            entry["load_s"] = round(time.perf_counter() - started - entry["build_s"], 2)
            got = answer(instance, batch)
            entry["output_device"] = str(got.device)
            entry["max_abs_diff"] = float((got.float() - expected).abs().max())
            entry["ok"] = got.device == device and entry["max_abs_diff"] < args.tolerance
            instance.close()
        except Exception:
            entry["ok"], entry["error"] = False, traceback.format_exc(limit=8)
        result[kind] = entry
        print(kind, json.dumps(entry), flush=True)
    return result


def bench_model(args: argparse.Namespace, root: Path, model: BenchModel) -> list[dict]:
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batches = [int(b) for b in args.batches.split(",")]
    module = model.make().to(device)
    rows: list[dict] = []
    cases = {b: requests(model, b) for b in batches}
    with torch.inference_mode():
        for b, batch in cases.items():
            cpu = [r.inputs[INPUT] for r in batch]
            resident = torch.cat(cpu).to(device)
            raw = {
                "raw_copy_ms": median_ms(
                    lambda cpu=cpu: module(torch.cat(cpu).to(device)), device, args.seconds
                ),
                "raw_resident_ms": median_ms(lambda x=resident: module(x), device, args.seconds),
            }
            rows.append({"model": model.name, "batch": b, "variant": "raw", **raw})
    model_dir = write_model(root, model, "ts", device)
    sizes = ",".join(str(b) for b in batches)
    for graphs in ("false", "true"):
        cfg = config(model, "ts", {"CUDA_GRAPHS": graphs, "WARMUP_BATCH_SIZES": sizes}, gpu)
        instance = load(model_dir, cfg, device)
        for staging in (True, False):
            if not staging:
                instance.engine._staging = None  # the engine's pinned staging removed
            for b, batch in cases.items():
                raw = next(r for r in rows if r["variant"] == "raw" and r["batch"] == b)
                got = answer(instance, batch)
                with torch.inference_mode():
                    want = module(torch.cat([r.inputs[INPUT] for r in batch]).to(device))
                ms = median_ms(lambda i=instance, q=batch: answer(i, q), device, args.seconds)
                rows.append(
                    {
                        "model": model.name,
                        "batch": b,
                        "variant": "ours",
                        "cuda_graphs": graphs == "true",
                        "pinned_staging": staging,
                        "ms": ms,
                        "x_raw_copy": raw["raw_copy_ms"] / ms,
                        "overhead_ms": ms - raw["raw_copy_ms"],
                        "max_abs_diff": float((got - want).abs().max()),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        instance.close()
        del instance
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    return rows


def bench(args: argparse.Namespace, root: Path) -> dict:
    result: dict = {"rows": [], "errors": {}}
    for name in args.models.split(","):
        try:
            result["rows"] += bench_model(args, root, MODELS[name])
        except Exception:
            result["errors"][name] = traceback.format_exc(limit=8)
            print(result["errors"][name], file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("check", "bench"))
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--kinds", default="ts,pt2,eager", help="check: model kinds")
    parser.add_argument("--models", default="mlp,cnn,resnet50", help="bench: models")
    parser.add_argument("--batches", default="1,4,16,64", help="bench: batch sizes")
    parser.add_argument("--seconds", type=float, default=0.5, help="bench: s per timing")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    machine = {"torch": torch.__version__, "device": args.device}
    if args.device.startswith("cuda"):
        machine["name"] = torch.cuda.get_device_name(torch.device(args.device))
    with tempfile.TemporaryDirectory(prefix="gpu-engine-") as tmp:
        run = check if args.what == "check" else bench
        result = {"machine": machine, **run(args, Path(tmp))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    failed = result.get("errors") or any(
        not entry.get("ok") for key, entry in result.items() if key in ("ts", "pt2", "eager")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
