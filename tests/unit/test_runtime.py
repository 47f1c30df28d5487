"""Per-instance runtime settings, grad policy contexts, cache cleaning and custom op libraries."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pytorch_backend.config import BackendParameters, GradPolicy, ModelConfig, parse_model_config
from pytorch_backend.config.decision import Decision
from pytorch_backend.config.parameter_parsing import parse_parameters
from pytorch_backend.config.parameters import PARAMETERS
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.runtime.execution import execution_context
from pytorch_backend.runtime.report import LEADING_KEYS, EffectiveSettings, effective_lines
from pytorch_backend.runtime.settings import (
    apply_runtime_settings,
    cache_cleaning_applies,
    default_intra_op_threads,
)
from tests.custom_op import build_op_library

CPU = torch.device("cpu")


def make_config(parameters: dict[str, str] | None = None, cpu_instances: int = 1) -> ModelConfig:
    return parse_model_config(
        {
            "name": "m",
            "platform": "pytorch_libtorch",
            "max_batch_size": 0,
            "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [3]}],
            "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]}],
            "parameters": {k: {"string_value": v} for k, v in (parameters or {}).items()},
            "instance_group": [{"kind": "KIND_CPU", "count": cpu_instances}],
        }
    )


def params_of(config: ModelConfig) -> BackendParameters:
    return parse_parameters(config.name, config.parameters, lambda _: None)


@pytest.fixture
def restore_torch_globals() -> Iterator[None]:
    """apply_runtime_settings changes process-global torch state: put it back afterwards."""
    saved = (
        torch.get_num_threads(),
        torch.backends.cudnn.enabled,
        torch._C._get_graph_executor_optimize(),
        torch._C._jit_texpr_fuser_enabled(),
    )
    executor = torch._C._jit_set_profiling_executor(True)
    torch._C._jit_set_profiling_executor(executor)
    profiling = torch._C._jit_set_profiling_mode(True)
    torch._C._jit_set_profiling_mode(profiling)
    yield
    torch.set_num_threads(saved[0])
    torch.backends.cudnn.enabled = saved[1]
    torch._C._set_graph_executor_optimize(saved[2])
    torch._C._jit_set_texpr_fuser_enabled(saved[3])
    torch._C._jit_set_profiling_executor(executor)
    torch._C._jit_set_profiling_mode(profiling)


PREFIX = "pytorch_backend: model 'm' instance 'm_0': "


def lines_of(params: BackendParameters, settings: Any, config: ModelConfig, device) -> list[str]:
    """The effective-value lines as an instance logs them (weight sharing decided elsewhere)."""
    sharing = Decision.on(None) if params.enable_weight_sharing else Decision.off()
    effective = EffectiveSettings(params, settings, device, config.cpu_instance_count, sharing)
    return [PREFIX + line for line in effective_lines(effective)]


def apply(config: ModelConfig, device: torch.device | None = CPU) -> tuple[Any, list[str]]:
    params = params_of(config)
    settings = apply_runtime_settings(params, config, device)
    return settings, lines_of(params, settings, config, device)


# --- threads: set_num_interop_threads works once per process, so measure in subprocesses ----

CHILD = r"""
import dataclasses, json, sys, threading
import torch
from pytorch_backend.config import parse_model_config
from pytorch_backend.config.decision import Decision
from pytorch_backend.config.parameter_parsing import parse_parameters
from pytorch_backend.runtime.report import EffectiveSettings, effective_lines
from pytorch_backend.runtime.settings import apply_runtime_settings, available_cpus

spec = json.loads(sys.argv[1])
if spec.get("interop_already_set"):
    torch.set_num_interop_threads(2)
