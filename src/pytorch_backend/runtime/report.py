"""The effective value of every setting, one log line each, in the parameter registry's order.

``pytorch_backend: model 'm' instance 'm_0': INFERENCE_MODE = true (grad policy: ...)``. Every
key of :data:`~pytorch_backend.config.parameters.PARAMETERS` that this backend reads has a
describer here (a unit test checks it), so adding a parameter without its log line fails a test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import BackendParameters, ModelKind, OutputShapeCheck
from ..config.decision import Decision
from ..config.parameters import BY_KEY, PARAMETERS
from .settings import SERVER_CPUS, RuntimeSettings, available_cpus

_OFF: Decision[Any] = Decision.off()


@dataclass(frozen=True)
class EffectiveSettings:
    """What the log lines describe: the parameters, what torch took, and the load's decisions."""

    params: BackendParameters
    settings: RuntimeSettings
    device: torch.device | None  # None: KIND_MODEL
    cpu_instances: int
    weight_sharing: Decision[Any]  # ENABLE_WEIGHT_SHARING: the shared weights, or why none
    kind: ModelKind | None = None  # the model kind served, when known
    metrics: Decision[Any] = _OFF  # ENABLE_METRICS: the metrics hook, or why none
    warmup: Sequence[int | None] = ()  # the batch sizes warmed up at load (empty: none)
    cuda_graphs: Decision[Any] = _OFF  # CUDA_GRAPHS: the graph executor, or why none
    cancellation_check: str | None = None  # the decision, as logged ("auto -> false (...)")


def on_off(value: bool | None) -> str:
    return "unknown" if value is None else ("true" if value else "false")


def _given(value: object) -> str:
    return "given" if value is not None else "not given, torch default"


def _inference_mode(e: EffectiveSettings) -> str:
    return f"{on_off(e.params.inference_mode)} (grad policy: {e.settings.grad_policy.value})"


def _optimized(e: EffectiveSettings) -> str:
    state = "on" if e.settings.optimized_execution else "off"
    return (
        f"{on_off(e.params.disable_optimized_execution)} (graph executor optimization {state}, "
        "applied on the forward thread)"
    )


def _jit(effective: Callable[[RuntimeSettings], bool | None], given: str) -> Describer:
    def describe(e: EffectiveSettings) -> str:
        return f"{on_off(effective(e.settings))} ({_given(getattr(e.params, given))})"

    return describe


def _nvfuser(e: EffectiveSettings) -> str:
    if e.params.enable_nvfuser is None:
        return "not given (NVFuser was removed from PyTorch)"
    return (
        f"{on_off(e.params.enable_nvfuser)} ignored: NVFuser was removed from PyTorch "
        "(use ENABLE_TENSOR_FUSER for TorchScript fusion)"
    )


def _cudnn(e: EffectiveSettings) -> str:
    state = "enabled" if e.settings.cudnn_enabled else "disabled"
    available = "available" if torch.backends.cudnn.is_available() else "not available"
    return f"{on_off(e.params.disable_cudnn)} (cuDNN {state}, {available})"


def _cache_cleaning(e: EffectiveSettings) -> str:
    if not e.params.enable_cache_cleaning:
        return "false"
    if e.settings.cache_cleaning:
        return "true (torch.cuda.empty_cache() after every execute)"
    if e.device is not None and e.device.type == "cpu":
        return "true (no effect on a CPU instance)"
    return "true (no effect: no GPU is visible)"


def _intra(e: EffectiveSettings) -> str:
    threads = e.settings.intra_op_threads
    if e.params.intra_op_thread_count == 0:
        return f"{threads} (0 given: torch default)"
    if e.params.intra_op_thread_count is not None:
        return str(threads)
    if e.settings.thread_budget is not None:
        instances = max(1, e.cpu_instances)
        plural = "s" if instances > 1 else ""
        return (
            f"{threads} (not given: ({available_cpus()} CPUs - {SERVER_CPUS} for the server) "
            f"/ {instances} CPU instance{plural})"
        )
    return f"{threads} (not given, torch default)"


def _inter(e: EffectiveSettings) -> str:
    threads = e.settings.inter_op_threads
    requested = e.params.inter_op_thread_count
    if e.settings.inter_op_refused is not None:
        return f"{threads} (requested {requested} was not applied: {e.settings.inter_op_refused})"
    return str(threads) if requested else f"{threads} (not given, torch default)"


def _libraries(e: EffectiveSettings) -> str:
    libraries = e.params.custom_op_libraries
    return ", ".join(libraries) + " (loaded)" if libraries else "none"


def _warmup(e: EffectiveSettings) -> str:
    if not e.params.warmup:
        return "false"
    return "true" if e.warmup else "true, no effect: no batch sizes"


def _warmup_sizes(e: EffectiveSettings) -> str:
    sizes = ", ".join("as configured" if b is None else str(b) for b in e.warmup)
    if not e.params.warmup:
        return "no effect: WARMUP is false"
    given = e.params.warmup_batch_sizes is not None
    return f"[{sizes}]" + ("" if given else " (not given: powers of two, max, preferred)")


