"""Compiled artifacts that survive the process: ``torch.compiler.save/load_cache_artifacts``.

Before an nn.Module is compiled, :func:`restore` loads the artifacts saved for the same key from
the version directory's ``compile_cache/`` (shipped by ``pytorch-backend package --format
eager --compile-cache``; read-only) or from the writable cache directory (parameter
``COMPILE_CACHE``); after the warm-up, :func:`save` writes what this process compiled there. The
artifacts do not carry inductor's compiled C++ kernels: a packaged entry ships them in
``compile_cache/inductor/``, copied into the writable inductor cache before the restore. The
key covers the torch version, the device type, the module file, the weights file, the class,
the method and ``TORCH_COMPILE_OPTIONAL_PARAMETERS``: anything else compiles afresh (the
mismatch is logged).
A corrupt, unreadable or unwritable cache is logged and never fails the load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ...logs import InstanceLog

FORMAT = 1
PACKAGED = "compile_cache"  # folder in the version directory (read-only source)
INDUCTOR = "inductor"  # inductor's cache (C++ kernels) beside the entries
ENV = "PYTORCH_BACKEND_COMPILE_CACHE"
OFF = "off"


def default_directory() -> Path:
    """``$PYTORCH_BACKEND_COMPILE_CACHE``, else ``<$XDG_CACHE_HOME or ~/.cache>/pytorch_backend/
    compile``."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytorch_backend" / "compile"


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def key_parts(
    module_file: Path, weights: Path, cls: str, method: str, options: str, device: str
) -> dict[str, str | None]:
    """What a saved entry must match to be reused."""
    return {
        "format": str(FORMAT),
        "torch": torch.__version__,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "device": device,
        "module": _digest(module_file),
        "weights": _digest(weights),
        "class": cls,
        "method": method,
        "options": options,
    }


def entry_name(parts: Mapping[str, str | None]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class CompileCache:
    """One instance's entry: where it is read from and written to."""

    def __init__(
        self,
        parts: Mapping[str, str | None],
        writable: Path | None,
        packaged: Path,
        log: InstanceLog,
    ) -> None:
        self.parts = dict(parts)
        self.name = entry_name(parts)
        self.writable = writable
        self.packaged = packaged
        self.log = log
        self.restored_from: Path | None = None

    def _candidates(self) -> list[Path]:
        folders = [self.packaged] + ([self.writable] if self.writable is not None else [])
        return [folder / f"{self.name}.bin" for folder in folders]

    def use_inductor_directory(self) -> None:
        """Point inductor's own cache (``TORCHINDUCTOR_CACHE_DIR``, with the compiled C++ kernels)
        into the writable folder, unless the environment names one (one stub = one instance)."""
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if self.writable is None or (current and current != default_cache_dir()):
            return
        folder = self.writable / INDUCTOR
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.log.warn(f"compile cache: inductor's cache stays in '{current}': {exc}")
            return
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)

    def restore(self) -> bool:
        """Load the first readable entry for this key into torch's caches; log what happened."""
        self.use_inductor_directory()
        for path in self._candidates():
            if not path.is_file():
                continue
            if path.parent == self.packaged:
                self._seed_inductor(self.packaged / INDUCTOR)
            try:
                info = torch.compiler.load_cache_artifacts(path.read_bytes())
            except Exception as exc:  # noqa: BLE001 - a corrupt entry must not fail the load
                self.log.warn(
                    f"compile cache: cannot restore '{path}' ({type(exc).__name__}: {exc}); "
                    "compiling afresh"
                )
                continue
            if info is None:
                self.log.warn(f"compile cache: '{path}' holds no artifacts; compiling afresh")
                continue
            self.restored_from = path
            self.log.info(f"compile cache: restored '{path}'")
            return True
        self.log.info(f"compile cache: no entry {self.name}; compiling afresh{self._mismatch()}")
        return False

    def _seed_inductor(self, source: Path) -> None:
        """Copy the packaged inductor files missing from inductor's (writable) cache into it."""
        if not source.is_dir():
            return
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        try:
            target = Path(cache_dir())
            copied = seed(source, target)
        except OSError as exc:
            self.log.warn(f"compile cache: cannot copy '{source}' into inductor's cache: {exc}")
            return
        self.log.info(f"compile cache: {copied} packaged inductor file(s) copied into '{target}'")

    def _mismatch(self) -> str:
        """The parts of the key in which the closest entry saved for the same class differs."""
        best: tuple[list[str], Path] | None = None
        for folder in (self.packaged, self.writable):
            if folder is None or not folder.is_dir():
                continue
            for other in sorted(folder.glob("*.json")):
                try:
                    saved = json.loads(other.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if not isinstance(saved, dict) or saved.get("class") != self.parts["class"]:
                    continue
                differ = [k for k in self.parts if saved.get(k) != self.parts[k]]
                if differ and (best is None or len(differ) < len(best[0])):
                    best = (differ, other)
        if best is None:
            return ""
        differ, other = best
        saved = json.loads(other.read_text(encoding="utf-8"))
        parts = [_difference(k, saved.get(k), self.parts[k]) for k in differ]
        return f" (entry {other.stem} in '{other.parent}' differs in: {'; '.join(parts)})"

    def save(self) -> Path | None:
        """Write what this process compiled (atomically) to the writable folder; log it."""
        if self.writable is None or self.restored_from is not None:
            return None
        try:
            saved = torch.compiler.save_cache_artifacts()
            if saved is None:
                self.log.info("compile cache: nothing compiled to save")
                return None
            self.writable.mkdir(parents=True, exist_ok=True)
            target = self.writable / f"{self.name}.bin"
            _write(target, saved[0])
            _write(target.with_suffix(".json"), json.dumps(self.parts, indent=1).encode())
        except Exception as exc:  # noqa: BLE001 - a read-only or full disk must not fail the load
            self.log.warn(f"compile cache: cannot save to '{self.writable}': {exc}")
            return None
        self.log.info(f"compile cache: saved '{target}' ({len(saved[0])} bytes)")
        return target


_LABELS = {
    "format": "cache format",
    "torch": "torch version",
    "python": "Python version",
    "device": "device type",
    "module": "module file",
    "weights": "weights file",
    "method": "METHOD",
    "options": "compile options",
}


def _difference(part: str, saved: object, now: object) -> str:
    """``torch version (saved 2.12.0, now 2.13.0)``; file digests by name only."""
    label = _LABELS.get(part, part)
    if part in ("module", "weights"):
        return label if saved and now else f"{label} ({'absent' if not now else 'added'})"
    return f"{label} (saved {saved}, now {now})"


def seed(source: Path, target: Path) -> int:
    """Copy the files under ``source`` missing from ``target`` (each atomically, without lock
    files); return how many were copied."""
    copied = 0
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or relative.parts[0] == "locks" or (target / relative).exists():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", dir=(target / relative).parent
        )
        os.close(handle)
        try:
            shutil.copyfile(path, temporary)
            os.chmod(temporary, path.stat().st_mode | 0o600)
            os.replace(temporary, target / relative)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        copied += 1
    return copied


def _write(target: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
