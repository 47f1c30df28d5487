"""The root of the serving tools' errors (CLI, server, install, package, convert, precompile).

Apart from :class:`pytorch_backend.errors.PyTorchBackendError`, the root of the errors a model
raises while loading or serving: a tool error names no model instance and maps to no Triton
error code. The ``pytorch-backend`` command catches :class:`ToolError` once and prints its text
as one line, exit code 1.
"""

from __future__ import annotations


class ToolError(Exception):
    """A serving tool failed; the message is for the user as it stands."""
