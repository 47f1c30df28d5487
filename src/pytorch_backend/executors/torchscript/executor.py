"""TorchScript executor: load a ``model.pt`` and call ``forward`` with bound inputs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ... import torch_compat
from ...config import ModelConfig
from ...logs import InstanceLog
from ...requests import Value
from ...runtime.devices import kind_model_placement, module_devices
from ...tracebacks import short_text
from .. import artifacts
from ..base import Capabilities, LoadContext
from ..binding.forward import (
    Binding,
    Signature,
    bind_inputs,
    bind_outputs,
    describe,
    pick_outputs,
    positional_args,
)

_UNKNOWN_OP_RE = re.compile(r"Unknown builtin op: (\w+::\w+)")
#: Warm-up runs per batch size: one profiled run, one that optimises, one optimised.
TORCHSCRIPT_RUNS = 3


def load_torchscript(
    config: ModelConfig,
    path: Path,
    map_location: torch.device | None,
    log: InstanceLog | None = None,
) -> torch.jit.ScriptModule:
    """Load a TorchScript file; errors keep torch's whole cause, or say what the file is instead.

    torch's deprecation warning is kept out of the log; where torch deprecates TorchScript, the
    model's first instance logs one line saying so and how to move to ``.pt2``.
    """
    deprecation: list[str] = []
    try:
        with torch_compat.quiet_torchscript(deprecation):
            module = torch.jit.load(str(path), map_location=map_location)
    except Exception as exc:
        if log is not None:
            log.info(f"torch.jit.load('{path}') failed: {type(exc).__name__}: {exc}")
        reason = load_failure(config, path, exc)
        raise config.error(f"cannot load '{path}' as TorchScript: {reason}") from None
    line = torch_compat.torchscript_deprecation(deprecation)
    if line is not None and log is not None and config.is_first_instance(log.instance or ""):
        log.warn(line)
    module.eval()
    return module


def load_failure(config: ModelConfig, path: Path, exc: Exception) -> str:
    """Why ``torch.jit.load`` failed: what the file is, or (for a TorchScript archive) the cause."""
    kind = artifacts.identify(path)
    if kind != artifacts.TORCHSCRIPT:
        return f"it is {artifacts.describe(path)}"  # torch's own text ("corrupted ...") misleads
    text = short_text(exc)
    unknown = _UNKNOWN_OP_RE.search(str(exc))
    if unknown is None:
        return text
    op = unknown.group(1)
    namespace = op.split("::")[0]
    given = config.parameters.get("CUSTOM_OP_LIBRARIES")
    where = (
        f"none of the CUSTOM_OP_LIBRARIES ({given}) defines it"
        if given
        else "load the shared library that defines it with the CUSTOM_OP_LIBRARIES parameter"
    )
    hint = " (torchvision's ops are in torchvision/_C.so)" if namespace == "torchvision" else ""
    return (
        f"the model calls operator '{op}', which is not registered in this process; "
        f"{where}{hint}. torch said: {text}"
    )


def method_names(module: torch.jit.ScriptModule) -> list[str]:
    """The methods a scripted module can run: forward and its ``@torch.jit.export`` methods."""
    return sorted(name for name in module._c._method_names() if not name.startswith("__"))


def script_method(config: ModelConfig, module: torch.jit.ScriptModule, name: str) -> Any:
    """The scripted method ``name`` (parameter ``METHOD``); a missing one names those that exist."""
    if name not in module._c._method_names():
        raise config.error(
            f"parameter 'METHOD' = '{name}': the TorchScript model has no method of that name; "
            f"it has: {', '.join(method_names(module))} (script the method with "
            "@torch.jit.export to keep it)"
        )
    return getattr(module, name)


def signature_of(module: torch.jit.ScriptModule, method: str = "forward") -> Signature:
    """A method's argument names/types and returned types from the TorchScript schema."""
    schema = getattr(module, method).schema
    args = [a for a in schema.arguments if not isinstance(a.type, torch._C.ClassType)]
    returned = schema.returns[0].type if schema.returns else None
    if isinstance(returned, torch._C.TupleType):
        outputs = tuple(str(t) for t in returned.elements())
    else:
        outputs = (str(returned),)
    return Signature(tuple(a.name for a in args), tuple(str(a.type) for a in args), outputs)


class TorchScriptExecutor:
    """Calls ``forward`` (or the ``METHOD``) of a loaded TorchScript module with bound inputs."""

    def __init__(
        self,
        config: ModelConfig,
        module: torch.jit.ScriptModule,
        input_device: torch.device,
        method: str = "forward",
    ) -> None:
        self.config = config
        self.module = module
        self.input_device = input_device
        self.method = method
        self._call = script_method(config, module, method)
        self.signature = signature_of(module, method)
        sequence = config.sequence
        indexed_in = sequence.indexed_inputs() if sequence else frozenset()
        indexed_out = sequence.state_outputs if sequence else frozenset()
        self.inputs: Binding = bind_inputs(config, self.signature, indexed_in)
        self.outputs: Binding = bind_outputs(config, self.signature, indexed_out)
        self._arg_count = len(self.signature.arg_names)
        self.capabilities = Capabilities(
            shareable_module=module,
            devices=module_devices(module),
            warmup_runs=TORCHSCRIPT_RUNS,  # the profiling executor re-optimises per shape
        )

    def run(self, inputs: Mapping[str, Value]) -> dict[str, Value]:
        if self.inputs.dict_input:
            result = self._call(dict(inputs))
        else:
            result = self._call(*positional_args(self.inputs, self._arg_count, inputs))
        values = list(result) if isinstance(result, tuple) else [result]
        return pick_outputs(self.outputs, values)  # type: ignore[return-value]

    def describe_bindings(self) -> list[str]:
        lines = describe(self.inputs, self.outputs)
        return lines if self.method == "forward" else [*lines, f"serving method '{self.method}'"]


def load(context: LoadContext) -> TorchScriptExecutor:
    """The registry's factory: ``torch.jit.load`` onto the instance's device.

    KIND_MODEL (``device`` None) keeps the devices saved in the model; a model without CUDA
    tensors moves to the first GPU when there is one. Its inputs are prepared on the CPU.
    """
    module = load_torchscript(
        context.config, context.path, map_location=context.device, log=context.log
    )
    if context.device is None:
        placement = kind_model_placement(module)
        if placement is not None:
            module.to(placement)
        return TorchScriptExecutor(
            context.config, module, torch.device("cpu"), context.params.method
        )
    return TorchScriptExecutor(context.config, module, context.device, context.params.method)
