"""The nn.Module kind: a Python module file, its ``state_dict`` weights, and ``torch.compile``.

Loading (:func:`load`): import the module file, pick its nn.Module subclass, instantiate it with
no arguments, load ``<basename>.pt`` (``weights_only=True``, strict keys) when it exists, place it
(``.to(device)``; KIND_MODEL keeps the devices the module chose), ``eval()``, bind the config
names with the TorchScript rules from the forward's signature, then compile
(:mod:`..compiling`) unless ``TORCH_COMPILE_OPTIONAL_PARAMETERS`` says ``disable`` (or the
forward takes strings); the instance's load-time warm-up compiles the graphs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ...config import ModelConfig
from ...requests import Value
from ...runtime.devices import kind_model_placement, module_devices
from ..base import Capabilities, LoadContext
from ..binding.forward import (
    Binding,
    bind_inputs,
    bind_outputs,
    describe,
    pick_outputs,
    positional_args,
)
from ..compiling import CompileWatch, compile_forward
from . import module as module_file
from .compile_cache import OFF, PACKAGED, CompileCache, default_directory, key_parts
from .signature import forward_signature, keyword_only, uses_strings


class EagerExecutor:
    """Calls an nn.Module (compiled or not) with config-bound inputs."""

    def __init__(
        self,
        config: ModelConfig,
        module: torch.nn.Module,
        input_device: torch.device,
        method: str = "forward",
    ) -> None:
        self.config = config
        self.module = module
        self.input_device = input_device
        self.method = method
        self.signature = forward_signature(config, module, method)
        self.inputs: Binding = bind_inputs(config, self.signature)
        self.outputs: Binding = bind_outputs(config, self.signature)
        self._keywords = keyword_only(module, method)
        self._names = self.signature.arg_names
        # forward through __call__ (hooks run, as upstream); another method directly
        self.entry: Callable[..., Any] = module if method == "forward" else getattr(module, method)
        self._call: Callable[..., Any] = self.entry
        self.watch: CompileWatch | None = None
        self.compiled = False
        self.capabilities = Capabilities(shareable_module=module, devices=module_devices(module))

    def use_compiled(self, compiled: Callable[..., Any], watch: CompileWatch) -> None:
        """Run ``compiled`` instead of the module from now on, watched by ``watch``."""
        self._call, self.compiled, self.watch = compiled, True, watch
        self.capabilities = dataclasses.replace(self.capabilities, compilation=watch)

    def run(self, inputs: Mapping[str, Value]) -> dict[str, Value]:
        if self.inputs.dict_input:
            result = self._call(dict(inputs))
        else:
            args = positional_args(self.inputs, len(self._names), inputs)
            positional = [a for n, a in zip(self._names, args) if n not in self._keywords]
            keywords = {n: a for n, a in zip(self._names, args) if n in self._keywords}
            result = self._call(*positional, **keywords)
        if self.watch is not None:
            self.watch.check(inputs)
        return self._bind_result(result)

    def _bind_result(self, result: object) -> dict[str, Value]:
        if isinstance(result, tuple) or (
            isinstance(result, list) and not all(isinstance(v, str) for v in result)
        ):
            values = list(result)
        else:
            values = [result]
        return pick_outputs(self.outputs, values)  # type: ignore[return-value]

    def describe_bindings(self) -> list[str]:
        compiled = "compiled" if self.compiled else "eagerly"
        return [*describe(self.inputs, self.outputs), f"{self.method} runs {compiled}"]


def build_module(context: LoadContext) -> tuple[torch.nn.Module, torch.device]:
    """Import, instantiate, load weights and place the module; returns it and its input device."""
    config, path, log = context.config, context.path, context.log
    imported = module_file.import_module_file(config, path)
    cls = module_file.select_class(config, imported, path, context.params.module_class)
    module = module_file.instantiate(config, cls)
    log.info(f"module class: {cls.__name__} from '{path.name}'")
    weights = module_file.weights_path(path)
    if weights.is_file():
        location = context.device if context.device is not None else torch.device("cpu")
        module_file.load_weights(config, module, weights, location)
        log.info(f"weights: loaded '{weights}' (weights_only=True, strict keys)")
    else:
        log.info(
            f"weights: no '{weights.name}' beside the module file; keeping its initial weights"
        )
    if context.device is not None:
        module.to(context.device)
        input_device = context.device
    else:  # KIND_MODEL: the module keeps the devices it put itself on
        placement = kind_model_placement(module)
        if placement is not None:
            module.to(placement)
        input_device = torch.device("cpu")
    module.eval()
    return module, input_device


def _compile_cache(
    context: LoadContext, module: torch.nn.Module, device: torch.device
) -> CompileCache | None:
    """The instance's compile-cache entry (None: ``COMPILE_CACHE: off``)."""
    setting = context.params.compile_cache
    if setting == OFF:
        context.log.info("compile cache: off")
        return None
    writable = Path(setting) if setting else default_directory()
    parts = key_parts(
        context.path,
        module_file.weights_path(context.path),
        type(module).__name__,
        context.params.method,
        context.params.torch_compile.text,
        device.type,
    )
    packaged = context.path.parent / PACKAGED
    return CompileCache(parts, writable, packaged, context.log)


def load(context: LoadContext) -> EagerExecutor:
    """The registry's factory: build the module, bind its names, compile it (the load-time
    warm-up then compiles its graphs and saves the compile cache)."""
    module, input_device = build_module(context)
    executor = EagerExecutor(context.config, module, input_device, context.params.method)
    options = context.params.torch_compile
    if options.disabled:
        context.log.info("torch.compile: disabled (the module runs eagerly)")
        return executor
    if uses_strings(executor.signature):
        context.log.warn(
            "torch.compile: skipped because forward takes or returns List[str] (torch.compile "
            "specialises on Python strings: every new string would recompile); running eagerly"
        )
        return executor
    cache = _compile_cache(context, module, input_device)
    compile_forward(context, executor, executor.entry, cache)
    return executor
