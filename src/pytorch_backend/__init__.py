"""Serve PyTorch models on Triton through the Python backend.

It serves TorchScript archives (``model.pt``), AOT-Inductor packages and ``torch.export``
programs (``.pt2``), and eager ``nn.Module`` models (a module file, ``model.py``, with its
``state_dict``, optionally through ``torch.compile``); a TorchScript or ``nn.Module`` model may
serve a method other than ``forward`` (parameter ``METHOD``).

The package imports without Triton; only ``pytorch_backend.model`` (the drop-in
``TritonPythonModel``) touches ``triton_python_backend_utils``. :func:`package` (from an
``nn.Module`` to a model directory) is imported on first use, so ``import pytorch_backend`` stays
light for the stub; so is :func:`convert` (a TorchScript model directory to an
AOT-Inductor one).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["convert", "package"]


def __getattr__(name: str) -> Any:
    if name == "package":
        from .serving.package import package

        return package
    if name == "convert":
        from .serving.convert import convert

        return convert
    raise AttributeError(f"module 'pytorch_backend' has no attribute {name!r}")
