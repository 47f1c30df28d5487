"""``BackendParameters``: a model's parsed parameter values, generated from the registry.

One frozen dataclass field per :data:`.parameters.PARAMETERS` entry read by this backend, with the
entry's field name, type and default, in registry order: adding an entry adds its field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .enums import GradPolicy
from .parameter_types import Parameter
from .parameters import PARAMETERS


def _grad_policy(self) -> GradPolicy:
    """The forward's grad mode: ``ENABLE_GRAD`` wins, else ``INFERENCE_MODE`` picks."""
    if self.enable_grad:
        return GradPolicy.ENABLE_GRAD
    return GradPolicy.INFERENCE_MODE if self.inference_mode else GradPolicy.NO_GRAD


def dataclass_of(parameters: Sequence[Parameter]) -> type:
    """The frozen dataclass of ``parameters``' fields (their types and defaults), in order."""
    return dataclasses.make_dataclass(
        "BackendParameters",
        [
            (p.field, p.type, dataclasses.field(default=p.default))
            for p in parameters
            if p.field is not None
        ],
        frozen=True,
        namespace={
            "__doc__": "Effective backend parameters of one model (defaults = parameter absent).",
            "__module__": __name__,
            "grad_policy": property(_grad_policy),
        },
    )


BackendParameters = dataclass_of(PARAMETERS)
