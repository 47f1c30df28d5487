"""The kinds this package distinguishes, as enums (never bare strings)."""

from __future__ import annotations

from enum import Enum


class ModelKind(Enum):
    """What artifact a model serves; resolved once at load (see ``executors.registry``)."""

    TORCHSCRIPT = "TorchScript"
    AOTI = "AOT-Inductor package"
    EAGER = "nn.Module"
    EXPORTED_PROGRAM = "torch.export program"


class InstanceKind(Enum):
    """Triton's instance kind, as the Python backend reports it (``model_instance_kind``)."""

    CPU = "CPU"
    GPU = "GPU"
    MODEL = "MODEL"

    @classmethod
    def parse(cls, text: str) -> InstanceKind:
        """``CPU``/``GPU``/``MODEL``, with or without ``KIND_``, any case; ValueError otherwise."""
        name = str(text).upper()
        name = name[5:] if name.startswith("KIND_") else name
        return cls(name)


class GradPolicy(Enum):
    """How autograd is set around each forward (``INFERENCE_MODE`` / ``ENABLE_GRAD``)."""

    INFERENCE_MODE = "inference_mode"
    NO_GRAD = "no_grad"
    ENABLE_GRAD = "enable_grad"


class OutputShapeCheck(Enum):
    """``OUTPUT_SHAPE_CHECK``: what an output whose shape contradicts its config dims gets."""

    WARN = "warn"  # served with the model's shape, as the C++ backend; one warning per output
    ERROR = "error"  # refused: at load where the shape is known there, else each such request
    OFF = "off"  # served with the model's shape, nothing logged


class NamingConvention(Enum):
    """How config names were bound to a TorchScript forward's arguments or results."""

    FORWARD_ARGUMENT = "forward-argument names"
    NAMED_INDEX = "<name>__<index> names"
    CONFIG_ORDER = "config order"
    DICT_INPUT = "Dict[str, Tensor] keys"
