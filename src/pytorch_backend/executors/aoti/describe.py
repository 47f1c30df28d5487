"""Describe an AOT-Inductor package's inputs and outputs without a configuration.

* names: the call spec (:mod:`..binding.callspec`), forward-based first, ordinal second;
* input dtypes and dims, and the batch range: the input checks compiled into the package
  (:mod:`.checks`);
* output dtypes and dims: two test runs on zeros, the second with every dynamic input dim one
  larger; an output dim that changed between them is variable (-1).

The model batches when dim 0 of every input is dynamic and every output follows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...config.dtypes import TORCH_TO_TRITON, TRITON_TO_TORCH
from ..binding.callspec import CallSpecError, load_error, parse_call_spec
from ..description import DescribeContext, ModelIO, TensorIO, batched_io
from .checks import DimCheck, InputCheck, package_source, parse_input_checks
from .executor import check_package_file, checked_inputs, load_package
from .probe import quiet_stderr


def _batch_range(checks: Sequence[InputCheck]) -> tuple[int, int | None] | None:
    """The batch sizes every input accepts when dim 0 of each is dynamic, else None."""
    if not checks or any(not c.dims or c.dims[0].static for c in checks):
        return None
    low = max(max(c.dims[0].low, 1) for c in checks)
    highs = [c.dims[0].high for c in checks if c.dims[0].high is not None]
    return low, min(highs) if highs else None


def _size(dim: DimCheck, bigger: bool) -> int:
    size = max(dim.low, 1)
    if bigger and not dim.static and (dim.high is None or size + 1 <= dim.high):
        size += 1
    return size


def _test_run(context: DescribeContext, loader: Any, checks, device, bigger: bool) -> list[Any]:
    tensors = []
    for check in checks:
        dtype = TRITON_TO_TORCH.get(check.dtype)
        if dtype is None:
            raise context.config.error(
                f"the package takes a tensor of dtype {check.dtype}, which Triton cannot carry"
            )
        shape = [_size(d, bigger) for d in check.dims]
        tensors.append(torch.zeros(shape, dtype=dtype, device=device))
    try:
        with quiet_stderr():
            return list(loader.run(tensors))
    except Exception as e:  # noqa: BLE001 - a model may legitimately reject all-zero data
        raise context.config.error(
            f"cannot describe the package's outputs: a test run on zeros failed ({e}); "
            "declare the outputs in the configuration"
        ) from None


def _dims(dims: Sequence[DimCheck]) -> tuple[int, ...]:
    return tuple(d.low if d.static else -1 for d in dims)


def describe(context: DescribeContext) -> ModelIO:
    """The registry's describer for ``.pt2`` packages."""
    config, path = context.config, context.path
    check_package_file(config, path)
    source = package_source(path)
    if source is None:
        raise config.error(
            f"package '{path}' holds no generated source with its input checks, so its inputs "
            "cannot be described; declare input, output and max_batch_size in the configuration"
        )
    checks = parse_input_checks(source)
    with checked_inputs():
        loader, device = load_package(config, path, context.device)
        try:
            spec = parse_call_spec(*loader.get_call_spec())
        except CallSpecError as e:
            raise load_error(config, e) from e
        if len(checks) != len(spec.inputs):
            raise config.error(
                f"the package takes {len(checks)} tensor inputs but its call spec has "
                f"{len(spec.inputs)} input leaves: some forward arguments are not tensors (int, "
                "float, bool, None...), which torch.export specialises away; only tensor inputs "
                "can be served"
            )
        first = _test_run(context, loader, checks, device, bigger=False)
        second = _test_run(context, loader, checks, device, bigger=True)
    batch = _batch_range(checks)
    if batch is not None:
        sizes = (max(batch[0], 1), _size(checks[0].dims[0], True))
        for a, b in zip(first, second):
            if not isinstance(a, torch.Tensor) or a.dim() == 0:
                continue
            if (a.shape[0], b.shape[0]) != sizes:
                batch = None  # an output does not carry the batch: serve unbatched
                break
    offset = 1 if batch is not None else 0
    inputs = tuple(
        TensorIO(
            (leaf.name, leaf.ordinal), check.dtype, _dims(check.dims[offset:]), where=leaf.name
        )
        for leaf, check in zip(spec.inputs, checks)
    )
    outputs = []
    notes = []
    for leaf, a, b in zip(spec.outputs, first, second):
        if not isinstance(a, torch.Tensor):
            notes.append(f"output {leaf.describe()} is {type(a).__name__}, not a tensor: skipped")
            continue
        dims = tuple(x if x == y else -1 for x, y in zip(a.shape, b.shape))
        if a.dim() != b.dim():
            dims = (-1,) * a.dim()
        outputs.append(
            TensorIO(
                (leaf.name, leaf.ordinal),
                TORCH_TO_TRITON.get(a.dtype),
                dims[offset:],
                where=leaf.name,
            )
        )
    return batched_io(
        (inputs, outputs),
        batch,
        "the package",
        "the package's exported batch range",
        f"the AOT-Inductor package {path.name}",
        notes,
    )
