"""The torch.export kind: a ``.pt2`` written by ``torch.export.save`` (no AOT-Inductor code).

Loading (:func:`load`): ``torch.export.load``, name the call spec's leaves exactly as for
AOT-Inductor packages (``ARGS[i]``, ``KWARGS[k]``, ``RESULT[k][j]``, ordinal ``INPUT__N`` /
``OUTPUT__N``), check every input's dtype and fixed dims and every bound output's dtype against the
graph's own metadata, read the batch range from the program's ``range_constraints`` (no probing),
then ``.module()``, compiled (:mod:`..compiling`; the instance's load-time warm-up compiles the
graphs) unless ``TORCH_COMPILE_OPTIONAL_PARAMETERS`` says ``disable``. Batches below the
exported minimum are padded by repeating the last row (:mod:`..padding`, which counts them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from ... import torch_compat
from ...config import ModelConfig
from ...config.dtypes import TRITON_TO_TORCH, triton_name
from ...requests import Value
from .. import artifacts
from ..base import Capabilities, LoadContext
from ..binding.callspec import (
    CallSpec,
    CallSpecError,
    describe_bindings,
    parse_call_spec,
    resolve_bindings,
)
from ..compiling import CompileWatch, compile_forward
from ..padding import BatchPadding


def load_program(config: ModelConfig, path: Path) -> torch.export.ExportedProgram:
    """``torch.export.load``; a file of another kind gets an error saying what it is."""
    kind = artifacts.identify(path)
    if kind != artifacts.EXPORTED_PROGRAM:
        raise config.error(f"model file '{path}' is {artifacts.describe(path)}")
    try:
        return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - the loader raises many kinds of errors
        raise config.error(
            f"torch.export.load('{path}') failed: {type(exc).__name__}: {exc}"
        ) from None


def user_values(program: torch.export.ExportedProgram) -> tuple[list[Any], list[Any]]:
    """The example values (fake tensors) of the program's user inputs and user outputs."""
    nodes = {node.name: node for node in program.graph.nodes}
    inputs = [nodes[n].meta.get("val") for n in program.graph_signature.user_inputs]
    output = next(n for n in program.graph.nodes if n.op == "output")
    values = list(output.args[0])
    user = len(program.graph_signature.user_outputs)
    values = values[len(values) - user :] if user else values
    outputs = [
        nodes[v.name].meta.get("val") if getattr(v, "name", None) in nodes else None for v in values
    ]
    return inputs, outputs


