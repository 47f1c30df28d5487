"""Pinned staging of CPU inputs for GPU instances (runtime/staging.py): the gather, the reused
and growing buffer, and the engine using it; the pinned, non-blocking CUDA path is `cuda`."""

from __future__ import annotations

import pytest
import torch

from pytorch_backend.config import parse_model_config
from pytorch_backend.engine import InferenceEngine
from pytorch_backend.executors.base import Capabilities
from pytorch_backend.requests import RequestInputs
from pytorch_backend.runtime.staging import PinnedStaging

CPU = torch.device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_gather_concatenates_through_one_reused_buffer():
    staging = PinnedStaging(CPU, pin=False)
    xs = [torch.rand(n, 3) for n in (1, 2, 3)]
    out = staging.gather("x", xs)
    torch.testing.assert_close(out, torch.cat(xs))
    buffer = staging.buffer("x")
    assert buffer is not None and buffer.numel() == 18 and out.data_ptr() == buffer.data_ptr()
    again = staging.gather("x", [torch.ones(2, 3)])  # a lone request is copied in too
    torch.testing.assert_close(again, torch.ones(2, 3))
    assert staging.buffer("x") is buffer  # fits: reused, not reallocated


def test_the_buffer_grows_by_doubling_and_follows_the_dtype():
    staging = PinnedStaging(CPU, pin=False)
    staging.gather("x", [torch.zeros(2, 4)])
    staging.gather("x", [torch.zeros(3, 4)])
    assert staging.buffer("x").numel() == 16  # max(12, 2 * 8)
    ints = staging.gather("x", [torch.arange(6).reshape(3, 2)])
    assert ints.dtype == torch.int64 and staging.buffer("x").dtype == torch.int64
    torch.testing.assert_close(ints, torch.arange(6).reshape(3, 2))


class _Echo:
    """An executor on 'device' that returns its input and remembers it."""

    def __init__(self, device: torch.device) -> None:
        self.input_device = device
        self.capabilities = Capabilities()
        self.seen: list[torch.Tensor] = []

    def run(self, inputs):
        self.seen.append(inputs["x"])
        return {"y": inputs["x"] * 1}

    def describe_bindings(self):
        return []


def engine_with(staging: PinnedStaging, device: torch.device) -> tuple[InferenceEngine, _Echo]:
    config = parse_model_config(
        {
            "name": "m",
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}],
        }
    )
    executor = _Echo(device)
    return InferenceEngine(config, executor, staging=staging), executor


def test_the_engine_gathers_cpu_inputs_through_the_staging_buffers():
    staging = PinnedStaging(CPU, pin=False)
    engine, executor = engine_with(staging, CPU)
    xs = [torch.rand(n, 2) for n in (1, 3)]
    outcomes = engine.infer([RequestInputs({"x": x}) for x in xs])
    assert executor.seen[0].data_ptr() == staging.buffer("x").data_ptr()
    for x, outcome in zip(xs, outcomes):
        torch.testing.assert_close(outcome["y"], x)


@pytest.mark.cuda
@cuda
def test_cuda_staging_is_pinned_non_blocking_and_safe_to_reuse():
    device = torch.device("cuda", 0)
    staging = PinnedStaging(device)
    batches = [[torch.full((n, 256), float(i)) for n in (1, 2, 3)] for i in range(20)]
    outs = [staging.gather("x", batch) for batch in batches]  # back to back, one buffer
    assert staging.buffer("x").is_pinned()
    for i, out in enumerate(outs):
        assert out.device == device
        assert torch.equal(out.cpu(), torch.full((6, 256), float(i)))


@pytest.mark.cuda
@cuda
def test_gpu_resident_inputs_are_taken_as_they_are():
    device = torch.device("cuda", 0)
    staging = PinnedStaging(device)
    engine, executor = engine_with(staging, device)
    x = torch.rand(2, 2, device=device)
    (outcome,) = engine.infer([RequestInputs({"x": x})])
    assert executor.seen[0].data_ptr() == x.data_ptr() and staging.buffer("x") is None
    assert outcome["y"].device == device
