"""From an ``nn.Module`` in hand to a model directory Triton serves: :func:`package`.

Never imported to serve a model. Writes ``<repository>/<name>/config.pbtxt`` (through Triton's
protobuf model config) and ``<repository>/<name>/<version>/<artifact>``, after checking that the
artifact's outputs equal the module's eager outputs on the examples; nothing is written when a
stage fails. Each stage is reported with the elapsed time (AOT-Inductor compiles take minutes on
big models).
"""

from __future__ import annotations

import inspect
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config.dtypes import TORCH_TO_TRITON
from ..executors.description import ModelIO, TensorIO, sidecar_path, sidecar_text
from .package_common import PackageError, check_close
from .package_pt2 import build_pt2
from .pbtxt import config_text

FORMATS = ("pt2", "torchscript", "eager")
_ARTIFACTS = {"pt2": "model.pt2", "torchscript": "model.pt", "eager": "model.pt"}


class Progress:
    """Prints each stage with the time elapsed since packaging started."""

    def __init__(self, report: Callable[[str], None] | None) -> None:
        self.report = report
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.report is not None:
            self.report(f"[{time.monotonic() - self.start:7.1f}s] {message}")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def package(
    module: torch.nn.Module,
    example_inputs: Sequence[Any],
    repository: str | Path,
    name: str,
    *,
    format: str = "pt2",
    max_batch_size: int = 0,
    example_kwargs: Mapping[str, Any] | None = None,
    version: int = 1,
    dynamic_shapes: Any = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    overwrite: bool = False,
    compile_cache: bool = False,
    progress: Callable[[str], None] | None = _stderr,
) -> Path:
    """Package ``module`` for this backend; return the model directory.

    ``example_inputs`` are the forward's positional arguments (tensors, or for ``"pt2"`` nested
    tuples/lists/dicts of tensors; ``List[str]`` for TorchScript/eager strings), with the batch as
    dim 0 when ``max_batch_size > 0``. ``format``: ``"pt2"`` (torch.export with a dynamic batch
    dimension ``Dim("batch", min=1, max=max_batch_size)``, or ``dynamic_shapes`` when given, then
    AOT-Inductor), ``"torchscript"`` (script, else trace) or ``"eager"`` (the module's source file
    as ``model.py`` and its ``state_dict`` as ``model.pt``). Dims are the examples' shapes
    (``"pt2"``: the export's, ``-1`` where dynamic). ``compile_cache`` (``"eager"`` only): load
    the written model once on CPU as the server would (torch.compile, warm-up) and ship the
    compiled artifacts in ``<version>/compile_cache/`` (as long as a cold load takes).
    """
    if format not in FORMATS:
        raise PackageError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    if compile_cache and format != "eager":
        raise PackageError(f"compile_cache applies to format 'eager', not {format!r}")
    if max_batch_size < 0:
        raise PackageError(f"max_batch_size must be >= 0, got {max_batch_size}")
    model_dir = Path(repository) / name
    artifact = _ARTIFACTS[format]
    targets = [model_dir / "config.pbtxt", model_dir / str(version) / artifact]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise PackageError(f"{', '.join(existing)} already exist(s); pass overwrite=True")
    step = Progress(progress)
    module = module.eval()
    args, kwargs = tuple(example_inputs), dict(example_kwargs or {})
    step(f"running {type(module).__name__} eagerly on the examples")
    with torch.no_grad():
        expected = module(*args, **kwargs)
    with tempfile.TemporaryDirectory(prefix="pytorch_backend_package_") as tmp:
        staging = Path(tmp) / name
        version_dir = staging / str(version)
        version_dir.mkdir(parents=True)
        if format == "pt2":
            io = build_pt2(
                module, args, kwargs, expected, version_dir / artifact, max_batch_size,
                dynamic_shapes, (rtol, atol), step,
            )  # fmt: skip
            platform = "torch_aoti"
        else:
            if kwargs:
                raise PackageError(f"format {format!r} takes positional example inputs only")
            build = _build_torchscript if format == "torchscript" else _build_eager
            io = build(
                module, args, expected, version_dir / artifact, max_batch_size, (rtol, atol), step
            )
            sidecar_path(version_dir / artifact).write_text(sidecar_text(io), encoding="utf-8")
            platform = ""
        step("writing config.pbtxt")
        comment = f"Written by pytorch_backend.package ({format}, {type(module).__name__})."
        text = config_text(name, io, platform=platform, comments=[comment])
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        if compile_cache:
            from .precompile import CompileCacheError, compile_into

            try:
                compile_into(staging, version, step)
            except CompileCacheError as error:
                raise PackageError(str(error)) from None
        _install(staging, model_dir, overwrite)
    step(f"wrote {model_dir}")
    return model_dir


