"""What a model's configuration says, parsed once at load into frozen dataclasses and enums."""

from .enums import GradPolicy, InstanceKind, ModelKind, NamingConvention, OutputShapeCheck
from .model_config import (
    InstanceGroup,
    ModelConfig,
    TensorSpec,
    parse_model_config,
    parse_model_header,
)
from .parameters import BackendParameters, parse_parameters

__all__ = [
    "BackendParameters",
    "GradPolicy",
    "InstanceGroup",
    "InstanceKind",
    "ModelConfig",
    "ModelKind",
    "NamingConvention",
    "OutputShapeCheck",
    "TensorSpec",
    "parse_model_config",
    "parse_model_header",
    "parse_parameters",
]
