"""One logger for the whole package.

Every message goes through :class:`InstanceLog`, which prefixes it once with
``pytorch_backend: model '<m>' instance '<i>': `` and hands it to the process-wide sink. The sink
is stdlib :mod:`logging` until the Triton adapter installs ``pb_utils.Logger`` with
:func:`set_sink`, so the core logs the same way in unit tests and inside the stub.
"""

from __future__ import annotations

import logging
from typing import Protocol


class Sink(Protocol):
    """What ``pb_utils.Logger`` offers (static methods taking one message)."""

    def log_info(self, message: str) -> None: ...
    def log_warn(self, message: str) -> None: ...
    def log_error(self, message: str) -> None: ...
    def log_verbose(self, message: str) -> None: ...


class StdlibSink:
    """The default sink: the ``pytorch_backend`` stdlib logger."""

    _logger = logging.getLogger("pytorch_backend")

    def log_info(self, message: str) -> None:
        self._logger.info(message)

    def log_warn(self, message: str) -> None:
        self._logger.warning(message)

    def log_error(self, message: str) -> None:
        self._logger.error(message)

    def log_verbose(self, message: str) -> None:
        self._logger.debug(message)


_sink: Sink = StdlibSink()


def set_sink(sink: Sink) -> None:
    """Send every message of this process to ``sink`` (the adapter passes ``pb_utils.Logger``)."""
    global _sink
    _sink = sink


class InstanceLog:
    """The log of one model instance: every line names the model and the instance."""

    def __init__(self, model: str, instance: str | None = None, sink: Sink | None = None) -> None:
        self.model = model
        self._own_sink = sink
        self.instance = instance
        where = f"model '{model}'" + (f" instance '{instance}'" if instance else "")
        self.prefix = f"pytorch_backend: {where}: "

    def info(self, message: str) -> None:
        (self._own_sink or _sink).log_info(self.prefix + message)

    def warn(self, message: str) -> None:
        (self._own_sink or _sink).log_warn(self.prefix + message)

    def error(self, message: str) -> None:
        (self._own_sink or _sink).log_error(self.prefix + message)

    def verbose(self, message: str) -> None:
        (self._own_sink or _sink).log_verbose(self.prefix + message)