def _cancellation_check(e: EffectiveSettings) -> str:
    given = e.params.enable_cancellation_check
    return e.cancellation_check or ("auto" if given is None else on_off(given))


_OUTPUT_SHAPES = {
    OutputShapeCheck.WARN: "served with the model's shape, warned once per output",
    OutputShapeCheck.ERROR: "refused",
    OutputShapeCheck.OFF: "served with the model's shape, not logged",
}


def _output_shapes(e: EffectiveSettings) -> str:
    check = e.params.output_shape_check
    return f"{check.value} (an output shape that contradicts the dims: {_OUTPUT_SHAPES[check]})"


def _for_kind(key: str, describe: Describer) -> Describer:
    """``describe``, or "no effect" when the parameter does not apply to the model's kind."""

    def described(e: EffectiveSettings) -> str:
        if e.kind is not None and e.kind not in BY_KEY[key].applies_to:
            return f"no effect on a {e.kind.value} model"
        return describe(e)

    return described


Describer = Callable[[EffectiveSettings], str]
_DEFAULTS = {p.key: getattr(BackendParameters(), p.field) for p in PARAMETERS if p.field}


def _torchscript_only(key: str, describe: Describer) -> Describer:
    """A TorchScript JIT setting: on another kind, say it has no effect (and what was given)."""

    def describe_for_kind(e: EffectiveSettings) -> str:
        if e.kind is None or e.kind == ModelKind.TORCHSCRIPT:
            return describe(e)
        value = getattr(e.params, BY_KEY[key].field or "", None)
        set_to = f"{on_off(value)} given, " if value is not None and value != _DEFAULTS[key] else ""
        return f"{set_to}no effect on {e.kind.value}s"

    return describe_for_kind


DESCRIBERS: Mapping[str, Describer] = {
    "INFERENCE_MODE": _inference_mode,
    "ENABLE_GRAD": lambda e: on_off(e.params.enable_grad),
    "DISABLE_OPTIMIZED_EXECUTION": _torchscript_only("DISABLE_OPTIMIZED_EXECUTION", _optimized),
    "ENABLE_JIT_EXECUTOR": _torchscript_only(
        "ENABLE_JIT_EXECUTOR", _jit(lambda s: s.jit_executor, "enable_jit_executor")
    ),
    "ENABLE_JIT_PROFILING": _torchscript_only(
        "ENABLE_JIT_PROFILING", _jit(lambda s: s.jit_profiling, "enable_jit_profiling")
    ),
    "ENABLE_TENSOR_FUSER": _torchscript_only(
        "ENABLE_TENSOR_FUSER", _jit(lambda s: s.tensor_fuser, "enable_tensor_fuser")
    ),
    "ENABLE_NVFUSER": _nvfuser,
    "DISABLE_CUDNN": _cudnn,
    "ENABLE_CACHE_CLEANING": _cache_cleaning,
    "INTRA_OP_THREAD_COUNT": _intra,
    "INTER_OP_THREAD_COUNT": _inter,
    "ENABLE_WEIGHT_SHARING": lambda e: e.weight_sharing.reason,
    "CUSTOM_OP_LIBRARIES": _libraries,
    "MODEL_FILENAME": _for_kind("MODEL_FILENAME", lambda e: e.params.model_filename or "not given"),
    "MODULE_FILENAME": _for_kind(
        "MODULE_FILENAME", lambda e: e.params.module_filename or "not given"
    ),
    "MODULE_CLASS": _for_kind("MODULE_CLASS", lambda e: e.params.module_class or "not given"),
    "TORCH_COMPILE_OPTIONAL_PARAMETERS": _for_kind(
        "TORCH_COMPILE_OPTIONAL_PARAMETERS", lambda e: e.params.torch_compile.describe()
    ),
    "METHOD": _for_kind("METHOD", lambda e: e.params.method),
    "ENABLE_METRICS": lambda e: e.metrics.reason,
    "WARMUP": _warmup,
    "WARMUP_BATCH_SIZES": _warmup_sizes,
    "CUDA_GRAPHS": _for_kind("CUDA_GRAPHS", lambda e: e.cuda_graphs.reason),
    "COMPILE_CACHE": _for_kind("COMPILE_CACHE", lambda e: e.params.compile_cache or "default"),
    "STOP_SERVER_ON_STICKY_ERROR": lambda e: on_off(e.params.stop_server_on_sticky_error),
    "ENABLE_CANCELLATION_CHECK": _cancellation_check,
    "REFUSE_WRITABLE_MODEL_DIRECTORY": lambda e: on_off(e.params.refuse_writable_model_directory),
    "OUTPUT_SHAPE_CHECK": _output_shapes,
}


def effective_lines(effective: EffectiveSettings) -> list[str]:
    """``KEY = value`` for the device and every logged parameter, in registry order."""
    device = (
        str(effective.device)
        if effective.device is not None
        else "chosen by the model (KIND_MODEL)"
    )
    lines = [f"device = {device}"]
    for parameter in PARAMETERS:
        if parameter.logged:
            lines.append(f"{parameter.key} = {DESCRIBERS[parameter.key](effective)}")
    return lines
