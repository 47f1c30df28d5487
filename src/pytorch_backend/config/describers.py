"""Describers named by registry entries: the effective value of a setting whose plain value says
too little (what torch took, how a default was derived), as its load log line reads it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .enums import OutputShapeCheck
from .parameter_types import SERVER_CPUS, Describer, on_off

if TYPE_CHECKING:
    from ..runtime.report import EffectiveSettings
    from ..runtime.settings import RuntimeSettings
    from .backend_parameters import BackendParameters


def inference_mode(e: EffectiveSettings) -> str:
    return f"{on_off(e.params.inference_mode)} (grad policy: {e.settings.grad_policy.value})"


def optimized_execution(e: EffectiveSettings) -> str:
    state = "on" if e.settings.optimized_execution else "off"
    return (
        f"{on_off(e.params.disable_optimized_execution)} (graph executor optimization {state}, "
        "applied on the forward thread)"
    )


def jit_flag(
    effective: Callable[[RuntimeSettings], bool | None],
    given: Callable[[BackendParameters], bool | None],
) -> Describer:
    """A TorchScript JIT flag: the value torch reports, and whether it was given."""

    def describe(e: EffectiveSettings) -> str:
        source = "given" if given(e.params) is not None else "not given, torch default"
        return f"{on_off(effective(e.settings))} ({source})"

    return describe


def nvfuser(e: EffectiveSettings) -> str:
    if e.params.enable_nvfuser is None:
        return "not given (NVFuser was removed from PyTorch)"
    return (
        f"{on_off(e.params.enable_nvfuser)} ignored: NVFuser was removed from PyTorch "
        "(use ENABLE_TENSOR_FUSER for TorchScript fusion)"
    )


def cudnn(e: EffectiveSettings) -> str:
    state = "enabled" if e.settings.cudnn_enabled else "disabled"
    available = "available" if torch.backends.cudnn.is_available() else "not available"
    return f"{on_off(e.params.disable_cudnn)} (cuDNN {state}, {available})"


def cache_cleaning(e: EffectiveSettings) -> str:
    if not e.params.enable_cache_cleaning:
        return "false"
    if e.settings.cache_cleaning:
        return "true (torch.cuda.empty_cache() after every execute)"
    if e.device is not None and e.device.type == "cpu":
        return "true (no effect on a CPU instance)"
    return "true (no effect: no GPU is visible)"


def intra_op_threads(e: EffectiveSettings) -> str:
    threads = e.settings.intra_op_threads
    if e.params.intra_op_thread_count == 0:
        return f"{threads} (0 given: torch default)"
    if e.params.intra_op_thread_count is not None:
        return str(threads)
    if e.settings.thread_budget is not None:
        instances = max(1, e.cpu_instances)
        plural = "s" if instances > 1 else ""
        budget = f"({e.settings.cpus} CPUs - {SERVER_CPUS} for the server) / {instances} CPU " + (
            f"instance{plural}"
        )
        if e.settings.thread_choice is not None:
            return (
                f"{threads} (not given: chosen at warm-up between {budget} and "
                f"{e.settings.cpus} CPUs / {instances}: {e.settings.thread_choice})"
            )
        return f"{threads} (not given: {budget})"
    return f"{threads} (not given, torch default)"


def inter_op_threads(e: EffectiveSettings) -> str:
    threads = e.settings.inter_op_threads
    requested = e.params.inter_op_thread_count
    if e.settings.inter_op_refused is not None:
        return f"{threads} (requested {requested} was not applied: {e.settings.inter_op_refused})"
    return str(threads) if requested else f"{threads} (not given, torch default)"


def libraries(e: EffectiveSettings) -> str:
    loaded = e.params.custom_op_libraries
    return ", ".join(loaded) + " (loaded)" if loaded else "none"


def warmup(e: EffectiveSettings) -> str:
    if not e.params.warmup:
        return "false"
    return "true" if e.warmup else "true, no effect: no batch sizes"


def warmup_sizes(e: EffectiveSettings) -> str:
    sizes = ", ".join("as configured" if b is None else str(b) for b in e.warmup)
    if not e.params.warmup:
        return "no effect: WARMUP is false"
    given = e.params.warmup_batch_sizes is not None
    return f"[{sizes}]" + ("" if given else " (not given: powers of two, max, preferred)")


def cancellation_check(e: EffectiveSettings) -> str:
    if e.cancellation_check is not None:
        return e.cancellation_check.reason
    given = e.params.enable_cancellation_check
    return "auto" if given is None else on_off(given)


_OUTPUT_SHAPES = {
    OutputShapeCheck.WARN: "served with the model's shape, warned once per output",
    OutputShapeCheck.ERROR: "refused",
    OutputShapeCheck.OFF: "served with the model's shape, not logged",
}


def output_shapes(e: EffectiveSettings) -> str:
    check = e.params.output_shape_check
    return f"{check.value} (an output shape that contradicts the dims: {_OUTPUT_SHAPES[check]})"
