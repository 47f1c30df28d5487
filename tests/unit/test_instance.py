"""The composition root without Triton: every model kind and instance kind, with plain torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pytorch_backend.config import InstanceKind, ModelKind
from pytorch_backend.config.parameters import PARAMETERS
from pytorch_backend.errors import ModelLoadError, RequestError
from pytorch_backend.executors.aoti.executor import AotiExecutor
from pytorch_backend.executors.torchscript.executor import TorchScriptExecutor
from pytorch_backend.instance import InstanceArgs
from pytorch_backend.requests import RequestInputs
from pytorch_backend.runtime.execution import GradPolicyHook
from pytorch_backend.runtime.report import LEADING_KEYS
from tests import aoti_models
from tests.unit.builders import PREFIX, build, io, settings_logged, ts_config, ts_repo


def test_from_triton_reads_the_python_backend_arguments(tmp_path):
    parsed = InstanceArgs.from_triton(
        {
            "model_config": "{}",
            "model_instance_name": "m_0_1",
            "model_instance_kind": "GPU",
            "model_instance_device_id": "3",
            "model_repository": str(tmp_path / "m"),
            "model_version": "2",
        }
    )
    assert parsed.kind is InstanceKind.GPU and parsed.device_id == 3
    assert parsed.version_dir == tmp_path / "m" / "2"
    assert InstanceArgs.from_triton({**_minimal(tmp_path)}).kind is InstanceKind.CPU


def _minimal(tmp_path: Path) -> dict:
    return {"model_config": "{}", "model_repository": str(tmp_path), "model_version": "1"}


def test_torchscript_cpu_instance_serves_and_logs_every_setting_once(tmp_path):
    instance, sink = build(ts_repo(tmp_path), ts_config())
    assert instance.kind is ModelKind.TORCHSCRIPT
    assert isinstance(instance.executor, TorchScriptExecutor)
    assert instance.device == torch.device("cpu")
    logged = settings_logged(sink)
    expected = {*LEADING_KEYS} | {p.key for p in PARAMETERS if p.logged}
    assert set(logged) == expected
    assert logged["ENABLE_WEIGHT_SHARING"] == "false"
    assert any(f"loaded TorchScript '{tmp_path}/m/1/model.pt' on cpu" in m for m in sink.text())
    assert any("inputs bound by forward-argument names" in m for m in sink.text())
    xs = [torch.ones(1, 2), torch.full((2, 2), 3.0)]
    outcomes = instance.infer([RequestInputs({"x": x}) for x in xs])
    for x, out in zip(xs, outcomes):
        torch.testing.assert_close(out["y"], x * 2)
    assert any(isinstance(h, GradPolicyHook) for h in instance.engine.hooks.hooks)
    instance.close()


def test_kind_model_keeps_the_model_devices_and_weight_sharing_has_no_effect(tmp_path):
    params = {"ENABLE_WEIGHT_SHARING": {"string_value": "true"}}
    instance, sink = build(ts_repo(tmp_path), ts_config(parameters=params), InstanceKind.MODEL)
    assert instance.device is None
    assert instance.shared_weights is None
    logged = settings_logged(sink)
    assert logged["device"] == "chosen by the model (KIND_MODEL)"
    assert logged["ENABLE_WEIGHT_SHARING"].startswith("true, no effect: KIND_MODEL")
    out = instance.infer([RequestInputs({"x": torch.ones(1, 2)})])[0]
    torch.testing.assert_close(out["y"], torch.full((1, 2), 2.0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_kind_gpu_without_cuda_is_a_load_error_naming_model_and_instance(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        build(ts_repo(tmp_path), ts_config(), InstanceKind.GPU)
    assert info.value.model == "m" and info.value.instance == "m_0"
    assert str(info.value).startswith("model 'm': instance kind GPU")


def test_weight_sharing_two_instances_map_one_file_removed_on_close(tmp_path):
    model_dir = ts_repo(tmp_path)
    config = ts_config(parameters={"ENABLE_WEIGHT_SHARING": {"string_value": "true"}})
    first, sink = build(model_dir, config)
    second, _ = build(model_dir, config)
    try:
        assert settings_logged(sink)["ENABLE_WEIGHT_SHARING"] == "true"
        path = first.shared_weights.path
        assert path is not None and path == second.shared_weights.path and path.exists()
        # one prefix per line: the weight-sharing messages are not prefixed twice
        assert all(m.count("pytorch_backend:") == 1 for m in sink.text())
        out = second.infer([RequestInputs({"x": torch.ones(1, 2)})])[0]
        torch.testing.assert_close(out["y"], torch.full((1, 2), 2.0))
    finally:
        first.close()
        second.close()
        second.close()  # idempotent
    assert not path.exists()


def test_load_errors_name_the_model_once(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    with pytest.raises(ModelLoadError) as info:
        build(model_dir, ts_config())
    message = str(info.value)
    assert message.startswith("model 'm': unable to find") and message.count("model 'm'") == 1
    assert info.value.instance == "m_0"


def test_unknown_parameter_warns_through_the_instance_log(tmp_path):
    params = {"INFERENCE_MDOE": {"string_value": "true"}}
    _, sink = build(ts_repo(tmp_path), ts_config(parameters=params))
    # (on a torch that deprecates TorchScript, the model also warns once about that)
    (warning,) = [w for w in sink.text("warn") if "TorchScript is deprecated" not in w]
    assert warning.startswith(PREFIX) and "did you mean 'INFERENCE_MODE'?" in warning


def test_request_errors_carry_no_prefix_until_the_adapter_names_the_model(tmp_path):
    instance, _ = build(ts_repo(tmp_path), ts_config())
    (outcome,) = instance.infer([RequestInputs({"x": torch.ones(1, 3)})])
    assert isinstance(outcome, RequestError) and outcome.model is None
    assert str(outcome.for_model("m")).startswith("model 'm': input 'x' has shape [1, 3]")


@pytest.fixture(scope="module")
def padded_package() -> Path:
    return aoti_models.build_padded()


def test_aoti_cpu_instance_probes_pads_and_serves(tmp_path, padded_package):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    shutil.copy(padded_package, model_dir / "1" / "model.pt2")
    config = {
        "name": "m",
        "platform": "torch_aoti",
        "max_batch_size": 16,
        "input": [io("INPUT__0", [-1])],
        "output": [io("OUTPUT__0", [-1])],
        "parameters": {"ENABLE_WEIGHT_SHARING": {"string_value": "true"}},
    }
    instance, sink = build(model_dir, config)
    assert instance.kind is ModelKind.AOTI and isinstance(instance.executor, AotiExecutor)
    caps = instance.executor.capabilities
    assert caps.batch_range == (aoti_models.PADDED_MIN_BATCH, aoti_models.PADDED_MAX_BATCH)
    assert caps.shareable_module is None and caps.devices == (torch.device("cpu"),)
    logged = settings_logged(sink)
    assert logged["ENABLE_WEIGHT_SHARING"].startswith("true, no effect: an AOT-Inductor package")
    assert any("loaded AOT-Inductor package" in m for m in sink.text())
    x = torch.arange(10, dtype=torch.float32).reshape(2, 5)  # below the exported minimum of 3
    (out,) = instance.infer([RequestInputs({"INPUT__0": x})])
    torch.testing.assert_close(out["OUTPUT__0"], x * 2 + 1)
