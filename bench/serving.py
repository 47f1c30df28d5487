"""Side-by-side serving benchmark: this backend vs hand-written model.py files vs raw torch.

One real tritonserver serves two models (an overhead-bound MLP 256->1024->256 and a compute-bound
small residual CNN on 3x64x64), each as six served variants with ``max_batch_size: 64``,
``dynamic_batching {}`` and one CPU instance, default settings otherwise:

* ``ts`` / ``pt2`` / ``eager``: this backend (``backend: "pytorch_python"``) with TorchScript,
  an AOT-Inductor package (dynamic batch dim) and the eager runtime (module file + state dict);
* ``naive``: a hand-written model.py, per request ``as_numpy``, one forward, NumPy output;
* ``lean``: a hand-written model.py, DLPack in, one ``torch.cat``, one forward under
  ``inference_mode``, DLPack out, split;
* ``empty``: a model.py returning cached zeros without torch (the ceiling of the server path);

plus ``raw``: the module called in this process at the batch sizes the server formed.

Right after READY, each served model's first request is timed (cold start). Then, per model and
per concurrency (closed loop, batch-1 gRPC requests through ``tritonclient.grpc.aio``), every
variant gets ``--warmup`` s of unmeasured load and ``--seconds`` s of measured load split into
``--rounds`` interleaved slots (ts, pt2, eager, naive, lean, empty, raw, ts, ...), so drifting
load on a shared machine hits all variants alike. Server-side figures are deltas of the
statistics endpoint over the measured slots. Writes ``serving.json``, ``serving.md`` and
``serving.png`` to ``--out``.

Run: ``python bench/serving.py`` (about 9 min; the AOTI packages compile once, ~30 s each, and are
cached under ``.test-artifacts/bench/``); ``--smoke`` for a few-second check of the whole path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_load import (  # noqa: E402
    Load,
    Stats,
    bucket_sizes,
    closed_loop,
    infer_once,
    model_stats,
    request_array,
    time_forward,
)
from serving_models import (  # noqa: E402
    MAX_BATCH,
    MODELS,
    REPO_ROOT,
    VARIANT_KEYS,
    BenchModel,
    served_name,
    write_repository,
)
from serving_report import summarize, write_outputs  # noqa: E402

from pytorch_backend.serving.server import (  # noqa: E402
    ServerError,
    TritonServer,
    TritonServerNotFoundError,
    assemble_backends,
    find_tritonserver,
)

TOLERANCE = {"cpu": 1e-3, "gpu": 2e-2}  # cuDNN convolutions use TF32 by default


class OnDevice(torch.nn.Module):
    """Raw torch on a GPU: the copy of the batch to the device, the forward, a synchronisation."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module, self.device = module.to(device), device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x.to(self.device))
        torch.cuda.synchronize(self.device)
        return out


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def cold_start(
    client, models: list[BenchModel], variants: list[str], follow: int, kind: str
) -> dict:
    """Per served model: its first request after READY, then ``follow`` more, and an output check.

    Every model gets its first request before any gets a second one, so none is warmed by load.
    """
    result: dict = {}
    for model in models:
        array = request_array(model, 7)
        with torch.inference_mode():
            expected = model.make()(torch.from_numpy(array)).numpy()
        for variant in (v for v in model.variants(variants) if v != "raw"):
            name = served_name(model, variant)
            first, got = await infer_once(client, model, name, array)
            if got is None or got.shape != expected.shape:
                match = False
            elif variant == "empty":
                match = True  # cached zeros: only the shape can match
            else:
                tolerance = TOLERANCE[kind]
                match = bool(np.allclose(got, expected, rtol=tolerance, atol=tolerance))
            result.setdefault(model.name, {})[variant] = {
                "first_ms": first * 1e3,
                "outputs_match": match,
                "output_check": "shape" if variant == "empty" else "values",
            }
    for model in models:
        array = request_array(model, 8)
        for variant, entry in result[model.name].items():
            times = [
                (await infer_once(client, model, served_name(model, variant), array))[0] * 1e3
                for _ in range(follow)
            ]
            entry["next_ms"] = times
    return result


class Totals:
    """One variant's measurements at one concurrency, summed over its slots."""

    def __init__(self) -> None:
        self.load = Load()
        self.stats = Stats()
        self.raw: dict[int, list[float]] = {}
        self.raw_by_threads: dict[str, list[float]] = {}


async def measure_slot(client, model: BenchModel, variant: str, args, totals: Totals) -> None:
    name = served_name(model, variant)
    before = await model_stats(client, name)
    load = await closed_loop(
        client,
        model,
        name,
        seconds=args.slot,
        concurrency=args.current_concurrency,
        timeout=args.request_timeout,
    )
    totals.stats = totals.stats + (await model_stats(client, name) - before)
    totals.load.latencies.extend(load.latencies)
    totals.load.errors.extend(load.errors)
    totals.load.elapsed += load.elapsed


def measure_raw(module: torch.nn.Module, model: BenchModel, concurrency: int, args, totals) -> None:
    """Time the in-process forward at every bucket up to the largest batch the server can form.

    Each size is timed with one intra-op thread and with torch's default; the faster counts (the
    best this process gets from the forward on this machine), both are kept for the report.
    """
    sizes = bucket_sizes(min(concurrency, MAX_BATCH))
    default = torch.get_num_threads()
    settings = sorted({1, default})
    try:
        for size in sizes:
            batch = model.example(size)
            timed = {}
            for threads in settings:
                torch.set_num_threads(threads)
                share = args.raw_seconds / len(sizes) / len(settings)
                timed[threads] = time_forward(module, batch, share)
                totals.raw_by_threads.setdefault(f"{threads}:{size}", []).append(timed[threads])
            totals.raw.setdefault(size, []).append(min(timed.values()))
    finally:
        torch.set_num_threads(default)


