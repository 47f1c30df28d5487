"""Exception types shared by every layer; the adapter maps them to Triton error codes.

An error carries the model (and, once known, the instance) as fields; its text names the model
exactly once, in the form its class defines, so no layer writes the ``model '<name>'`` prefix by
hand.
"""

from __future__ import annotations


class PyTorchBackendError(Exception):
    """Base class of all errors raised by this package."""

    #: How the text reads once the model is known.
    template = "model '{model}': {message}"
    #: The error kind a request answered with this error is counted under (metrics).
    kind = "model_error"

    def __init__(self, message: str, *, model: str | None = None, instance: str | None = None):
        super().__init__(message)
        self.message = message
        self.model = model
        self.instance = instance

    def __str__(self) -> str:
        if self.model is None:
            return self.message
        return self.template.format(model=self.model, message=self.message)

    def for_model(self, model: str, instance: str | None = None) -> PyTorchBackendError:
        """This error with the model (and instance) filled in where they are still unknown."""
        if self.model is None:
            self.model = model
        if self.instance is None:
            self.instance = instance
        return self


class ModelLoadError(PyTorchBackendError):
    """The model cannot be loaded: bad config, bad parameter, bad artifact."""


class RequestError(PyTorchBackendError):
    """One request is invalid (dtype, shape, missing input...). Maps to INVALID_ARG."""

    kind = "bad_input"


class RequestCancelled(PyTorchBackendError):
    """The client cancelled the request before it ran. Maps to CANCELLED."""

    kind = "cancelled"


class Unavailable(PyTorchBackendError):
    """The instance cannot serve any more (a sticky CUDA error). Maps to UNAVAILABLE."""

    kind = "unavailable"


class ExecutionError(PyTorchBackendError):
    """The model returned something the config does not allow, or the runner failed."""


class ModelFailure(ExecutionError):
    """The model's forward raised for this request."""

    template = "model '{model}' failed: {message}"


def error_kinds() -> tuple[str, ...]:
    """Every ``kind`` a failed request can be counted under: those of the classes above."""
    kinds: dict[str, None] = {}
    pending: list[type[PyTorchBackendError]] = [PyTorchBackendError]
    while pending:
        cls = pending.pop(0)
        kinds[cls.kind] = None
        pending.extend(cls.__subclasses__())
    return tuple(kinds)
