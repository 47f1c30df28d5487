"""Model configuration: the parts of Triton's config JSON this backend uses, as frozen dataclasses.

Parsed and validated once at load; every error names the model, the field and the bad value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import ModelLoadError
from .sequence import SequenceConfig, parse_sequence_batching
from .tensor_spec import TensorSpec, parse_tensor_spec


@dataclass(frozen=True)
class InstanceGroup:
    kind: str  # "KIND_CPU", "KIND_GPU", "KIND_MODEL", "KIND_AUTO"
    count: int
    name: str = ""  # Triton names a model's instances <group name>_<n>


@dataclass(frozen=True)
class ModelConfig:
    name: str
    platform: str  # only the exact string "torch_aoti" selects AOT Inductor, as upstream
    backend: str
    default_model_filename: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    instance_groups: tuple[InstanceGroup, ...] = ()
    dynamic_batching: bool = False
    #: ``sequence_batching``; its controls and state inputs are in ``inputs``, its state
    #: outputs in ``outputs`` (see :mod:`.sequence`).
    sequence: SequenceConfig | None = None
    #: ``dynamic_batching { preferred_batch_size: [...] }`` (empty when not given).
    preferred_batch_sizes: tuple[int, ...] = ()

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    @property
    def cpu_instance_count(self) -> int:
        """Total ``count`` of the KIND_CPU instance groups."""
        return sum(g.count for g in self.instance_groups if g.kind in ("KIND_CPU", "CPU"))

    def is_first_instance(self, instance_name: str) -> bool:
        """Whether ``instance_name`` is the model's first instance, for what is logged once per
        model: Triton names it after the first group (``<group>``, or ``<group>_0`` when the
        group makes several); True without instance groups (outside Triton)."""
        if not self.instance_groups:
            return True
        group = self.instance_groups[0].name or f"{self.name}_0"
        return instance_name in (group, f"{group}_0")

    def input(self, name: str) -> TensorSpec:
        return next(s for s in self.inputs if s.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(s for s in self.outputs if s.name == name)

    def error(self, message: str) -> ModelLoadError:
        """A load error that names this model."""
        return ModelLoadError(message, model=self.name)


def _string_parameters(model: str, raw: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (raw or {}).items():
        if isinstance(value, Mapping):
            if "string_value" not in value:
                raise ModelLoadError(f"parameter '{key}' has no string_value", model=model)
            out[key] = str(value["string_value"])
        else:
            out[key] = str(value)
    return out


def _preferred_batch_sizes(batching: Any) -> tuple[int, ...]:
    if not isinstance(batching, Mapping):
        return ()
    sizes = batching.get("preferred_batch_size") or ()
    return tuple(int(n) for n in (sizes if isinstance(sizes, (list, tuple)) else [sizes]))


def parse_model_config(raw: str | Mapping[str, Any]) -> ModelConfig:
    """Parse Triton's model config (the JSON string given to ``initialize`` or a dict)."""
    data: Mapping[str, Any] = json.loads(raw) if isinstance(raw, str) else raw
    name = data.get("name", "")
    max_batch_size = int(data.get("max_batch_size", 0) or 0)
    if max_batch_size < 0:
        raise ModelLoadError(f"max_batch_size must be >= 0, got {max_batch_size}", model=name)
    inputs = tuple(parse_tensor_spec(name, "input", i) for i in data.get("input", ()))
    outputs = tuple(parse_tensor_spec(name, "output", o) for o in data.get("output", ()))
    sequence = parse_sequence_batching(
        name, data.get("sequence_batching"), [o.name for o in outputs]
    )
    if sequence is not None:  # the model takes the controls and states as inputs
        _check_sequence_names(name, inputs, sequence)
        inputs += sequence.input_specs()
        outputs += sequence.output_specs()
    groups = tuple(
        InstanceGroup(
            kind=g.get("kind", "KIND_AUTO"),
            count=int(g.get("count", 1) or 1),
            name=str(g.get("name", "") or ""),
        )
        for g in data.get("instance_group", ())
    )
    config = ModelConfig(
        name=name,
        platform=data.get("platform", "") or "",
        backend=data.get("backend", "") or "",
        default_model_filename=data.get("default_model_filename", "") or "",
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=outputs,
        parameters=MappingProxyType(_string_parameters(name, data.get("parameters", {}))),
        instance_groups=groups,
        dynamic_batching="dynamic_batching" in data and data["dynamic_batching"] is not None,
        sequence=sequence,
        preferred_batch_sizes=_preferred_batch_sizes(data.get("dynamic_batching")),
    )
    _validate(config)
    return config


def parse_model_header(raw: str | Mapping[str, Any]) -> ModelConfig:
    """A partial config's fields that select and find the artifact, without its tensors.

    For auto-completion, which runs before the inputs and outputs are known: nothing is validated.
    """
    data: Mapping[str, Any] = json.loads(raw) if isinstance(raw, str) else raw
    name = data.get("name", "")
    return ModelConfig(
        name=name,
        platform=data.get("platform", "") or "",
        backend=data.get("backend", "") or "",
        default_model_filename=data.get("default_model_filename", "") or "",
        max_batch_size=int(data.get("max_batch_size", 0) or 0),
        inputs=(),
        outputs=(),
        parameters=MappingProxyType(_string_parameters(name, data.get("parameters", {}))),
    )


def _check_sequence_names(
    model: str, inputs: tuple[TensorSpec, ...], sequence: SequenceConfig
) -> None:
    """A control or state input must not also be declared in ``input``."""
    for spec in inputs:
        if spec.name in sequence.indexed_inputs():
            raise ModelLoadError(
                f"input '{spec.name}' is also a sequence_batching control or state input; "
                "remove it from input (the sequence batcher supplies it)",
                model=model,
            )


def _per_item_sequence_string(config: ModelConfig, spec: TensorSpec) -> bool:
    """A string control or state of a batching model: one string per item (``[batch, 1]``)."""
    sequence = config.sequence
    if sequence is None or spec.shape != (1,):
        return False
    return spec.name in sequence.indexed_inputs() | sequence.state_outputs


def _validate(config: ModelConfig) -> None:
    if not config.inputs:
        raise config.error("the configuration must declare at least one input")
    if not config.outputs:
        raise config.error("the configuration must declare at least one output")
    for kind, specs in (("input", config.inputs), ("output", config.outputs)):
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise config.error(f"duplicate {kind} name '{spec.name}'")
            seen.add(spec.name)
            if spec.optional:
                raise config.error(
                    f"{kind} '{spec.name}' is optional; optional inputs are not supported"
                )
            if (
                spec.is_string
                and len(spec.shape) + (1 if config.batching else 0) > 1
                and not _per_item_sequence_string(config, spec)
            ):
                raise config.error(
                    f"TYPE_STRING {kind} '{spec.name}' must be 1-D (List[str]); got shape "
                    f"{list(spec.shape)}{' plus the batch dimension' if config.batching else ''}"
                    " (for a batching model declare dims: [1] with reshape: { shape: [] })"
                )
