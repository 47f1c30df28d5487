"""``REFUSE_WRITABLE_MODEL_DIRECTORY``: refuse model files that any local user could replace.

TorchScript archives, AOT-Inductor packages and module files run code in the stub. With the
parameter on, the load fails when the model directory, the version directory, the artifact or
anything under the version directory (the artifact, the weights, custom-op libraries kept
there) is world-writable (``o+w``), naming the path and its mode. It runs before anything of the
model is loaded.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import ModelLoadError


def world_writable(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """The paths whose mode has ``o+w`` (a symlink: its target, what is actually read)."""
    found = []
    for path in paths:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & stat.S_IWOTH:
            found.append((path, stat.S_IMODE(mode)))
    return found


def check_model_files(model: str, model_dir: Path, version_dir: Path) -> None:
    """Raise ModelLoadError if a directory or file the model is read from is world-writable."""
    entries = sorted(version_dir.rglob("*")) if version_dir.is_dir() else []
    bad = world_writable([model_dir, version_dir, *entries])
    if bad:
        listed = ", ".join(f"'{path}' (mode {mode:o})" for path, mode in bad)
        raise ModelLoadError(
            f"REFUSE_WRITABLE_MODEL_DIRECTORY is true and {listed} "
            f"{'is' if len(bad) == 1 else 'are'} world-writable; expected model files and "
            "directories that only their owner (or group) can write: chmod o-w them",
            model=model,
        )
