"""Exception types shared by every layer; the adapter maps them to Triton error codes."""

from __future__ import annotations


class PyTorchBackendError(Exception):
    """Base class of all errors raised by this package."""


class ModelLoadError(PyTorchBackendError):
    """The model cannot be loaded: bad config, bad parameter, bad artifact."""


class RequestError(PyTorchBackendError):
    """One request is invalid (dtype, shape, missing input...). Maps to INVALID_ARG."""


class ExecutionError(PyTorchBackendError):
    """The model failed while running, or returned something the config does not allow."""
