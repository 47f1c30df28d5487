"""Cost of ``InferenceEngine`` compared with calling the TorchScript module directly (no Triton).

For each model (tiny: Linear 16->16; medium: Linear 256->1024, ReLU, Linear 1024->256, FP32) and
each number of requests per execute (1, 8, 32; every request has batch 1) three things are timed
in the same process, one after the other:

* ``direct``: ``module(batch)`` under ``torch.inference_mode()`` on the already concatenated
  batch: the floor (one forward, nothing else);
* ``engine``: ``InferenceEngine.infer(requests)``, as the adapter calls it (validation, one
  ``torch.cat``, the forward under the production execution context, output checks, split);
* ``loop``: one ``module(request)`` per request under ``torch.inference_mode()``: what a
  hand-written model that does not batch pays for the same requests.

Reported: microseconds per call, ``engine - direct`` (the engine's own cost) and the ratios
``engine / direct`` and ``loop / engine``. Run: ``python bench/engine_overhead.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import provenance  # noqa: E402

from pytorch_backend.config import (
    BackendParameters,  # noqa: E402
    parse_model_config,  # noqa: E402
)
from pytorch_backend.engine import InferenceEngine  # noqa: E402
from pytorch_backend.executors.torchscript.executor import TorchScriptExecutor  # noqa: E402
from pytorch_backend.hooks import Hooks  # noqa: E402
from pytorch_backend.requests import RequestInputs  # noqa: E402
from pytorch_backend.runtime.execution import GradPolicyHook  # noqa: E402

REQUEST_COUNTS = (1, 8, 32)
ROUNDS = 21  # interleaved timing rounds per case


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Medium(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(256, 1024)
        self.fc2 = torch.nn.Linear(1024, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


MODELS: dict[str, tuple[type[torch.nn.Module], int, int]] = {
    # name: (module class, input features, output features)
    "tiny": (Tiny, 16, 16),
    "medium": (Medium, 256, 256),
}


@dataclass(frozen=True)
class Row:
    model: str
    requests: int
    direct_us: float
    engine_us: float
    loop_us: float

    @property
    def overhead_us(self) -> float:
        return self.engine_us - self.direct_us

    @property
    def engine_vs_direct(self) -> float:
        return self.engine_us / self.direct_us

    @property
    def loop_vs_engine(self) -> float:
        return self.loop_us / self.engine_us


def _config(name: str, features_in: int, features_out: int) -> dict:
    return {
        "name": name,
        "backend": "pytorch_python",
        "platform": "pytorch_libtorch",
        "max_batch_size": 32,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [features_in]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [features_out]}],
        "dynamic_batching": {},
    }


def _block_size(fn, block_seconds: float) -> int:
    """Calls per timed block so that one block lasts about ``block_seconds``."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - start >= block_seconds / 4 or number >= 1 << 20:
            elapsed = time.perf_counter() - start
            return max(1, int(number * block_seconds / max(elapsed, 1e-9)))
        number *= 2


def interleaved_us(fns: dict[str, Callable[[], object]], min_time: float) -> dict[str, float]:
    """Median microseconds per call of each function, timed in interleaved blocks.

    Every round times one block of each function in turn, so a slow spell of the machine hits
    all of them; the median over rounds discards the rounds it spoiled.
    """
    for fn in fns.values():
        for _ in range(50):  # JIT profiling runs and allocator warm-up
            fn()
    block_seconds = min_time / ROUNDS
    numbers = {name: _block_size(fn, block_seconds) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            number = numbers[name]
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(name: str, requests: int, min_time: float) -> Row:
    cls, features_in, features_out = MODELS[name]
    torch.manual_seed(0)
    module = torch.jit.script(cls().eval())
    config = parse_model_config(_config(name, features_in, features_out))
    executor = TorchScriptExecutor(config, module, input_device=torch.device("cpu"))
    params = BackendParameters()  # defaults: inference mode, optimized execution
    engine = InferenceEngine(config, executor, Hooks([GradPolicyHook(params)]))
    tensors = [torch.randn(1, features_in) for _ in range(requests)]
    batch = torch.cat(tensors)
    batch_requests = [RequestInputs({"INPUT__0": t}) for t in tensors]

    def direct() -> torch.Tensor:
        with torch.inference_mode():
            return module(batch)

    def through_engine() -> list:
        return engine.infer(batch_requests)

    def loop() -> list:
        with torch.inference_mode():
            return [module(t) for t in tensors]

    outcome = through_engine()
    merged = torch.cat([o["OUTPUT__0"] for o in outcome])  # type: ignore[index]
    torch.testing.assert_close(merged, direct())  # the engine computes the same thing
    times = interleaved_us({"direct": direct, "engine": through_engine, "loop": loop}, min_time)
    return Row(name, requests, times["direct"], times["engine"], times["loop"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement (1.0)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    machine = provenance()
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"{torch.get_num_interop_threads()} inter-op threads, Python {platform.python_version()}"
    )
    print("times are medians in microseconds per call (engine.infer / module(batch))\n")
    header = (
        f"{'model':<7} {'reqs':>4} {'direct':>9} {'engine':>9} {'loop':>9} "
        f"{'engine-direct':>13} {'engine/direct':>13} {'loop/engine':>11}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name in MODELS:
        for requests in REQUEST_COUNTS:
            row = measure(name, requests, args.min_time)
            rows.append(row)
            print(
                f"{row.model:<7} {row.requests:>4} {row.direct_us:>9.1f} {row.engine_us:>9.1f} "
                f"{row.loop_us:>9.1f} {row.overhead_us:>13.1f} {row.engine_vs_direct:>12.2f}x "
                f"{row.loop_vs_engine:>10.2f}x",
                flush=True,
            )
    if args.json is not None:
        machine["load_average_end"] = list(os.getloadavg())
        result = {
            "machine": machine,
            "min_time": args.min_time,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "rows": [
                {
                    **asdict(row),
                    "overhead_us": row.overhead_us,
                    "engine_vs_direct": row.engine_vs_direct,
                    "loop_vs_engine": row.loop_vs_engine,
                }
                for row in rows
            ],
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
