"""Executor for AOT-Inductor packages (``model.pt2``, ``platform: "torch_aoti"``).

Loading:

1. The file is classified first, so that a TorchScript archive, a ``torch.save`` checkpoint, an
   exported program without compiled code or garbage gets an error saying what it is.
2. ``torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, device_index)`` loads the
   package directly, through :func:`...torch_compat.aoti_package_loader`
   (``torch._inductor.aoti_load_package`` wraps the same loader but first imports
   ``torch._inductor`` and probes the host compiler, seconds per instance), with
   ``AOTI_RUNTIME_CHECK_INPUTS`` set so the generated input checks stay on for this model (a
   wrong shape then fails cleanly instead of reading out of bounds).
3. The call spec is named (:mod:`..binding.callspec`) and bound to the config names.
4. The input checks the package states (its generated source, :mod:`.checks`) give its batch
   range, dtypes and fixed dims (:mod:`.probe`; probing the runtime where the source is absent);
   the output shapes of its run on zeros are declared (``capabilities.load_run``) for the
   instance's output-shape check.

Running: inputs are flattened in leaf order, made contiguous and checked against the package's
stated input checks (a refused input is the request's fault, with the same text on every torch;
torch 2.9's runtime would only say "API call failed"). Batches below the exported
minimum (AOTI compiles ``Dim(min=1)`` as a lower bound of 2) are padded by repeating the last
row, and the padding is dropped from the outputs (:mod:`..padding`, which counts it). A config
``-1`` dim whose exported minimum is above 1 is logged at load, and a request below it is
refused naming the minimum and why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ... import torch_compat
from ...config import ModelConfig
from ...errors import ExecutionError, RequestError
from ...logs import InstanceLog
from .. import artifacts
from ..base import Capabilities, LoadContext, LoadRunOutputs
from ..binding.callspec import (
    CallSpec,
    CallSpecError,
    describe_bindings,
    load_error,
    parse_call_spec,
    resolve_bindings,
)
from ..padding import BatchPadding
from .checks import InputCheck, package_source, parse_input_checks, violation
from .probe import CHECK_RE, PackageProbe, parse_check

_CHECK_ENV = "AOTI_RUNTIME_CHECK_INPUTS"
_MODEL_NAME = "model"  # the model name inside the archive, as in upstream
_LOAD_LOCK = threading.Lock()  # the environment variable is process-wide


def _why_minimum(minimum: int) -> str:
    if minimum == 2:
        return (
            "torch.export specialises sizes 0 and 1, so a dynamic Dim(min=1) is compiled with a "
            "minimum of 2"
        )
    return f"exported with Dim(min={minimum})"


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


def check_package_file(config: ModelConfig, path: Path) -> None:
    """Refuse a missing file or one that is not an AOT-Inductor package, saying what it is."""
    expected = "an AOTInductor package (.pt2 from torch._inductor.aoti_compile_and_package)"
    if not path.exists():
        raise config.error(f"model file '{path}' does not exist (expected {expected})")
    if not path.is_file():
        raise config.error(f"model file '{path}' is not a regular file")
    if artifacts.identify(path) != artifacts.AOTI:
        what = artifacts.describe(path)
        raise config.error(f"model file '{path}' is {what}; expected {expected}")


@contextlib.contextmanager
def checked_inputs() -> Iterator[None]:
    """Load (and first-run) a package with its generated input checks turned on."""
    with _LOAD_LOCK, _env(_CHECK_ENV, "1"):
        yield


def load_package(config: ModelConfig, path: Path, device: torch.device) -> tuple[Any, torch.device]:
    """Load the package's runner for ``device``: (loader, the device its inputs must be on)."""
    key = _package_device_key(path) or device.type
    if key == "cuda" and not torch.cuda.is_available():
        raise config.error(f"package '{path}' was compiled for CUDA, but CUDA is not available")
    if key == "cpu":
        index = -1
        input_device = torch.device("cpu")
    else:
        # As upstream: a GPU instance passes its index; otherwise -1 (the current device).
        index = device.index if device.type == key and device.index is not None else -1
        if index < 0 and key == "cuda":
            index = torch.cuda.current_device()
        input_device = torch.device(key, index)
    try:
        loader = _package_loader(str(path), index)
    except Exception as e:  # noqa: BLE001 - the loader raises RuntimeError and others
        raise config.error(f"failed to load AOT-Inductor package '{path}': {e}") from e
    return loader, input_device


def _package_loader(path: str, device_index: int) -> Any:
    """The package's runner (version differences in :mod:`...torch_compat`)."""
    return torch_compat.aoti_package_loader(path, _MODEL_NAME, device_index)


def stated_checks(path: Path) -> list[InputCheck] | None:
    """The input checks the package's generated source states; None when it was not packaged or
    reads in a way this backend does not know (then the runtime is probed instead)."""
    source = package_source(path)
    checks = parse_input_checks(source) if source is not None else []
    if not checks or any(check.dtype == "unknown" for check in checks):
        return None
    return checks


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