config = parse_model_config(spec["config"])
params = parse_parameters(config.name, config.parameters, print)
settings = apply_runtime_settings(params, config, torch.device("cpu"))
effective = EffectiveSettings(
    params, settings, torch.device("cpu"), config.cpu_instance_count, Decision.off()
)
prefix = "pytorch_backend: model 'm' instance 'm_0': "
logs = [prefix + line for line in effective_lines(effective)]
seen = []
worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
worker.start()
worker.join()
print(json.dumps({
    "settings": {**dataclasses.asdict(settings), "grad_policy": settings.grad_policy.value},
    "worker_threads": seen[0],
    "threads": torch.get_num_threads(),
    "interop": torch.get_num_interop_threads(),
    "cpus": available_cpus(),
    "logs": logs,
}))
"""


def run_child(parameters: dict[str, str], cpu_instances: int = 1, **extra: Any) -> dict[str, Any]:
    config = {
        "name": "m",
        "platform": "pytorch_libtorch",
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [3]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]}],
        "parameters": {k: {"string_value": v} for k, v in parameters.items()},
        "instance_group": [{"kind": "KIND_CPU", "count": cpu_instances}],
    }
    spec = json.dumps({"config": config, **extra})
    done = subprocess.run(
        [sys.executable, "-c", CHILD, spec], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_thread_counts_applied_in_a_fresh_process() -> None:
    out = run_child({"INTRA_OP_THREAD_COUNT": "1", "INTER_OP_THREAD_COUNT": "3"})
    assert out["threads"] == 1 and out["settings"]["intra_op_threads"] == 1
    assert out["worker_threads"] == 1  # also holds on the thread that will run the forward
    assert out["interop"] == 3 and out["settings"]["inter_op_threads"] == 3
    assert out["settings"]["thread_budget"] is None
    assert "pytorch_backend: model 'm' instance 'm_0': INTRA_OP_THREAD_COUNT = 1" in out["logs"]
    assert "pytorch_backend: model 'm' instance 'm_0': INTER_OP_THREAD_COUNT = 3" in out["logs"]


def test_thread_aliases_applied() -> None:
    out = run_child({"NUM_THREADS": "1", "NUM_INTEROP_THREADS": "1"})
    assert out["threads"] == 1 and out["interop"] == 1


def test_interop_too_late_is_reported_not_fatal() -> None:
    out = run_child({"INTER_OP_THREAD_COUNT": "3"}, interop_already_set=True)
    assert out["interop"] == 2 and out["settings"]["inter_op_threads"] == 2
    line = next(x for x in out["logs"] if "INTER_OP_THREAD_COUNT" in x)
    assert line.startswith("pytorch_backend: model 'm' instance 'm_0': INTER_OP_THREAD_COUNT = 2")
    assert "requested 3 was not applied" in line


def test_default_thread_budget_with_several_cpu_instances() -> None:
    out = run_child({}, cpu_instances=3)
    expected = max(1, (out["cpus"] - 1) // 3)
    assert out["threads"] == expected
    assert out["settings"]["thread_budget"] == expected
    line = next(x for x in out["logs"] if "INTRA_OP_THREAD_COUNT" in x)
    assert line.endswith(
        f"INTRA_OP_THREAD_COUNT = {expected} (not given: ({out['cpus']} CPUs - 1 for the server) "
        "/ 3 CPU instances)"
    )


def test_default_threads_of_a_single_cpu_instance_leave_a_cpu_to_the_server() -> None:
    out = run_child({})
    expected = max(1, out["cpus"] - 1)
    assert out["threads"] == expected == out["worker_threads"]
    assert out["settings"]["thread_budget"] == expected
    line = next(x for x in out["logs"] if "INTRA_OP_THREAD_COUNT" in x)
    assert line.endswith(f"(not given: ({out['cpus']} CPUs - 1 for the server) / 1 CPU instance)")


@pytest.mark.parametrize(
    ("cpus", "instances", "threads"),
    [(1, 1, 1), (2, 1, 1), (4, 1, 3), (16, 1, 15), (16, 3, 5), (2, 4, 1), (8, 0, 7)],
)
def test_default_intra_op_threads(cpus: int, instances: int, threads: int) -> None:
    assert default_intra_op_threads(cpus, instances) == threads


def test_explicit_thread_count_wins_over_budget() -> None:
    out = run_child({"INTRA_OP_THREAD_COUNT": "2"}, cpu_instances=8)
    assert out["threads"] == 2 and out["settings"]["thread_budget"] is None


def test_zero_threads_keep_torch_default() -> None:
    default = run_child({"INTRA_OP_THREAD_COUNT": "0"})
    assert default["settings"]["thread_budget"] is None
    baseline = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert default["threads"] == int(baseline.stdout)


# --- settings and their log lines -------------------------------------------------------------

EVERY_KEY = [p.key for p in PARAMETERS if p.logged]


@pytest.mark.usefixtures("restore_torch_globals")
def test_one_log_line_per_setting_naming_model_and_instance() -> None:
    settings, logs = apply(make_config())
    prefix = "pytorch_backend: model 'm' instance 'm_0': "
    assert all(line.startswith(prefix) for line in logs)
    keys = [line[len(prefix) :].split(" = ", 1)[0] for line in logs]
    assert sorted(keys) == sorted([*EVERY_KEY, *LEADING_KEYS])
    assert f"{prefix}INFERENCE_MODE = true (grad policy: inference_mode)" in logs
    assert f"{prefix}ENABLE_WEIGHT_SHARING = false" in logs
    assert f"{prefix}device = cpu" in logs
    assert settings.grad_policy is GradPolicy.INFERENCE_MODE
    assert settings.optimized_execution is True
    assert settings.cudnn_enabled is True


@pytest.mark.usefixtures("restore_torch_globals")
def test_disable_cudnn_and_jit_flags_applied() -> None:
    config = make_config(
        {
            "DISABLE_CUDNN": "true",
            "ENABLE_JIT_EXECUTOR": "false",
            "ENABLE_JIT_PROFILING": "false",
            "ENABLE_TENSOR_FUSER": "false",
        }
    )
    settings, logs = apply(config)
    assert torch.backends.cudnn.enabled is False and settings.cudnn_enabled is False
    assert torch._C._jit_set_profiling_executor(False) is False
    assert torch._C._jit_set_profiling_mode(False) is False
    assert torch._C._jit_texpr_fuser_enabled() is False
    assert (settings.jit_executor, settings.jit_profiling, settings.tensor_fuser) == (
        False,
        False,
        False,
    )
    assert any("DISABLE_CUDNN = true (cuDNN disabled" in line for line in logs)
    assert any("ENABLE_JIT_PROFILING = false (given)" in line for line in logs)

    settings, _ = apply(make_config({"ENABLE_JIT_PROFILING": "true", "ENABLE_TENSOR_FUSER": "1"}))
    assert settings.jit_profiling is True and torch._C._jit_set_profiling_mode(True) is True
    assert settings.tensor_fuser is True and torch._C._jit_texpr_fuser_enabled() is True
    assert torch.backends.cudnn.enabled is True  # DISABLE_CUDNN absent re-enables it


@pytest.mark.usefixtures("restore_torch_globals")
def test_jit_flags_left_alone_when_not_given() -> None:
    torch._C._jit_set_profiling_mode(False)
    torch._C._jit_set_texpr_fuser_enabled(False)
    settings, logs = apply(make_config())
    assert torch._C._jit_set_profiling_mode(False) is False
    assert torch._C._jit_texpr_fuser_enabled() is False
    assert settings.jit_profiling is False and settings.tensor_fuser is False
    assert any("ENABLE_JIT_PROFILING = false (not given, torch default)" in x for x in logs)


@pytest.mark.usefixtures("restore_torch_globals")
def test_nvfuser_is_accepted_and_reported_removed() -> None:
    _, logs = apply(make_config({"ENABLE_NVFUSER": "true"}))
    line = next(x for x in logs if "ENABLE_NVFUSER" in x)
    assert "removed from PyTorch" in line and "true" in line


@pytest.mark.usefixtures("restore_torch_globals")
def test_cache_cleaning_log_lines() -> None:
    config = make_config({"ENABLE_CACHE_CLEANING": "true"})
    settings, logs = apply(config)
    assert settings.cache_cleaning is False
    assert any("ENABLE_CACHE_CLEANING = true (no effect on a CPU instance)" in x for x in logs)
    settings, logs = apply(config, device=torch.device("cuda", 0))
    assert settings.cache_cleaning is True
    assert any("ENABLE_CACHE_CLEANING = true (torch.cuda.empty_cache()" in x for x in logs)


@pytest.mark.usefixtures("restore_torch_globals")
def test_disable_optimized_execution_holds_on_the_forward_thread() -> None:
    params = params_of(make_config({"DISABLE_OPTIMIZED_EXECUTION": "true"}))
    settings, _ = apply(make_config({"DISABLE_OPTIMIZED_EXECUTION": "true"}))
    assert settings.optimized_execution is False
    seen: list[bool] = []

    def forward_thread() -> None:
        # torch keeps this flag per thread: a new thread starts with the default (True) ...
        seen.append(torch._C._get_graph_executor_optimize())
        with execution_context(params):
            seen.append(torch._C._get_graph_executor_optimize())
        seen.append(torch._C._get_graph_executor_optimize())

    worker = threading.Thread(target=forward_thread)
    worker.start()
    worker.join()
    assert seen == [True, False, True]  # ... so execution_context applies it per forward


# --- grad policy --------------------------------------------------------------------------------


class NeedsGrad(torch.nn.Module):
    """A model that differentiates at inference time (e.g. differentiable rendering)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        y = (x * x).sum()
        grad = torch.autograd.grad([y], [x])[0]
        assert grad is not None
        return grad


