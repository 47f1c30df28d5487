"""``pytorch-backend convert``: a TorchScript model directory to an AOT-Inductor one.

TorchScript is deprecated; :func:`convert` reads a model directory served from ``model.pt``
(its ``config.pbtxt`` and TorchScript file), converts ``forward`` with
``torch._export.converter.TS2EPConverter``, re-exports it with the batch dimension dynamic when
the config batches, compiles it with AOT-Inductor and checks the package against the TorchScript
model (on the samples and on random batches, with per-dtype tolerances) before writing a new model
directory: the same config with ``platform: "torch_aoti"`` and the same tensor names, and
``<version>/model.pt2``. Nothing is written when any step fails.

The package's forward takes one dict of tensors keyed by the config's input names and returns a
dict keyed by its output names, so the AOT-Inductor executor binds the old names unchanged.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig, ModelKind, parse_model_config, parse_parameters
from ..config.dtypes import TRITON_TO_TORCH
from ..errors import PyTorchBackendError
from ..executors.binding.forward import Binding, bind_inputs, bind_outputs, positional_args
from ..executors.registry import AOTI_PLATFORM, artifact_path
from ..executors.torchscript.executor import load_torchscript, signature_of
from .errors import ToolError
from .package import Progress, _stderr
from .package_pt2 import utf8_ctype

#: (rtol, atol) per output dtype; integers and booleans must be equal.
TOLERANCES: Mapping[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}
RANDOM_BATCHES = 3  # random batches checked besides the samples
_VARIABLE_DIM = 3  # the size a -1 dimension gets in generated samples
_FAILED_NODE = re.compile(r"failed for node (\S+)")


class ConvertError(ToolError):
    """The model cannot be converted; nothing was written."""


class _Named(torch.nn.Module):
    """``forward(inputs: dict) -> dict``: the converted forward keyed by the config's names."""

    def __init__(self, inner: torch.nn.Module, inputs: Binding, outputs: Binding, count: int):
        super().__init__()
        self.inner = inner
        self.inputs, self.outputs, self.count = inputs, outputs, count

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        result = self.inner(*positional_args(self.inputs, self.count, inputs))
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        return {name: values[i] for name, i in self.outputs.positions.items()}


def convert(
    model_dir: str | Path,
    output_dir: str | Path,
    *,
    version: str | None = None,
    sample_inputs: str | Path | Mapping[str, Any] | None = None,
    overwrite: bool = False,
    report: Callable[[str], None] | None = _stderr,
) -> Path:
    """Convert the TorchScript model in ``model_dir`` into an AOT-Inductor model ``output_dir``.

    ``version``: the version directory to convert (default: the highest number).
    ``sample_inputs``: input name -> array (batch dimension included when the config batches),
    or an ``.npz`` file of such arrays; default: random data shaped and typed from the config.
    Returns ``output_dir``. Raises :class:`ConvertError`, with nothing written, when the model
    cannot be converted or the package's outputs differ from the TorchScript model's.
    """
    try:
        return _convert_dir(
            Path(model_dir), Path(output_dir), version, sample_inputs, overwrite, Progress(report)
        )
    except PyTorchBackendError as error:  # the config or the model does not load
        raise ConvertError(str(error)) from None


def _convert_dir(
    model_dir: Path,
    output_dir: Path,
    version: str | None,
    sample_inputs: str | Path | Mapping[str, Any] | None,
    overwrite: bool,
    step: Callable[[str], None],
) -> Path:
    from .check import read_config

    raw = read_config(model_dir / "config.pbtxt")
    config = parse_model_config(raw)
    params = parse_parameters(config.name, config.parameters, lambda _: None)
    _refuse(config, params.method)
    version = version or _latest_version(model_dir)
    target = output_dir / version / "model.pt2"
    if target.exists() and not overwrite:
        raise ConvertError(f"{target} already exists; pass overwrite=True (--overwrite)")
    source = artifact_path(
        config, ModelKind.TORCHSCRIPT, model_dir / version, params.model_filename
    )
    step(f"loading {source}")
    scripted = load_torchscript(config, source, torch.device("cpu"))
    signature = signature_of(scripted)
    inputs, outputs = bind_inputs(config, signature), bind_outputs(config, signature)
    if inputs.dict_input:
        raise ConvertError(
            f"{config.name}: forward takes a single {signature.arg_types[0]}; TS2EPConverter "
            "converts tensor arguments only"
        )
    count = len(signature.arg_names)
    samples = _samples(config, sample_inputs)
    program = _convert(scripted, positional_args(inputs, count, samples), step)
    named = _Named(program.module(), inputs, outputs, count)
    step("exporting with named inputs" + (" and a dynamic batch" if config.batching else ""))
    exported = _export(named, config, samples)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=_parent(output_dir)) as staging:
        package = Path(staging) / version / "model.pt2"
        package.parent.mkdir(parents=True)
        step("compiling with AOT-Inductor (minutes on big models)")
        from torch._inductor import aoti_compile_and_package, aoti_load_package

        with utf8_ctype():
            aoti_compile_and_package(exported, package_path=str(package))
        compiled = aoti_load_package(str(package))
        errors = _compare(config, scripted, inputs, outputs, count, compiled, samples, step)
        comments = [
            f"converted from TorchScript '{source}' by pytorch-backend convert;",
            "max abs difference to TorchScript per output: "
            + ", ".join(f"{n} {e:.3g}" for n, e in errors.items()),
        ]
        _write_version(model_dir / version, Path(staging) / version, source)
        (Path(staging) / "config.pbtxt").write_text(_config_text(raw, output_dir.name, comments))
        _install(Path(staging), output_dir, overwrite)
    step(f"wrote {output_dir}")
    return output_dir


