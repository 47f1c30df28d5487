"""Serving throughput and latency through a real tritonserver, our backend vs a naive model.py.

One tritonserver serves a temporary repository holding the same MLP (Linear 256->1024, ReLU,
Linear 1024->256, FP32, seeded weights) in several configurations; a closed-loop load generator
(``tritonclient.grpc.aio``, N concurrent workers each sending batch-1 requests back to back to
localhost) drives one configuration at a time:

* ``a``: ``backend: "pytorch_python"``, TorchScript, ``max_batch_size: 0`` (no batching);
* ``b``: ``pytorch_python``, TorchScript, ``max_batch_size: 32`` + ``dynamic_batching {}``;
* ``c``: ``pytorch_python``, AOT-Inductor package (batch ``Dim(min=1, max=32)``), dynamic batching;
* ``d``: ``backend: "python"`` with a hand-written model.py doing what users write: per request
  ``torch.from_numpy(as_numpy())``, one forward, ``pb_utils.Tensor(name, out.numpy())``,
  ``max_batch_size: 0`` (the baseline);
* ``e``: the same naive model.py with ``max_batch_size: 32`` + ``dynamic_batching {}`` (Triton
  hands it several requests per execute; it still runs one forward per request);
* ``f``: ``b`` with the backend parameter ``INTRA_OP_THREAD_COUNT: "1"`` (torch's default
  intra-op pool is one thread per core, which competes with tritonserver and the client on a
  small machine; see bench/README.md).

Every model has one CPU instance. Before timing, one request per model is checked against the
eager module and each configuration gets ``--warmup`` seconds of unmeasured load. Then
``--seconds`` of measured load per configuration are split into ``--rounds`` interleaved slots
(a, b, c, d, e, a, b, ...), so drifting machine load hits every configuration alike. Executions
and inferences come from the statistics endpoint (deltas over the measured slots). Ratios are
against ``d`` from the same run.

Run: ``python bench/serving.py [--seconds 10] [--concurrency 16] [--json OUT]``. The AOTI
package is compiled once (~30 s) and cached under ``.test-artifacts/bench/``.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import inspect
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pytorch_backend.serving.server import (
    ServerError,
    TritonServer,
    TritonServerNotFoundError,
    assemble_backends,
    find_tritonserver,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".test-artifacts" / "bench"
FEATURES_IN, HIDDEN, FEATURES_OUT = 256, 1024, 256
MAX_BATCH = 32
SEED = 0
INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"


class MLP(torch.nn.Module):
    """Linear 256->1024, ReLU, Linear 1024->256."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(FEATURES_IN, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, FEATURES_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def make_mlp() -> MLP:
    """The benchmark's module, with weights fixed by ``SEED``."""
    torch.manual_seed(SEED)
    return MLP().eval()


# --------------------------------------------------------------------------- artifacts


def build_torchscript(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(make_mlp()), str(path))
    return path


def _export_mlp() -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = (torch.randn(4, FEATURES_IN),)
    return torch.export.export(make_mlp(), example, dynamic_shapes={"x": {0: batch}})


