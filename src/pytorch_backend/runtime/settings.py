"""Per-instance torch runtime settings, applied once at load.

Every Python-backend instance is its own stub process, so torch's process-global settings
(threads, cuDNN, JIT executor flags) are truly per instance here, unlike the C++ backend where
the first model's thread counts win for the whole server.

Call :func:`apply_runtime_settings` once **before** the model is loaded (custom op libraries must
be registered before ``torch.jit.load`` resolves their ops, and ``set_num_interop_threads`` must
run before any inter-op work). What runs around each forward is in :mod:`.execution`; the
effective values are logged by :mod:`.report`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..config import BackendParameters, GradPolicy, ModelConfig
from ..config.parameter_types import SERVER_CPUS
from ..errors import ModelLoadError


@dataclass(frozen=True)
class RuntimeSettings:
    """Effective values after :func:`apply_runtime_settings` (as torch reports them)."""

    grad_policy: GradPolicy
    optimized_execution: bool
    intra_op_threads: int
    inter_op_threads: int
    thread_budget: int | None  # intra-op count derived from CPUs / CPU instances, when applied
    cpus: int  # CPUs this process may run on (what a thread budget divides)
    inter_op_refused: str | None  # why set_num_interop_threads did not take the value, if so
    cudnn_enabled: bool
    jit_executor: bool | None  # None: the JIT getter is unavailable in this torch
    jit_profiling: bool | None
    tensor_fuser: bool | None
    cache_cleaning: bool  # torch.cuda.empty_cache() runs after each execute
    custom_op_libraries: tuple[str, ...]
    #: Why the warm-up chose ``intra_op_threads`` over the budget (``runtime.thread_choice``).
    thread_choice: str | None = None


def available_cpus() -> int:
    """CPUs this process may run on (affinity / cpuset aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_intra_op_threads(cpus: int, cpu_instances: int) -> int:
    """The intra-op threads of a KIND_CPU instance when no thread parameter is given.

    The instance shares the machine with tritonserver (gRPC/HTTP, the scheduler, shared-memory
    copies) and with the model's other CPU instances: each gets an equal share of the CPUs left
    after :data:`SERVER_CPUS`, at least one. torch's default (one thread per CPU, per process)
    oversubscribes: measured through tritonserver on 2 CPUs at concurrency 16, 1 thread served
    an MLP at 2.1x and a small CNN at 3x the throughput of torch's 2.
    """
    return max(1, (cpus - SERVER_CPUS) // max(1, cpu_instances))


def whole_cpu_share(cpus: int, cpu_instances: int) -> int:
    """The most intra-op threads a KIND_CPU instance may take: its equal share of every CPU."""
    return max(1, cpus // max(1, cpu_instances))


def cache_cleaning_applies(params: BackendParameters, device: torch.device | None) -> bool:
    """``ENABLE_CACHE_CLEANING`` acts on a CUDA instance, or on KIND_MODEL (``device`` None) on a
    host with GPUs; never on a CPU instance."""
    if not params.enable_cache_cleaning:
        return False
    if device is None:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0
    return device.type == "cuda"


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
                f"parameter 'CUSTOM_OP_LIBRARIES': library {library!r} does not exist (relative "
                "paths are resolved against the version directory)",
                model=model_name,
            )
        try:
            torch.ops.load_library(library)
        except OSError as exc:
            raise ModelLoadError(
                f"parameter 'CUSTOM_OP_LIBRARIES': cannot load library {library!r}: {exc}",
                model=model_name,
            ) from exc


def apply_runtime_settings(
    params: BackendParameters,
    config: ModelConfig,
    device: torch.device | None,
) -> RuntimeSettings:
    """Apply the model's torch settings to this instance's process; return the effective values.

    Raises ModelLoadError for a custom op library that is missing or does not load.
    """
    # Custom ops first: the model's ops must be registered before it is loaded.
    load_custom_op_libraries(config.name, params.custom_op_libraries)

    # Threads: see default_intra_op_threads; 0 keeps torch's default.
    budget: int | None = None
    cpus = available_cpus()
    intra = params.intra_op_thread_count
    is_cpu_instance = device is not None and device.type == "cpu"
    if intra is None and is_cpu_instance:
        budget = default_intra_op_threads(cpus, config.cpu_instance_count)
        intra = budget
    if intra:
        torch.set_num_threads(intra)
    inter_refused = None
    if params.inter_op_thread_count:
        try:
            torch.set_num_interop_threads(params.inter_op_thread_count)
        except RuntimeError as exc:
            inter_refused = str(exc)

    cudnn = not params.disable_cudnn
    torch.backends.cudnn.enabled = cudnn

    jit_executor = _jit_flag("_jit_set_profiling_executor", params.enable_jit_executor)
    jit_profiling = _jit_flag("_jit_set_profiling_mode", params.enable_jit_profiling)
    tensor_fuser = _texpr_fuser(params.enable_tensor_fuser)

    # Thread-local in torch: set here for the loading thread; execution_context() sets it again
    # on the thread that runs each forward.
    optimized = not params.disable_optimized_execution
    torch._C._set_graph_executor_optimize(optimized)

    return RuntimeSettings(
        grad_policy=params.grad_policy,
        optimized_execution=bool(torch._C._get_graph_executor_optimize()),
        intra_op_threads=torch.get_num_threads(),
        inter_op_threads=torch.get_num_interop_threads(),
        thread_budget=budget,
        cpus=cpus,
        inter_op_refused=inter_refused,
        cudnn_enabled=bool(torch.backends.cudnn.enabled),
        jit_executor=jit_executor,
        jit_profiling=jit_profiling,
        tensor_fuser=tensor_fuser,
        cache_cleaning=cache_cleaning_applies(params, device),
        custom_op_libraries=params.custom_op_libraries,
    )
