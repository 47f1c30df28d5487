"""Closed-loop gRPC load, Triton's statistics and raw in-process forward timing."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from serving_models import INPUT, OUTPUT, BenchModel

SPLIT = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class Stats:
    """Cumulative statistics of one model: counts, per-request ns and per-batch-size executions."""

    inferences: int = 0
    executions: int = 0
    success: int = 0
    ns: tuple[int, ...] = (0, 0, 0, 0)  # SPLIT, summed over requests
    batches: tuple[tuple[int, int, int], ...] = ()  # (batch size, executions, compute_infer ns)

    def __sub__(self, other: Stats) -> Stats:
        return self + other.scaled(-1)

    def scaled(self, sign: int) -> Stats:
        return Stats(
            sign * self.inferences,
            sign * self.executions,
            sign * self.success,
            tuple(sign * n for n in self.ns),
            tuple((b, sign * c, sign * n) for b, c, n in self.batches),
        )

    def __add__(self, other: Stats) -> Stats:
        merged: dict[int, list[int]] = {}
        for b, c, n in (*self.batches, *other.batches):
            entry = merged.setdefault(b, [0, 0])
            entry[0] += c
            entry[1] += n
        return Stats(
            self.inferences + other.inferences,
            self.executions + other.executions,
            self.success + other.success,
            tuple(a + b for a, b in zip(self.ns, other.ns)),
            tuple((b, c, n) for b, (c, n) in sorted(merged.items()) if c),
        )


async def model_stats(client, model: str) -> Stats:
    raw = await client.get_inference_statistics(model_name=model, as_json=True)
    entry = raw["model_stats"][0]
    stats = entry.get("inference_stats", {})
    batches = tuple(
        (
            int(b["batch_size"]),
            int(b.get("compute_infer", {}).get("count", 0)),
            int(b.get("compute_infer", {}).get("ns", 0)),
        )
        for b in entry.get("batch_stats", [])
    )
    return Stats(
        inferences=int(entry.get("inference_count", 0)),
        executions=int(entry.get("execution_count", 0)),
        success=int(stats.get("success", {}).get("count", 0)),
        ns=tuple(int(stats.get(name, {}).get("ns", 0)) for name in SPLIT),
        batches=batches,
    )


def request_array(model: BenchModel, seed: int) -> np.ndarray:
    """One batch-1 request's input."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, *model.input_dims)).astype(np.float32)


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


async def closed_loop(
    client, model: BenchModel, name: str, *, seconds: float, concurrency: int, timeout: float
) -> Load:
    """``concurrency`` workers, each sending batch-1 requests back to back until time is up."""
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException

    load = Load()

    async def worker(index: int, deadline: float) -> None:
        item = grpcaio.InferInput(INPUT, [1, *model.input_dims], "FP32")
        item.set_data_from_numpy(request_array(model, 1000 + index))
        outputs = [grpcaio.InferRequestedOutput(OUTPUT)]
        while time.perf_counter() < deadline and len(load.errors) < 100:
            start = time.perf_counter()
            try:
                await client.infer(name, [item], outputs=outputs, client_timeout=timeout)
            except InferenceServerException as error:
                load.errors.append(str(error))
                continue
            load.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker(i, start + seconds) for i in range(concurrency)))
    load.elapsed = time.perf_counter() - start
    return load


async def infer_once(client, model: BenchModel, name: str, array: np.ndarray):
    """One request; returns (seconds, output array)."""
    import tritonclient.grpc.aio as grpcaio

    item = grpcaio.InferInput(INPUT, list(array.shape), "FP32")
    item.set_data_from_numpy(array)
    start = time.perf_counter()
    result = await client.infer(name, [item], outputs=[grpcaio.InferRequestedOutput(OUTPUT)])
    return time.perf_counter() - start, result.as_numpy(OUTPUT)


# --------------------------------------------------------------------------- raw torch


def bucket_sizes(limit: int) -> list[int]:
    """Powers of two up to ``limit`` plus ``limit`` itself: where raw forwards are timed."""
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, limit]


def time_forward(module: torch.nn.Module, batch: torch.Tensor, seconds: float) -> float:
    """Median seconds of ``module(batch)`` under ``inference_mode`` over about ``seconds``."""
    times: list[float] = []
    with torch.inference_mode():
        module(batch)
        deadline = time.perf_counter() + seconds
        while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 2000):
            start = time.perf_counter()
            module(batch)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def forward_at(raw: dict[int, float], batch: float) -> float:
    """Forward seconds at a (possibly fractional) batch size, linear between timed sizes."""
    sizes = sorted(raw)
    if batch <= sizes[0]:
        return raw[sizes[0]] * batch / sizes[0]
    for low, high in zip(sizes, sizes[1:]):
        if batch <= high:
            share = (batch - low) / (high - low)
            return raw[low] + share * (raw[high] - raw[low])
    return raw[sizes[-1]] * batch / sizes[-1]