class AotiExecutor:
    """Runs an AOT-Inductor package; see the module docstring."""

    def __init__(
        self,
        config: ModelConfig,
        path: Path,
        device: torch.device,
        log: InstanceLog | None = None,
    ) -> None:
        self.config = config
        self.path = Path(path)
        self.log = log or InstanceLog(config.name)
        self._check_file()
        with checked_inputs():
            self._loader = self._load(device)
            try:
                self.call_spec: CallSpec = parse_call_spec(*self._loader.get_call_spec())
            except CallSpecError as e:
                raise load_error(config, e) from e
            self.bindings = resolve_bindings(self.call_spec, config)
            #: The package's stated input checks, in leaf order (None: not in the package).
            self.input_checks = stated_checks(self.path)
            probe = PackageProbe(
                config,
                self.path,
                self._loader,
                self.bindings,
                self.call_spec,
                self.input_device,
                self.log,
                self.input_checks,
            )
            self.batch_range, fills = probe.run()
        offset = 1 if config.batching else 0
        self._minimums = [
            (leaf, dim, minimum) for (leaf, dim), minimum in sorted(probe.minimums.items())
        ]
        for leaf, dim, minimum in self._minimums:
            self.log.warn(
                f"input '{self.bindings.inputs[leaf]}' dim {dim - offset} is -1 in the config, "
                f"but the package accepts sizes >= {minimum} there: requests with a smaller size "
                f"will be refused ({_why_minimum(minimum)})"
            )
        self.capabilities = Capabilities(
            devices=(self.input_device,),
            warmup_shapes={
                name: tuple(fill[offset:]) for name, fill in zip(self.bindings.inputs, fills)
            },
            batch_range=self.batch_range,
            load_run=self._load_run(probe),
        )
        self._padding = BatchPadding(self.capabilities)

    # -- public ------------------------------------------------------------------------------

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        flat = [value.contiguous() for value in self.bindings.leaves(inputs)]
        flat, keep = self._padding.to_minimum(flat)
        self._check_inputs(flat)
        try:
            outputs = self._loader.run(flat)
        except Exception as e:  # noqa: BLE001 - the runner raises RuntimeError and others
            text = self._explain(e)
            # The package's own input checks (shape outside the exported range...) are the
            # request's fault; the engine bisects a batch to find which request it was.
            error = RequestError if CHECK_RE.search(str(e)) else ExecutionError
            hint = self._below_minimum(str(e))
            raise error(f"{hint}AOT-Inductor execution failed: {text}") from e
        result: dict[str, Any] = {}
        for name, index in self.bindings.outputs.items():
            value = outputs[index]
            if not isinstance(value, torch.Tensor):
                raise ExecutionError(f"output '{name}' is {type(value).__name__}, not a tensor")
            result[name] = BatchPadding.trim(value, keep)
        return result

    def describe_bindings(self) -> list[str]:
        return describe_bindings(self.call_spec, self.bindings)

    # -- loading -----------------------------------------------------------------------------

    def _check_file(self) -> None:
        check_package_file(self.config, self.path)

    def _load(self, device: torch.device) -> Any:
        loader, self.input_device = load_package(self.config, self.path, device)
        return loader

    def _check_inputs(self, flat: list[torch.Tensor]) -> None:
        """Refuse, as the request's fault, inputs the package's stated checks reject."""
        if self.input_checks is None:
            return
        for leaf, (check, tensor) in enumerate(zip(self.input_checks, flat)):
            broken = violation(leaf, check, tensor)
            if broken is not None:
                text = self._explain(RuntimeError(broken.text))
                hint = self._below_minimum(broken.text)
                raise RequestError(f"{hint}AOT-Inductor execution failed: {text}")

    def _load_run(self, probe: PackageProbe) -> LoadRunOutputs | None:
        """The probe's run on zeros: output shapes, fixed when no input dim is variable."""
        if not probe.output_shapes:
            return None
        fixed = all(d >= 0 for spec in probe.input_specs for d in spec.shape)
        slots = {
            name: self.call_spec.outputs[index].describe()
            for name, index in self.bindings.outputs.items()
        }
        return LoadRunOutputs(dict(probe.output_shapes), fixed, slots)

    def _below_minimum(self, message: str) -> str:
        """For a size under the minimum of a config ``-1`` dim: which, why, and what to send."""
        check = parse_check(message)
        minimum = (check.leaf, check.dim, check.value) if check and check.kind == "small" else None
        if minimum is None or minimum not in self._minimums:
            return ""
        offset = 1 if self.config.batching else 0
        size = re.search(r"but got: (\d+)", check.text)  # type: ignore[union-attr]
        return (
            f"input '{self.bindings.inputs[minimum[0]]}' has size "
            f"{size.group(1) if size else 'less'} in dim {minimum[1] - offset}, below the "
            f"package's exported minimum of {minimum[2]} ({_why_minimum(minimum[2])}); send at "
            f"least {minimum[2]}, padded the way the model expects (with its mask), or serve a "
            "package exported for it. "
        )

    def _explain(self, error: Exception) -> str:
        text = str(error).strip()
        check = CHECK_RE.search(text)
        if check and int(check.group(1)) < len(self.bindings.inputs):
            leaf = int(check.group(1))
            text += f" (input_handles[{leaf}] is input '{self.bindings.inputs[leaf]}')"
        return text


def load(context: LoadContext) -> AotiExecutor:
    """The registry's factory. KIND_MODEL runs the package where it was compiled for."""
    device = context.device
    if device is None:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return AotiExecutor(context.config, context.path, device, context.log)
