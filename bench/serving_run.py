"""One footing's measurements against a running tritonserver: cold start, then interleaved rounds.

Per model and concurrency every served variant gets ``--warmup`` s of unmeasured load, then
``--rounds`` rounds each give every variant one ``--seconds`` slot (ts, pt2, eager, naive, lean,
empty, raw, ts, ...). Our variants' step counters are scraped from /metrics around their slots
(see :mod:`serving_steps`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from serving_load import (
    Load,
    bucket_sizes,
    closed_loop,
    infer_once,
    model_stats,
    request_array,
    time_forward,
)
from serving_models import MAX_BATCH, OURS, BenchModel, served_name
from serving_rounds import Block, Slot, VariantRounds
from serving_steps import SETTLE_SECONDS, scrape, step_seconds

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


@dataclass
class Session:
    """One footing's client, settings and the step-scrape bookkeeping of our variants."""

    client: object
    args: object
    metrics_port: int
    threads: int | None  # the footing: None = each side's default, N = equal threads
    last_active: dict[str, float] = field(default_factory=dict)  # served name -> time
    pending: dict[str, tuple] = field(default_factory=dict)  # name -> (steps before, slot)

    async def load(self, model: BenchModel, name: str, seconds: float, concurrency: int) -> Load:
        """Closed-loop load on ``name``; remembers when the model was last busy."""
        try:
            return await closed_loop(
                self.client,
                model,
                name,
                seconds=seconds,
                concurrency=concurrency,
                timeout=self.args.request_timeout,
            )
        finally:
            self.last_active[name] = time.monotonic()

    async def settled_steps(self, name: str) -> dict[str, float] | None:
        """``name``'s step seconds once its counters have been flushed (None: not exposed)."""
        wait = self.last_active.get(name, 0.0) + SETTLE_SECONDS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        text = await asyncio.to_thread(scrape, self.metrics_port)
        return step_seconds(text).get(name)

    def charge(self, name: str, record: VariantRounds, now: dict[str, float] | None) -> None:
        """Charges the steps between the scrape before ``name``'s last slot and ``now`` (taken
        after it, with the model idle since) to that slot."""
        if name in self.pending:
            before, slot = self.pending.pop(name)
            record.steps.add(before, now, slot.stats.executions)

    async def close_steps(self, name: str, record: VariantRounds) -> None:
        """After the last round: the scrape that closes ``name``'s last slot."""
        if name in self.pending:
            self.charge(name, record, await self.settled_steps(name))


async def measure_slot(session: Session, model: BenchModel, variant: str, record, c: int) -> None:
    """One slot of ``variant``; ours are scraped before it (the previous slot's "after")."""
    name = served_name(model, variant)
    ours = variant in OURS
    before_steps = None
    if ours:
        before_steps = await session.settled_steps(name)
        session.charge(name, record, before_steps)
    before = await model_stats(session.client, name)
    load = await session.load(model, name, session.args.seconds, c)
    slot = Slot(load, await model_stats(session.client, name) - before)
    record.slots.append(slot)
    if ours:
        session.pending[name] = (before_steps, slot)


def measure_raw(module: torch.nn.Module, model: BenchModel, block: Block, args, threads) -> None:
    """One round of the in-process forward at every bucket up to the batch the server can form.

    Equal threads N: timed with N threads. Defaults: timed with one intra-op thread and with
    torch's default, the faster counts (the best this process gets here); both are kept.
    """
    sizes = bucket_sizes(min(block.concurrency, MAX_BATCH))
    default = torch.get_num_threads()
    settings = [threads] if threads is not None else sorted({1, default})
    timed_round: dict[int, float] = {}
    try:
        for size in sizes:
            batch = model.example(size)
            timed = {}
            for count in settings:
                torch.set_num_threads(count)
                share = args.raw_seconds / len(sizes) / len(settings)
                timed[count] = time_forward(module, batch, share)
                block.raw_by_threads.setdefault(f"{count}:{size}", []).append(timed[count])
            timed_round[size] = min(timed.values())
    finally:
        torch.set_num_threads(default)
    block.raw_rounds.append(timed_round)


async def run_block(session: Session, model, module, concurrency: int, variants) -> Block:
    """Warm every variant up at ``concurrency``, then measure in interleaved rounds."""
    args = session.args
    served = [v for v in variants if v != "raw"]
    block = Block(model.name, concurrency, {v: VariantRounds() for v in served})
    if args.warmup > 0:
        for variant in served:
            await session.load(model, served_name(model, variant), args.warmup, concurrency)
    for number in range(1, args.rounds + 1):
        print(f"  {model.name} c={concurrency} round {number}/{args.rounds}", flush=True)
        for variant in variants:
            if variant == "raw":
                measure_raw(module, model, block, args, session.threads)
            else:
                await measure_slot(session, model, variant, block.served[variant], concurrency)
    for variant in served:
        await session.close_steps(served_name(model, variant), block.served[variant])
    return block


async def run_all(url: str, metrics_port: int, models, variants, args, threads) -> dict:
    """Cold start, then every model x concurrency block of one footing."""
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(url)
    session = Session(client, args, metrics_port, threads)
    try:
        cold = await cold_start(client, models, variants, args.follow, args.kind)
        for model in models:  # their counters may still hold the cold start's requests
            for variant in model.variants(variants):
                session.last_active[served_name(model, variant)] = time.monotonic()
        blocks: list[Block] = []
        for model in models:
            module = model.make()
            if args.kind == "gpu":
                module = OnDevice(module, torch.device("cuda", 0))
            for concurrency in args.concurrency:
                blocks.append(
                    await run_block(session, model, module, concurrency, model.variants(variants))
                )
    finally:
        await client.close()
    return {"cold": cold, "blocks": blocks}
