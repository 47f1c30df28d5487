"""Find a model's artifact and build the executor that runs it."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import AOTI_FILENAME, TORCHSCRIPT_FILENAME, ModelConfig
from .executors.base import Executor


def artifact_name(config: ModelConfig, model_filename: str | None) -> str:
    """The artifact's file name, as the C++ backend picks it.

    ``MODEL_FILENAME`` (our parameter) wins; then ``default_model_filename``, unless it names a
    ``.py`` file: with ``backend: "python"`` Triton uses that field for the Python script (and
    fills in ``model.py``), so it cannot name the artifact; then ``model.pt`` / ``model.pt2``.
    """
    if model_filename:
        return model_filename
    default = config.default_model_filename
    if default and not default.endswith(".py"):
        return default
    return AOTI_FILENAME if config.is_aoti else TORCHSCRIPT_FILENAME


def artifact_path(config: ModelConfig, version_dir: Path, model_filename: str | None) -> Path:
    """The artifact inside the version directory; refuses names that leave it."""
    name = artifact_name(config, model_filename)
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
        hint = ""
        other = AOTI_FILENAME if not config.is_aoti else TORCHSCRIPT_FILENAME
        if (root / other).is_file() and name in (AOTI_FILENAME, TORCHSCRIPT_FILENAME):
            platform = "torch_aoti" if other == AOTI_FILENAME else "pytorch_libtorch"
            hint = f" (found '{other}': set platform: \"{platform}\" to serve it)"
        raise config.error(f"unable to find '{path}'{hint}")
    return path


def build_executor(config: ModelConfig, path: Path, device: torch.device | None) -> Executor:
    """Load the artifact on ``device`` (``None``: KIND_MODEL, keep the model's own devices)."""
    if config.is_aoti:
        from .executors.aoti import AotiExecutor

        if device is None:  # KIND_MODEL: the package runs where it was compiled for
            device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return AotiExecutor(config, path, device)

    from .devices import kind_model_placement
    from .executors.torchscript import TorchScriptExecutor, load_torchscript

    module = load_torchscript(config, path, map_location=device)
    if device is None:
        placement = kind_model_placement(module)
        if placement is not None:
            module.to(placement)
        return TorchScriptExecutor(config, module, input_device=torch.device("cpu"))
    return TorchScriptExecutor(config, module, input_device=device)
