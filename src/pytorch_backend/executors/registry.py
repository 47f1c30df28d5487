"""Which executor serves a model: its kind, its artifact, and the factory that loads it.

The kind is resolved once, here. Adding a kind means one module with a ``load(LoadContext)``
factory and one :data:`REGISTRY` entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig, ModelKind
from .base import Executor, LoadContext

AOTI_PLATFORM = "torch_aoti"


@dataclass(frozen=True)
class KindEntry:
    """How one model kind is found and loaded."""

    kind: ModelKind
    default_filename: str
    platform: str  # the config platform that selects it, for hints
    factory: str  # "module:function" under this package, imported on first use

    def load(self, context: LoadContext) -> Executor:
        module_name, function = self.factory.split(":")
        module = importlib.import_module(module_name, package=__package__)
        return getattr(module, function)(context)


REGISTRY: Mapping[ModelKind, KindEntry] = {
    ModelKind.TORCHSCRIPT: KindEntry(
        ModelKind.TORCHSCRIPT, "model.pt", "pytorch_libtorch", ".torchscript.executor:load"
    ),
    ModelKind.AOTI: KindEntry(ModelKind.AOTI, "model.pt2", AOTI_PLATFORM, ".aoti.executor:load"),
}


def resolve_kind(config: ModelConfig) -> ModelKind:
    """Exactly as upstream: only the exact platform ``torch_aoti`` selects AOT Inductor."""
    return ModelKind.AOTI if config.platform == AOTI_PLATFORM else ModelKind.TORCHSCRIPT


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
    if Path(name).is_absolute():
        raise config.error(
            f"model file name '{name}' is absolute; it must be a file name inside "
            f"the version directory '{version_dir}'"
        )
    root = version_dir.resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise config.error(f"model file name '{name}' leaves the version directory '{version_dir}'")
    if not path.is_file():
        defaults = {entry.default_filename: entry for entry in REGISTRY.values()}
        others = [
            entry
            for entry in REGISTRY.values()
            if entry.kind != kind and (root / entry.default_filename).is_file()
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


def _other_files(root: Path) -> list[str]:
    """Files in a version directory that could be the model (not hidden, not Python scripts)."""
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix != ".py"
    )
