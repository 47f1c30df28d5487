"""A request as the engine sees it: named torch inputs and the outputs it asked for."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Union

import torch

from .errors import PyTorchBackendError
from .strings import Strings

#: A tensor, or a list of strings for ``TYPE_STRING`` tensors (what executors take and return).
Value = Union[torch.Tensor, list]
#: What one request carries per input: a tensor, or its decoded strings with their shape.
InputValue = Union[torch.Tensor, Strings]
#: One request's answer: its requested outputs by name, or the error it gets.
Outcome = Union[dict[str, Value], PyTorchBackendError]


@dataclass(frozen=True)
class SequenceId:
    """Where a request stands in its sequence: correlation id (0 or "": none), START, END."""

    correlation_id: int | str
    start: bool = False
    end: bool = False


@dataclass(frozen=True)
class RequestInputs:
    """One request: its named inputs and the outputs it asked for (``None``: all)."""

    inputs: Mapping[str, InputValue]
    requested_outputs: frozenset[str] | None = None
    #: The request's sequence, for models with ``sequence_batching`` state (None: not given).
    sequence: SequenceId | None = None
    #: Asks the server whether the client cancelled the request (None: it cannot be asked).
    cancelled: Callable[[], bool] | None = None