@pytest.mark.parametrize("scripted", [False, True])
def test_model_needing_gradients_runs_only_under_enable_grad(scripted: bool) -> None:
    model = torch.jit.script(NeedsGrad()) if scripted else NeedsGrad()
    x = torch.arange(3.0)
    with execution_context(BackendParameters(enable_grad=True, inference_mode=False)):
        assert torch.equal(model(x), 2 * x)
    for params in (BackendParameters(), BackendParameters(inference_mode=False)):
        with pytest.raises(RuntimeError), execution_context(params):
            model(x)


def test_grad_policy_contexts() -> None:
    weight = torch.ones(3, requires_grad=True)
    with execution_context(BackendParameters()):
        out = weight * 2
        assert torch.is_inference_mode_enabled()
    assert out.is_inference() and not out.requires_grad
    with execution_context(BackendParameters(inference_mode=False)):
        out = weight * 2
        assert not torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
    assert not out.is_inference() and not out.requires_grad
    with torch.no_grad(), execution_context(BackendParameters(enable_grad=True)):
        out = weight * 2
    assert out.requires_grad and not out.is_inference()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_execution_context_restores_state_after_an_exception() -> None:
    optimize = torch._C._get_graph_executor_optimize()
    context = execution_context(BackendParameters(disable_optimized_execution=True))
    with pytest.raises(ValueError), context:
        raise ValueError("boom")
    assert torch._C._get_graph_executor_optimize() == optimize
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_cache_cleaning_applies_only_where_there_is_a_gpu() -> None:
    cleaning = BackendParameters(enable_cache_cleaning=True)
    assert cache_cleaning_applies(cleaning, CPU) is False
    assert cache_cleaning_applies(BackendParameters(), CPU) is False
    assert cache_cleaning_applies(cleaning, torch.device("cuda", 0)) is True
    if not torch.cuda.is_available():
        assert cache_cleaning_applies(cleaning, None) is False  # KIND_MODEL without GPUs
    assert not torch.cuda.is_initialized()


