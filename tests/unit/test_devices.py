"""Instance devices: kind resolution, KIND_MODEL placement, the instance stream on CPU."""

from __future__ import annotations

import pytest
import torch

from pytorch_backend.config import InstanceKind
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.runtime.devices import (
    InstanceStream,
    kind_model_placement,
    module_devices,
    module_tensors,
    resolve_instance_device,
)

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")


@pytest.mark.parametrize("kind", ["CPU", "cpu", "KIND_CPU"])
def test_cpu_kind(kind: str) -> None:
    assert InstanceKind.parse(kind) is InstanceKind.CPU
    assert resolve_instance_device(InstanceKind.parse(kind), 0, "m") == torch.device("cpu")
    assert resolve_instance_device(InstanceKind.CPU, 3, "m") == torch.device("cpu")


@pytest.mark.parametrize("kind", ["MODEL", "KIND_MODEL"])
def test_model_kind_leaves_the_choice_to_the_model(kind: str) -> None:
    assert resolve_instance_device(InstanceKind.parse(kind), 0, "m") is None


def test_unknown_kind_refused() -> None:
    with pytest.raises(ValueError, match="'TPU'"):
        InstanceKind.parse("TPU")


@no_cuda
def test_gpu_kind_without_cuda_fails_clearly() -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_instance_device(InstanceKind.GPU, 1, "m")
    message = str(info.value)
    assert "model 'm'" in message and "GPU" in message and "device 1" in message
    assert "CUDA is not available" in message and "KIND_CPU" in message


class TwoParts(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 2)
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) * self.scale


def test_module_tensors_cover_parameters_buffers_and_script_attributes() -> None:
    eager = TwoParts()
    assert len(list(module_tensors(eager))) == 5
    scripted = torch.jit.script(eager)
    assert len(list(module_tensors(scripted))) == 5
    assert module_devices(scripted) == (torch.device("cpu"),)
    assert list(module_tensors(object())) == []
    assert module_devices(object()) == ()


@no_cuda
def test_kind_model_placement_without_gpus_keeps_the_model() -> None:
    assert kind_model_placement(TwoParts()) is None
    assert kind_model_placement(torch.jit.script(TwoParts())) is None
    assert kind_model_placement(object()) is None


def test_kind_model_placement_with_meta_gpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """With GPUs visible and no CUDA tensors in the model, the first GPU is chosen."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert kind_model_placement(TwoParts()) == torch.device("cuda", 0)
    assert kind_model_placement(torch.jit.script(TwoParts())) == torch.device("cuda", 0)
    assert kind_model_placement(object()) is None  # nothing to inspect or move


def test_instance_stream_is_a_no_op_on_cpu() -> None:
    for spec in (torch.device("cpu"), None, [torch.device("cpu")]):
        stream = InstanceStream(spec)
        assert not stream.enabled and stream.streams == ()
        with stream as entered:
            assert entered is stream
            assert torch.equal(torch.ones(2) + 1, torch.full((2,), 2.0))
        with stream:  # reusable
            pass
