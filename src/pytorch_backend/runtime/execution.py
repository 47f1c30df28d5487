"""The built-in hooks around an execution: grad policy, instance streams, cache cleaning, and
the watch for sticky CUDA errors."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch

from ..config import BackendParameters, GradPolicy
from ..errors import Unavailable
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
#: Only texts that name CUDA count: a model's own message about an "illegal instruction" is not one.
STICKY_CUDA_ERROR = re.compile(
    r"CUDA error[^\n]*?(?:illegal memory access|illegal address|device-side assert"
    r"|unspecified launch failure|ECC error|misaligned address|illegal instruction"
    r"|hardware stack error)"
    r"|cudaError(?:IllegalAddress|LaunchFailure|Assert|ECCUncorrectable|MisalignedAddress"
    r"|IllegalInstruction|HardwareStackError)\b",
    re.IGNORECASE,
)


def sticky_error_line(exc: BaseException) -> str | None:
    """``"<Type>: <the line naming the sticky CUDA error>"``, or None if ``exc`` is not one."""
    text = str(exc)
    match = STICKY_CUDA_ERROR.search(text)
    if match is None:
        return None
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    return f"{type(exc).__name__}: {text[start : end if end >= 0 else len(text)].strip()}"


class StickyErrorWatch(Hook):
    """Remembers the first sticky CUDA error a forward (or its stream synchronisation) raised.

    After one, every CUDA call of the process fails, so the instance reports not ready, the
    metrics report it, and the sticky stage (:mod:`pytorch_backend.stages.sticky`) answers every
    later request UNAVAILABLE before it reaches the engine; the fix is a fresh process. Only
    within the execute that hit the error can a forward still be entered (a half of the batch
    being bisected): it raises :class:`~pytorch_backend.errors.Unavailable` at once, so nothing
    re-runs on the broken context. ``on_error`` is called once, with the error line, on the
    thread that saw it. ``devices``: the instance's CUDA devices; when a forward raises something
    that does not name a sticky error (an AOTI runner only says its call failed), they are
    synchronised once to ask CUDA whether the context is still usable.
    """

    def __init__(
        self,
        on_error: Callable[[str], None] | None = None,
        devices: Sequence[torch.device] = (),
    ) -> None:
        self.error: str | None = None
        self.on_error = on_error
        self.devices = tuple(devices)

    def forward_context(self) -> StickyErrorWatch:
        return self

    def __enter__(self) -> None:
        if self.error is not None:
            raise Unavailable(unavailable_message(self.error))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or self.error is not None or not isinstance(exc, Exception):
            return
        line = sticky_error_line(exc)
        if line is None and self.devices:
            line = self._probe()
        if line is not None:
            self.error = line
            if self.on_error is not None:
                self.on_error(line)

    def _probe(self) -> str | None:
        """The sticky error a synchronisation of the instance's devices raises, if any."""
        if not torch.cuda.is_initialized():
            return None
        for device in self.devices:
            try:
                torch.cuda.synchronize(device)
            except Exception as exc:  # noqa: BLE001 - inspected, not swallowed silently
                line = sticky_error_line(exc)
                if line is not None:
                    return line
        return None


def unavailable_message(error: str) -> str:
    """What a request answered UNAVAILABLE after a sticky CUDA error reads."""
    return (
        f"a sticky CUDA error ({error}) left this instance's CUDA context unusable; the model "
        "must be reloaded or the server restarted"
    )


def tritonserver_pid() -> int | None:
    """The pid of the ``tritonserver`` that started this process (a stub), or None."""
    parent = os.getppid()
    try:
        exe = os.readlink(f"/proc/{parent}/exe")
    except OSError:
        return None
    return parent if os.path.basename(exe).startswith("tritonserver") else None


def stop_server(log: Callable[[str], None]) -> bool:
    """``STOP_SERVER_ON_STICKY_ERROR``: SIGTERM the parent tritonserver (a graceful shutdown:
    in-flight requests are answered, models finalized) so that its supervisor restarts it with
    fresh CUDA contexts. Triton does not restart a dead stub itself (2.51 answers every later
    request of the model "Stub process ... is not healthy"), so exiting the stub alone would not
    help. False (and a log line) when the parent is not a tritonserver."""
    pid = tritonserver_pid()
    if pid is None:
        log("STOP_SERVER_ON_STICKY_ERROR: the parent process is not a tritonserver; not stopping")
        return False
    log(f"STOP_SERVER_ON_STICKY_ERROR: stopping the server (SIGTERM to tritonserver pid {pid})")
    os.kill(pid, signal.SIGTERM)
    return True
