"""What runs around an execution, without editing the engine's core.

A :class:`Hook` may wrap every forward in a context (grad policy, CUDA streams), run after every
execute (cache cleaning) and observe what the execute did (:class:`ExecuteStats`, for metrics).
The engine holds one :class:`Hooks`, built once per instance by the composition root.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass


@dataclass(frozen=True)
class ExecuteStats:
    """What one ``execute`` (one call of ``InferenceEngine.infer``) did."""

    requests: int  # requests handed over
    rejected: int  # refused before any forward (invalid input)
    failed: int  # answered with an error, the rejected ones included
    forwards: int  # executor runs, re-runs of a bisected batch included
    rows: int  # batch rows of the requests that reached a forward (0 without batching)


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