def build_aoti(cache_dir: Path = CACHE_DIR) -> Path:
    """The MLP as an AOT-Inductor package, compiled once and cached (keyed by source + torch)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    sources = (MLP, make_mlp, _export_mlp, build_aoti)
    key = "\n".join(inspect.getsource(obj) for obj in sources)
    constants = f"{FEATURES_IN},{HIDDEN},{FEATURES_OUT},{MAX_BATCH},{SEED},{torch.__version__}"
    digest = hashlib.sha256(f"{key}\n{constants}".encode()).hexdigest()[:16]
    path = cache_dir / f"mlp-{digest}.pt2"
    if path.exists():
        return path
    with open(cache_dir / ".mlp.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        print("compiling the AOT-Inductor package once (about 30 s)...", flush=True)
        from torch._inductor import aoti_compile_and_package

        tmp = cache_dir / f".mlp-{digest}.{os.getpid()}.tmp.pt2"
        aoti_compile_and_package(_export_mlp(), package_path=str(tmp))
        os.replace(tmp, path)
    return path


NAIVE_MODEL_PY = textwrap.dedent(
    '''\
    """What a user writes by hand: one forward per request, through NumPy both ways."""

    from pathlib import Path

    import torch
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
            self.model = torch.jit.load(str(path))
            self.model.eval()

        def execute(self, requests):
            responses = []
            for request in requests:
                array = pb_utils.get_input_tensor_by_name(request, "INPUT__0").as_numpy()
                x = torch.from_numpy(array)
                with torch.no_grad():
                    out = self.model(x)
                tensor = pb_utils.Tensor("OUTPUT__0", out.numpy())
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            return responses
    '''
)


@dataclass(frozen=True)
class Configuration:
    key: str
    model: str
    description: str
    backend: str
    platform: str
    batching: bool
    parameters: tuple[tuple[str, str], ...] = ()


CONFIGURATIONS = (
    Configuration("a", "a_ts_nobatch", "ours, TorchScript, no batching", "pytorch_python",
                  "pytorch_libtorch", False),
    Configuration("b", "b_ts_dynbatch", "ours, TorchScript, dynamic batching", "pytorch_python",
                  "pytorch_libtorch", True),
    Configuration("c", "c_aoti_dynbatch", "ours, AOTI, dynamic batching", "pytorch_python",
                  "torch_aoti", True),
    Configuration("d", "d_naive", "naive model.py, no batching (baseline)", "python",
                  "pytorch_libtorch", False),
    Configuration("e", "e_naive_dynbatch", "naive model.py, dynamic batching, loop", "python",
                  "pytorch_libtorch", True),
    Configuration("f", "f_ts_dynbatch_1thread", "b + INTRA_OP_THREAD_COUNT=1",
                  "pytorch_python", "pytorch_libtorch", True, (("INTRA_OP_THREAD_COUNT", "1"),)),
)  # fmt: skip
BASELINE = "d"


def config_text(conf: Configuration) -> str:
    dims_in = [FEATURES_IN] if conf.batching else [1, FEATURES_IN]
    dims_out = [FEATURES_OUT] if conf.batching else [1, FEATURES_OUT]
    lines = [
        f'name: "{conf.model}"',
        f'backend: "{conf.backend}"',
        f'platform: "{conf.platform}"',
        f"max_batch_size: {MAX_BATCH if conf.batching else 0}",
        f'input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: {dims_in} }} ]',
        f'output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: {dims_out} }} ]',
        "instance_group [ { kind: KIND_CPU count: 1 } ]",
    ]
    if conf.batching:
        lines.append("dynamic_batching { }")
    for key, value in conf.parameters:
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def write_repository(
    root: Path, configurations: list[Configuration], scripted: Path, aoti: Path | None
) -> Path:
    """Write one model directory per configuration under ``root`` (copies of the artifacts)."""
    for conf in configurations:
        version = root / conf.model / "1"
        version.mkdir(parents=True)
        (root / conf.model / "config.pbtxt").write_text(config_text(conf))
        if conf.platform == "torch_aoti":
            assert aoti is not None
            (version / "model.pt2").write_bytes(aoti.read_bytes())
        else:
            (version / "model.pt").write_bytes(scripted.read_bytes())
        if conf.backend == "python":
            (version / "model.py").write_text(NAIVE_MODEL_PY)
    return root


# --------------------------------------------------------------------------- measurement


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its direct children (the Python backend stubs)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
        if int(entry.name) == pid or ppid == pid:
            total += (utime + stime) / tick
    return total


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Stats:
    inferences: int
    executions: int
    queue_ns: int
    compute_ns: int
    success: int

    def __sub__(self, other: Stats) -> Stats:
        return Stats(
            self.inferences - other.inferences,
            self.executions - other.executions,
            self.queue_ns - other.queue_ns,
            self.compute_ns - other.compute_ns,
            self.success - other.success,
        )

    def __add__(self, other: Stats) -> Stats:
        return Stats(
            self.inferences + other.inferences,
            self.executions + other.executions,
            self.queue_ns + other.queue_ns,
            self.compute_ns + other.compute_ns,
            self.success + other.success,
        )


async def model_stats(client, model: str) -> Stats:
    raw = await client.get_inference_statistics(model_name=model, as_json=True)
    entry = raw["model_stats"][0]
    stats = entry.get("inference_stats", {})

    def ns(field: str) -> int:
        return int(stats.get(field, {}).get("ns", 0))

    return Stats(
        inferences=int(entry.get("inference_count", 0)),
        executions=int(entry.get("execution_count", 0)),
        queue_ns=ns("queue"),
        compute_ns=ns("compute_input") + ns("compute_infer") + ns("compute_output"),
        success=int(stats.get("success", {}).get("count", 0)),
    )


def request_array(seed: int) -> np.ndarray:
    """One batch-1 request's input."""
    return np.random.default_rng(seed).standard_normal((1, FEATURES_IN)).astype(np.float32)


