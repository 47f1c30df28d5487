"""A Python ``forward``'s argument names and types, in the TorchScript naming rules' terms.

The type hints map onto the names :mod:`..binding.forward` checks: ``torch.Tensor`` ->
``Tensor``, ``List[str]`` / ``list[str]`` -> ``List[str]``, ``Dict[str, Tensor]`` /
``dict[str, torch.Tensor]`` -> ``Dict[str, Tensor]``. An argument without a hint is taken to be a
tensor (as upstream's runtime passes it one); a return without a hint is checked per call.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import torch

from ...config import ModelConfig
from ..binding.forward import STRING_LIST, TENSOR, Signature

_UNKNOWN = object()


def type_name(hint: Any) -> str:
    """The TorchScript-style name of a type hint (``Tensor``, ``List[str]``, ``Dict[...]``...)."""
    if hint is torch.Tensor:
        return TENSOR
    if hint is str:
        return "str"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is list and args:
        return f"List[{type_name(args[0])}]"
    if origin is dict and len(args) == 2:
        return f"Dict[{type_name(args[0])}, {type_name(args[1])}]"
    if origin is tuple and args:
        return f"Tuple[{', '.join(type_name(a) for a in args)}]"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _hints(forward: Callable[..., Any], config: ModelConfig) -> dict[str, Any]:
    try:
        return typing.get_type_hints(forward)
    except Exception as exc:  # noqa: BLE001 - unresolvable forward references and the like
        raise config.error(f"cannot read the type hints of forward: {exc}") from None


def _outputs(hint: Any) -> tuple[str, ...] | None:
    if hint is _UNKNOWN:
        return None
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return None  # Tuple[Tensor, ...]: the count is only known per call
        return tuple(type_name(a) for a in args)
    if typing.get_origin(hint) is list and typing.get_args(hint) != (str,):
        return None  # List[Tensor]: several outputs, counted per call
    return (type_name(hint),)


def module_method(config: ModelConfig, module: torch.nn.Module, name: str) -> Callable[..., Any]:
    """The bound method ``name`` (parameter ``METHOD``); a missing one names those that exist."""
    method = getattr(module, name, None) if not name.startswith("_") else None
    if not callable(method) or isinstance(method, torch.nn.Module):
        base = set(dir(torch.nn.Module))
        own = sorted(
            n
            for n in dir(type(module))
            if (n == "forward" or n not in base)
            and not n.startswith("_")
            and inspect.isfunction(getattr(type(module), n, None))
        )
        raise config.error(
            f"parameter 'METHOD' = '{name}': {type(module).__name__} has no method of that "
            f"name; it has: {', '.join(own) or 'none'}"
        )
    return method


def forward_signature(
    config: ModelConfig, module: torch.nn.Module, method: str = "forward"
) -> Signature:
    """The :class:`Signature` of a module's method; ``*args`` / ``**kwargs`` fail the load."""
    forward = module_method(config, module, method)
    try:
        parameters = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError) as exc:
        raise config.error(f"cannot read the signature of forward: {exc}") from None
    hints = _hints(forward, config)
    names, types = [], []
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise config.error(
                f"forward takes *{parameter.name} or **{parameter.name}; only named arguments "
                "can be bound to config inputs"
            )
        names.append(parameter.name)
        types.append(type_name(hints[parameter.name]) if parameter.name in hints else TENSOR)
    outputs = _outputs(hints.get("return", _UNKNOWN))
    return Signature(tuple(names), tuple(types), outputs)


def keyword_only(module: torch.nn.Module, method: str = "forward") -> frozenset[str]:
    """Names of the method's keyword-only arguments (passed by keyword)."""
    parameters = inspect.signature(getattr(module, method)).parameters.values()
    return frozenset(p.name for p in parameters if p.kind is p.KEYWORD_ONLY)


def uses_strings(signature: Signature) -> bool:
    """Whether forward takes or returns ``List[str]``."""
    return STRING_LIST in signature.arg_types or STRING_LIST in (signature.output_types or ())
