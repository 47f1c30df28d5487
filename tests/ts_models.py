# ruff: noqa: UP006, UP035  (TorchScript signatures spelled with typing generics on purpose)
"""Small TorchScript models for tests, with math simple enough to compute expected outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import torch


class AddSub(torch.nn.Module):
    """forward(INPUT0, INPUT1) -> (INPUT0 - INPUT1, INPUT0 + INPUT1), as in Triton's QA model."""

    def forward(
        self, INPUT0: torch.Tensor, INPUT1: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return INPUT0 - INPUT1, INPUT0 + INPUT1


class Scale(torch.nn.Module):
    """forward(x) -> x * 2 (keeps dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class MixedOutputs(torch.nn.Module):
    """forward(image, scale) -> (image * scale, argmax(image, 1) [INT64], image > 0 [BOOL])."""

    def forward(
        self, image: torch.Tensor, scale: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return image * scale, torch.argmax(image, dim=1), image > 0


class DictInput(torch.nn.Module):
    """forward({"a": A, "b": B}) -> A * B."""

    def forward(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["a"] * inputs["b"]


class Strings(torch.nn.Module):
    """forward(List[str]) -> (upper-cased strings, lengths as INT64 tensor)."""

    def forward(self, text: List[str]) -> Tuple[List[str], torch.Tensor]:
        out: List[str] = []
        lengths: List[int] = []
        for s in text:
            out.append(s.upper())
            lengths.append(len(s))
        return out, torch.tensor(lengths, dtype=torch.int64)


class FailOnNegative(torch.nn.Module):
    """forward(x) -> x + 1, but raises if any element is negative (to test failure isolation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise RuntimeError("negative input is not allowed")
        return x + 1


class ReturnsScalar(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum()


class ReturnsDict(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"y": x}


class WrongDtype(torch.nn.Module):
    """Returns FP64 while configs in tests declare FP32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


class Bf16(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def save(module: torch.nn.Module, path: Path) -> Path:
    """Script and save a module; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(path))
    return path
