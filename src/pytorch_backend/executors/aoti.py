"""Executor for AOT-Inductor packages (``model.pt2``, ``platform: "torch_aoti"``).

Loading:

1. The file is classified first, so that a TorchScript archive, a ``torch.save`` checkpoint, an
   exported program without compiled code or garbage gets an error saying what it is.
2. ``torch._inductor.aoti_load_package(path, device_index=...)`` loads the package (imported
   lazily: the adapter fixes the locale before).
3. The call spec is named (:mod:`pytorch_backend.callspec`) and bound to the config names.
4. Shape probing. AOTI's generated code validates every input (dtype, each dim against its exported
   range, strides, device) when ``AOTI_RUNTIME_CHECK_INPUTS`` is set at the model's first run. The
   loader sets it around the load and the first runs, so the checks stay on for this model (a
   wrong shape then fails cleanly instead of reading out of bounds). The probes pass ``meta``
   tensors, which always fail the last check (device) and so never execute, and parse the
   failure: this yields the batch range (``batch_range``) and checks the config's dtypes and fixed
   dims against the package. A last real run on zeros verifies that every bound output is a tensor
   of the config's dtype (with a batch dimension when batching).

Running: inputs are flattened in leaf order and made contiguous. Batches below the exported
minimum (AOTI compiles ``Dim(min=1)`` as a lower bound of 2) are padded by repeating the last
row, and the padding is dropped from the outputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import artifacts
from ..callspec import CallSpec, CallSpecError, load_error, parse_call_spec, resolve_bindings
from ..config import ModelConfig, TensorSpec
from ..dtypes import TRITON_TO_TORCH, triton_name
from ..errors import ExecutionError, ModelLoadError, RequestError

log = logging.getLogger(__name__)

_CHECK_ENV = "AOTI_RUNTIME_CHECK_INPUTS"
_MODEL_NAME = "model"  # the model name inside the archive, as in upstream
_LOAD_LOCK = threading.Lock()  # the environment variable is process-wide
_HUGE_BATCH = 2**31 - 1

_CHECK_RE = re.compile(r"input_handles\[(\d+)\]: ([^\n]*)")
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


def _parse_check(message: str) -> _Check | None:
    m = _CHECK_RE.search(message)
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


def _package_device_key(path: Path) -> str | None:
    """``AOTI_DEVICE_KEY`` ("cpu", "cuda", ...) from the package's metadata files, if present."""
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if f"/data/aotinductor/{_MODEL_NAME}/" in name and name.endswith("metadata.json"):
                try:
                    key = json.loads(zf.read(name)).get("AOTI_DEVICE_KEY")
                except (ValueError, AttributeError):
                    continue
                if key:
                    return str(key)
    return None


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
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


