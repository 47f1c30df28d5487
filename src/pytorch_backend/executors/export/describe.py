"""Describe a torch.export program (``torch.export.save``) without a configuration.

A program knows everything: names from its call spec (``ARGS[i]``/``KWARGS[k]``/``RESULT[...]``
first, ordinal second, as for AOT-Inductor packages), dtypes and shapes from the graph's tensor
metadata, and its batch range from ``range_constraints``. It batches when dim 0 of every input is
the same symbol and every output carries it; no test run is needed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree

from ... import torch_compat
from ...config.dtypes import TORCH_TO_TRITON
from ..binding.callspec import CallSpecError, parse_call_spec
from ..description import DescribeContext, ModelIO, TensorIO, batched_io
from .executor import load_program, user_values


def _batch_symbol(inputs: list[Any]) -> Any | None:
    """The symbol of dim 0 when every input's dim 0 is that same symbol, else None."""
    if not inputs or any(not isinstance(t, torch.Tensor) or t.dim() == 0 for t in inputs):
        return None
    firsts = [t.shape[0] for t in inputs]
    if not all(isinstance(d, torch.SymInt) for d in firsts):
        return None
    symbols = {torch_compat.size_symbol(d) for d in firsts}
    return next(iter(symbols)) if len(symbols) == 1 else None


def _dims(shape: Any, offset: int) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in list(shape)[offset:])


def _carries(meta: Any, symbol: Any) -> bool:
    if not isinstance(meta, torch.Tensor) or meta.dim() == 0:
        return False
    first = meta.shape[0]
    return isinstance(first, torch.SymInt) and torch_compat.size_symbol(first) == symbol


def describe(context: DescribeContext) -> ModelIO:
    """The registry's describer for torch.export programs (``torch.export.save`` files)."""
    config, path = context.config, context.path
    program = load_program(config, path)
    in_spec, out_spec = torch_compat.program_call_spec(program)
    try:
        call = parse_call_spec(pytree.treespec_dumps(in_spec), pytree.treespec_dumps(out_spec))
    except CallSpecError as exc:
        raise config.error(f"unsupported torch.export call spec: {exc}") from None
    inputs, outputs = user_values(program)
    for leaf, meta in zip(call.inputs, inputs):
        if not isinstance(meta, torch.Tensor):
            raise config.error(
                f"input {leaf.describe()} is a {type(meta).__name__} in the program, not a "
                "tensor; only tensor inputs can be served"
            )
    symbol = _batch_symbol(inputs)
    if symbol is not None and not all(
        _carries(m, symbol) for m in outputs if isinstance(m, torch.Tensor)
    ):
        symbol = None  # an output does not carry the batch: serve unbatched
    offset = 1 if symbol is not None else 0
    described = tuple(
        TensorIO(
            (leaf.name, leaf.ordinal),
            TORCH_TO_TRITON.get(meta.dtype),
            _dims(meta.shape, offset),
            where=leaf.name,
        )
        for leaf, meta in zip(call.inputs, inputs)
    )
    results, notes = [], []
    for leaf, meta in zip(call.outputs, outputs):
        if not isinstance(meta, torch.Tensor):
            kind = type(meta).__name__
            notes.append(f"output {leaf.describe()} is {kind}, not a tensor: skipped")
            continue
        results.append(
            TensorIO(
                (leaf.name, leaf.ordinal),
                TORCH_TO_TRITON.get(meta.dtype),
                _dims(meta.shape, offset),
                where=leaf.name,
            )
        )
    batch: tuple[int, int | None] | None = None
    if symbol is not None:
        bounds = program.range_constraints.get(symbol)
        low = max(int(bounds.lower), 1) if bounds is not None else 1
        high = bounds.upper if bounds is not None else None
        batch = (low, int(high) if high is not None and high.is_finite else None)
    return batched_io(
        (described, results),
        batch,
        "the program",
        "the program's range_constraints give the batch range",
        f"the torch.export program {path.name}",
        notes,
    )
