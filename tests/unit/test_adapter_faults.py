"""``model.py`` against a stand-in ``triton_python_backend_utils``: cancelled requests and
``is_ready``, without a server (the integration tests do the same through a real one)."""

from __future__ import annotations

import importlib
import json
import sys
import types

import pytest
import torch

from pytorch_backend import logs
from tests.unit.builders import ts_config, ts_repo


class TritonError:
    INVALID_ARG, CANCELLED, UNAVAILABLE = "INVALID_ARG", "CANCELLED", "UNAVAILABLE"

    def __init__(self, message: str, code: str | None = None) -> None:
        self.message, self.code = message, code


class InferenceResponse:
    def __init__(self, output_tensors=(), error=None) -> None:
        self.outputs = {t.name: t.value for t in output_tensors}
        self.error = error


class Tensor:
    def __init__(self, name: str, value) -> None:
        self.name, self.value = name, value

    @classmethod
    def from_dlpack(cls, name: str, value) -> Tensor:
        return cls(name, torch.from_dlpack(value))  # as the stub does: any DLPack exporter


class Logger:
    lines: list[str] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.lines.append(message)

    log_warn = log_error = log_verbose = log_info


class Input:
    def __init__(self, name: str, value: torch.Tensor) -> None:
        self._name, self._value = name, value

    def name(self) -> str:
        return self._name

    def to_dlpack(self):
        return torch.utils.dlpack.to_dlpack(self._value)


class Request:
    def __init__(self, value: float, cancelled: bool) -> None:
        self._x = torch.full((1, 2), value)
        self._cancelled = cancelled

    def inputs(self) -> list[Input]:
        return [Input("x", self._x)]

    def requested_output_names(self) -> list[str]:
        return []

    def is_cancelled(self) -> bool:
        return self._cancelled


@pytest.fixture
def adapter(monkeypatch):
    fake = types.ModuleType("triton_python_backend_utils")
    fake.TritonError, fake.InferenceResponse, fake.Tensor = TritonError, InferenceResponse, Tensor
    fake.Logger = Logger
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.setattr(logs, "_sink", logs._sink)  # importing model.py replaces the sink
    sys.modules.pop("pytorch_backend.model", None)
    module = importlib.import_module("pytorch_backend.model")
    yield module
    sys.modules.pop("pytorch_backend.model", None)


def model(adapter, tmp_path, **parameters: str):
    repo = ts_repo(tmp_path)
    config = ts_config(parameters={k: {"string_value": v} for k, v in parameters.items()})
    instance = adapter.TritonPythonModel()
    instance.initialize(
        {"model_config": json.dumps(config), "model_instance_name": "m_0",
         "model_instance_kind": "CPU", "model_repository": str(repo), "model_version": "1"}
    )  # fmt: skip
    forwards = []
    run = instance._instance.engine.executor.run
    instance._instance.engine.executor.run = lambda batch: (
        forwards.append(len(batch["x"])) or run(batch)
    )
    return instance, forwards


def test_cancelled_requests_are_answered_cancelled_and_not_computed(adapter, tmp_path):
    # explicit: left unset, the check is off for a forward as fast as this one (test_stages.py)
    instance, forwards = model(adapter, tmp_path, ENABLE_CANCELLATION_CHECK="true")
    responses = instance.execute([Request(1.0, False), Request(2.0, True), Request(3.0, False)])
    assert forwards == [2]  # one forward, of the two live rows
    assert responses[1].error.code == TritonError.CANCELLED
    assert "model 'm': the client cancelled the request" in responses[1].error.message
    assert torch.equal(responses[0].outputs["y"], torch.full((1, 2), 2.0))
    assert torch.equal(responses[2].outputs["y"], torch.full((1, 2), 6.0))


def test_the_cancellation_check_can_be_turned_off(adapter, tmp_path):
    instance, forwards = model(adapter, tmp_path, ENABLE_CANCELLATION_CHECK="false")
    responses = instance.execute([Request(1.0, True)])
    assert forwards == [1] and responses[0].error is None


def test_is_ready_follows_the_instance(adapter, tmp_path):
    assert adapter.TritonPythonModel().is_ready() is False  # not initialized
    instance, _ = model(adapter, tmp_path)
    assert instance.is_ready() is True and instance.is_model_ready() is True
    instance._instance.sticky.error = "RuntimeError: CUDA error: misaligned address"
    assert instance.is_ready() is False
    (response,) = instance.execute([Request(1.0, False)])
    assert response.error.code == TritonError.UNAVAILABLE
