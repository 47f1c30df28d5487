"""Probing an AOT-Inductor package with inputs it rejects, to learn what it accepts.

A ``.pt2`` package stores no batch range. AOTI's generated code validates every input (dtype,
each dim against its exported range, strides, device) when ``AOTI_RUNTIME_CHECK_INPUTS`` was set
at the model's first run. The probes pass ``meta`` tensors, which always fail the last check
(device) and so never execute, and parse the failure: this yields the batch range and checks the
config's dtypes and fixed dims against the package. A last real run on zeros verifies that every
bound output is a tensor of the config's dtype (with a batch dimension when batching) and records
its shape (which ``OUTPUT_SHAPE_CHECK`` compares with the config's dims). This
depends on the wording of torch's check messages: if it changes, the load fails with "probe run
failed" rather than guessing.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import ModelConfig, TensorSpec
from ...config.dtypes import TRITON_TO_TORCH, triton_name
from ...errors import ModelLoadError
from ...logs import InstanceLog
from .callspec import Bindings, CallSpec

_HUGE_BATCH = 2**31 - 1

CHECK_RE = re.compile(r"input_handles\[(\d+)\]: ([^\n]*)")
_SMALL_RE = re.compile(r"too small at (\d+), expected it to be >= (-?\d+)")
_LARGE_RE = re.compile(r"too large at (\d+), expected to be <= (-?\d+)")
_STATIC_RE = re.compile(r"unmatched dim value at (\d+), expected: (-?\d+)")
_DTYPE_RE = re.compile(r"unmatched dtype, expected: -?\d+\(([^)]*)\)")
_AT_DTYPES = {
    "at::kBool": "BOOL",
    "at::kByte": "UINT8",
    "at::kChar": "INT8",
    "at::kShort": "INT16",
    "at::kInt": "INT32",
    "at::kLong": "INT64",
    "at::kHalf": "FP16",
    "at::kFloat": "FP32",
    "at::kDouble": "FP64",
    "at::kBFloat16": "BF16",
}
_COUNT_RE = re.compile(r"expected inputs vector size to be (\d+), but got (\d+)")


@dataclass(frozen=True)
class _Check:
    """A parsed input-check failure of the generated code."""

    leaf: int
    kind: str  # "small" | "large" | "static" | "dtype" | "layout" (sizes passed)
    text: str
    dim: int = -1
    value: int = 0
    expected: str = ""  # the expected dtype, for "dtype"


def parse_check(message: str) -> _Check | None:
    m = CHECK_RE.search(message)
    if m is None:
        return None
    leaf, text = int(m.group(1)), m.group(2).strip()
    for kind, regex in (("small", _SMALL_RE), ("large", _LARGE_RE), ("static", _STATIC_RE)):
        d = regex.search(text)
        if d:
            return _Check(leaf, kind, text, int(d.group(1)), int(d.group(2)))
    d = _DTYPE_RE.search(text)
    if d:
        return _Check(leaf, "dtype", text, value=-1, expected=d.group(1))
    if "stride" in text or "device" in text:
        return _Check(leaf, "layout", text)
    return None


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
    ) -> None:
        self.config = config
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
        """Probe the package: its batch range (None without batching) and working input shapes."""
        n = len(self.input_specs)
        batch0 = 1 if self.config.batching else None
        # 1. Are the input checks on? A complex128 input 0 fails the dtype check (the first one);
        #    with the checks off the model would run harmlessly on zeros.
        tensors = [
            torch.zeros(self._shape(i, batch0), dtype=self._dtype(i), device=self.input_device)
            for i in range(n)
        ]
        tensors[0] = torch.zeros_like(tensors[0], dtype=torch.complex128)
        error = self._probe_run(tensors)
        if error is not None and (m := _COUNT_RE.search(error)):
            raise self.config.error(
                f"the package takes {m.group(1)} tensor inputs but its call spec has {n} input "
                "leaves: some forward arguments are not tensors (int, float, bool, None...), which "
                "torch.export specialises away; only tensor inputs can be served"
            )
        if error is None:
            self.log.warn("AOTI input checks are not active; the batch range cannot be probed")
            batch_range = (1, self.config.max_batch_size) if self.config.batching else None
            return batch_range, [self._shape(i, batch0) for i in range(n)]
        if parse_check(error) is None:
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

        reexport = (
            "re-export with dynamic_shapes giving dim 0 of every input "
            f'torch.export.Dim("batch", min=1, max={cfg.max_batch_size})'
        )

        def static_error(check: _Check) -> ModelLoadError:
            return cfg.error(
                f"max_batch_size is {cfg.max_batch_size}, but the package was exported with a "
                f"static batch dimension of {check.value} (dim 0 of input '{name}'); "
                f"{reexport}, or set max_batch_size: 0 and declare the full shape in dims"
            )

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
