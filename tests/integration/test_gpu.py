# ruff: noqa: N803, UP006, UP035  (TorchScript signatures: typing.Tuple, as in tests/sequence_models.py)
"""GPU paths through a real tritonserver (``cuda``: skipped without a CUDA device).

One server serves TorchScript models on the GPU: ``where`` (KIND_GPU; outputs ``x * 2``, whether
the forward saw CUDA tensors and on which device), ``graphs`` (the same with ``CUDA_GRAPHS``),
``spread`` (KIND_MODEL, weights saved on the GPUs; inputs prepared on the CPU), an ensemble that
hands a GPU output of ``where`` to ``plus_one`` with and without ``FORCE_CPU_ONLY_INPUT_TENSORS:
"no"`` (GPU-resident inputs), and ``acc`` (sequence state kept on the GPU). A second server holds
``assert``, whose out-of-range index is a real device-side assert: a sticky CUDA error.
"""

from __future__ import annotations

import time
from typing import Tuple

import numpy as np
import pytest
import torch

from tests import sequence_models
from tests.client_utils import PROTOCOLS, InferenceServerException, infer, write_model
from tests.integration.test_metrics import scrape, value
from tests.integration.test_sequence import ACC_INPUTS, ACC_OUTPUTS, ACC_STATE, config, step, x1

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


