"""What every executor offers, and what a factory gets to build one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config import BackendParameters, ModelConfig
from ..logs import InstanceLog
from ..requests import Value


@dataclass(eq=False)
class ExecutorCounters:
    """Running totals an executor keeps about itself, for metrics (the seam for new kinds).

    The executor only adds to them (plain ``+=``, no allocation); the metrics hook reads them
    after every execute and reports what changed, so an executor needs no metrics code.
    """

    #: Rows added to reach the artifact's minimum batch (dropped from the outputs again).
    padded_rows: int = 0
    #: Graphs compiled while serving, after load (an eager ``torch.compile`` kind).
    recompilations: int = 0
    #: Seconds the load-time warm-up took (None: the executor did not warm up).
    warmup_seconds: float | None = None


@dataclass(frozen=True)
class LoadRunOutputs:
    """What a run of the model at load returned, for the output-shape check (OUTPUT_SHAPE_CHECK)."""

    #: Each bound tensor output's shape (batch dimension included), by config name.
    shapes: Mapping[str, tuple[int, ...]]
    #: Whether every request's outputs have these shapes, batch aside (no input dim varies).
    fixed: bool
    #: How the model calls an output, where that says more than its name (``RESULT[out] (= ...)``).
    slots: Mapping[str, str] = field(default_factory=dict)


class Compilation(Protocol):
    """A forward that ``torch.compile`` compiles at load (:mod:`.compiling`), as the load-time
    warm-up (:mod:`pytorch_backend.runtime.warmup`) needs it."""

    def pause(self) -> None:
        """The warm-up starts: what compiles from now on is compiled at load."""
        ...

    def resume(self) -> None:
        """The warm-up is over: keep what it compiled; a new graph from now on is a
        recompilation."""
        ...


@dataclass(frozen=True, eq=False)
class Capabilities:
    """What an executor declares about itself, so that no caller needs to type-check it."""

    #: A module whose CPU tensors may be mapped from a shared file (None: cannot share).
    shareable_module: Any | None = None
    #: The devices the model's own tensors live on (for streams; empty: unknown or none).
    devices: tuple[torch.device, ...] = ()
    #: Per-item input shapes (no batch dimension) a warm-up run can use, variable dims resolved.
    warmup_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: The batch sizes the artifact accepts (inclusive), where it has a fixed range.
    batch_range: tuple[int, int] | None = None
    #: What the executor counts about its runs (padding, recompilations, warm-up time).
    counters: ExecutorCounters = field(default_factory=ExecutorCounters)
    #: The output shapes of a run at load (an AOT-Inductor package's test run on zeros).
    load_run: LoadRunOutputs | None = None
    #: Runs of each warm-up batch size (TorchScript: until its profiling executor settles).
    warmup_runs: int = 1
    #: A forward torch.compile compiles at load (None: none): the warm-up compiles it first,
    #: whatever ``WARMUP`` says, and pauses its recompilation watch meanwhile.
    compilation: Compilation | None = None


class Executor(Protocol):
    """Runs one forward on named, batched inputs and returns every bound output by name."""

    #: Where the engine places gathered inputs before calling :meth:`run`.
    input_device: torch.device
    capabilities: Capabilities

    def run(self, inputs: Mapping[str, Value]) -> dict[str, Value]:
        """Run the model. Raises :class:`~pytorch_backend.errors.ExecutionError` on bad outputs."""
        ...

    def describe_bindings(self) -> list[str]:
        """Human-readable lines saying which config name feeds/reads which model slot."""
        ...


@dataclass(frozen=True)
class LoadContext:
    """Everything a factory needs to load one artifact for one instance."""

    config: ModelConfig
    path: Path
    #: The instance's device; None for KIND_MODEL (the factory keeps the model's own devices).
    device: torch.device | None
    log: InstanceLog
    #: The model's parameters (compile options, module class, grad policy for a warm-up).
    params: BackendParameters = field(default_factory=BackendParameters)
