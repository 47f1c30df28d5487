"""The executor protocol shared by the TorchScript and AOT-Inductor paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, Union

import torch

#: A tensor, or a list of strings for ``TYPE_STRING`` tensors.
Value = Union[torch.Tensor, list]


class Executor(Protocol):
    """Runs one forward on named, batched inputs and returns every config output by name."""

    #: Where the engine places gathered inputs before calling :meth:`run`.
    input_device: torch.device

    def run(self, inputs: Mapping[str, Value]) -> dict[str, Value]:
        """Run the model. Raises :class:`~pytorch_backend.errors.ExecutionError` on bad outputs."""
        ...

    def describe_bindings(self) -> list[str]:
        """Human-readable lines saying which config name feeds/reads which model slot."""
        ...
