"""What runs around an execution, without editing the engine's core.

A :class:`Hook` may wrap every forward in a context (grad policy, CUDA streams), run after every
execute (cache cleaning) and observe what the execute did (:class:`ExecuteStats`, for metrics).
The engine holds one :class:`Hooks`, built once per instance by the composition root.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import MappingProxyType

#: ``ExecuteStats.failures`` of an execute in which no request failed (shared, read-only).
NO_FAILURES: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class ExecuteStats:
    """What one ``execute`` (one call of ``InferenceEngine.infer``) did.

    Times are ``time.perf_counter_ns`` deltas summed over the execute (over every forward of a
    bisected batch too); ``prepare_ns + forward_ns + split_ns`` is the engine's part of Triton's
    ``compute_infer`` time for the batch.
    """

    requests: int  # requests handed over
    rejected: int  # refused before any forward (invalid input)
    failed: int  # answered with an error, the rejected ones included
    forwards: int  # executor runs, re-runs of a bisected batch included
    rows: int  # batch rows of the requests that reached a forward (0 without batching)
    #: Failed requests per error kind (``PyTorchBackendError.kind``: bad_input, model_error...).
    failures: Mapping[str, int] = field(default_factory=lambda: NO_FAILURES)
    prepare_ns: int = 0  # validate every request and gather the batch(es)
    forward_ns: int = 0  # the executor's forward(s), inside the hooks' forward contexts
    split_ns: int = 0  # check the outputs and split them into per-request views


class Hook:
    """Base class of execution hooks; every method does nothing unless overridden."""

    def forward_context(self) -> AbstractContextManager[object] | None:
        """A context entered around each forward, on the thread that runs it (None: none)."""
        return None

    def after_execute(self, stats: ExecuteStats) -> None:
        """Called once after every execute, even when a forward failed."""


class Hooks:
    """An ordered set of hooks; contexts nest in order (the first one is outermost)."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = tuple(hooks)
        self._contexts = tuple(h for h in self.hooks if _overrides(h, "forward_context"))
        self._after = tuple(h for h in self.hooks if _overrides(h, "after_execute"))

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        """The hooks' contexts for one forward, nested."""
        with contextlib.ExitStack() as stack:
            for hook in self._contexts:
                context = hook.forward_context()
                if context is not None:
                    stack.enter_context(context)
            yield

    def after_execute(self, stats: ExecuteStats) -> None:
        for hook in self._after:
            hook.after_execute(stats)


def _overrides(hook: Hook, method: str) -> bool:
    return getattr(type(hook), method) is not getattr(Hook, method)
