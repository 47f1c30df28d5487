"""TorchScript executor: load a ``model.pt`` and call ``forward`` with bound inputs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from .. import artifacts
from ..config import ModelConfig
from ..errors import ExecutionError, ModelLoadError
from ..naming import Binding, Signature, bind_inputs, bind_outputs
from .base import Value


def load_torchscript(
    config: ModelConfig, path: Path, map_location: torch.device | None
) -> torch.jit.ScriptModule:
    """Load a TorchScript file; errors say what the file is instead."""
    try:
        module = torch.jit.load(str(path), map_location=map_location)
    except Exception as exc:
        raise ModelLoadError(
            f"model '{config.name}': cannot load '{path}' as TorchScript: it is "
            f"{artifacts.describe(path)} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    module.eval()
    return module


def signature_of(module: torch.jit.ScriptModule) -> Signature:
    """Forward argument names/types and returned types from the TorchScript schema."""
    schema = module.forward.schema
    args = [a for a in schema.arguments if not isinstance(a.type, torch._C.ClassType)]
    returned = schema.returns[0].type if schema.returns else None
    if isinstance(returned, torch._C.TupleType):
        outputs = tuple(str(t) for t in returned.elements())
    else:
        outputs = (str(returned),)
    return Signature(tuple(a.name for a in args), tuple(str(a.type) for a in args), outputs)


class TorchScriptExecutor:
    """Calls ``forward`` of a loaded TorchScript module with config-bound inputs."""

    def __init__(
        self, config: ModelConfig, module: torch.jit.ScriptModule, input_device: torch.device
    ) -> None:
        self.config = config
        self.module = module
        self.input_device = input_device
        self.signature = signature_of(module)
        self.inputs: Binding = bind_inputs(config, self.signature)
        self.outputs: Binding = bind_outputs(config, self.signature)
        self._arg_count = len(self.signature.arg_names)

    def run(self, inputs: Mapping[str, Value]) -> dict[str, Value]:
        if self.inputs.dict_input:
            result = self.module.forward(dict(inputs))
        else:
            args: list[Value] = [None] * self._arg_count  # type: ignore[list-item]
            for name, position in self.inputs.positions.items():
                args[position] = inputs[name]
            result = self.module.forward(*args)
        values = list(result) if isinstance(result, tuple) else [result]
        out: dict[str, Value] = {}
        for name, position in self.outputs.positions.items():
            if position >= len(values):
                raise ExecutionError(
                    f"output '{name}' refers to index {position}, but the model "
                    f"returned {len(values)} value(s)"
                )
            out[name] = values[position]
        return out

    def describe_bindings(self) -> list[str]:
        return [
            f"{kind} bound by {binding.convention}: {json.dumps(dict(binding.positions))}"
            for kind, binding in (("inputs", self.inputs), ("outputs", self.outputs))
        ]
