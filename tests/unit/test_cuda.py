"""CUDA-only checks: devices, streams, cuDNN, cache cleaning, weight sharing (skipped on CPU)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pytorch_backend.config import (
    BackendParameters,
    InstanceKind,
    ModelConfig,
    ModelKind,
    parse_model_config,
)
from pytorch_backend.config.decision import Decision
from pytorch_backend.config.parameter_parsing import parse_parameters
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.base import LoadContext
from pytorch_backend.executors.registry import REGISTRY
from pytorch_backend.hooks import ExecuteStats, Hooks
from pytorch_backend.logs import InstanceLog
from pytorch_backend.runtime.devices import (
    InstanceStream,
    activate_device,
    kind_model_placement,
    resolve_instance_device,
)
from pytorch_backend.runtime.execution import CacheCleaningHook, StreamHook
from pytorch_backend.runtime.report import EffectiveSettings, effective_lines
from pytorch_backend.runtime.settings import apply_runtime_settings, cache_cleaning_applies
from pytorch_backend.runtime.weight_sharing import share_module_weights

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MIB = 1 << 20


@pytest.fixture
def gpu() -> Iterator[torch.device]:
    device = torch.device("cuda", 0)
    previous = torch.cuda.current_device()
    cudnn = torch.backends.cudnn.enabled
    yield device
    torch.cuda.set_device(previous)
    torch.backends.cudnn.enabled = cudnn


def config(parameters: dict[str, str] | None = None) -> ModelConfig:
    return parse_model_config(
        {
            "name": "m",
            "platform": "pytorch_libtorch",
            "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [3]}],
            "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]}],
            "parameters": {k: {"string_value": v} for k, v in (parameters or {}).items()},
            "instance_group": [{"kind": "KIND_GPU", "count": 1}],
        }
    )


def test_gpu_device_resolution() -> None:
    count = torch.cuda.device_count()
    gpu = InstanceKind.GPU
    assert resolve_instance_device(gpu, 0, "m") == torch.device("cuda", 0)
    assert resolve_instance_device(gpu, count - 1, "m") == torch.device("cuda", count - 1)
    for bad in (count, -1):
        with pytest.raises(ModelLoadError) as info:
            resolve_instance_device(gpu, bad, "m")
        assert "model 'm'" in str(info.value) and f"device id {bad}" in str(info.value)


def test_cpu_instance_never_initialises_cuda() -> None:
    code = (
        "import torch\n"
        "from pytorch_backend.config import InstanceKind, parse_model_config\n"
        "from pytorch_backend.runtime.devices import resolve_instance_device, InstanceStream,"
        " activate_device\n"
        "from pytorch_backend.config.parameter_parsing import parse_parameters\n"
        "from pytorch_backend.runtime.settings import apply_runtime_settings\n"
        "from pytorch_backend.runtime.execution import execution_context\n"
        "cfg = parse_model_config({'name': 'm', 'platform': 'pytorch_libtorch',"
        " 'input': [{'name': 'I', 'data_type': 'TYPE_FP32', 'dims': [2]}],"
        " 'output': [{'name': 'O', 'data_type': 'TYPE_FP32', 'dims': [2]}],"
        " 'parameters': {'ENABLE_CACHE_CLEANING': {'string_value': 'true'},"
        " 'DISABLE_CUDNN': {'string_value': 'true'}}})\n"
        "params = parse_parameters('m', cfg.parameters, print)\n"
        "device = resolve_instance_device(InstanceKind.CPU, 0, 'm')\n"
        "activate_device(device)\n"
        "settings = apply_runtime_settings(params, cfg, device)\n"
        "assert not settings.cache_cleaning\n"
        "stream = InstanceStream(device)\n"
        "with stream, execution_context(params):\n"
        "    torch.ones(2) + 1\n"
        "print('initialised', torch.cuda.is_initialized())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "initialised False"


def test_activate_device(gpu: torch.device) -> None:
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    activate_device(last)
    assert torch.cuda.current_device() == last.index


def test_instance_stream_is_current_orders_after_queued_work_and_synchronises(
    gpu: torch.device,
) -> None:
    stream = InstanceStream(gpu)
    assert stream.enabled and len(stream.streams) == 1
    default = torch.cuda.current_stream(gpu)
    x = torch.zeros(1 << 20, device=gpu)
    torch.cuda._sleep(100_000_000)  # keep the default stream busy ...
    x.fill_(1.0)  # ... so this write is still pending when the instance stream starts
    with stream:
        assert torch.cuda.current_stream(gpu) == stream.streams[0]
        y = x + 1
        z = torch.randn(1024, 1024, device=gpu) @ torch.randn(1024, 1024, device=gpu)
    assert torch.cuda.current_stream(gpu) == default
    assert stream.streams[0].query()  # synchronised at exit: nothing left pending
    assert bool((y == 2).all())
    assert z.shape == (1024, 1024)
    with stream:  # reusable
        assert torch.cuda.current_stream(gpu) == stream.streams[0]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_instance_streams_on_several_devices_keep_the_current_device(gpu: torch.device) -> None:
    devices = [torch.device("cuda", 0), torch.device("cuda", 1)]
    stream = InstanceStream(devices)
    torch.cuda.set_device(0)
    with stream:
        assert torch.cuda.current_device() == 0
        for device, s in zip(devices, stream.streams):
            assert torch.cuda.current_stream(device) == s
    assert torch.cuda.current_device() == 0


def test_cudnn_toggle(gpu: torch.device) -> None:
    cfg = config({"DISABLE_CUDNN": "true"})
    logs: list[str] = []
    params = parse_parameters("m", cfg.parameters, logs.append)
    settings = apply_runtime_settings(params, cfg, gpu)
    assert settings.cudnn_enabled is False and torch.backends.cudnn.enabled is False
    logs = effective_lines(EffectiveSettings(params, settings, gpu, 0, Decision.off()))
    assert any("DISABLE_CUDNN = true (cuDNN disabled" in line for line in logs)
    conv = torch.nn.Conv2d(3, 4, 3).to(gpu)
    image = torch.randn(1, 3, 16, 16, device=gpu)
    without = conv(image)
    settings = apply_runtime_settings(BackendParameters(), config(), gpu)
    assert settings.cudnn_enabled is True and torch.backends.cudnn.enabled is True
    assert torch.allclose(conv(image), without, atol=1e-4)


def test_cache_cleaning_releases_reserved_memory(gpu: torch.device) -> None:
    torch.cuda.set_device(gpu)

    def fill_cache() -> int:
        block = torch.empty(256 * MIB, dtype=torch.uint8, device=gpu)
        del block
        reserved = torch.cuda.memory_reserved(gpu)
        assert reserved >= 256 * MIB
        return reserved

    stats = ExecuteStats(1, 0, 0, 1, 1)
    reserved = fill_cache()
    Hooks().after_execute(stats)
    assert torch.cuda.memory_reserved(gpu) == reserved  # off: the cache is kept
    cleaning = BackendParameters(enable_cache_cleaning=True)
    assert cache_cleaning_applies(cleaning, gpu) is True
    Hooks([CacheCleaningHook()]).after_execute(stats)
    assert torch.cuda.memory_reserved(gpu) <= reserved - 256 * MIB
    assert cache_cleaning_applies(cleaning, None) is True  # KIND_MODEL on a host with GPUs
    assert cache_cleaning_applies(cleaning, torch.device("cpu")) is False


def test_kind_model_placement_on_a_gpu_host(gpu: torch.device) -> None:
    cpu_model = torch.nn.Linear(2, 2)
    assert kind_model_placement(cpu_model) == torch.device("cuda", 0)
    assert kind_model_placement(torch.jit.script(cpu_model)) == torch.device("cuda", 0)
    assert kind_model_placement(torch.nn.Linear(2, 2).to(gpu)) is None  # keeps its devices
    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).to(gpu))
    assert kind_model_placement(mixed) is None


def test_gpu_instance_settings_log(gpu: torch.device) -> None:
    cfg = config({"ENABLE_CACHE_CLEANING": "true"})
    params = parse_parameters("m", cfg.parameters, lambda _: None)
    settings = apply_runtime_settings(params, cfg, gpu)
    assert settings.cache_cleaning is True
    logs = effective_lines(EffectiveSettings(params, settings, gpu, 0, Decision.off()))
    assert "device = cuda:0" in logs
    assert any("ENABLE_CACHE_CLEANING = true (torch.cuda.empty_cache()" in line for line in logs)


def test_weight_sharing_skips_cuda_tensors(gpu: torch.device, tmp_path: Path) -> None:
    module = torch.nn.Linear(3, 3).to(gpu)
    module.register_buffer("cpu_buffer", torch.ones(3))
    logs: list[str] = []
    info = share_module_weights(module, "gpu|1", logs.append, tmp_path)
    assert info.tensors == 1 and info.skipped == 2
    assert any("2 on cuda" in line for line in logs)
    assert module.weight.device == gpu
    info.release()


class _Scale(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((3,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def _batched_config() -> ModelConfig:
    return parse_model_config(
        {
            "name": "m",
            "max_batch_size": 4,
            "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [3]}],
            "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]}],
        }
    )


def _load(path: Path, device: torch.device | None):
    context = LoadContext(_batched_config(), path, device, InstanceLog("m"))
    return REGISTRY[ModelKind.TORCHSCRIPT].load(context)


def test_kind_gpu_torchscript_saved_on_cuda0_runs_on_the_instance_gpu(tmp_path: Path) -> None:
    """A model saved on cuda:0 is loaded with map_location onto the instance's GPU; CPU inputs
    are moved there, gathered, run on the instance stream and split back on that GPU."""
    from pytorch_backend.engine import InferenceEngine
    from pytorch_backend.requests import RequestInputs

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_Scale().to("cuda:0")), str(path))
    target = torch.device("cuda", torch.cuda.device_count() - 1)
    executor = _load(path, target)
    assert {p.device for p in executor.module.parameters()} == {target}
    assert executor.input_device == target
    stream = InstanceStream(target)
    engine = InferenceEngine(_batched_config(), executor, Hooks([StreamHook(stream)]))
    xs = [torch.rand(1, 3), torch.rand(2, 3)]
    out = engine.infer([RequestInputs({"INPUT__0": x}) for x in xs])
    for x, o in zip(xs, out):
        assert o["OUTPUT__0"].device == target
        torch.testing.assert_close(o["OUTPUT__0"].cpu(), x * 2)


def test_kind_model_keeps_saved_cuda_devices_and_takes_cpu_inputs(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_Scale().to("cuda:0")), str(path))
    executor = _load(path, None)
    assert {p.device for p in executor.module.parameters()} == {torch.device("cuda", 0)}
    assert executor.input_device == torch.device("cpu")
