"""Serve TorchScript and AOT-Inductor PyTorch models on Triton through the Python backend.

The package imports without Triton; only ``pytorch_backend.model`` (the drop-in
``TritonPythonModel``) touches ``triton_python_backend_utils``. :func:`package` (from an
``nn.Module`` to a model directory) is imported on first use, so ``import pytorch_backend`` stays
light for the stub.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["package"]


def __getattr__(name: str) -> Any:
    if name == "package":
        from .serving.package import package

        return package
    raise AttributeError(f"module 'pytorch_backend' has no attribute {name!r}")
