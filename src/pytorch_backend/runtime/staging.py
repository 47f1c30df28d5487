"""Staging CPU inputs for a GPU instance: one pinned buffer per input, one copy per batch.

Triton hands a Python-backend model its inputs in CPU memory (unless the config sets
``FORCE_CPU_ONLY_INPUT_TENSORS: "no"`` and the data already is on a GPU). A ``torch.cat`` of
pageable tensors followed by ``.to("cuda", non_blocking=True)`` is a synchronous copy through
the driver's own staging buffer. :class:`PinnedStaging` instead gathers the requests of a batch
straight into a page-locked buffer kept per input (``torch.cat(..., out=...)``; a lone request is
copied in) and issues one non-blocking host-to-device copy per input per batch on the device's
current stream, which the instance stream waits for (:class:`~.devices.InstanceStream`).

A buffer is reused for the next batch only after the copy out of it has finished (a CUDA event
per buffer), and grows (doubling) when a batch needs more room. Without CUDA (``pin=False``) the
same code runs on plain memory, which is how it is unit-tested on a CPU host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


class PinnedStaging:
    """Gathers CPU tensors into a reusable (pinned) buffer and copies them to ``device``."""

    def __init__(self, device: torch.device, pin: bool | None = None) -> None:
        self.device = device
        self.pin = (device.type == "cuda") if pin is None else pin
        self._buffers: dict[str, torch.Tensor] = {}
        self._copies: dict[str, Any] = {}  # name -> CUDA event of the last copy out of its buffer

    def gather(self, name: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``torch.cat(tensors)`` (or the lone tensor) on ``device``, staged through the buffer."""
        first = tensors[0]
        if len(tensors) == 1:
            shape = tuple(first.shape)
        else:
            shape = (sum(t.shape[0] for t in tensors), *first.shape[1:])
        staged = self._buffer(name, first.dtype, math.prod(shape)).view(shape)
        if len(tensors) == 1:
            staged.copy_(first)
        else:
            torch.cat(list(tensors), out=staged)
        moved = staged.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self._copies[name] = event
        return moved

    def buffer(self, name: str) -> torch.Tensor | None:
        """The staging buffer of input ``name`` (None before its first batch)."""
        return self._buffers.get(name)

    def _buffer(self, name: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        copy = self._copies.pop(name, None)
        if copy is not None:
            copy.synchronize()  # the previous batch's copy still reads this buffer
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            size = max(numel, 2 * buffer.numel() if buffer is not None else 0)
            buffer = torch.empty(size, dtype=dtype, pin_memory=self.pin)
            self._buffers[name] = buffer
        return buffer[:numel]
