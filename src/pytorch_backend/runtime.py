"""Per-instance torch runtime settings, the per-forward grad policy and post-execute cache cleaning.

Every Python-backend instance is its own stub process, so torch's process-global settings
(threads, cuDNN, JIT executor flags) are truly per instance here, unlike the C++ backend where
the first model's thread counts win for the whole server.

Call :func:`apply_runtime_settings` once in ``initialize`` **before** the model is loaded (custom
op libraries must be registered before ``torch.jit.load`` resolves their ops, and
``set_num_interop_threads`` must run before any inter-op work), wrap every forward in
``with execution_context(params):`` and call :func:`after_execute` after each batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from .config import ModelConfig
from .errors import ModelLoadError
from .parameters import BackendParameters


@dataclass(frozen=True)
class RuntimeSettings:
    """Effective values after :func:`apply_runtime_settings` (as torch reports them)."""

    grad_policy: str
    optimized_execution: bool
    intra_op_threads: int
    inter_op_threads: int
    thread_budget: int | None  # intra-op count derived from cores / CPU instances, when applied
    cudnn_enabled: bool
    jit_executor: bool | None  # None: the JIT getter is unavailable in this torch
    jit_profiling: bool | None
    tensor_fuser: bool | None
    cache_cleaning: bool
    weight_sharing: bool
    custom_op_libraries: tuple[str, ...]


def _on_off(value: bool | None) -> str:
    return "unknown" if value is None else ("true" if value else "false")


def available_cpus() -> int:
    """CPUs this process may run on (affinity / cpuset aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_instance_count(config: ModelConfig) -> int:
    """Total ``count`` of the config's KIND_CPU instance groups."""
    return sum(g.count for g in config.instance_groups if g.kind in ("KIND_CPU", "CPU"))


def _jit_flag(setter_name: str, value: bool | None) -> bool | None:
    """Set a JIT flag whose setter returns the previous value; with None only read it."""
    setter = getattr(torch._C, setter_name, None)
    if setter is None:
        return None
    if value is None:
        previous = setter(True)
        setter(previous)
        return bool(previous)
    setter(value)
    return value


def _texpr_fuser(value: bool | None) -> bool | None:
    if value is not None:
        torch._C._jit_set_texpr_fuser_enabled(value)
    getter = getattr(torch._C, "_jit_texpr_fuser_enabled", None)
    return bool(getter()) if getter is not None else value


def load_custom_op_libraries(model_name: str, libraries: tuple[str, ...]) -> None:
    """``torch.ops.load_library`` each library; a missing or unloadable file fails the load."""
    for library in libraries:
        if not os.path.isfile(library):
            raise ModelLoadError(
                f"model '{model_name}': parameter 'CUSTOM_OP_LIBRARIES': library {library!r} "
                "does not exist (relative paths are resolved against the version directory)"
            )
        try:
            torch.ops.load_library(library)
        except OSError as exc:
            raise ModelLoadError(
                f"model '{model_name}': parameter 'CUSTOM_OP_LIBRARIES': cannot load library "
                f"{library!r}: {exc}"
            ) from exc


def apply_runtime_settings(
    params: BackendParameters,
    config: ModelConfig,
    *,
    instance_name: str,
    device: torch.device | None,
    log: Callable[[str], None],
) -> RuntimeSettings:
    """Apply the model's torch settings to this instance's process and log every effective value.

    One log line per setting, e.g. ``pytorch_backend: model 'm' instance 'm_0': INFERENCE_MODE =
    true``. Raises ModelLoadError for a custom op library that is missing or does not load.
    """
    prefix = f"pytorch_backend: model '{config.name}' instance '{instance_name}': "

    def line(key: str, text: str) -> None:
        log(f"{prefix}{key} = {text}")

    # Custom ops first: the model's ops must be registered before it is loaded.
    load_custom_op_libraries(config.name, params.custom_op_libraries)

    # Threads. The default budget avoids oversubscription when several CPU instances of one
    # model each start a pool as large as the machine.
    budget: int | None = None
    intra = params.intra_op_thread_count
    is_cpu_instance = device is not None and device.type == "cpu"
    cpu_instances = cpu_instance_count(config)
    if intra is None and is_cpu_instance and cpu_instances > 1:
        budget = max(1, available_cpus() // cpu_instances)
        intra = budget
    if intra is not None:
        torch.set_num_threads(intra)
    inter_note = ""
    if params.inter_op_thread_count is not None:
        try:
            torch.set_num_interop_threads(params.inter_op_thread_count)
        except RuntimeError as exc:
            inter_note = f" (requested {params.inter_op_thread_count} was not applied: {exc})"

    cudnn = not params.disable_cudnn
    torch.backends.cudnn.enabled = cudnn

    jit_executor = _jit_flag("_jit_set_profiling_executor", params.enable_jit_executor)
    jit_profiling = _jit_flag("_jit_set_profiling_mode", params.enable_jit_profiling)
    tensor_fuser = _texpr_fuser(params.enable_tensor_fuser)

    # Thread-local in torch: set here for the loading thread; execution_context() sets it again
    # on the thread that runs each forward.
    optimized = not params.disable_optimized_execution
    torch._C._set_graph_executor_optimize(optimized)

    is_cuda_instance = device is not None and device.type == "cuda"
    sharing = params.enable_weight_sharing and not is_cuda_instance
    settings = RuntimeSettings(
        grad_policy=params.grad_policy,
        optimized_execution=bool(torch._C._get_graph_executor_optimize()),
        intra_op_threads=torch.get_num_threads(),
        inter_op_threads=torch.get_num_interop_threads(),
        thread_budget=budget,
        cudnn_enabled=bool(torch.backends.cudnn.enabled),
        jit_executor=jit_executor,
        jit_profiling=jit_profiling,
        tensor_fuser=tensor_fuser,
        cache_cleaning=params.enable_cache_cleaning,
        weight_sharing=sharing,
        custom_op_libraries=params.custom_op_libraries,
    )

    def given(value: Any) -> str:
        return "given" if value is not None else "not given, torch default"

    line("device", str(device) if device is not None else "chosen by the model (KIND_MODEL)")
    line(
        "INFERENCE_MODE",
        f"{_on_off(params.inference_mode)} (grad policy: {settings.grad_policy})",
    )
    line("ENABLE_GRAD", _on_off(params.enable_grad))
    line(
        "DISABLE_OPTIMIZED_EXECUTION",
        f"{_on_off(params.disable_optimized_execution)} "
        f"(graph executor optimization {'on' if settings.optimized_execution else 'off'}, "
        "applied on the forward thread)",
    )
    line(
        "ENABLE_JIT_EXECUTOR",
        f"{_on_off(jit_executor)} ({given(params.enable_jit_executor)})",
    )
    line(
        "ENABLE_JIT_PROFILING",
        f"{_on_off(jit_profiling)} ({given(params.enable_jit_profiling)})",
    )
    line(
        "ENABLE_TENSOR_FUSER",
        f"{_on_off(tensor_fuser)} ({given(params.enable_tensor_fuser)})",
    )
    if params.enable_nvfuser is None:
        line("ENABLE_NVFUSER", "not given (NVFuser was removed from PyTorch)")
    else:
        line(
            "ENABLE_NVFUSER",
            f"{_on_off(params.enable_nvfuser)} ignored: NVFuser was removed from PyTorch "
            "(use ENABLE_TENSOR_FUSER for TorchScript fusion)",
        )
    cudnn_state = "available" if torch.backends.cudnn.is_available() else "not available"
    line(
        "DISABLE_CUDNN",
        f"{_on_off(params.disable_cudnn)} (cuDNN "
        f"{'enabled' if settings.cudnn_enabled else 'disabled'}, {cudnn_state})",
    )
    cleaning_scope = (
        "no effect on a CPU instance"
        if device is not None and device.type == "cpu"
        else "torch.cuda.empty_cache() after every execute"
    )
    line(
        "ENABLE_CACHE_CLEANING",
        f"{_on_off(params.enable_cache_cleaning)}"
        + (f" ({cleaning_scope})" if params.enable_cache_cleaning else ""),
    )
    if params.intra_op_thread_count is not None:
        intra_text = f"{settings.intra_op_threads}"
    elif budget is not None:
        intra_text = (
            f"{settings.intra_op_threads} (not given: {available_cpus()} CPUs / "
            f"{cpu_instances} CPU instances)"
        )
    else:
        intra_text = f"{settings.intra_op_threads} (not given, torch default)"
    line("INTRA_OP_THREAD_COUNT", intra_text)
    line(
        "INTER_OP_THREAD_COUNT",
        f"{settings.inter_op_threads}"
        + (inter_note or ("" if params.inter_op_thread_count else " (not given, torch default)")),
    )
    if params.enable_weight_sharing and not sharing:
        sharing_text = (
            "true, no effect: CUDA instances cannot share weights across processes "
            "(each process has its own CUDA context)"
        )
    else:
        sharing_text = _on_off(sharing)
    line("ENABLE_WEIGHT_SHARING", sharing_text)
    line(
        "CUSTOM_OP_LIBRARIES",
        ", ".join(params.custom_op_libraries) + " (loaded)"
        if params.custom_op_libraries
        else "none",
    )
    line("MODEL_FILENAME", params.model_filename or "not given")
    return settings


class _ExecutionContext:
    """Grad policy + graph-executor optimization for one forward (entered on the forward thread)."""

    __slots__ = ("_grad", "_optimize", "_previous_optimize")

    def __init__(self, policy: str, optimize: bool) -> None:
        if policy == "inference_mode":
            self._grad: contextlib.AbstractContextManager[Any] = torch.inference_mode()
        elif policy == "no_grad":
            self._grad = torch.no_grad()
        else:
            self._grad = torch.enable_grad()
        self._optimize = optimize
        self._previous_optimize = True

    def __enter__(self) -> None:
        self._previous_optimize = torch._C._get_graph_executor_optimize()
        torch._C._set_graph_executor_optimize(self._optimize)
        self._grad.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._grad.__exit__(exc_type, exc, tb)
        finally:
            torch._C._set_graph_executor_optimize(self._previous_optimize)


def execution_context(params: BackendParameters) -> contextlib.AbstractContextManager[None]:
    """The context for one forward: the grad policy (``torch.inference_mode()`` /
    ``torch.no_grad()`` / ``torch.enable_grad()``) and ``DISABLE_OPTIMIZED_EXECUTION``, which is
    thread-local in torch and therefore applied on the thread that runs the forward.

    Build a fresh one per execute (a few microseconds); it is not re-entrant.
    """
    return _ExecutionContext(params.grad_policy, not params.disable_optimized_execution)


def after_execute(params: BackendParameters, device: torch.device | None) -> bool:
    """``ENABLE_CACHE_CLEANING``: release cached CUDA memory after an execute.

    Runs for a CUDA instance, or a KIND_MODEL instance (``device`` None) on a host with GPUs;
    nothing on CPU. ``torch.cuda.empty_cache()`` only acts once CUDA is initialised, so it never
    creates a context. Returns whether the cache was emptied.
    """
    if not params.enable_cache_cleaning:
        return False
    if device is None:
        if not (torch.cuda.is_available() and torch.cuda.device_count() > 0):
            return False
    elif device.type != "cuda":
        return False
    torch.cuda.empty_cache()
    return True
