# ruff: noqa: N803, UP006, UP035  (TorchScript signatures with Triton's tensor names and typing)
"""Small stateful (sequence) models for tests: TorchScript, a cached ``.pt2`` and an nn.Module.

* :class:`Controls` (TorchScript, batching or not): ``forward(INPUT__0, START__1, END__2,
  READY__3, CORRID__4) -> (OUTPUT__0, OUTPUT__1)``; ``OUTPUT__0`` = the control values seen,
  ``[start, end, ready, corrid]`` as FP32 ``[.., 4]``; ``OUTPUT__1 = INPUT__0 + CORRID``.
  START is INT32, END FP32, READY BOOL, CORRID INT64.
* :class:`Accumulator` (TorchScript): ``forward(INPUT__0, STATE__1, START__2) -> (OUTPUT__0,
  STATE_OUT__1)``, both ``state + x`` (the running sum of the sequence), FP32 ``[.., 1]``.
* :func:`build_stateful_pt2` -> :class:`Stateful`, exported with ``Dim("batch", min=1, max=8)``
  on every input, as Triton's ``TorchAotiSequenceTest`` model: ``forward(x, state, start, ready,
  corrid) -> (out, new_state)``, ``new_state = state * (1 - start) + x``, ``out = new_state *
  ready + corrid``; all ``[B, 1]``, FP32 except CORRID (INT32). Names: ``INPUT__0..4`` /
  ``ARGS[0..4]``, ``OUTPUT__0..1`` / ``RESULT[0..1]``.
* :data:`EAGER_SOURCE`: an nn.Module file, ``forward(self, x, state, start)`` returning
  ``(state + x + 100 * start, state + x)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch

from tests import aoti_models


class Controls(torch.nn.Module):
    def forward(
        self,
        INPUT__0: torch.Tensor,
        START__1: torch.Tensor,
        END__2: torch.Tensor,
        READY__3: torch.Tensor,
        CORRID__4: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        seen = torch.cat([START__1.float(), END__2, READY__3.float(), CORRID__4.float()], dim=-1)
        return seen, INPUT__0 + CORRID__4.float()


class Accumulator(torch.nn.Module):
    def forward(
        self, INPUT__0: torch.Tensor, STATE__1: torch.Tensor, START__2: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        total = STATE__1 + INPUT__0
        return total, total


class Stateful(torch.nn.Module):
    def forward(self, x, state, start, ready, corrid):
        new_state = state * (1.0 - start) + x
        return new_state * ready + corrid.to(torch.float32), new_state


class StringLog(torch.nn.Module):
    """A string state: each step appends '<corrid>:<word>' to the sequence's log and returns it."""

    def forward(
        self,
        INPUT__0: list[str],  # noqa: N803
        STATE__1: list[str],  # noqa: N803
        CORRID__2: torch.Tensor,  # noqa: N803
    ) -> tuple[list[str], list[str]]:
        out: list[str] = []
        for i in range(len(INPUT__0)):
            entry = str(int(CORRID__2[i])) + ":" + INPUT__0[i]
            out.append(entry if STATE__1[i] == "" else STATE__1[i] + "," + entry)
        return out, out


def _export_stateful() -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=8)
    # distinct tensors: torch.export treats one tensor passed twice as one input
    example = (*(torch.rand(2, 1) for _ in range(4)), torch.ones(2, 1, dtype=torch.int32))
    return torch.export.export(
        Stateful(), example, dynamic_shapes=tuple({0: batch} for _ in example)
    )


def build_stateful_pt2(dest_dir: Path | None = None) -> Path:
    """The AOT-Inductor package of :class:`Stateful`, compiled once and cached."""
    return aoti_models._build("stateful", _export_stateful, Stateful, dest_dir)


def save_script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


EAGER_SOURCE = """
import torch


class Accumulate(torch.nn.Module):
    def forward(self, x: torch.Tensor, state: torch.Tensor, start: torch.Tensor):
        total = state + x
        return total + 100 * start, total
"""
