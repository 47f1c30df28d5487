"""A lean DLPack export of CPU tensors for the response path.

``torch.Tensor.__dlpack__`` is a Python method that checks gradients, pinning and streams before
it calls ``torch.utils.dlpack.to_dlpack``; measured in the Python backend stub it makes
``pb_utils.Tensor.from_dlpack(name, tensor)`` take about 23 µs per output against 10 µs through
:class:`CpuDLPack`. Outputs here are already detached and contiguous, and a CPU tensor needs no
stream, so the wrapper hands the capsule over directly. Other tensors (CUDA) keep torch's own
protocol, which synchronises streams.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.dlpack import to_dlpack

_CPU_DEVICE = (1, 0)  # (kDLCPU, device id 0)


class CpuDLPack:
    """The DLPack protocol for one CPU tensor, without torch's per-call checks."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __dlpack__(self, stream: Any = None, **_: Any) -> Any:
        return to_dlpack(self.tensor)

    def __dlpack_device__(self) -> tuple[int, int]:
        return _CPU_DEVICE


def exportable(tensor: torch.Tensor) -> Any:
    """What to hand to ``pb_utils.Tensor.from_dlpack`` for ``tensor``."""
    return CpuDLPack(tensor) if tensor.is_cpu and not tensor.requires_grad else tensor
