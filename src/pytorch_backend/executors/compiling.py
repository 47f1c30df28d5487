"""``torch.compile`` at load, for the kinds that compile (nn.Module, torch.export programs).

:func:`compile_forward` is the one way a factory compiles: it logs the options in effect,
restores the compile cache (if any), compiles the forward (a bad backend, mode or option fails
the load) and hands the executor the compiled forward with a :class:`CompileWatch`, which the
executor declares as its ``Capabilities.compilation``.

The graphs themselves are compiled by the load-time warm-up
(:mod:`pytorch_backend.runtime.warmup`), which pauses the watch meanwhile. When it resumes, the
compile cache keeps what was compiled, and every graph compiled from then on is a recompilation
while serving: logged as a warning and counted (``ExecutorCounters.recompilations``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from .. import torch_compat
from ..config import ModelConfig
from ..config.compile_options import KEY, CompileOptions
from ..logs import InstanceLog
from ..requests import Value
from .base import Capabilities, ExecutorCounters, LoadContext


def compile_module(
    config: ModelConfig, module: Callable[..., Any], options: CompileOptions
) -> Callable[..., Any]:
    """``torch.compile(module, **options)`` (a module or one of its bound methods); bad
    backend, mode or options fail the load."""
    try:
        return torch.compile(module, **options.kwargs())
    except Exception as exc:  # noqa: BLE001 - torch.compile raises several kinds of errors
        raise config.error(
            f"parameter '{KEY}' = {options.text}: torch.compile refused it: "
            f"{type(exc).__name__}: {exc}"
        ) from None


class CompileWatch:
    """Counts the graphs torch.compile has compiled in this process (one stub = one instance).

    A :class:`~.base.Compilation`: paused while the warm-up compiles; ``on_resume`` (the
    compile cache's save) runs when the warm-up is over.
    """

    def __init__(
        self,
        log: InstanceLog,
        counters: ExecutorCounters | None = None,
        on_resume: Callable[[], object] | None = None,
    ) -> None:
        self.log = log
        self.counters = counters  # recompilations are added here, for metrics
        self.on_resume = on_resume
        self.paused = False
        self.at_load = self.seen = self.graphs()

    @staticmethod
    def graphs() -> int:
        return torch_compat.dynamo_unique_graphs()

    def pause(self) -> None:
        """The warm-up starts: the graphs it compiles are compiled at load, not recompilations."""
        self.paused = True

    def resume(self) -> None:
        """The warm-up is over: save what it compiled; count the graphs so far as compiled at
        load, and every later one as a recompilation."""
        if self.on_resume is not None:
            self.on_resume()
        self.at_load = self.seen = self.graphs()
        self.paused = False

    def check(self, inputs: Mapping[str, Value]) -> None:
        """Log a warning when the last forward compiled new graphs (a recompilation)."""
        if self.paused:
            return
        now = self.graphs()
        if now != self.seen:
            shapes = {
                name: list(value.shape) if isinstance(value, torch.Tensor) else len(value)
                for name, value in inputs.items()
            }
            self.log.warn(
                f"torch.compile recompiled while serving: {now - self.seen} new graph(s) for "
                f"inputs {shapes}; recompilations since load = {now - self.at_load}"
            )
            if self.counters is not None:
                self.counters.recompilations += now - self.seen
            self.seen = now


class Compilable(Protocol):
    """An executor whose forward :func:`compile_forward` can replace."""

    capabilities: Capabilities

    def use_compiled(self, compiled: Callable[..., Any], watch: CompileWatch) -> None:
        """Run ``compiled`` from now on, check ``watch`` after each run and declare it."""
        ...


class CompiledArtifacts(Protocol):
    """What the compile cache offers (``eager/compile_cache.py``)."""

    def restore(self) -> object: ...
    def save(self) -> object: ...


def compile_forward(
    context: LoadContext,
    executor: Compilable,
    forward: Callable[..., Any],
    cache: CompiledArtifacts | None = None,
) -> None:
    """Compile ``forward`` for ``executor`` with the model's options; the warm-up compiles the
    graphs, and ``cache`` (restored first) saves them when it is over."""
    options = context.params.torch_compile
    context.log.info(f"torch.compile: options in effect {options.describe()}")
    if cache is not None:
        cache.restore()
    compiled = compile_module(context.config, forward, options)
    counters = executor.capabilities.counters
    watch = CompileWatch(context.log, counters, cache.save if cache is not None else None)
    executor.use_compiled(compiled, watch)
