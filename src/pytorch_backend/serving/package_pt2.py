"""The ``"pt2"`` format of :func:`~pytorch_backend.serving.package.package`: torch.export, then
AOT-Inductor, checked against the eager outputs and described as auto-completion would."""

from __future__ import annotations

import contextlib
import inspect
import locale
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..config import ModelConfig
from ..executors.description import DescribeContext, ModelIO
from ..logs import InstanceLog
from .package_common import PackageError, check_close


@contextlib.contextmanager
def utf8_ctype() -> Iterator[None]:
    """torch._inductor reads and writes files with the locale encoding: make sure it is UTF-8."""
    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        yield
        return
    previous = locale.setlocale(locale.LC_CTYPE)
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_CTYPE, name)
            break
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)


def _batch_dynamic_shapes(module: torch.nn.Module, args, kwargs, max_batch_size: int) -> Any:
    """``dynamic_shapes`` giving dim 0 of every tensor leaf ``Dim("batch", max=max_batch_size)``."""
    batch = torch.export.Dim("batch", min=1, max=max_batch_size)
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    return {
        name: pytree.tree_map(
            lambda leaf: {0: batch} if isinstance(leaf, torch.Tensor) else None, v
        )
        for name, v in bound.arguments.items()
    }


def _widen_batch(tree: Any) -> Any:
    """Examples with a batch of 1 repeated to 2 rows: torch.export specialises a size-1 dim."""

    def widen(leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0 and leaf.shape[0] == 1:
            return leaf.expand(2, *leaf.shape[1:]).clone()
        return leaf

    return pytree.tree_map(widen, tree)


def build_pt2(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    expected: Any,
    path: Path,
    max_batch_size: int,
    dynamic_shapes: Any,
    tolerances: tuple[float, float],
    step: Callable[[str], None],
) -> ModelIO:
    """Export, compile and check ``module``; return its description (as auto-completion's)."""
    export_args, export_kwargs = args, dict(kwargs)
    if dynamic_shapes is None and max_batch_size > 0:
        export_args, export_kwargs = _widen_batch((args, export_kwargs))
        if export_args is not args or export_kwargs != kwargs:
            with torch.no_grad():
                expected = module(*export_args, **export_kwargs)
        dynamic_shapes = _batch_dynamic_shapes(module, export_args, export_kwargs, max_batch_size)
    step(
        "exporting with torch.export"
        + (f" (dynamic batch 1..{max_batch_size})" if max_batch_size > 0 else "")
    )
    try:
        with torch.no_grad():
            program = torch.export.export(
                module, tuple(export_args), dict(export_kwargs), dynamic_shapes=dynamic_shapes
            )
    except Exception as error:  # noqa: BLE001 - export fails in many ways
        raise PackageError(f"torch.export failed: {type(error).__name__}: {error}") from None
    step("compiling with AOT-Inductor (minutes on big models)")
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    with utf8_ctype():
        aoti_compile_and_package(program, package_path=str(path))
    step("checking the package against the eager outputs")
    compiled = aoti_load_package(str(path))
    with torch.no_grad():
        actual = compiled(*export_args, **export_kwargs)
    check_close(expected, actual, tolerances, "the AOT-Inductor package")
    step("describing the package as auto-completion does")
    from ..executors.aoti.describe import describe

    header = ModelConfig("package", "torch_aoti", "pytorch_python", "", 0, (), ())
    return describe(DescribeContext(header, path, InstanceLog("package")))
