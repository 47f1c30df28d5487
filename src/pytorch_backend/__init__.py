"""Serve TorchScript and AOT-Inductor PyTorch models on Triton through the Python backend.

The package imports without Triton; only ``pytorch_backend.model`` (the drop-in
``TritonPythonModel``) touches ``triton_python_backend_utils``.
"""

__version__ = "0.1.0"
