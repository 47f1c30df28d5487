"""How config input/output names bind to a forward's arguments and returned values.

One set of rules for every kind that calls a forward with a signature (TorchScript modules, from
their schema; nn.Modules, from the Python signature: ``eager/signature.py``), as this
repository's README states them under "TorchScript models": inputs bind by forward-argument name
when every config name is one; else by ``<name>__<index>`` when every name has that form
(indices validated: in range, no duplicates); else by config order. A lone ``Dict[str, Tensor]``
argument receives every input keyed by its config name. Outputs bind by ``<name>__<index>`` when
every output has that form, else by config order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ...config import ModelConfig, NamingConvention, TensorSpec
from ...errors import ExecutionError

FORWARD_ARGUMENT = NamingConvention.FORWARD_ARGUMENT
NAMED_INDEX = NamingConvention.NAMED_INDEX
CONFIG_ORDER = NamingConvention.CONFIG_ORDER
DICT_INPUT = NamingConvention.DICT_INPUT

TENSOR = "Tensor"
STRING_LIST = "List[str]"


@dataclass(frozen=True)
class Signature:
    """What the forward method declares: argument names/types and, if known, output types."""

    arg_names: tuple[str, ...]
    arg_types: tuple[str, ...]
    output_types: tuple[str, ...] | None  # None: not statically known (checked per call)


@dataclass(frozen=True)
class Binding:
    """Config name -> position in the forward arguments or in the returned tuple."""

    convention: NamingConvention
    positions: Mapping[str, int]

    @property
    def dict_input(self) -> bool:
        return self.convention == DICT_INPUT


def named_index(name: str) -> int | None:
    """The index of a ``<name>__<index>`` name (text after the first ``__`` all digits)."""
    head, sep, tail = name.partition("__")
    return int(tail) if sep and tail.isdigit() else None


def _check_indices(
    config: ModelConfig, kind: str, positions: Mapping[str, int], count: int | None, accepted: str
) -> None:
    seen: dict[int, str] = {}
    for name, index in positions.items():
        if count is not None and index >= count:
            raise config.error(
                f"{kind} '{name}' refers to index {index}, but the model has {count} {kind}s; "
                f"it accepts {accepted}"
            )
        if index in seen:
            raise config.error(
                f"{kind}s '{seen[index]}' and '{name}' both refer to index {index}; "
                f"it accepts {accepted}"
            )
        seen[index] = name


def _accepted_inputs(names: Sequence[str]) -> str:
    if not names:
        return "no arguments"
    ordinal = ", ".join(f"INPUT__{i}" for i in range(len(names)))
    return f"forward-argument names ({', '.join(names)}) or {ordinal}"


def _accepted_outputs(count: int | None) -> str:
    if count is None:
        return "an unknown number of outputs"
    return f"{count} output(s): " + ", ".join(f"OUTPUT__{i}" for i in range(count))


def _indexed(config: ModelConfig, kind: str, names: frozenset[str]) -> dict[str, int]:
    """Positions of the names that must bind by their own ``<name>__<index>`` (upstream requires
    it of sequence controls and states, whatever convention the other names follow)."""
    positions: dict[str, int] = {}
    for name in sorted(names):
        index = named_index(name)
        if index is None:
            raise config.error(
                f"sequence_batching {kind} '{name}' does not follow the <name>__<index> naming "
                f"convention (a TorchScript model takes sequence controls and states by index, "
                f"e.g. '{name}__1')"
            )
        positions[name] = index
    return positions


def bind_inputs(
    config: ModelConfig, signature: Signature, indexed: frozenset[str] = frozenset()
) -> Binding:
    """Bind config inputs to forward arguments, validating count, names, indices and types.

    ``indexed``: inputs that bind by their own ``<name>__<index>`` whatever the convention.
    """
    names, types = signature.arg_names, signature.arg_types
    if len(types) == 1 and types[0].startswith("Dict["):
        if types[0] != "Dict[str, Tensor]":
            raise config.error(
                f"forward takes a single {types[0]}; only Dict[str, Tensor] is "
                "supported as a dictionary input"
            )
        strings = [s.name for s in config.inputs if s.is_string]
        if strings:
            raise config.error(
                f"input(s) {strings} are TYPE_STRING but the model takes Dict[str, Tensor]"
            )
        return Binding(DICT_INPUT, MappingProxyType({s.name: 0 for s in config.inputs}))
    for arg, kind in zip(names, types):
        if kind not in (TENSOR, STRING_LIST):
            raise config.error(
                f"forward argument '{arg}' has type {kind}; supported are Tensor, "
                "List[str], or a single Dict[str, Tensor]"
            )
    accepted = _accepted_inputs(names)
    fixed = _indexed(config, "input", indexed)
    for name, index in fixed.items():  # a control or state the model has no argument for
        if index >= len(names):
            raise config.error(
                f"sequence_batching input '{name}' refers to index {index}, but forward takes "
                f"{len(names)} arguments: {accepted}"
            )
    if len(config.inputs) != len(names):
        raise config.error(
            f"the configuration declares {len(config.inputs)} inputs but forward "
            f"takes {len(names)}: {accepted}"
        )
    config_names = [s.name for s in config.inputs if s.name not in fixed]
    if all(n in names for n in config_names):
        convention = FORWARD_ARGUMENT
        positions = {n: names.index(n) for n in config_names}
    elif all(named_index(n) is not None for n in config_names):
        convention = NAMED_INDEX
        positions = {n: named_index(n) for n in config_names}
    else:
        convention = CONFIG_ORDER
        positions = {n: i for i, n in enumerate(config_names)}
    positions.update(fixed)
    if convention is NAMED_INDEX or fixed:
        _check_indices(config, "input", positions, len(names), accepted)
    binding = Binding(convention, MappingProxyType(positions))
    for spec in config.inputs:
        position = binding.positions[spec.name]
        _check_type(config, "input", spec, types[position], f"forward argument '{names[position]}'")
    return binding


def bind_outputs(
    config: ModelConfig, signature: Signature, indexed: frozenset[str] = frozenset()
) -> Binding:
    """Bind config outputs to the model's returned values (a Tensor, List[str] or a tuple).

    ``indexed``: outputs that bind by their own ``<name>__<index>`` whatever the convention.
    """
    fixed = _indexed(config, "output", indexed)
    config_names = [s.name for s in config.outputs if s.name not in fixed]
    returned = signature.output_types
    count = None if returned is None else len(returned)
    if all(named_index(n) is not None for n in config_names):
        convention = NAMED_INDEX
        positions = {n: named_index(n) for n in config_names}
    else:
        if count is not None and len(config_names) + len(fixed) > count:
            raise config.error(
                f"the configuration declares {len(config_names) + len(fixed)} outputs but the "
                f"model returns {count}"
            )
        convention = CONFIG_ORDER
        positions = {n: i for i, n in enumerate(config_names)}
    positions.update(fixed)
    if convention is NAMED_INDEX or fixed:
        _check_indices(config, "output", positions, count, _accepted_outputs(count))
    binding = Binding(convention, MappingProxyType(positions))
    if returned is not None:
        for spec in config.outputs:
            position = binding.positions[spec.name]
            _check_type(config, "output", spec, returned[position], f"returned value {position}")
    return binding


def _check_type(
    config: ModelConfig, kind: str, spec: TensorSpec, model_type: str, where: str
) -> None:
    if model_type not in (TENSOR, STRING_LIST):
        raise config.error(
            f"{where} has type {model_type}; each output must be Tensor or List[str]"
        )
    if spec.is_string and model_type != STRING_LIST:
        raise config.error(f"{kind} '{spec.name}' is TYPE_STRING but {where} is {model_type}")
    if not spec.is_string and model_type == STRING_LIST:
        raise config.error(
            f"{kind} '{spec.name}' is TYPE_{spec.dtype} but {where} is List[str] "
            "(declare it TYPE_STRING)"
        )


def positional_args(binding: Binding, count: int, inputs: Mapping[str, object]) -> list[object]:
    """The forward's arguments in order, from the named inputs (not for a dict input)."""
    args: list[object] = [None] * count
    for name, position in binding.positions.items():
        args[position] = inputs[name]
    return args


def pick_outputs(binding: Binding, values: Sequence[object]) -> dict[str, object]:
    """Config output name -> the returned value at its bound position."""
    out: dict[str, object] = {}
    for name, position in binding.positions.items():
        if position >= len(values):
            raise ExecutionError(
                f"output '{name}' refers to index {position}, but the model "
                f"returned {len(values)} value(s)"
            )
        out[name] = values[position]
    return out


def describe(inputs: Binding, outputs: Binding) -> list[str]:
    """Log lines naming how inputs and outputs were bound."""
    return [
        f"{kind} bound by {binding.convention.value}: {json.dumps(dict(binding.positions))}"
        for kind, binding in (("inputs", inputs), ("outputs", outputs))
    ]