@dataclass
class Load:
    latencies: list[float]
    errors: list[str]
    elapsed: float


async def closed_loop(
    url: str,
    model: str,
    *,
    seconds: float,
    concurrency: int,
    max_requests: int,
    request_timeout: float,
) -> Load:
    """``concurrency`` workers, each sending one request after the other until time is up."""
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException

    latencies: list[float] = []
    errors: list[str] = []
    budget = [max_requests]

    async def worker(client, index: int, deadline: float) -> None:
        item = grpcaio.InferInput(INPUT, [1, FEATURES_IN], "FP32")
        item.set_data_from_numpy(request_array(1000 + index))
        outputs = [grpcaio.InferRequestedOutput(OUTPUT)]
        while time.perf_counter() < deadline and budget[0] > 0 and len(errors) < 100:
            budget[0] -= 1
            start = time.perf_counter()
            try:
                await client.infer(model, [item], outputs=outputs, client_timeout=request_timeout)
            except InferenceServerException as error:
                errors.append(str(error))
                continue
            latencies.append(time.perf_counter() - start)

    client = grpcaio.InferenceServerClient(url)
    try:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(worker(client, i, deadline) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        await client.close()
    return Load(latencies, errors, elapsed)


async def check_outputs(url: str, configurations: list[Configuration]) -> None:
    """One request per model, compared with the eager module (a broken setup is not timed)."""
    import tritonclient.grpc.aio as grpcaio

    array = request_array(7)
    with torch.inference_mode():
        expected = make_mlp()(torch.from_numpy(array)).numpy()
    client = grpcaio.InferenceServerClient(url)
    try:
        for conf in configurations:
            item = grpcaio.InferInput(INPUT, [1, FEATURES_IN], "FP32")
            item.set_data_from_numpy(array)
            result = await client.infer(conf.model, [item])
            got = result.as_numpy(OUTPUT)
            if got is None or got.shape != expected.shape:
                raise SystemExit(f"{conf.model}: unexpected output {got!r}")
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=conf.model)
    finally:
        await client.close()


@dataclass(frozen=True)
class Result:
    key: str
    model: str
    description: str
    requests: int
    errors: int
    seconds: float
    throughput: float  # successful inferences per second (client side)
    p50_ms: float
    p99_ms: float
    mean_ms: float
    inferences: int  # server statistics over the measured window
    executions: int
    inferences_per_execution: float
    queue_ms: float  # mean per request
    compute_ms: float  # mean per request (input + infer + output)
    client_cpu: float  # CPU seconds per wall second of the load generator process
    server_cpu: float  # CPU seconds per wall second of tritonserver + its stubs
    first_error: str


