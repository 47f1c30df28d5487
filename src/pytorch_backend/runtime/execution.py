"""The built-in hooks around an execution: grad policy, instance streams, cache cleaning, and
the watch for sticky CUDA errors."""

from __future__ import annotations

import contextlib
import re
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


#: CUDA errors after which the process's CUDA context is unusable (out of memory is not one).
STICKY_CUDA_ERROR = re.compile(
    r"illegal memory access|device-side assert|unspecified launch failure|ECC error"
    r"|misaligned address|illegal instruction|hardware stack error|cudaErrorLaunchFailure",
    re.IGNORECASE,
)


class StickyErrorWatch(Hook):
    """Remembers the first sticky CUDA error a forward (or its stream synchronisation) raised.

    After one, every CUDA call of the process fails, so the instance answers UNAVAILABLE instead
    of running more forwards (``Instance.infer``) and the metrics report it; the fix is a restart
    (Kubernetes restarts a pod whose liveness fails, or whose operator sees the metric).
    """

    def __init__(self) -> None:
        self.error: str | None = None

    @contextlib.contextmanager
    def _watch(self) -> Any:
        try:
            yield
        except Exception as exc:
            text = str(exc)
            match = STICKY_CUDA_ERROR.search(text)
            if self.error is None and match:
                start = text.rfind("\n", 0, match.start()) + 1
                end = text.find("\n", match.end())
                line = text[start : end if end >= 0 else len(text)].strip()
                self.error = f"{type(exc).__name__}: {line}"
            raise

    def forward_context(self) -> contextlib.AbstractContextManager[None]:
        return self._watch()
