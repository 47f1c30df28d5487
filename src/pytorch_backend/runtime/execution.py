"""The built-in hooks around an execution: grad policy, instance streams, cache cleaning."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any

import torch

from ..config import BackendParameters, GradPolicy
from ..hooks import ExecuteStats, Hook
from .devices import InstanceStream


class _ExecutionContext:
    """Grad policy + graph-executor optimization for one forward (entered on the forward thread)."""

    __slots__ = ("_grad", "_optimize", "_previous_optimize")

    def __init__(self, policy: GradPolicy, optimize: bool) -> None:
        if policy is GradPolicy.INFERENCE_MODE:
            self._grad: contextlib.AbstractContextManager[Any] = torch.inference_mode()
        elif policy is GradPolicy.NO_GRAD:
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


class GradPolicyHook(Hook):
    """Every forward under the model's grad policy and ``DISABLE_OPTIMIZED_EXECUTION``."""

    def __init__(self, params: BackendParameters) -> None:
        self.params = params

    def forward_context(self) -> contextlib.AbstractContextManager[None]:
        return execution_context(self.params)


class StreamHook(Hook):
    """Every forward on the instance's own CUDA stream(s), synchronised when it ends."""

    def __init__(self, stream: InstanceStream) -> None:
        self.stream = stream

    def forward_context(self) -> InstanceStream:
        return self.stream


class CacheCleaningHook(Hook):
    """``ENABLE_CACHE_CLEANING``: ``torch.cuda.empty_cache()`` after every execute.

    Built only where it applies (``settings.cache_cleaning_applies``). ``empty_cache`` only acts
    once CUDA is initialised, so it never creates a context.
    """

    def after_execute(self, stats: ExecuteStats) -> None:
        torch.cuda.empty_cache()
