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
variant gets ``--warmup`` s of unmeasured load, then ``--rounds`` interleaved rounds each give
every variant one ``--seconds`` slot (ts, pt2, eager, naive, lean, empty, raw, ts, ...), so
drifting load on a shared machine hits all variants alike; ratios are taken round by round and
reported as median and min-max. Server-side figures are deltas of the statistics endpoint over
the measured slots; our variants' per-step seconds, where the backend exposes them, are deltas of
its /metrics counters. A footing sets the threads: ``defaults`` (each side's default) or ``N``
(equal threads: ``INTRA_OP_THREAD_COUNT`` N for ours, ``torch.set_num_threads(N)`` in the
hand-written model.py files and for raw); ``--footings defaults,1`` runs each on a fresh server
and writes one combined report. Writes ``serving.json``, ``serving.md`` and ``serving.png`` to
``--out``.

Run: ``python bench/serving.py`` (about 9.5 min of warm-up and measured load plus model loading;
the AOTI packages compile once, ~30 s each, and are cached under ``.test-artifacts/bench/``);
``--smoke`` for a short check of the whole path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import provenance  # noqa: E402
from serving_markdown import write_outputs  # noqa: E402
from serving_models import (  # noqa: E402
    MODELS,
    REPO_ROOT,
    VARIANT_KEYS,
    BenchModel,
    write_repository,
)
from serving_report import summarize, summarize_footing  # noqa: E402
from serving_run import run_all  # noqa: E402

from pytorch_backend.runtime.settings import (  # noqa: E402
    available_cpus,
    default_intra_op_threads,
    whole_cpu_share,
)
from pytorch_backend.serving.server import (  # noqa: E402
    ServerError,
    TritonServer,
    TritonServerNotFoundError,
    assemble_backends,
    find_tritonserver,
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def parse_footings(text: str) -> list[int | None]:
    """``defaults,1,2`` as ``[None, 1, 2]``; raises ValueError on anything else."""
    footings: list[int | None] = []
    for item in (part.strip() for part in text.split(",")):
        value = None if item == "defaults" else int(item)
        if value is not None and value < 1:
            raise ValueError(item)
        if value in footings:
            raise ValueError(f"{item} twice")
        footings.append(value)
    return footings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="a few seconds: tiny slots, concurrency 4")
    add("--seconds", type=float, default=3.0, help="measured s per variant per round (3)")
    add("--rounds", type=int, default=5, help="interleaved rounds (5)")
    add("--warmup", type=float, default=1.0, help="unmeasured s per variant and concurrency (1)")
    add("--concurrency", default="1,16,64", help="closed-loop concurrencies (1,16,64)")
    add("--models", default="mlp,cnn", help="models to run (mlp,cnn)")
    add("--variants", default=",".join(VARIANT_KEYS), help="variants to run (all)")
    add("--raw-seconds", type=float, default=1.0, help="raw torch timing per round (1)")
    add("--follow", type=int, default=20, help="requests timed after the first one (20)")
    add("--eager-compile", default="{}", help="eager runtime's TORCH_COMPILE_OPTIONAL_PARAMETERS")
    add("--threads", type=int, help="equal threads N for every side (= --footings N)")
    add("--footings", help="footings, each on a fresh server: defaults and/or N (defaults)")
    add("--omp-threads", type=int, default=0, help="OMP_NUM_THREADS for the server; 0: unset")
    add("--request-timeout", type=float, default=60.0, help="per-request timeout in s (60)")
    add("--kind", choices=("cpu", "gpu"), default="cpu", help="instance kind (cpu)")
    add("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="output folder")
    add("--log", type=Path, help="keep the tritonserver log in this file (per footing)")
    add("--start-attempts", type=int, default=3, help="servers per footing if one crashes (3)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.rounds, args.warmup, args.raw_seconds = 0.3, 2, 0.0, 0.05
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
    if args.start_attempts < 1:
        parser.error(f"--start-attempts must be >= 1, got {args.start_attempts}")
    if args.threads is not None and args.footings is not None:
        parser.error("--threads N is --footings N: give one of them")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        args.footings = (
            [args.threads]
            if args.threads is not None
            else parse_footings(args.footings or "defaults")
        )
    except ValueError as error:
        parser.error(f"--footings takes 'defaults' and thread counts >= 1: {error}")
    return args


def describe_footing(threads: int | None, kind: str) -> dict:
    """A footing's label and what it means for every side."""
    if threads is not None:
        return {
            "footing": str(threads),
            "threads": threads,
            "description": f"equal threads {threads}: INTRA_OP_THREAD_COUNT {threads} for ours, "
            f"torch.set_num_threads({threads}) in the naive and lean model.py files and for raw",
        }
    default = torch.get_num_threads()
    cpus = available_cpus()
    ours = (
        f"intra-op threads chosen at warm-up between {default_intra_op_threads(cpus, 1)} and "
        f"{whole_cpu_share(cpus, 1)}"
        if kind == "cpu"
        else "its default threads"
    )
    return {
        "footing": "defaults",
        "threads": None,
        "description": f"defaults vs defaults: ours {ours} (the backend's KIND_{kind.upper()} "
        f"default), the naive and lean model.py files torch's default ({default}), raw the "
        f"faster of 1 and {default}",
    }


def _server(root: Path, binary: Path, args, label: str) -> TritonServer:
    """A tritonserver on ``root``'s repository, free ports, the log where ``--log`` says."""
    log = root / "tritonserver.log"
    if args.log is not None:
        log = (
            args.log if len(args.footings) == 1 else args.log.with_stem(f"{args.log.stem}-{label}")
        )
    http_port, grpc_port, metrics_port = free_ports(3)
    return TritonServer(
        root / "repository",
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log=log,
        server=binary,
        backend_directory=assemble_backends(root / "backends", binary),
        # A load slower than the Python backend's default 30 s stub timeout (a CNN's warm-up on a
        # busy machine) leaves tritonserver waiting forever on the stub it gave up on.
        extra_args=["--exit-timeout-secs=5", "--backend-config=python,stub-timeout-seconds=600"],
        env_overrides={"OMP_NUM_THREADS": str(args.omp_threads)} if args.omp_threads else None,
    )


def _attempt(binary: Path, models: list[BenchModel], variants, args, threads, label) -> dict:
    """One fresh server for a footing: ``measured`` and ``server_ready_s``, or an ``error`` with
    ``died`` (the server crashed or never got ready: worth another attempt)."""
    with tempfile.TemporaryDirectory(prefix="pytorch-backend-bench-") as tmp:
        root = Path(tmp)
        write_repository(
            root / "repository", models, variants, args.eager_compile, args.kind, threads
        )
        server = _server(root, binary, args, label)
        with server:
            load_start = time.perf_counter()
            try:
                statuses = server.wait_ready(timeout=900)
            except ServerError as error:  # crashed, or stuck loading past the timeout
                return {"error": str(error), "died": True}
            broken = [m for m in statuses if m.state != "READY"]
            if broken:
                reasons = "\n".join(f"model {m.name} is {m.state}: {m.reason}" for m in broken)
                return {"error": f"{reasons}\n{server.log_tail()}", "died": False}
            ready = time.perf_counter() - load_start
            url, port = f"127.0.0.1:{server.grpc_port}", server.metrics_port
            try:
                measured = asyncio.run(run_all(url, port, models, variants, args, threads))
            except Exception as error:  # a crashed server fails whatever call was running
                if server.returncode is None:
                    raise
                return {"error": f"died during the run: {error}\n{server.log_tail()}", "died": True}
    return {"measured": measured, "server_ready_s": ready}


def serve_footing(binary: Path, models: list[BenchModel], variants, args, threads) -> dict:
    """One footing on a fresh tritonserver (another one if the server crashes or hangs while
    loading, up to ``--start-attempts``; each is recorded): its summary, or an ``error``."""
    footing = describe_footing(threads, args.kind)
    footing["load_average_start"] = list(os.getloadavg())
    footing["server_crashes"] = []
    print(f"footing {footing['footing']}: {footing['description']}", flush=True)
    for _ in range(args.start_attempts):
        outcome = _attempt(binary, models, variants, args, threads, footing["footing"])
        if "error" not in outcome or not outcome["died"]:
            break
        lines = [line.strip() for line in outcome["error"].splitlines() if line.strip()]
        key = [line for line in lines if "exception" in line or "Signal" in line] or lines[:1]
        footing["server_crashes"].append(key[0][:300])
        print(f"tritonserver crashed ({key[0][:300]}); a fresh one...", file=sys.stderr)
    if "error" in outcome:
        return outcome
    footing["server_ready_s"] = outcome["server_ready_s"]
    footing["load_average_end"] = list(os.getloadavg())
    return summarize_footing(outcome["measured"], footing)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [MODELS[name] for name in args.models]
    variants = [v for v in VARIANT_KEYS if v in args.variants]
    try:
        binary = find_tritonserver()
    except TritonServerNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    machine = {**provenance(), "instance_kind": args.kind}
    print(f"{machine}\ntritonserver: {binary}", flush=True)
    started = time.perf_counter()
    parts = []
    for threads in args.footings:
        part = serve_footing(binary, models, variants, args, threads)
        if "error" in part:
            print(part["error"], file=sys.stderr)
            return 1
        parts.append(part)
    machine["load_average_end"] = list(os.getloadavg())
    machine["total_s"] = time.perf_counter() - started
    report = summarize(parts, models, variants, args, machine)
    paths = write_outputs(report, args.out)
    print((args.out / "serving.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
