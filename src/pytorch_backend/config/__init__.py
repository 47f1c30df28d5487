"""What a model's configuration says, parsed once at load into frozen dataclasses and enums."""

from .backend_parameters import BackendParameters
from .enums import GradPolicy, InstanceKind, ModelKind, NamingConvention, OutputShapeCheck
from .model_config import (
    InstanceGroup,
    ModelConfig,
    parse_model_config,
    parse_model_header,
)
from .parameter_parsing import parse_parameters
from .tensor_spec import TensorSpec

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