class AotiExecutor:
    """Runs an AOT-Inductor package; see the module docstring."""

    def __init__(self, config: ModelConfig, path: Path, device: torch.device) -> None:
        self.config = config
        self.path = Path(path)
        self._check_file()
        with _LOAD_LOCK, _env(_CHECK_ENV, "1"):
            self._loader = self._load(device)
            try:
                self.call_spec: CallSpec = parse_call_spec(*self._loader.get_call_spec())
            except CallSpecError as e:
                raise load_error(config, e) from e
            self.bindings = resolve_bindings(self.call_spec, config)
            self._input_specs: tuple[TensorSpec, ...] = tuple(
                config.input(name) for name in self.bindings.inputs
            )
            self.batch_range: tuple[int, int] | None = None
            self._probe()

    # -- public ------------------------------------------------------------------------------

    @property
    def accepted_input_names(self) -> tuple[str, ...]:
        return self.call_spec.accepted_input_names

    @property
    def accepted_output_names(self) -> tuple[str, ...]:
        return self.call_spec.accepted_output_names

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        flat: list[torch.Tensor] = []
        for name in self.bindings.inputs:
            value = inputs.get(name)
            if not isinstance(value, torch.Tensor):
                raise ExecutionError(
                    f"model '{self.config.name}': input '{name}' is missing or not a tensor"
                )
            flat.append(value.contiguous())
        batch, pad = 0, 0
        if self.config.batching and self.batch_range is not None:
            batch = flat[0].shape[0] if flat[0].dim() else 0
            pad = self.batch_range[0] - batch if 0 < batch < self.batch_range[0] else 0
            if pad:
                flat = [torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in flat]
        try:
            outputs = self._loader.run(flat)
        except Exception as e:  # noqa: BLE001 - the runner raises RuntimeError and others
            text = self._explain(e)
            # The package's own input checks (shape outside the exported range...) are the
            # request's fault; the engine bisects a batch to find which request it was.
            error = RequestError if _CHECK_RE.search(str(e)) else ExecutionError
            raise error(f"model '{self.config.name}': AOT-Inductor execution failed: {text}") from e
        result: dict[str, Any] = {}
        for name, index in self.bindings.outputs.items():
            value = outputs[index]
            if not isinstance(value, torch.Tensor):
                raise ExecutionError(
                    f"model '{self.config.name}': output '{name}' is {type(value).__name__}, "
                    "not a tensor"
                )
            result[name] = value[:batch] if pad else value
        return result

    def describe_bindings(self) -> list[str]:
        leaves_in, leaves_out = self.call_spec.inputs, self.call_spec.outputs
        inputs = {name: leaves_in[i].describe() for i, name in enumerate(self.bindings.inputs)}
        outputs = {name: leaves_out[i].describe() for name, i in self.bindings.outputs.items()}
        return [
            f"inputs bound to call-spec leaves: {json.dumps(inputs)}",
            f"outputs bound to call-spec leaves: {json.dumps(outputs)}",
        ]

    # -- loading -----------------------------------------------------------------------------

    def _check_file(self) -> None:
        path = self.path
        expected = "an AOTInductor package (.pt2 from torch._inductor.aoti_compile_and_package)"
        if not path.exists():
            raise self.config.error(f"model file '{path}' does not exist (expected {expected})")
        if not path.is_file():
            raise self.config.error(f"model file '{path}' is not a regular file")
        if artifacts.identify(path) != artifacts.AOTI:
            what = artifacts.describe(path)
            raise self.config.error(f"model file '{path}' is {what}; expected {expected}")

    def _load(self, device: torch.device) -> Any:
        key = _package_device_key(self.path) or device.type
        if key == "cuda" and not torch.cuda.is_available():
            raise self.config.error(
                f"package '{self.path}' was compiled for CUDA, but CUDA is not available"
            )
        if key == "cpu":
            index = -1
            self.input_device = torch.device("cpu")
        else:
            # As upstream: a GPU instance passes its index; otherwise -1 (the current device).
            index = device.index if device.type == key and device.index is not None else -1
            if index < 0 and key == "cuda":
                index = torch.cuda.current_device()
            self.input_device = torch.device(key, index)
        # Lazy: the adapter fixes the locale before torch._inductor is imported.
        from torch._inductor import aoti_load_package

        try:
            compiled = aoti_load_package(str(self.path), device_index=index)
        except Exception as e:  # noqa: BLE001 - the loader raises RuntimeError and others
            raise self.config.error(
                f"failed to load AOT-Inductor package '{self.path}': {e}"
            ) from e
        return compiled.loader

    def _shape(self, leaf: int, batch: int | None) -> list[int]:
        dims = [d if d >= 0 else 1 for d in self._input_specs[leaf].shape]
        return [batch, *dims] if batch is not None else dims

    def _dtype(self, leaf: int) -> torch.dtype:
        return TRITON_TO_TORCH[self._input_specs[leaf].dtype]

    def _probe_run(self, tensors: Sequence[torch.Tensor]) -> str | None:
        """Run the expected-to-fail probe; return the error text, ``None`` if it ran."""
        try:
            with _quiet_stderr():
                self._loader.run(list(tensors))
        except Exception as e:  # noqa: BLE001
            return str(e)
        return None

    def _fail(self, what: str, detail: str) -> ModelLoadError:
        return self.config.error(f"{what} (package '{self.path}'): {detail.strip()}")

    def _probe(self) -> None:
        n = len(self._input_specs)
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
            log.warning(
                "model '%s': AOTI input checks are not active; the batch range cannot be probed",
                self.config.name,
            )
            if self.config.batching:
                self.batch_range = (1, self.config.max_batch_size)
            return
        if _parse_check(error) is None:
            raise self._fail("probe run failed", error)
        fills = [self._shape(i, batch0) for i in range(n)]
        if self.config.batching:
            low = self._probe_batch()
            for shape in fills:
                shape[0] = low
        self._probe_leaves(fills)
        self._dummy_run(fills)

    def _probe_batch(self) -> int:
        """Find the exported batch range from input 0; set ``batch_range``; return its minimum."""
        cfg = self.config
        name = self.bindings.inputs[0]

        def probe(batch: int) -> _Check:
            tensors = [
                torch.zeros(self._shape(i, batch), dtype=self._dtype(i), device="meta")
                for i in range(len(self._input_specs))
            ]
            error = self._probe_run(tensors) or "the probe ran"
            check = _parse_check(error)
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
        self.batch_range = (low, high)
        return low

    def _probe_leaves(self, fills: list[list[int]]) -> None:
        """Check every input's dtype and fixed dims; adapt the probe size of variable dims."""
        offset = 1 if self.config.batching else 0
        for leaf, spec in enumerate(self._input_specs):
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
                check = _parse_check(error)
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
                fills[leaf][check.dim] = check.value
            else:
                raise self._fail(f"probe of input '{spec.name}' did not converge", error)

    def _dtype_error(self, leaf: int, check: _Check) -> ModelLoadError:
        spec = self._input_specs[leaf]
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
            outputs = self._loader.run(tensors)
        except Exception as e:  # noqa: BLE001 - a model may legitimately reject all-zero data
            log.warning("model '%s': test run on zeros failed: %s", self.config.name, e)
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

    def _explain(self, error: Exception) -> str:
        text = str(error).strip()
        check = _CHECK_RE.search(text)
        if check and int(check.group(1)) < len(self.bindings.inputs):
            leaf = int(check.group(1))
            text += f" (input_handles[{leaf}] is input '{self.bindings.inputs[leaf]}')"
        return text
