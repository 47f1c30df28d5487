"""What an AOT-Inductor package accepts, checked against the config it is served with.

A ``.pt2`` package stores no batch range as data, but it states its input checks in the wrapper
source AOT-Inductor generated (:mod:`.checks`, reached through :mod:`...torch_compat`): each
input's dtype, static dims and dynamic dims' bounds. Those facts give the batch range and check
the config's dtypes and fixed dims; the same checks run in Python before every execution (so a
refused input reads the same on every torch). A package without that source falls back to
probing: ``meta`` tensors that fail the runtime's own input checks, whose messages are parsed
(only torch releases whose exceptions carry them; torch 2.9 prints them on stderr, and such a
load fails saying so). A last real run on zeros verifies that every bound output is a tensor of
the config's dtype (with a batch dimension when batching) and records its shape (which
``OUTPUT_SHAPE_CHECK`` compares with the config's dims).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ... import torch_compat
from ...config import ModelConfig, TensorSpec
from ...config.dtypes import TRITON_TO_TORCH, triton_name
from ...errors import ModelLoadError
from ...logs import InstanceLog
from ..binding.callspec import Bindings, CallSpec
from .checks import InputCheck, describe_dim

_HUGE_BATCH = 2**31 - 1

# The runtime's input-check messages are version-dependent: parsed in torch_compat.
CHECK_RE = torch_compat.AOTI_CHECK_RE
_COUNT_RE = torch_compat.AOTI_COUNT_RE
_AT_DTYPES = torch_compat.AT_DTYPES
_Check = torch_compat.AotiCheck
parse_check = torch_compat.parse_aoti_check


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence the C++ runtime's "Error: ..." lines while probing (expected failures)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class PackageProbe:
    """Probes one loaded package against the config it is served with."""

    def __init__(
        self,
        config: ModelConfig,
        path: Path,
        loader: Any,
        bindings: Bindings,
        call_spec: CallSpec,
        input_device: torch.device,
        log: InstanceLog,
        checks: Sequence[InputCheck] | None = None,
    ) -> None:
        self.config = config
        #: The input checks the package states (its generated source); None: probe instead.
        self.checks = None if checks is None else tuple(checks)
        self.path = path
        self.loader = loader
        self.bindings = bindings
        self.call_spec = call_spec
        self.input_device = input_device
        self.log = log
        self.input_specs: tuple[TensorSpec, ...] = tuple(
            config.input(name) for name in bindings.inputs
        )
        #: (leaf, tensor dim) -> the package's minimum, for variable (-1) dims whose minimum is
        #: above 1 (torch.export compiles a dynamic ``Dim(min=1)`` with a minimum of 2).
        self.minimums: dict[tuple[int, int], int] = {}
        #: Each bound output's shape in the run on zeros, by config name (empty: it did not run).
        self.output_shapes: dict[str, tuple[int, ...]] = {}

    def _shape(self, leaf: int, batch: int | None) -> list[int]:
        dims = [d if d >= 0 else 1 for d in self.input_specs[leaf].shape]
        return [batch, *dims] if batch is not None else dims

    def _dtype(self, leaf: int) -> torch.dtype:
        return TRITON_TO_TORCH[self.input_specs[leaf].dtype]

    def _probe_run(self, tensors: Sequence[torch.Tensor]) -> str | None:
        """Run the expected-to-fail probe; return the error text, ``None`` if it ran."""
        try:
            with quiet_stderr():
                self.loader.run(list(tensors))
        except Exception as e:  # noqa: BLE001
            return str(e)
        return None

    def _fail(self, what: str, detail: str) -> ModelLoadError:
        return self.config.error(f"{what} (package '{self.path}'): {detail.strip()}")

    def run(self) -> tuple[tuple[int, int] | None, list[list[int]]]:
        """Check the package: its batch range (None without batching) and working input shapes."""
        n = len(self.input_specs)
        batch0 = 1 if self.config.batching else None
        if self.checks is not None and len(self.checks) != n:
            raise self._count_error(len(self.checks))
        # 1. Are the input checks on? A complex128 input 0 fails the dtype check (the first one);
        #    with the checks off the model would run harmlessly on zeros.
        tensors = [
            torch.zeros(self._shape(i, batch0), dtype=self._dtype(i), device=self.input_device)
            for i in range(n)
        ]
        tensors[0] = torch.zeros_like(tensors[0], dtype=torch.complex128)
        error = self._probe_run(tensors)
        if error is not None and (m := _COUNT_RE.search(error)):
            raise self._count_error(int(m.group(1)))
        if self.checks is not None:
            if error is None:
                self.log.warn("AOTI input checks are not active; the package's stated checks apply")
            return self._from_checks(self.checks)
        if error is None:
            self.log.warn("AOTI input checks are not active; the batch range cannot be probed")
            batch_range = (1, self.config.max_batch_size) if self.config.batching else None
            return batch_range, [self._shape(i, batch0) for i in range(n)]
        if parse_check(error) is None:
            if torch_compat.aoti_error_is_opaque(error):
                raise self._fail(
                    f"the package holds no generated source stating its input checks, and torch "
                    f"{torch.__version__} reports input-check failures only on stderr, so its "
                    "batch range cannot be probed; re-package it with this torch "
                    "(aoti_compile_and_package keeps the source)",
                    error,
                )
            raise self._fail("probe run failed", error)
        fills = [self._shape(i, batch0) for i in range(n)]
        batch_range = None
        if self.config.batching:
            batch_range = self._probe_batch()
            for shape in fills:
                shape[0] = batch_range[0]
        self._probe_leaves(fills)
        self._dummy_run(fills)
        return batch_range, fills

    def _count_error(self, tensors: int) -> ModelLoadError:
        return self.config.error(
            f"the package takes {tensors} tensor inputs but its call spec has "
            f"{len(self.input_specs)} input leaves: some forward arguments are not tensors (int, "
            "float, bool, None...), which torch.export specialises away; only tensor inputs can "
            "be served"
        )

    def _reexport(self) -> str:
        return (
            "re-export with dynamic_shapes giving dim 0 of every input "
            f'torch.export.Dim("batch", min=1, max={self.config.max_batch_size})'
        )

    def _static_batch_error(self, leaf: int, size: int) -> ModelLoadError:
        cfg = self.config
        return cfg.error(
            f"max_batch_size is {cfg.max_batch_size}, but the package was exported with a "
            f"static batch dimension of {size} (dim 0 of input '{self.bindings.inputs[leaf]}'); "
            f"{self._reexport()}, or set max_batch_size: 0 and declare the full shape in dims"
        )

    def _from_checks(
        self, checks: Sequence[InputCheck]
    ) -> tuple[tuple[int, int] | None, list[list[int]]]:
        """Batch range and working shapes from the checks the package states; a config that
        disagrees with them fails the load."""
        cfg = self.config
        offset = 1 if cfg.batching else 0
        batch_range = None
        fills: list[list[int]] = []
        for leaf, (spec, check) in enumerate(zip(self.input_specs, checks)):
            declared = f"TYPE_{spec.dtype}"
            if check.dtype != spec.dtype:
                expected = f"TYPE_{check.dtype}" if check.dtype in _AT_DTYPES.values() else None
                raise cfg.error(
                    f"input '{spec.name}' is declared {declared}, but the package expects "
                    f"{expected or check.dtype}"
                )
            if len(check.dims) != offset + len(spec.shape):
                raise cfg.error(
                    f"input '{spec.name}' with dims {list(spec.shape)} does not match the "
                    f"package: it takes {len(check.dims)}-dimensional tensors ("
                    + ", ".join(describe_dim(d) for d in check.dims)
                    + ")"
                    + (" including the batch dimension" if offset else "")
                )
            fill: list[int] = []
            for d, dim in enumerate(check.dims):
                if d < offset:
                    if dim.static:
                        raise self._static_batch_error(leaf, dim.low)
                    low, high = max(dim.low, 1), dim.high if dim.high is not None else sys.maxsize
                    if batch_range is not None:
                        low, high = max(low, batch_range[0]), min(high, batch_range[1])
                    batch_range = (low, high)
                    fill.append(low)
                    continue
                size = spec.shape[d - offset]
                if size >= 0:
                    if size < dim.low or (dim.high is not None and size > dim.high):
                        raise cfg.error(
                            f"input '{spec.name}' with dims {list(spec.shape)} does not match "
                            f"the package at dim {d}: expected: {describe_dim(dim)}"
                        )
                    fill.append(size)
                    continue
                if not dim.static and dim.low > 1:
                    self.minimums[(leaf, d)] = dim.low
                fill.append(max(dim.low, 1))
            fills.append(fill)
        if batch_range is not None:
            if cfg.max_batch_size > batch_range[1]:
                raise cfg.error(
                    f"max_batch_size {cfg.max_batch_size} exceeds the package's exported maximum "
                    f"batch size {batch_range[1]}; {self._reexport()}, or lower max_batch_size"
                )
            for fill in fills:
                fill[0] = batch_range[0]
        self._dummy_run(fills)
        return batch_range, fills

    def _probe_batch(self) -> tuple[int, int]:
        """The exported batch range (inclusive), read from input 0's checks."""
        cfg = self.config
        name = self.bindings.inputs[0]

        def probe(batch: int) -> _Check:
            tensors = [
                torch.zeros(self._shape(i, batch), dtype=self._dtype(i), device="meta")
                for i in range(len(self.input_specs))
            ]
            error = self._probe_run(tensors) or "the probe ran"
            check = parse_check(error)
            if check is None or check.leaf != 0:
                raise self._fail("probe run failed", error)
            if check.kind == "dtype":
                raise self._dtype_error(0, check)
            return check

        reexport = self._reexport()

        def static_error(check: _Check) -> ModelLoadError:
            return self._static_batch_error(0, check.value)

        low_check = probe(1)
        low = 1
        if low_check.dim == 0:
            if low_check.kind == "static":
                raise static_error(low_check)
            if low_check.kind != "small":
                raise self._fail(f"unexpected batch check on input '{name}'", low_check.text)
            low = low_check.value
        numel = 1
        for d in self._shape(0, None):
            numel *= max(d, 1)
        high_check = probe(min(_HUGE_BATCH, 2**62 // numel))
        high = sys.maxsize
        if high_check.dim == 0 and high_check.kind == "static":
            raise static_error(high_check)
        if high_check.dim == 0 and high_check.kind == "large":
            high = high_check.value
        if cfg.max_batch_size > high:
            raise cfg.error(
                f"max_batch_size {cfg.max_batch_size} exceeds the package's exported maximum batch "
                f"size {high}; {reexport}, or lower max_batch_size"
            )
        return low, high

    def _probe_leaves(self, fills: list[list[int]]) -> None:
        """Check every input's dtype and fixed dims; adapt the probe size of variable dims."""
        offset = 1 if self.config.batching else 0
        for leaf, spec in enumerate(self.input_specs):
            for _ in range(4 + 2 * len(fills[leaf])):
                tensors = [
                    torch.zeros(
                        fills[i],
                        dtype=self._dtype(i),
                        device=self.input_device if i < leaf else "meta",
                    )
                    for i in range(len(fills))
                ]
                error = self._probe_run(tensors) or "the probe ran"
                check = parse_check(error)
                if check is None or check.leaf != leaf:
                    raise self._fail(f"probe of input '{spec.name}' failed", error)
                if check.kind == "layout":
                    break
                if check.kind == "dtype":
                    raise self._dtype_error(leaf, check)
                config_dim = check.dim - offset
                variable = 0 <= config_dim < len(spec.shape) and spec.shape[config_dim] < 0
                if not variable:
                    where = "the batch dimension" if check.dim < offset else f"dim {check.dim}"
                    raise self.config.error(
                        f"input '{spec.name}' with dims {list(spec.shape)} does not match the "
                        f"package at {where}: {check.text}"
                    )
                if check.kind == "small":
                    self.minimums[(leaf, check.dim)] = check.value
                fills[leaf][check.dim] = check.value
            else:
                raise self._fail(f"probe of input '{spec.name}' did not converge", error)

    def _dtype_error(self, leaf: int, check: _Check) -> ModelLoadError:
        spec = self.input_specs[leaf]
        expected = _AT_DTYPES.get(check.expected)
        expected = f"TYPE_{expected}" if expected else check.expected or "another dtype"
        return self.config.error(
            f"input '{spec.name}' is declared TYPE_{spec.dtype}, but the package expects "
            f"{expected} ({check.text})"
        )

    def _dummy_run(self, fills: list[list[int]]) -> None:
        """One real run on zeros: every bound output must be a tensor of the config's dtype (with
        the batch as dim 0 when batching)."""
        tensors = [
            torch.zeros(shape, dtype=self._dtype(i), device=self.input_device)
            for i, shape in enumerate(fills)
        ]
        try:
            outputs = self.loader.run(tensors)
        except Exception as e:  # noqa: BLE001 - a model may legitimately reject all-zero data
            self.log.warn(f"test run on zeros failed: {e}")
            return
        batch = fills[0][0] if self.config.batching and fills else None
        for name, index in self.bindings.outputs.items():
            value = outputs[index]
            if not isinstance(value, torch.Tensor):
                raise self.config.error(
                    f"output '{name}' ({self.call_spec.outputs[index].describe()}) is "
                    f"{type(value).__name__}, not a tensor; only tensor outputs can be served"
                )
            declared = self.config.output(name).dtype
            if value.dtype != TRITON_TO_TORCH.get(declared):
                raise self.config.error(
                    f"configuration expects datatype TYPE_{declared} for output '{name}' "
                    f"({self.call_spec.outputs[index].describe()}), model provides "
                    f"{triton_name(value.dtype)}"
                )
            if batch is not None and (value.dim() == 0 or value.shape[0] != batch):
                raise self.config.error(
                    f"output '{name}' has shape {list(value.shape)} for a batch of {batch}: with "
                    "max_batch_size > 0 every output needs the batch as dim 0"
                )
            self.output_shapes[name] = tuple(value.shape)
