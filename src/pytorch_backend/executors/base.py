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
