"""Which executor serves a model: its kind, its artifact, and the factory that loads it.

The kind is resolved once, here (:func:`resolve_model`, which also says why). Adding a kind means
one module with a ``load(LoadContext)`` factory and one :data:`REGISTRY` entry; a
``describe(DescribeContext) -> ModelIO`` function next to it lets config auto-completion fill that
kind's inputs and outputs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import BackendParameters, ModelConfig, ModelKind
from ..config.parameters import METHOD_KINDS
from . import artifacts
from .base import Executor, LoadContext
from .description import DescribeContext, ModelIO

AOTI_PLATFORM = "torch_aoti"


@dataclass(frozen=True)
class KindEntry:
    """How one model kind is found and loaded."""

    kind: ModelKind
    default_filename: str
    platform: str  # the config platform that selects it, for hints
    factory: str  # "module:function" under this package, imported on first use
    #: "module:function" describing the file's I/O for config auto-completion (None: cannot).
    describer: str | None = None

    def load(self, context: LoadContext) -> Executor:
        return _function(self.factory)(context)

    def describe(self, context: DescribeContext) -> ModelIO | None:
        """What the artifact says about its inputs and outputs (None: this kind cannot say)."""
        return _function(self.describer)(context) if self.describer else None


def _function(path: str) -> Any:
    module_name, function = path.split(":")
    return getattr(importlib.import_module(module_name, package=__package__), function)


REGISTRY: Mapping[ModelKind, KindEntry] = {
    ModelKind.TORCHSCRIPT: KindEntry(
        ModelKind.TORCHSCRIPT,
        "model.pt",
        "pytorch_libtorch",
        ".torchscript.executor:load",
        ".torchscript.describe:describe",
    ),
    ModelKind.AOTI: KindEntry(
        ModelKind.AOTI, "model.pt2", AOTI_PLATFORM, ".aoti.executor:load", ".aoti.describe:describe"
    ),
    # Selected by the version directory's contents, not by a platform.
    ModelKind.EAGER: KindEntry(
        ModelKind.EAGER, "model.py", "", ".eager.executor:load", ".eager.describe:describe_module"
    ),
    ModelKind.EXPORTED_PROGRAM: KindEntry(
        ModelKind.EXPORTED_PROGRAM,
        "model.pt2",
        "",
        ".export.executor:load",
        ".export.describe:describe",
    ),
}


@dataclass(frozen=True)
class Resolved:
    """The kind a model is served as, its file, and why (logged at load)."""

    kind: ModelKind
    path: Path
    reason: str


def resolve_kind(config: ModelConfig) -> ModelKind:
    """Exactly as upstream: only the exact platform ``torch_aoti`` selects AOT Inductor."""
    return ModelKind.AOTI if config.platform == AOTI_PLATFORM else ModelKind.TORCHSCRIPT


def module_file_name(config: ModelConfig, params: BackendParameters) -> str | None:
    """The nn.Module file a model would be served from, or None where none can be named.

    ``MODULE_FILENAME`` wins; else, as upstream, ``default_model_filename`` when it names a
    ``.py`` file, else ``model.py`` -- but not in drop-in mode (``backend: "python"``), where that
    file is this plugin, nor when the config names the artifact (``MODEL_FILENAME``, a
    ``default_model_filename`` that is not ``.py``) or selects AOT Inductor by platform.
    """
    if params.module_filename:
        return params.module_filename
    default = config.default_model_filename
    if config.backend == "python" or params.model_filename or config.platform == AOTI_PLATFORM:
        return None
    if default and not default.endswith(".py"):
        return None
    return default or REGISTRY[ModelKind.EAGER].default_filename


def _is_plugin(path: Path) -> bool:
    """Whether ``path`` is this backend's own adapter (a copy of model.py), not a user module."""
    try:
        return "class TritonPythonModel" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def resolve_model(config: ModelConfig, version_dir: Path, params: BackendParameters) -> Resolved:
    """:func:`_resolve`, refusing a ``METHOD`` the resolved kind cannot serve."""
    resolved = _resolve(config, version_dir, params)
    if params.method != "forward" and resolved.kind not in METHOD_KINDS:
        raise config.error(
            f"parameter 'METHOD' = '{params.method}' cannot be served from the "
            f"{resolved.kind.value} '{resolved.path.name}': it holds one entry point (the "
            "forward it was exported from) and no other methods; serve the method from "
            "TorchScript or an nn.Module, or export that method as the forward of its own .pt2"
        )
    return resolved