@dataclass
class Totals:
    """One configuration's measurements, summed over its time slots."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    stats: Stats = Stats(0, 0, 0, 0, 0)
    cpu_client: float = 0.0
    cpu_server: float = 0.0

    def result(self, conf: Configuration) -> Result:
        lat_ms = np.asarray(self.latencies) * 1e3 if self.latencies else np.asarray([np.nan])
        success = max(self.stats.success, 1)
        elapsed = max(self.elapsed, 1e-9)
        return Result(
            key=conf.key,
            model=conf.model,
            description=conf.description,
            requests=len(self.latencies) + len(self.errors),
            errors=len(self.errors),
            seconds=self.elapsed,
            throughput=len(self.latencies) / elapsed,
            p50_ms=float(np.percentile(lat_ms, 50)),
            p99_ms=float(np.percentile(lat_ms, 99)),
            mean_ms=float(lat_ms.mean()),
            inferences=self.stats.inferences,
            executions=self.stats.executions,
            inferences_per_execution=self.stats.inferences / max(self.stats.executions, 1),
            queue_ms=self.stats.queue_ns / success / 1e6,
            compute_ms=self.stats.compute_ns / success / 1e6,
            client_cpu=self.cpu_client / elapsed,
            server_cpu=self.cpu_server / elapsed,
            first_error=self.errors[0] if self.errors else "",
        )


def _load_args(args: argparse.Namespace) -> dict:
    return {
        "concurrency": args.concurrency,
        "max_requests": args.max_requests,
        "request_timeout": args.request_timeout,
    }


async def measure_slot(
    url: str,
    server_pid: int,
    conf: Configuration,
    seconds: float,
    args: argparse.Namespace,
    totals: Totals,
) -> None:
    """Load ``conf`` for ``seconds`` and add what was measured to ``totals``."""
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(url)
    try:
        before = await model_stats(client, conf.model)
        cpu_client, cpu_server = client_cpu_seconds(), process_tree_cpu_seconds(server_pid)
        load = await closed_loop(url, conf.model, seconds=seconds, **_load_args(args))
        totals.cpu_client += client_cpu_seconds() - cpu_client
        totals.cpu_server += process_tree_cpu_seconds(server_pid) - cpu_server
        totals.stats = totals.stats + (await model_stats(client, conf.model) - before)
    finally:
        await client.close()
    totals.latencies.extend(load.latencies)
    totals.errors.extend(load.errors)
    totals.elapsed += load.elapsed


# --------------------------------------------------------------------------- report


def print_table(results: list[Result]) -> None:
    base = next((r for r in results if r.key == BASELINE), None)
    header = (
        f"{'cfg':<3} {'description':<40} {'infer/s':>8} {'x(d)':>6} {'p50 ms':>7} "
        f"{'x(d)':>6} {'p99 ms':>7} {'infer/exec':>10} {'queue ms':>8} {'compute ms':>10} "
        f"{'cpu cli/srv':>11} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        thr_ratio = f"{r.throughput / base.throughput:.2f}" if base else "-"
        p50_ratio = f"{r.p50_ms / base.p50_ms:.2f}" if base else "-"
        print(
            f"{r.key:<3} {r.description:<40} {r.throughput:>8.0f} {thr_ratio:>6} "
            f"{r.p50_ms:>7.2f} {p50_ratio:>6} {r.p99_ms:>7.2f} "
            f"{r.inferences_per_execution:>10.2f} {r.queue_ms:>8.2f} {r.compute_ms:>10.2f} "
            f"{r.client_cpu:>5.2f}/{r.server_cpu:<5.2f} {r.errors:>6}"
        )
    print(
        "\nx(d): throughput / throughput of d (higher is better), p50 / p50 of d (lower is "
        "better).\ninfer/exec: inferences per model execution (server statistics; 1.00 = no "
        "batching).\nqueue/compute ms: server means per request. cpu cli/srv: CPU seconds per "
        "second of the load generator / tritonserver + stubs."
    )
    for r in results:
        if r.errors:
            print(f"{r.key}: {r.errors} errors, first: {r.first_error}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured s per config (10)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds the seconds are split into (5)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured s per config (2)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent workers (16)")
    parser.add_argument(
        "--configs",
        default="".join(c.key for c in CONFIGURATIONS),
        help="which configurations to run, e.g. 'abd' (default: all)",
    )
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="request cap per phase (1000000)"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=30.0, help="per-request timeout in s (30)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for the server and every model (torch intra-op threads unless "
        "INTRA_OP_THREAD_COUNT is given); 0: unset, torch default (one per core)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--log", type=Path, help="keep the tritonserver log in this file")
    args = parser.parse_args(argv)
    unknown = set(args.configs) - {c.key for c in CONFIGURATIONS}
    if unknown:
        parser.error(f"unknown configuration(s) {sorted(unknown)}")
    if args.seconds <= 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--seconds must be > 0, --concurrency and --rounds >= 1")
    return args


async def run_all(
    url: str, server_pid: int, configurations: list[Configuration], args: argparse.Namespace
) -> list[Result]:
    """Check outputs, warm every model up, then measure in interleaved rounds.

    Each round gives every configuration ``seconds / rounds`` of load in turn, so a slow spell of
    a shared machine lands on all configurations rather than on one.
    """
    await check_outputs(url, configurations)
    if args.warmup > 0:
        print(f"warm-up: {args.warmup:g} s per configuration", flush=True)
        for conf in configurations:
            await closed_loop(url, conf.model, seconds=args.warmup, **_load_args(args))
    totals = {conf.key: Totals() for conf in configurations}
    slot = args.seconds / args.rounds
    for number in range(1, args.rounds + 1):
        print(f"round {number}/{args.rounds}: {slot:g} s per configuration", flush=True)
        for conf in configurations:
            await measure_slot(url, server_pid, conf, slot, args, totals[conf.key])
    return [totals[conf.key].result(conf) for conf in configurations]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configurations = [c for c in CONFIGURATIONS if c.key in args.configs]
    try:
        binary = find_tritonserver()
    except TritonServerNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    aoti = build_aoti() if any(c.platform == "torch_aoti" for c in configurations) else None
    with tempfile.TemporaryDirectory(prefix="pytorch-backend-bench-") as tmp:
        root = Path(tmp)
        scripted = build_torchscript(root / "model.pt")
        repository = write_repository(root / "repository", configurations, scripted, aoti)
        backends = assemble_backends(root / "backends", binary)
        http_port, grpc_port, metrics_port = free_ports(3)
        log = args.log if args.log is not None else root / "tritonserver.log"
        server = TritonServer(
            repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            log=log,
            server=binary,
            backend_directory=backends,
            env_overrides={"OMP_NUM_THREADS": str(args.threads)} if args.threads else None,
        )
        print(
            f"tritonserver {binary}\n{os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.2f}, torch {torch.__version__}, Python "
            f"{platform.python_version()}; concurrency {args.concurrency}, {args.warmup:g} s "
            f"warm-up + {args.seconds:g} s in {args.rounds} rounds per configuration; "
            f"OMP_NUM_THREADS {args.threads or 'unset (torch default)'}",
            flush=True,
        )
        with server:
            try:
                models = server.wait_ready(timeout=300)
            except ServerError as error:
                print(error, file=sys.stderr)
                return 1
            broken = [m for m in models if m.state != "READY"]
            if broken:
                for m in broken:
                    print(f"model {m.name} is {m.state}: {m.reason}", file=sys.stderr)
                print(server.log_tail(), file=sys.stderr)
                return 1
            assert server.pid is not None
            url = f"127.0.0.1:{grpc_port}"
            results = asyncio.run(run_all(url, server.pid, configurations, args))
    print()
    print_table(results)
    if args.json is not None:
        report = {
            "cpus": os.cpu_count(),
            "load_average_end": os.getloadavg()[0],
            "torch": torch.__version__,
            "python": platform.python_version(),
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "threads": args.threads or None,
            "baseline": BASELINE,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
