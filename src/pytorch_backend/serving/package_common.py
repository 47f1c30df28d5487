"""What every format of :func:`~pytorch_backend.serving.package.package` shares: its error and
the check of an artifact's outputs against the module's eager outputs."""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

from .errors import ToolError


class PackageError(ToolError):
    """Packaging failed; nothing was written."""


def check_close(expected: Any, actual: Any, tolerances: tuple[float, float], what: str) -> None:
    """Raise PackageError unless every leaf of ``actual`` equals ``expected`` (within tolerance)."""
    rtol, atol = tolerances
    want, got = pytree.tree_leaves(expected), pytree.tree_leaves(actual)
    if len(want) != len(got):
        raise PackageError(f"{what} returned {len(got)} outputs, the module {len(want)}")
    for i, (a, b) in enumerate(zip(want, got)):
        if isinstance(a, torch.Tensor):
            same = (
                isinstance(b, torch.Tensor)
                and a.shape == b.shape
                and a.dtype == b.dtype
                and torch.allclose(a, b.to(a.device), rtol=rtol, atol=atol, equal_nan=True)
            )
        else:
            same = a == b
        if not same:
            raise PackageError(
                f"{what} differs from the module's eager output at output leaf {i}: "
                f"expected {_short(a)}, got {_short(b)}"
            )


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {list(value.shape)} {value.flatten()[:4].tolist()}"
    return repr(value)[:80]
