"""An nn.Module from a Python file: import it, pick its class, instantiate it, load its weights.

The module file is code and runs as code (importing it executes it). The weights file beside it,
``<basename>.pt``, is read with ``torch.load(weights_only=True)``: a state dict of tensors, never
arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from types import ModuleType

import torch

from ...config import ModelConfig
from .. import artifacts

_PREFIX = "pytorch_backend_module_"


def _short_traceback(exc: BaseException) -> str:
    """The exception with the innermost frame that is in user code, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def import_module_file(config: ModelConfig, path: Path) -> ModuleType:
    """Import ``path`` under a unique module name (model name + a hash of the path)."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() else "_" for c in config.name)
    name = f"{_PREFIX}{safe}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise config.error(f"cannot import the module file '{path}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and torch.compile look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code may raise anything
        sys.modules.pop(name, None)
        raise config.error(
            f"importing the module file '{path}' failed: {_short_traceback(exc)}"
        ) from None
    return module


def module_classes(module: ModuleType) -> list[type[torch.nn.Module]]:
    """The ``nn.Module`` subclasses *defined* in ``module`` (not imported), in file order."""
    found = [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, torch.nn.Module)
        and value.__module__ == module.__name__
    ]

    def line(cls: type) -> int:
        try:
            return inspect.getsourcelines(cls)[1]
        except (OSError, TypeError):
            return 0

    return sorted(found, key=line)


def select_class(
    config: ModelConfig, module: ModuleType, path: Path, wanted: str | None
) -> type[torch.nn.Module]:
    """The one nn.Module subclass of the file, or the one ``MODULE_CLASS`` names."""
    classes = module_classes(module)
    names = [cls.__name__ for cls in classes]
    if wanted is not None:
        for cls in classes:
            if cls.__name__ == wanted:
                return cls
        listed = ", ".join(names) if names else "none"
        raise config.error(
            f"parameter 'MODULE_CLASS' = '{wanted}': the module file '{path.name}' defines no "
            f"nn.Module subclass of that name; it defines: {listed}"
        )
    if not classes:
        raise config.error(
            f"the module file '{path}' defines no torch.nn.Module subclass (classes it imports "
            "do not count)"
        )
    if len(classes) > 1:
        raise config.error(
            f"the module file '{path.name}' defines {len(classes)} nn.Module subclasses: "
            f"{', '.join(names)}; set parameter 'MODULE_CLASS' to the one to serve"
        )
    return classes[0]


def instantiate(config: ModelConfig, cls: type[torch.nn.Module]) -> torch.nn.Module:
    """``cls()``, with no arguments (as upstream)."""
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001 - user code may raise anything
        raise config.error(
            f"instantiating {cls.__name__}() with no arguments failed: {_short_traceback(exc)}"
        ) from None


def weights_path(module_path: Path) -> Path:
    """``<basename>.pt`` beside the module file (``model.py`` -> ``model.pt``)."""
    return module_path.with_suffix(".pt")


def load_weights(
    config: ModelConfig,
    module: torch.nn.Module,
    path: Path,
    map_location: torch.device,
) -> None:
    """Load a state dict saved with ``torch.save(module.state_dict(), path)`` (strict)."""
    try:
        state = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds of errors
        what = artifacts.describe(path)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise config.error(
            f"cannot read the weights file '{path}' as a state dict with weights_only=True: it "
            f"is {what} ({first}); save it with torch.save(module.state_dict(), path)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise config.error(
            f"the weights file '{path}' holds a {type(state).__name__}, not a state dict; save it "
            "with torch.save(module.state_dict(), path)"
        )
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise config.error(f"the weights file '{path}' does not fit the module: {exc}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys: {', '.join(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys: {', '.join(result.unexpected_keys)}")
    if problems:
        raise config.error(
            f"the weights file '{path}' does not match {type(module).__name__}'s state dict "
            f"(strict loading): {'; '.join(problems)}"
        )
