"""Names of a ``.pt2``'s inputs and outputs, derived from its pytree call spec.

Shared by AOT-Inductor packages (``aoti/``) and torch.export programs (``export/``). Both
record ``(in_spec, out_spec)``: the pytree structure of ``((args...), {kwargs})`` and of the
returned value. The runner consumes and produces the *flattened leaves*. Every leaf gets two
names:

* forward-based: ``ARGS[i]``, ``ARGS[i][key]``, ``ARGS[i][j]``, ``KWARGS[key]``, ``KWARGS[key][j]``,
  ``RESULT`` (a single-tensor output), ``RESULT[i]``, ``RESULT[key]``, ``RESULT[key][j]`` ...
* ordinal: ``INPUT__<n>`` / ``OUTPUT__<n>``, ``n`` being the leaf's flat position (positional
  args first, then kwargs in spec order; dict entries in insertion order);
* the key alone, where forward takes a single dict of tensors (``ARGS[0][key]``) or returns a
  dict of tensors (``RESULT[key]``), as TorchScript binds a ``Dict[str, Tensor]`` input: what
  ``pytorch-backend convert`` writes, so a converted model keeps its TorchScript names. A key
  equal to another leaf's ordinal names its own leaf (a converted model's ``OUTPUT__2`` may be
  its first output).

A config may use either name per entry. Every input leaf must be bound exactly once; outputs may
be a subset. This module is pure (no ``torch._inductor``): it only needs ``torch.utils._pytree``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from ... import torch_compat
from ...config import ModelConfig, TensorSpec
from ...errors import ExecutionError, ModelLoadError

_SEQUENCE_TYPES = (tuple, list)
_MAPPING_TYPES = (dict, OrderedDict)
_FORBIDDEN_KEY_CHARS = frozenset('"[]')


class CallSpecError(ValueError):
    """The call spec is malformed or uses a structure this backend cannot name."""


@dataclass(frozen=True)
class Leaf:
    """One flattened tensor slot of the model's inputs or outputs."""

    index: int  # flat position in the runner's input/output list
    name: str  # forward-based name, e.g. "ARGS[2][k1]"
    ordinal: str  # "INPUT__<index>" or "OUTPUT__<index>"
    key: str | None = None  # the dict key of a lone dict input or a dict result

    def describe(self) -> str:
        return f"{self.name} (= {self.ordinal})"


@dataclass(frozen=True)
class CallSpec:
    """Named leaves of a package's inputs and outputs."""

    inputs: tuple[Leaf, ...]
    outputs: tuple[Leaf, ...]
    #: Dict keys that cannot appear in a name (quotes, brackets, whitespace, non-printable).
    invalid_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bindings:
    """Config names resolved to leaf indices."""

    #: Config input names in leaf order: ``inputs[i]`` feeds runner input ``i`` (all leaves bound).
    inputs: tuple[str, ...]
    #: Config output name -> runner output index (a subset of the outputs, in config order).
    outputs: Mapping[str, int]

    def leaves(self, inputs: Mapping[str, object]) -> list[torch.Tensor]:
        """The runner's input leaves, in order, from the batch's named inputs."""
        flat: list[torch.Tensor] = []
        for name in self.inputs:
            value = inputs.get(name)
            if not isinstance(value, torch.Tensor):
                raise ExecutionError(f"input '{name}' is missing or not a tensor")
            flat.append(value)
        return flat


def parse_call_spec(in_spec: str, out_spec: str) -> CallSpec:
    """Name the leaves from the two ``treespec_dumps`` strings of ``loader.get_call_spec()``."""
    try:
        in_tree = pytree.treespec_loads(in_spec)
        out_tree = pytree.treespec_loads(out_spec)
    except Exception as e:  # noqa: BLE001 - pytree raises many kinds of errors
        raise CallSpecError(f"cannot read the package's call spec: {e}") from e
    if (
        in_tree.type is not tuple
        or in_tree.num_children != 2
        or _children(in_tree)[0].type not in _SEQUENCE_TYPES
        or _children(in_tree)[1].type not in _MAPPING_TYPES
    ):
        raise CallSpecError(
            f"the input call spec must be tuple[args tuple, kwargs dict], got {in_tree}"
        )
    invalid: list[str] = []
    args_paths = _leaf_paths(_children(in_tree)[0], "input", invalid)
    kwargs_paths = _leaf_paths(_children(in_tree)[1], "input", invalid)
    names = ["ARGS" + _suffix(p) for p in args_paths]
    names += ["KWARGS" + _suffix(p) for p in kwargs_paths]
    args_tree = _children(in_tree)[0]
    lone_dict = (
        not kwargs_paths
        and args_tree.num_children == 1
        and _children(args_tree)[0].type in _MAPPING_TYPES
    )
    keys = [_key(p[1:]) if lone_dict else None for p in args_paths] + [None] * len(kwargs_paths)
    inputs = tuple(Leaf(i, n, f"INPUT__{i}", keys[i]) for i, n in enumerate(names))
    out_paths = _leaf_paths(out_tree, "output", invalid)
    dict_result = out_tree.type in _MAPPING_TYPES
    outputs = tuple(
        Leaf(i, "RESULT" + _suffix(p), f"OUTPUT__{i}", _key(p) if dict_result else None)
        for i, p in enumerate(out_paths)
    )
    return CallSpec(inputs, outputs, tuple(dict.fromkeys(invalid)))


def _key(path: Sequence[Any]) -> str | None:
    """The key of a path that is one dict entry (``[key]``), else None."""
    if len(path) == 1 and isinstance(path[0], pytree.MappingKey):
        return str(path[0].key)
    return None