def _resolve(config: ModelConfig, version_dir: Path, params: BackendParameters) -> Resolved:
    """The model kind and its file, from the config, the parameters and the version directory.

    1. An nn.Module (:func:`module_file_name`) when the version directory holds its file
       (``MODULE_FILENAME`` must exist);
    2. else the platform's kind (:func:`resolve_kind`) and its artifact (:func:`artifact_path`),
       except that a ``.pt2`` written by ``torch.export.save`` (no AOT-Inductor code) is served as
       a torch.export program whatever the platform says.
    """
    if (params.model_filename or "").endswith(".py"):
        raise config.error(
            f"parameter 'MODEL_FILENAME' = '{params.model_filename}' names a Python file; name an "
            "nn.Module's file with the parameter 'MODULE_FILENAME'"
        )
    module = module_file_name(config, params)
    if module is not None:
        path = _inside(config, version_dir, module)
        if params.module_filename:
            if not path.is_file():
                raise config.error(
                    f"parameter 'MODULE_FILENAME': unable to find the module file '{path}'"
                )
            return Resolved(ModelKind.EAGER, path, f"parameter MODULE_FILENAME names '{module}'")
        if path.is_file() and not _is_plugin(path):
            field = "default_model_filename" if config.default_model_filename else "the default"
            return Resolved(
                ModelKind.EAGER,
                path,
                f"the version directory holds the module file '{module}' ({field})",
            )
    kind = resolve_kind(config)
    path = artifact_path(config, kind, version_dir, params.model_filename)
    if artifacts.identify(path) == artifacts.EXPORTED_PROGRAM:
        return Resolved(
            ModelKind.EXPORTED_PROGRAM,
            path,
            f"'{path.name}' is a torch.export program (torch.export.save), not an AOTI package",
        )
    if kind is ModelKind.AOTI:
        return Resolved(kind, path, f"platform is '{AOTI_PLATFORM}'")
    platform = f"platform '{config.platform}'" if config.platform else "no platform"
    return Resolved(kind, path, f"{platform}, and no module file; the default is TorchScript")


def artifact_name(config: ModelConfig, kind: ModelKind, model_filename: str | None) -> str:
    """The artifact's file name, as the C++ backend picks it.

    ``MODEL_FILENAME`` (our parameter) wins; then ``default_model_filename``, unless it names a
    ``.py`` file: with ``backend: "python"`` Triton uses that field for the Python script (and
    fills in ``model.py``), so it cannot name the artifact; then the kind's default name.
    """
    if model_filename:
        return model_filename
    default = config.default_model_filename
    if default and not default.endswith(".py"):
        return default
    return REGISTRY[kind].default_filename


def artifact_path(
    config: ModelConfig, kind: ModelKind, version_dir: Path, model_filename: str | None
) -> Path:
    """The artifact inside the version directory; refuses names that leave it."""
    name = artifact_name(config, kind, model_filename)
    path = _inside(config, version_dir, name)
    root = version_dir.resolve()
    if not path.is_file():
        defaults = {entry.default_filename: entry for entry in REGISTRY.values()}
        others = [
            entry
            for entry in REGISTRY.values()
            if entry.kind != kind and entry.platform and (root / entry.default_filename).is_file()
        ]
        hint = ""
        if others and name in defaults:
            other = others[0]
            hint = (
                f" (found '{other.default_filename}': set platform: \"{other.platform}\" "
                "to serve it)"
            )
        elif found := _other_files(root):
            # e.g. model.pth with no default_model_filename: name the file that is there
            field = (
                "the MODEL_FILENAME parameter"
                if config.backend == "python"
                else "default_model_filename"
            )
            listed = ", ".join(f"'{f}'" for f in found[:5])
            hint = f" (the version directory holds {listed}: name the model file with {field})"
        raise config.error(f"unable to find '{path}'{hint}")
    return path


def _inside(config: ModelConfig, version_dir: Path, name: str) -> Path:
    """``name`` resolved inside the version directory; refuses names that leave it."""
    if Path(name).is_absolute():
        raise config.error(
            f"model file name '{name}' is absolute; it must be a file name inside "
            f"the version directory '{version_dir}'"
        )
    root = version_dir.resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise config.error(f"model file name '{name}' leaves the version directory '{version_dir}'")
    return path


def _other_files(root: Path) -> list[str]:
    """Files in a version directory that could be the model (not hidden, not Python scripts)."""
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix != ".py"
    )