class Where(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = [x.shape[0], 1]
        return (
            x * 2,
            torch.full(rows, x.is_cuda, dtype=torch.bool),
            torch.full(rows, x.get_device(), dtype=torch.int64),
        )


class Spread(torch.nn.Module):
    """KIND_MODEL: weights on the GPUs given; the forward moves its inputs itself."""

    def __init__(self, devices: list[torch.device]) -> None:
        super().__init__()
        self.first = torch.nn.Parameter(torch.full([2], 2.0, device=devices[0]))
        self.second = torch.nn.Parameter(torch.full([2], 3.0, device=devices[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(self.first.device) * self.first
        return y.to(self.second.device) + self.second


class PlusOne(torch.nn.Module):
    def forward(self, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return y + 1, torch.full([y.shape[0], 1], y.is_cuda, dtype=torch.bool)


class Assert(torch.nn.Module):
    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x[index]  # an index out of range: a device-side assert on the GPU


WHERE_IO = (
    'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
    'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] }, '
    '{ name: "on_cuda" data_type: TYPE_BOOL dims: [ 1 ] }, '
    '{ name: "device" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
)


def model_config(name: str, body: str, kind: str = "KIND_GPU", parameters: str = "") -> str:
    params = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in (item.split("=") for item in parameters.split(";") if item)
    )
    return (
        f'name: "{name}" backend: "pytorch_python" platform: "pytorch_libtorch"\n'
        f"{body}instance_group [ {{ kind: {kind} count: 1 }} ]\n{params}"
    )


def scripted(module: torch.nn.Module, path) -> bytes:
    torch.jit.save(torch.jit.script(module), str(path))
    return path.read_bytes()


def ensemble(name: str, consumer: str) -> str:
    return (
        f'name: "{name}" platform: "ensemble" max_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "z" data_type: TYPE_FP32 dims: [ 2 ] }, '
        '{ name: "seen_cuda" data_type: TYPE_BOOL dims: [ 1 ] } ]\n'
        "ensemble_scheduling { step [\n"
        '{ model_name: "where" model_version: -1 input_map { key: "x" value: "x" } '
        'output_map { key: "y" value: "doubled" } },\n'
        f'{{ model_name: "{consumer}" model_version: -1 input_map {{ key: "y" value: "doubled" }} '
        'output_map { key: "z" value: "z" } output_map { key: "on_cuda" value: "seen_cuda" } }\n'
        "] }\n"
    )


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    repo, scratch = tmp_path_factory.mktemp("gpu-repo"), tmp_path_factory.mktemp("gpu-scratch")
    where = scripted(Where(), scratch / "where.pt")
    batching = "max_batch_size: 8 dynamic_batching { }\n"
    write_model(repo, "where", model_config("where", batching + WHERE_IO), {"1/model.pt": where})
    graphs = model_config(
        "graphs", batching + WHERE_IO, parameters="CUDA_GRAPHS=true;WARMUP_BATCH_SIZES=1,4,8"
    )
    write_model(repo, "graphs", graphs, {"1/model.pt": where})
    devices = [torch.device("cuda", i) for i in range(min(2, torch.cuda.device_count()))]
    spread_io = (
        'max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
    )
    spread = scripted(Spread(devices), scratch / "spread.pt")
    write_model(
        repo, "spread", model_config("spread", spread_io, "KIND_MODEL"), {"1/model.pt": spread}
    )
    plus_io = (
        'max_batch_size: 8 input [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "z" data_type: TYPE_FP32 dims: [ 2 ] }, '
        '{ name: "on_cuda" data_type: TYPE_BOOL dims: [ 1 ] } ]\n'
    )
    plus = scripted(PlusOne(), scratch / "plus.pt")
    resident = model_config("plus_resident", plus_io, parameters="FORCE_CPU_ONLY_INPUT_TENSORS=no")
    write_model(repo, "plus_resident", resident, {"1/model.pt": plus})
    write_model(repo, "plus_host", model_config("plus_host", plus_io), {"1/model.pt": plus})
    for name, consumer in (("chain_resident", "plus_resident"), ("chain_host", "plus_host")):
        write_model(repo, name, ensemble(name, consumer), {"1/.keep": b""})
    acc = sequence_models.save_script(sequence_models.Accumulator(), scratch / "acc.pt")
    acc_config = config("acc", ACC_INPUTS, ACC_OUTPUTS, ACC_STATE).replace("KIND_CPU", "KIND_GPU")
    write_model(repo, "acc", acc_config, {"1/model.pt": acc})
    return triton(repo)


@pytest.fixture(scope="module")
def sticky_server(triton, tmp_path_factory):
    repo, scratch = tmp_path_factory.mktemp("assert-repo"), tmp_path_factory.mktemp("assert")
    io = (
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }, '
        '{ name: "index" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    pt = scripted(Assert(), scratch / "assert.pt")
    write_model(
        repo, "assert", model_config("assert", "max_batch_size: 0\n" + io), {"1/model.pt": pt}
    )
    return triton(repo)


def rows(count: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(count * 2, dtype=np.float32).reshape(count, 2) - 3}


def metric_when(server, name: str, model: str, check, seconds: float = 5.0) -> float:
    """The metric's value once ``check(value)`` holds (metrics flush once a second)."""
    deadline = time.monotonic() + seconds
    while True:
        got = value(scrape(server), name, model)
        if check(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["where", "graphs"])
def test_kind_gpu_runs_on_the_gpu_and_its_outputs_come_back(server, protocol, model):
    for count in (1, 3, 8):  # 3 is padded to a captured 4 with CUDA graphs
        got = infer(protocol, server, model, rows(count))
        np.testing.assert_array_equal(got["y"], rows(count)["x"] * 2)
        assert got["on_cuda"].tolist() == [[True]] * count
        assert got["device"].tolist() == [[0]] * count


def test_cuda_graphs_were_captured_at_the_warm_up_sizes(server):
    lines = [line for line in server.log_text().splitlines() if "CUDA_GRAPHS = " in line]
    graphs = [line for line in lines if "'graphs'" in line]
    assert graphs and "CUDA_GRAPHS = true (graphs for batch sizes [1, 4, 8])" in graphs[0], lines


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_kind_model_keeps_the_saved_devices_and_its_outputs_are_right(server, protocol):
    got = infer(protocol, server, "spread", rows(3))
    np.testing.assert_array_equal(got["y"], rows(3)["x"] * 2 + 3)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("chain", ["chain_resident", "chain_host"])
def test_gpu_outputs_feed_a_gpu_model_through_an_ensemble(server, protocol, chain):
    got = infer(protocol, server, chain, rows(4))
    np.testing.assert_array_equal(got["z"], rows(4)["x"] * 2 + 1)
    assert got["seen_cuda"].tolist() == [[True]] * 4


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sequence_state_kept_on_the_gpu(server, protocol):
    sequence = 41 if protocol == "http" else 42
    totals = []
    for number, amount in enumerate((1.0, 2.0, 4.0)):
        out = step(protocol, server, "acc", sequence, {"INPUT__0": x1(amount)}, start=number == 0)
        totals.append(float(out["OUTPUT__0"].reshape(-1)[0]))
    assert totals == [1.0, 3.0, 7.0]
    step(protocol, server, "acc", sequence, {"INPUT__0": x1(0.0)}, end=True)


def test_cuda_memory_metrics_of_a_gpu_instance(server):
    infer("http", server, "where", rows(8))
    allocated = metric_when(
        server, "pytorch_backend_cuda_memory_allocated_bytes", "where", lambda v: v > 0
    )
    reserved = value(scrape(server), "pytorch_backend_cuda_memory_reserved_bytes", "where")
    assert 0 < allocated <= reserved
    assert value(scrape(server), "pytorch_backend_cuda_sticky_error", "where") == 0


def test_a_device_side_assert_makes_the_instance_unavailable(sticky_server):
    server = sticky_server
    x = np.arange(4, dtype=np.float32)
    good = {"x": x, "index": np.array([2], dtype=np.int64)}
    assert infer("http", server, "assert", good)["y"].tolist() == [2.0]
    with pytest.raises(InferenceServerException) as failed:
        infer("http", server, "assert", {"x": x, "index": np.array([100], dtype=np.int64)})
    assert "model 'assert'" in failed.value.message()
    for protocol, status in (("http", "503"), ("grpc", "StatusCode.UNAVAILABLE")):
        with pytest.raises(InferenceServerException) as refused:
            infer(protocol, server, "assert", good)
        assert str(refused.value.status()) == status, refused.value
        assert "reloaded or the server restarted" in refused.value.message()
    assert "sticky CUDA error" in server.log_text()
    flag = metric_when(server, "pytorch_backend_cuda_sticky_error", "assert", lambda v: v == 1)
    assert flag == 1