def _children(spec: pytree.TreeSpec) -> list[pytree.TreeSpec]:
    """Child specs (version differences in :mod:`...torch_compat`)."""
    return torch_compat.treespec_children(spec)


def _leaf_paths(spec: pytree.TreeSpec, kind: str, invalid: list[str]) -> list[tuple[Any, ...]]:
    """Key paths of the leaves under ``spec`` in flatten order, after checking every node type."""
    _check_nodes(spec, kind, "", invalid)
    dummy = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
    paths, _ = pytree.tree_flatten_with_path(dummy)
    return [path for path, _ in paths]


def _check_nodes(spec: pytree.TreeSpec, kind: str, where: str, invalid: list[str]) -> None:
    if spec.is_leaf():
        return
    if spec.type in _SEQUENCE_TYPES:
        for i, child in enumerate(_children(spec)):
            _check_nodes(child, kind, f"{where}[{i}]", invalid)
        return
    if spec.type in _MAPPING_TYPES:
        for key, child in zip(spec.context, _children(spec)):
            if not isinstance(key, str):
                raise CallSpecError(
                    f"{kind} dict at '{where or '<root>'}' has a non-string key {key!r}; "
                    "only string keys can be named"
                )
            if not _valid_key(key):
                invalid.append(key)
            _check_nodes(child, kind, f"{where}[{key}]", invalid)
        return
    type_name = getattr(spec.type, "__qualname__", str(spec.type))
    raise CallSpecError(
        f"{kind} structure at '{where or '<root>'}' is a {type_name}; only tensors, tuples, lists "
        "and dicts with string keys are supported"
    )


def _valid_key(key: str) -> bool:
    return key.isprintable() and not any(c.isspace() or c in _FORBIDDEN_KEY_CHARS for c in key)


def _suffix(path: Sequence[Any]) -> str:
    parts = []
    for entry in path:
        if isinstance(entry, pytree.SequenceKey):
            parts.append(f"[{entry.idx}]")
        elif isinstance(entry, pytree.MappingKey):
            parts.append(f"[{entry.key}]")
        else:  # pragma: no cover - _check_nodes admits only sequences and mappings
            raise CallSpecError(f"unsupported key path entry {entry!r}")
    return "".join(parts)


def resolve_bindings(spec: CallSpec, config: ModelConfig) -> Bindings:
    """Map the config's input/output names to leaves; raise a ModelLoadError naming the model."""
    if spec.invalid_keys:
        keys = ", ".join(repr(k) for k in spec.invalid_keys)
        raise config.error(
            f"the package uses dict keys that cannot be named: {keys} (keys must not contain "
            "quotes, brackets, whitespace or non-printable characters). "
            + _accepted("input", spec.inputs)
            + "; "
            + _accepted("output", spec.outputs)
        )
    by_input = _resolve("input", config.inputs, spec.inputs, config)
    missing = [leaf for leaf in spec.inputs if leaf.index not in by_input]
    if missing:
        raise config.error(
            "every model input must be declared in the configuration; missing: "
            + ", ".join(leaf.describe() for leaf in missing)
            + ". "
            + _accepted("input", spec.inputs)
        )
    by_output = _resolve("output", config.outputs, spec.outputs, config)
    return Bindings(
        inputs=tuple(by_input[i] for i in range(len(spec.inputs))),
        outputs={name: index for index, name in by_output.items()},
    )


def _resolve(
    kind: str, specs: Iterable[TensorSpec], leaves: Sequence[Leaf], config: ModelConfig
) -> dict[int, str]:
    """Leaf index -> config name, checking strings, unknown names and double bindings."""
    lookup = {leaf.ordinal: leaf for leaf in leaves}
    lookup.update({leaf.key: leaf for leaf in leaves if leaf.key is not None})
    lookup.update({leaf.name: leaf for leaf in leaves})
    bound: dict[int, str] = {}
    for tensor in specs:
        if tensor.is_string:
            raise config.error(
                f"{kind} '{tensor.name}' is TYPE_STRING; AOT-Inductor packages take and return "
                "tensors only"
            )
        leaf = lookup.get(tensor.name)
        if leaf is None:
            raise config.error(
                f"{kind} '{tensor.name}' matches no model {kind}. " + _accepted(kind, leaves)
            )
        if leaf.index in bound:
            raise config.error(
                f"{kind}s '{bound[leaf.index]}' and '{tensor.name}' both address model {kind} "
                f"{leaf.describe()}; each model {kind} may be bound once. "
                + _accepted(kind, leaves)
            )
        bound[leaf.index] = tensor.name
    return bound


def _accepted(kind: str, leaves: Sequence[Leaf]) -> str:
    if not leaves:
        return f"The model has no {kind}s"
    return f"The model's {kind}s are: " + ", ".join(leaf.describe() for leaf in leaves)


def load_error(config: ModelConfig, error: CallSpecError) -> ModelLoadError:
    """Wrap a call-spec error so that it names the model."""
    return config.error(f"unsupported AOT-Inductor call spec: {error}")


def describe_bindings(spec: CallSpec, bindings: Bindings) -> list[str]:
    """Log lines saying which call-spec leaf each config input and output is bound to."""
    inputs = {name: spec.inputs[i].describe() for i, name in enumerate(bindings.inputs)}
    outputs = {name: spec.outputs[i].describe() for name, i in bindings.outputs.items()}
    return [
        f"inputs bound to call-spec leaves: {json.dumps(inputs)}",
        f"outputs bound to call-spec leaves: {json.dumps(outputs)}",
    ]