class ExportedProgramExecutor:
    """Runs ``program.module()`` (compiled or not) on the flattened, config-bound leaves."""

    def __init__(
        self,
        config: ModelConfig,
        program: torch.export.ExportedProgram,
        input_device: torch.device | None,
    ) -> None:
        self.config = config
        in_spec, out_spec = torch_compat.program_call_spec(program)
        try:
            self.call_spec: CallSpec = parse_call_spec(
                pytree.treespec_dumps(in_spec), pytree.treespec_dumps(out_spec)
            )
        except CallSpecError as exc:
            raise config.error(f"unsupported torch.export call spec: {exc}") from None
        self.in_spec = in_spec
        self.bindings = resolve_bindings(self.call_spec, config)
        inputs, outputs = user_values(program)
        self._check_inputs(inputs)
        self._check_outputs(outputs)
        self.batch_range = self._batch_range(program, inputs)
        self.module = program.module()
        self.input_device = input_device or inputs[0].device
        self._call: Callable[..., Any] = self.module
        self.watch: CompileWatch | None = None
        self.compiled = False
        self.capabilities = Capabilities(
            shareable_module=self.module,
            devices=(self.input_device,),
            batch_range=self.batch_range,
        )
        self._padding = BatchPadding(self.capabilities)

    def _check_inputs(self, metas: list[Any]) -> None:
        offset = 1 if self.config.batching else 0
        for index, name in enumerate(self.bindings.inputs):
            leaf = self.call_spec.inputs[index].describe()
            meta = metas[index]
            if not isinstance(meta, torch.Tensor):
                raise self.config.error(
                    f"input '{name}' ({leaf}) is a {type(meta).__name__} in the program, not a "
                    "tensor; only tensor inputs can be served"
                )
            spec = self.config.input(name)
            if TRITON_TO_TORCH.get(spec.dtype) != meta.dtype:
                raise self.config.error(
                    f"input '{name}' ({leaf}) is declared TYPE_{spec.dtype}, but the program "
                    f"expects {triton_name(meta.dtype)}"
                )
            shape = list(meta.shape)
            program_dims = ["-1" if not isinstance(d, int) else str(d) for d in shape[offset:]]
            dims_ok = len(shape) - offset == len(spec.shape) and all(
                d < 0 or not isinstance(p, int) or p == d
                for d, p in zip(spec.shape, shape[offset:])
            )
            if not dims_ok:
                raise self.config.error(
                    f"input '{name}' ({leaf}) has dims {list(spec.shape)} in the configuration, "
                    f"but the program takes [{', '.join(program_dims)}]"
                    + (" after the batch dimension" if offset else "")
                )

    def _check_outputs(self, metas: list[Any]) -> None:
        for name, index in self.bindings.outputs.items():
            meta = metas[index] if index < len(metas) else None
            leaf = self.call_spec.outputs[index].describe()
            if not isinstance(meta, torch.Tensor):
                raise self.config.error(
                    f"output '{name}' ({leaf}) is not a tensor in the program; only tensor "
                    "outputs can be served"
                )
            declared = self.config.output(name).dtype
            if TRITON_TO_TORCH.get(declared) != meta.dtype:
                raise self.config.error(
                    f"configuration expects datatype TYPE_{declared} for output '{name}' "
                    f"({leaf}), model provides {triton_name(meta.dtype)}"
                )

    def _batch_range(
        self, program: torch.export.ExportedProgram, metas: list[Any]
    ) -> tuple[int, int] | None:
        """Dim 0's range from ``range_constraints``; a static or too small batch fails the load."""
        if not self.config.batching:
            return None
        cfg, name = self.config, self.bindings.inputs[0]
        reexport = (
            "re-export with dynamic_shapes giving dim 0 of every input "
            f'torch.export.Dim("batch", min=1, max={cfg.max_batch_size})'
        )
        dim = metas[0].shape[0] if metas[0].dim() else None
        if not isinstance(dim, torch.SymInt):
            raise cfg.error(
                f"max_batch_size is {cfg.max_batch_size}, but the program was exported with a "
                f"static batch dimension of {dim} (dim 0 of input '{name}'); {reexport}, or set "
                "max_batch_size: 0 and declare the full shape in dims"
            )
        bounds = program.range_constraints.get(torch_compat.size_symbol(dim))
        low = int(bounds.lower) if bounds is not None else 1
        high = bounds.upper if bounds is not None else None
        high = int(high) if high is not None and high.is_finite else 2**63 - 1
        if cfg.max_batch_size > high:
            raise cfg.error(
                f"max_batch_size {cfg.max_batch_size} exceeds the program's exported maximum "
                f"batch size {high}; {reexport}, or lower max_batch_size"
            )
        return max(low, 1), high

    def use_compiled(self, compiled: Callable[..., Any], watch: CompileWatch) -> None:
        """Run ``compiled`` instead of the program's module from now on, watched by ``watch``."""
        self._call, self.compiled, self.watch = compiled, True, watch
        self.capabilities = dataclasses.replace(self.capabilities, compilation=watch)

    def run(self, inputs: Mapping[str, Value]) -> dict[str, Value]:
        flat, keep = self._padding.to_minimum(self.bindings.leaves(inputs))
        args, kwargs = pytree.tree_unflatten(flat, self.in_spec)
        leaves = pytree.tree_leaves(self._call(*args, **kwargs))
        if self.watch is not None:
            self.watch.check(inputs)
        result: dict[str, Value] = {}
        for name, index in self.bindings.outputs.items():
            value = leaves[index]
            result[name] = BatchPadding.trim(value, keep)
        return result

    def describe_bindings(self) -> list[str]:
        return [
            *describe_bindings(self.call_spec, self.bindings),
            f"batch range from range_constraints: {self.batch_range}",
            f"forward runs {'compiled' if self.compiled else 'eagerly'}",
        ]


def _place(
    program: torch.export.ExportedProgram, device: torch.device | None
) -> torch.export.ExportedProgram:
    """The program moved onto the instance's device (KIND_MODEL: where it was exported)."""
    if device is None:
        return program
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, device)


def load(context: LoadContext) -> ExportedProgramExecutor:
    """The registry's factory: load, name, check, then compile (the load-time warm-up then
    compiles the graphs)."""
    config = context.config
    program = _place(load_program(config, context.path), context.device)
    executor = ExportedProgramExecutor(config, program, context.device)
    if context.params.torch_compile.disabled:
        context.log.info("torch.compile: disabled (program.module() runs as exported)")
        return executor
    compile_forward(context, executor, executor.module)
    return executor