# --- custom op libraries ------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_torch_globals")
def test_custom_op_library_loaded_from_parameter(tmp_path: Path) -> None:
    library = build_op_library()
    settings, logs = apply(make_config({"CUSTOM_OP_LIBRARIES": str(library)}))
    assert settings.custom_op_libraries == (str(library),)
    assert torch.equal(torch.ops.pbtest.add_one(torch.zeros(2)), torch.ones(2))
    assert any(line.endswith(f"CUSTOM_OP_LIBRARIES = {library} (loaded)") for line in logs)

    # A TorchScript model calling the op loads and runs (the op was registered first).
    class UsesOp(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.pbtest.add_one(x)

    path = tmp_path / "model.pt"
    torch.jit.script(UsesOp()).save(str(path))
    assert torch.equal(torch.jit.load(str(path))(torch.ones(2)), torch.full((2,), 2.0))


def test_missing_custom_op_library_fails_the_load(tmp_path: Path) -> None:
    missing = tmp_path / "libmissing.so"
    with pytest.raises(ModelLoadError) as info:
        apply(make_config({"CUSTOM_OP_LIBRARIES": str(missing)}))
    message = str(info.value)
    assert "'m'" in message and "'CUSTOM_OP_LIBRARIES'" in message and str(missing) in message


def test_unloadable_custom_op_library_fails_the_load(tmp_path: Path) -> None:
    junk = tmp_path / "libjunk.so"
    junk.write_text("not an ELF file")
    with pytest.raises(ModelLoadError) as info:
        apply(make_config({"CUSTOM_OP_LIBRARIES": str(junk)}))
    assert "cannot load library" in str(info.value) and str(junk) in str(info.value)