def _install(staging: Path, model_dir: Path, overwrite: bool) -> None:
    """Move the staged files into ``model_dir`` (other versions there are kept)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(staging.rglob("*")):
        if source.is_dir():
            continue
        target = model_dir / source.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and not overwrite:  # pragma: no cover - checked before
            raise PackageError(f"{target} already exists")
        shutil.move(str(source), str(target))


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(s, str) for s in value)


def tensor_io(names: tuple[str, ...], value: Any, batching: bool, where: str) -> TensorIO:
    """The description of one example value (a tensor or a ``List[str]``)."""
    if _is_strings(value):
        if batching:
            return TensorIO(names, "STRING", (1,), reshape=(), where=where)
        return TensorIO(names, "STRING", (-1,), where=where)
    if not isinstance(value, torch.Tensor):
        raise PackageError(f"{where} is a {type(value).__name__}; only tensors and List[str] serve")
    dtype = TORCH_TO_TRITON.get(value.dtype)
    if dtype is None:
        raise PackageError(f"{where} has dtype {value.dtype}, which Triton cannot carry")
    if batching and value.dim() == 0:
        raise PackageError(f"{where} is a scalar; with max_batch_size > 0 it needs a batch dim")
    return TensorIO(names, dtype, tuple(value.shape[1:] if batching else value.shape), where=where)


def _flat_outputs(expected: Any) -> list[Any]:
    values = list(expected) if isinstance(expected, tuple) else [expected]
    for i, value in enumerate(values):
        if not (isinstance(value, torch.Tensor) or _is_strings(value)):
            raise PackageError(
                f"returned value {i} is a {type(value).__name__}; TorchScript and eager models "
                "must return a tensor, a List[str] or a tuple of those"
            )
    return values


def _describe_eager(
    arg_names: Sequence[str], args: Sequence[Any], expected: Any, max_batch_size: int
) -> ModelIO:
    batching = max_batch_size > 0
    inputs = tuple(
        tensor_io((n, f"INPUT__{i}"), v, batching, f"forward argument '{n}'")
        for i, (n, v) in enumerate(zip(arg_names, args))
    )
    outputs = tuple(
        tensor_io((f"OUTPUT__{i}",), v, batching, f"returned value {i}")
        for i, v in enumerate(_flat_outputs(expected))
    )
    return ModelIO(inputs, outputs, max_batch_size=max_batch_size, source="the examples")


def _build_torchscript(module, args, expected, path: Path, max_batch_size, tolerances, step):
    step("scripting with torch.jit.script")
    try:
        scripted = torch.jit.script(module)
    except Exception as error:  # noqa: BLE001 - scripting fails in many ways
        step(f"scripting failed ({type(error).__name__}); tracing with torch.jit.trace")
        if any(not isinstance(a, torch.Tensor) for a in args):
            raise PackageError(f"cannot script the module ({error}) nor trace it: tracing takes "
                               "tensor inputs only") from None  # fmt: skip
        with torch.no_grad():
            scripted = torch.jit.trace(module, args)
    scripted.save(str(path))
    step("checking the TorchScript file against the eager outputs")
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        check_close(expected, loaded(*args), tolerances, "the TorchScript file")
    from ..executors.torchscript.executor import signature_of

    names = signature_of(loaded).arg_names
    return _describe_eager(names, args, expected, max_batch_size)


def _build_eager(module, args, expected, path: Path, max_batch_size, tolerances, step):
    cls = type(module)
    source = inspect.getsourcefile(cls)
    if source is None or cls.__module__ == "__main__" and not Path(source).is_file():
        raise PackageError(f"the source file of {cls.__name__} cannot be found")
    module_file = path.with_suffix(".py")
    step(f"copying {source} to {module_file.name}, saving the state_dict to {path.name}")
    shutil.copyfile(source, module_file)
    torch.save(module.state_dict(), str(path))
    step("checking the module file and weights against the eager outputs")
    rebuilt = _import_class(module_file, cls.__name__)()
    rebuilt.load_state_dict(torch.load(str(path), weights_only=True), strict=True)
    with torch.no_grad():
        check_close(expected, rebuilt.eval()(*args), tolerances, "the module file with its weights")
    names = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return _describe_eager(names[: len(args)], args, expected, max_batch_size)


def _import_class(path: Path, class_name: str) -> type:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_pytorch_backend_package_{id(path)}", path)
    if spec is None or spec.loader is None:  # pragma: no cover
        raise PackageError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's module file runs here
        raise PackageError(
            f"importing {path.name} failed: {type(error).__name__}: {error}"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PackageError(f"{path.name} does not define {class_name}")
    return cls
