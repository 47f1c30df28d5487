"""The warm-up's thread choice against fixed thread counts, idle and beside a CPU hog.

One tritonserver serves the serving benchmark's MLP and CNN (TorchScript, ``pytorch_python``,
``max_batch_size: 64``, ``dynamic_batching {}``, one KIND_CPU instance) three times each:
``auto`` (no thread parameter: the instance chooses at warm-up, see
``pytorch_backend.runtime.thread_choice``) and ``INTRA_OP_THREAD_COUNT`` 1 and 2. Closed-loop
gRPC load, batch-1 requests at ``--concurrency``, in ``--rounds`` interleaved rounds of
``--seconds`` per variant (auto, 1, 2, auto, ...), in two phases: idle, then with ``--hogs``
processes spinning on the CPU (a concurrent load generator; the choice stays what it was at load).
Reports per phase and model each variant's answers/s (median of rounds, min-max), the per-round
ratio auto / best fixed, and the choice each auto instance logged. Writes ``--out``
(``thread_choice.json`` and ``.md``).

Run: ``python bench/thread_choice.py`` (about 6 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_models import MODELS, REPO_ROOT, build_torchscript  # noqa: E402

from pytorch_backend.serving.server import TritonServer  # noqa: E402

VARIANTS = ("auto", "1", "2")


def config(name: str, model, threads: str) -> str:
    dims = ", ".join(map(str, model.input_dims))
    out = ", ".join(map(str, model.output_dims))
    text = (
        f'name: "{name}" backend: "pytorch_python" max_batch_size: 64\n'
        f'input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
        f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {out} ] }} ]\n'
        "dynamic_batching { }\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )
    if threads != "auto":
        text += (
            f'parameters {{ key: "INTRA_OP_THREAD_COUNT" value {{ string_value: "{threads}" }} }}\n'
        )
    return text


def write_repository(root: Path, models: list[str]) -> Path:
    repo = root / "repo"
    for key in models:
        model = MODELS[key]
        artifact = build_torchscript(model, root / "artifacts" / f"{key}.pt")
        for threads in VARIANTS:
            name = f"{key}_{threads}"
            (repo / name / "1").mkdir(parents=True)
            (repo / name / "config.pbtxt").write_text(config(name, model, threads))
            shutil.copyfile(artifact, repo / name / "1" / "model.pt")
    return repo


async def closed_loop(client, name: str, model, seconds: float, concurrency: int) -> float:
    """Answers per second of ``concurrency`` workers sending batch-1 requests back to back."""
    import tritonclient.grpc.aio as grpcaio

    answered = 0
    array = np.random.default_rng(0).standard_normal((1, *model.input_dims)).astype(np.float32)

    async def worker(deadline: float) -> None:
        nonlocal answered
        item = grpcaio.InferInput("INPUT__0", list(array.shape), "FP32")
        item.set_data_from_numpy(array)
        while time.perf_counter() < deadline:
            await client.infer(name, [item], client_timeout=120)
            answered += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
    return answered / (time.perf_counter() - start)


def _spin() -> None:
    while True:
        pass


async def phase(client, models: list[str], args, hogs: int) -> dict:
    """Interleaved rounds of every variant of every model, with ``hogs`` spinning processes."""
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(hogs)]
    for spinner in spinners:
        spinner.start()
    try:
        result: dict = {}
        for key in models:
            model = MODELS[key]
            for threads in VARIANTS:  # unmeasured: settle each variant under this load
                await closed_loop(client, f"{key}_{threads}", model, 2.0, args.concurrency)
            rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for threads in VARIANTS:
                    rate = await closed_loop(
                        client, f"{key}_{threads}", model, args.seconds, args.concurrency
                    )
                    rounds[threads].append(rate)
            result[key] = summarize(rounds)
        return result
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.join()


def summarize(rounds: dict[str, list[float]]) -> dict:
    ratios = [a / max(one, two) for a, one, two in zip(rounds["auto"], rounds["1"], rounds["2"])]
    return {
        "answers_per_second": {
            v: {
                "median": round(statistics.median(r), 1),
                "min": round(min(r), 1),
                "max": round(max(r), 1),
                "rounds": [round(x, 1) for x in r],
            }
            for v, r in rounds.items()
        },
        "auto_over_best_fixed": {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
            "rounds": [round(x, 3) for x in ratios],
        },
    }


def choices(log: str) -> dict[str, str]:
    """The INTRA_OP_THREAD_COUNT value each auto instance logged (``KEY = value`` lines)."""
    found = {}
    for line in log.splitlines():
        match = re.search(r"model '(\w+)_auto'.*INTRA_OP_THREAD_COUNT = (.*)$", line)
        if match:
            found[match[1]] = match[2].strip().rstrip('"')
    return found


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (no machine path saved)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path.name


def markdown(summary: dict) -> str:
    lines = [
        "| phase | model | auto | 1 thread | 2 threads | auto / best fixed (median, min-max) |",
        "|---|---|---|---|---|---|",
    ]
    for phase_name, models in summary["phases"].items():
        for key, entry in models.items():
            rates = entry["answers_per_second"]
            ratio = entry["auto_over_best_fixed"]
            cells = [f"{rates[v]['median']:,.0f} ({rates[v]['min']:,.0f}-{rates[v]['max']:,.0f})"
                     for v in VARIANTS]  # fmt: skip
            lines.append(
                f"| {phase_name} | {key} | {' | '.join(cells)} | {ratio['median']:.2f} "
                f"({ratio['min']:.2f}-{ratio['max']:.2f}) |"
            )
    lines.append("")
    for key, line in summary["auto_choice"].items():
        lines.append(f"- {key} auto: `INTRA_OP_THREAD_COUNT: {line}`")
    return "\n".join(lines) + "\n"


async def measure(repo: Path, models: list[str], args, log: Path) -> dict:
    import tritonclient.grpc.aio as grpcaio

    ports = (args.port, args.port + 1, args.port + 2)
    server = TritonServer(
        repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
        strip_locale=True, log=log,
    )  # fmt: skip
    server.start()
    try:
        server.wait_ready(timeout=900)
        client = grpcaio.InferenceServerClient(f"localhost:{ports[1]}")
        try:
            phases = {"idle": await phase(client, models, args, 0)}
            phases[f"{args.hogs} CPU hog(s)"] = await phase(client, models, args, args.hogs)
        finally:
            await client.close()
    finally:
        server.stop(timeout=120)
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--hogs", type=int, default=1)
    parser.add_argument("--port", type=int, default=18700)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    with tempfile.TemporaryDirectory(prefix="thread-choice-") as tmp:
        repo = write_repository(Path(tmp), models)
        log = Path(tmp) / "server.log"
        load_before = os.getloadavg()
        phases = asyncio.run(measure(repo, models, args, log))
        auto = choices(log.read_text(errors="replace"))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.strip()
    summary = {
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "settings": vars(args) | {"out": _shown(args.out)},
        "auto_choice": auto,
        "phases": phases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "thread_choice.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "thread_choice.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