async def run_block(client, model, module, concurrency, variants, args) -> dict[str, Totals]:
    """Warm every variant up at ``concurrency``, then measure in interleaved rounds."""
    args.current_concurrency = concurrency
    served = [v for v in variants if v != "raw"]
    if args.warmup > 0:
        for variant in served:
            await closed_loop(
                client,
                model,
                served_name(model, variant),
                seconds=args.warmup,
                concurrency=concurrency,
                timeout=args.request_timeout,
            )
    totals = {v: Totals() for v in variants}
    raw_totals = Totals()
    for number in range(1, args.rounds + 1):
        print(f"  {model.name} c={concurrency} round {number}/{args.rounds}", flush=True)
        for variant in variants:
            if variant == "raw":
                measure_raw(module, model, concurrency, args, raw_totals)
            else:
                await measure_slot(client, model, variant, args, totals[variant])
    for entry in totals.values():
        entry.raw, entry.raw_by_threads = raw_totals.raw, raw_totals.raw_by_threads
    return totals


async def run_all(url: str, models: list[BenchModel], variants: list[str], args) -> dict:
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(url)
    try:
        cold = await cold_start(client, models, variants, args.follow, args.kind)
        blocks: dict = {}
        for model in models:
            module = model.make()
            if args.kind == "gpu":
                module = OnDevice(module, torch.device("cuda", 0))
            for concurrency in args.concurrency:
                blocks[(model.name, concurrency)] = await run_block(
                    client, model, module, concurrency, model.variants(variants), args
                )
    finally:
        await client.close()
    return {"cold": cold, "blocks": blocks}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="a few seconds: tiny slots, concurrency 4")
    add("--seconds", type=float, default=9.0, help="measured s per variant and concurrency (9)")
    add("--rounds", type=int, default=6, help="interleaved slots the seconds are split into (6)")
    add("--warmup", type=float, default=1.0, help="unmeasured s per variant and concurrency (1)")
    add("--concurrency", default="1,16,64", help="closed-loop concurrencies (1,16,64)")
    add("--models", default="mlp,cnn", help="models to run (mlp,cnn)")
    add("--variants", default=",".join(VARIANT_KEYS), help="variants to run (all)")
    add("--raw-seconds", type=float, default=1.0, help="raw torch timing per round (1)")
    add("--follow", type=int, default=20, help="requests timed after the first one (20)")
    add("--eager-compile", default="{}", help="eager runtime's TORCH_COMPILE_OPTIONAL_PARAMETERS")
    add("--threads", type=int, default=0, help="OMP_NUM_THREADS for the server; 0: unset")
    add("--request-timeout", type=float, default=60.0, help="per-request timeout in s (60)")
    add("--kind", choices=("cpu", "gpu"), default="cpu", help="instance kind (cpu)")
    add("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="output folder")
    add("--log", type=Path, help="keep the tritonserver log in this file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.rounds, args.warmup, args.raw_seconds = 0.4, 1, 0.0, 0.05
        args.concurrency, args.follow, args.eager_compile = "4", 3, '{"disable": true}'
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.models = args.models.split(",")
    args.variants = args.variants.split(",")
    for values, known, what in (
        (args.models, MODELS, "model"),
        (args.variants, VARIANT_KEYS, "variant"),
    ):
        unknown = sorted(set(values) - set(known))
        if unknown:
            parser.error(f"unknown {what}(s) {unknown}")
    if "empty" not in args.variants or "raw" not in args.variants:
        parser.error("the empty and raw variants are the references: keep them")
    if args.seconds <= 0 or args.rounds < 1 or min(args.concurrency) < 1:
        parser.error("--seconds must be > 0, --rounds and every concurrency >= 1")
    args.slot = args.seconds / args.rounds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [MODELS[name] for name in args.models]
    variants = [v for v in VARIANT_KEYS if v in args.variants]
    try:
        binary = find_tritonserver()
    except TritonServerNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    machine = {
        "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "torch": torch.__version__,
        "torch_threads_in_process": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "instance_kind": args.kind,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pytorch-backend-bench-") as tmp:
        root = Path(tmp)
        write_repository(root / "repository", models, variants, args.eager_compile, args.kind)
        backends = assemble_backends(root / "backends", binary)
        http_port, grpc_port, metrics_port = free_ports(3)
        server = TritonServer(
            root / "repository",
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            log=args.log if args.log is not None else root / "tritonserver.log",
            server=binary,
            backend_directory=backends,
            extra_args=["--exit-timeout-secs=5"],
            env_overrides={"OMP_NUM_THREADS": str(args.threads)} if args.threads else None,
        )
        print(f"{machine}\nstarting tritonserver ({binary})", flush=True)
        with server:
            load_start = time.perf_counter()
            try:
                statuses = server.wait_ready(timeout=900)
            except ServerError as error:
                print(error, file=sys.stderr)
                return 1
            broken = [m for m in statuses if m.state != "READY"]
            if broken:
                for m in broken:
                    print(f"model {m.name} is {m.state}: {m.reason}", file=sys.stderr)
                print(server.log_tail(), file=sys.stderr)
                return 1
            machine["server_ready_s"] = time.perf_counter() - load_start
            measured = asyncio.run(run_all(f"127.0.0.1:{grpc_port}", models, variants, args))
    machine["load_average_end"] = os.getloadavg()
    machine["total_s"] = time.perf_counter() - started
    report = summarize(measured, models, variants, args, machine)
    paths = write_outputs(report, args.out)
    print((args.out / "serving.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