def _refuse(config: ModelConfig, method: str) -> None:
    strings = [t.name for t in (*config.inputs, *config.outputs) if t.is_string]
    if strings:
        raise ConvertError(
            f"{config.name}: {', '.join(strings)} TYPE_STRING: a .pt2 takes and returns tensors "
            "only (strings stay in TorchScript or an nn.Module served by this backend)"
        )
    if config.sequence is not None:
        raise ConvertError(f"{config.name}: sequence_batching models are not converted")
    if method != "forward":
        raise ConvertError(
            f"{config.name}: parameter 'METHOD' = '{method}': only forward can be converted"
        )
    if config.platform == AOTI_PLATFORM:
        raise ConvertError(f"{config.name}: the model is already an AOT-Inductor package")


def _latest_version(model_dir: Path) -> str:
    versions = [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise ConvertError(f"{model_dir} has no numbered version directory")
    return max(versions, key=int)


def _parent(output_dir: Path) -> Path:
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    return output_dir.parent


def random_inputs(
    config: ModelConfig, batch: int | None, generator: torch.Generator, variable: int
) -> dict[str, torch.Tensor]:
    """Random inputs from the config (floats normal, integers in [0, 4), booleans either)."""
    out = {}
    for spec in config.inputs:
        dims = [d if d >= 0 else variable for d in spec.shape]
        shape = [batch, *dims] if batch is not None else dims
        dtype = TRITON_TO_TORCH[spec.dtype]
        if dtype.is_floating_point:
            out[spec.name] = torch.randn(shape, generator=generator).to(dtype)
        elif dtype == torch.bool:
            out[spec.name] = torch.randint(0, 2, shape, generator=generator).bool()
        else:
            out[spec.name] = torch.randint(0, 4, shape, generator=generator).to(dtype)
    return out


def _samples(config: ModelConfig, given: str | Path | Mapping[str, Any] | None) -> dict:
    if given is None:
        batch = min(2, config.max_batch_size) if config.batching else None
        return random_inputs(config, batch, torch.Generator().manual_seed(0), _VARIABLE_DIM)
    if not isinstance(given, Mapping):
        with np.load(str(given)) as data:
            given = {k: data[k] for k in data.files}
    names = {t.name for t in config.inputs}
    if set(given) != names:
        raise ConvertError(
            f"{config.name}: the sample inputs are {sorted(given)}; the config's inputs are "
            f"{sorted(names)}"
        )
    return {
        k: torch.as_tensor(v).to(TRITON_TO_TORCH[config.input(k).dtype]) for k, v in given.items()
    }


def _convert(scripted: Any, args: list[Any], step: Callable[[str], None]) -> Any:
    """``TS2EPConverter(...).convert()``; a failure names the first unsupported construct."""
    from torch._export.converter import TS2EPConverter

    step("converting TorchScript to torch.export (TS2EPConverter)")
    try:
        with torch.no_grad():
            return TS2EPConverter(scripted, tuple(args)).convert()
    except Exception as error:  # noqa: BLE001 - the converter fails in many ways
        raise ConvertError(_conversion_failure(scripted, error)) from None


def _conversion_failure(scripted: Any, error: Exception) -> str:
    cause = error.__cause__ or error
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    found = _FAILED_NODE.search(str(error))
    if found is None:
        return f"TS2EPConverter cannot convert the model: {type(error).__name__}: {reason}"
    kind = found.group(1)
    where = ""
    for node in scripted.inlined_graph.nodes():
        if node.kind() == kind:
            where = node.sourceRange().strip()
            break
    text = f"the first unsupported construct is the TorchScript node {kind}: {reason}"
    return text + (f"\n{where}" if where else "")


def _export(named: _Named, config: ModelConfig, samples: Mapping[str, torch.Tensor]) -> Any:
    dynamic: dict[str, dict[int, Any]] = {}
    batch = torch.export.Dim("batch", min=1, max=config.max_batch_size)
    for spec in config.inputs:
        dims = {0: batch} if config.batching else {}
        offset = 1 if config.batching else 0
        dims.update(
            {i + offset: torch.export.Dim.DYNAMIC for i, d in enumerate(spec.shape) if d < 0}
        )
        dynamic[spec.name] = dims
    try:
        with torch.no_grad():
            return torch.export.export(named, (dict(samples),), dynamic_shapes=(dynamic,))
    except Exception as error:  # noqa: BLE001 - export fails in many ways
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConvertError(
            f"{config.name}: the converted program does not export with the config's dynamic "
            f"dimensions: {type(error).__name__}: {first}"
        ) from None


def _compare(config, scripted, inputs, outputs, count, compiled, samples, step) -> dict[str, float]:
    """Run both models on the samples and random batches; raise on a difference."""
    step("comparing with the TorchScript model (samples and random batches)")
    generator = torch.Generator().manual_seed(1)
    cases = [dict(samples)]
    sizes = [2, config.max_batch_size, min(3, config.max_batch_size)] if config.batching else []
    for i in range(RANDOM_BATCHES):
        batch = sizes[i % len(sizes)] if sizes else None
        cases.append(random_inputs(config, batch, generator, _VARIABLE_DIM + 1 + i))
    worst = {name: 0.0 for name in outputs.positions}
    for case in cases:
        with torch.no_grad():
            result = scripted.forward(*positional_args(inputs, count, case))
            values = list(result) if isinstance(result, (tuple, list)) else [result]
            got = compiled(dict(case))
        for name, position in outputs.positions.items():
            worst[name] = max(worst[name], _check(config.name, name, values[position], got[name]))
    return worst


def _check(model: str, name: str, want: torch.Tensor, got: torch.Tensor) -> float:
    if want.shape != got.shape or want.dtype != got.dtype:
        raise ConvertError(
            f"{model}: output '{name}' is {got.dtype} {list(got.shape)} from the package and "
            f"{want.dtype} {list(want.shape)} from TorchScript"
        )
    if not want.dtype.is_floating_point:
        if not torch.equal(want, got):
            raise ConvertError(f"{model}: output '{name}' differs from TorchScript (exact dtype)")
        return 0.0
    rtol, atol = TOLERANCES.get(want.dtype, (1e-4, 1e-5))
    if not torch.allclose(want, got, rtol=rtol, atol=atol, equal_nan=True):
        diff = (want.double() - got.double()).abs().max().item()
        raise ConvertError(
            f"{model}: output '{name}' differs from TorchScript by up to {diff:.3g} "
            f"(tolerance rtol={rtol}, atol={atol})"
        )
    return float((want.double() - got.double()).abs().max().item()) if want.numel() else 0.0


def _write_version(source_dir: Path, staged: Path, artifact: Path) -> None:
    """Copy the version directory's other files (a drop-in model.py, libraries) beside the .pt2."""
    for path in sorted(source_dir.iterdir()):  # not model.pt nor model.pt.io.json and the like
        if path.is_file() and not path.name.startswith(artifact.name):
            shutil.copy2(path, staged / path.name)


def _config_text(raw: Mapping[str, Any], name: str, comments: list[str]) -> str:
    """The original config with ``platform: "torch_aoti"`` and the artifact named ``model.pt2``."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = json_format.ParseDict(dict(raw), model_config_pb2.ModelConfig())
    message.name = name  # Triton serves a model under its directory's name
    message.platform = AOTI_PLATFORM
    if message.default_model_filename and not message.default_model_filename.endswith(".py"):
        message.default_model_filename = "model.pt2"
    if "MODEL_FILENAME" in message.parameters:
        message.parameters["MODEL_FILENAME"].string_value = "model.pt2"
    header = "".join(f"# {line}\n" for line in comments)
    return header + text_format.MessageToString(message)


def _install(staging: Path, output_dir: Path, overwrite: bool) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            target = output_dir / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() and not overwrite:
                raise ConvertError(f"{target} already exists")
            shutil.move(str(path), str(target))
