"""Find a ``tritonserver`` and prepare what it needs to serve this package (plain Python).

- :func:`find_tritonserver` locates a server binary.
- :func:`assemble_backends` builds a ``--backend-directory`` holding the Python backend and
  ``pytorch_python/model.py`` (this package's adapter), optionally also as ``pytorch/model.py``.
- :func:`server_environment` builds the child environment so the Python backend stub imports
  this package and torch from the running interpreter.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Optional

from .errors import ToolError

NGC_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
"""Where the NGC ``tritonserver`` container installs the server."""

NO_BUNDLED_SERVER_ENV = "PYTORCH_BACKEND_NO_BUNDLED_SERVER"
"""Set to ``1`` to skip the well-known locations (NGC path, nvidia-pytriton wheel) in discovery."""

PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB_NAME = "triton_python_backend_stub"
PLUGIN_NAME = "pytorch_python"
CPP_PYTORCH_LIBRARY = "libtriton_pytorch.so"
"""The C++ PyTorch backend, ``<backends>/pytorch/libtriton_pytorch.so`` (wins over model.py)."""


class TritonServerNotFoundError(ToolError):
    """No ``tritonserver`` binary could be found."""


class BackendAssemblyError(ToolError):
    """The backends folder cannot be built from the server installation."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _wheel_tritonserver() -> Optional[Path]:
    """The server bundled in the ``nvidia-pytriton`` wheel, without importing ``pytriton``."""
    try:
        spec = find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "tritonserver" / "bin" / "tritonserver"
        if _is_executable(candidate):
            return candidate
    return None


def find_tritonserver() -> Path:
    """Return the ``tritonserver`` binary to run.

    Looked up in order: ``$TRITONSERVER`` (an error if set to anything but an executable file),
    ``tritonserver`` on ``PATH``, ``/opt/tritonserver/bin/tritonserver`` (NGC container), then the
    binary bundled in the ``nvidia-pytriton`` wheel. Setting ``PYTORCH_BACKEND_NO_BUNDLED_SERVER=1``
    skips the last two (used by tests to force "none found").
    """
    explicit = os.environ.get("TRITONSERVER")
    if explicit:
        path = Path(explicit).expanduser()
        if not _is_executable(path):
            raise TritonServerNotFoundError(
                f"TRITONSERVER is set to {explicit!r}, which is not an executable file; "
                "point it at a tritonserver binary or unset it"
            )
        return path.absolute()
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path).absolute()
    if os.environ.get(NO_BUNDLED_SERVER_ENV, "") not in ("", "0"):
        candidates: list[Optional[Path]] = []
    else:
        candidates = [NGC_TRITONSERVER if _is_executable(NGC_TRITONSERVER) else None]
        candidates.append(_wheel_tritonserver())
    for candidate in candidates:
        if candidate is not None:
            return candidate
    raise TritonServerNotFoundError(
        "no tritonserver found (checked $TRITONSERVER, PATH, /opt/tritonserver and the "
        "nvidia-pytriton wheel): install the server extra, `pip install '.[server]'` from a "
        "checkout (or `pip install 'pytorch-backend[server]' --find-links dist` with a built "
        "wheel), or use the NGC tritonserver container"
    )


# --------------------------------------------------------------------------- backends folder


def _server_root(server: Path) -> Path:
    """``<root>`` of ``<root>/bin/tritonserver``."""
    return server.resolve().parent.parent


def _package_model_file() -> Path:
    """This package's ``model.py`` (the ``TritonPythonModel`` adapter)."""
    import pytorch_backend

    return Path(pytorch_backend.__file__).parent / "model.py"


def _linked_python(stub: Path) -> Optional[tuple[int, int]]:
    """The ``libpythonX.Y`` a stub binary links against, if its bytes name one."""
    match = re.search(rb"libpython(\d+)\.(\d+)", stub.read_bytes())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _find_stub(root: Path, version: tuple[int, int]) -> Path:
    wanted = f"{version[0]}.{version[1]}"
    stubs = root / "python_backend_stubs"
    if stubs.is_dir():  # nvidia-pytriton wheel: one stub per Python version
        stub = stubs / wanted / STUB_NAME
        if stub.is_file():
            return stub
        available = sorted(p.parent.name for p in stubs.glob(f"*/{STUB_NAME}"))
        raise BackendAssemblyError(
            f"the tritonserver in {root} has no Python backend stub for Python {wanted} "
            f"(it has: {', '.join(available) or 'none'}); run with one of those Python versions"
        )
    stub = root / "backends" / "python" / STUB_NAME  # NGC layout: one stub
    if not stub.is_file():
        raise BackendAssemblyError(f"the tritonserver in {root} has no {STUB_NAME}")
    linked = _linked_python(stub)
    if linked is not None and linked != version:
        raise BackendAssemblyError(
            f"{stub} is built for Python {linked[0]}.{linked[1]}, not the running Python "
            f"{wanted}; run pytorch-backend with Python {linked[0]}.{linked[1]}"
        )
    return stub


def check_pytorch_alias(dest: Path) -> None:
    """Refuse to install this plugin as backend ``pytorch`` over the C++ PyTorch backend."""
    cpp = Path(dest) / "pytorch" / CPP_PYTORCH_LIBRARY
    if cpp.exists():
        raise BackendAssemblyError(
            f"{cpp.parent} holds the C++ PyTorch backend ({CPP_PYTORCH_LIBRARY}); this plugin is "
            "not installed as backend 'pytorch' over it. Either keep the C++ backend and give "
            'the models you move here backend: "pytorch_python", or remove '
            f'{cpp.parent} first to serve unchanged platform: "pytorch_libtorch" / '
            '"torch_aoti" configs with this plugin'
        )


def assemble_backends(dest: Path, server: Path, *, as_pytorch: bool = False) -> Path:
    """Write a backends folder for ``server`` into ``dest`` and return ``dest``.

    ``dest/python/`` gets the Python backend library, its utils module and the stub matching the
    running Python; ``dest/pytorch_python/model.py`` is a copy of this package's ``model.py``.
    With ``as_pytorch`` the same file also goes to ``dest/pytorch/model.py``, so configs written
    for the C++ backend (``platform: "pytorch_libtorch"``/``"torch_aoti"``, ``backend:
    "pytorch"``) load unchanged; refused when ``dest/pytorch`` holds the C++ backend. Everything
    is copied (Triton refuses a library whose real path leaves the folder); a file that already
    is the source (``dest`` being the server's own backends folder) is left as it is.
    """
    if as_pytorch:
        check_pytorch_alias(dest)
    root = _server_root(Path(server))
    source = root / "backends" / "python"
    missing = [name for name in PYTHON_BACKEND_FILES if not (source / name).is_file()]
    if missing:
        raise BackendAssemblyError(
            f"the tritonserver in {root} has no Python backend ({', '.join(missing)} missing "
            f"from {source})"
        )
    stub = _find_stub(root, sys.version_info[:2])
    dest = Path(dest).absolute()
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in PYTHON_BACKEND_FILES:
        _copy_file(source / name, python_dir / name)
    _copy_file(stub, python_dir / STUB_NAME)
    model = _package_model_file()
    for name in (PLUGIN_NAME, "pytorch") if as_pytorch else (PLUGIN_NAME,):
        plugin_dir = dest / name
        plugin_dir.mkdir(exist_ok=True)
        if model.is_file():
            _copy_file(model, plugin_dir / "model.py")
    return dest


def _copy_file(src: Path, dst: Path) -> None:
    if dst.exists() and dst.samefile(src):
        return
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    shutil.copy2(src, dst)  # follows symlinks: the copy is a real file


# --------------------------------------------------------------------------- environment


def _site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return [paths["purelib"], paths["platlib"], *site.getsitepackages()]


def _prepend(entries: Iterable[str], existing: Optional[str]) -> str:
    result: list[str] = []
    for entry in [*entries, *(existing.split(os.pathsep) if existing else [])]:
        if entry and entry not in result:
            result.append(entry)
    return os.pathsep.join(result)


def server_environment(server: Path, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment for a ``tritonserver`` child (``base`` defaults to ``os.environ``).

    ``LD_LIBRARY_PATH`` gets the wheel's ``nvidia_pytriton.libs`` (the copied stub loses its
    rpath) and the running interpreter's ``libpython`` folder; ``VIRTUAL_ENV``/``PATH`` point at
    ``sys.prefix``; ``PYTHONPATH`` gets this package's parent folder and site-packages, so the
    stub imports this package and torch even outside a venv.
    """
    env = dict(os.environ if base is None else base)
    libs: list[str] = []
    wheel_libs = _server_root(Path(server)).parent.parent / "nvidia_pytriton.libs"
    if wheel_libs.is_dir():
        libs.append(str(wheel_libs))
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        libs.append(libdir)
    if libs:
        env["LD_LIBRARY_PATH"] = _prepend(libs, env.get("LD_LIBRARY_PATH"))
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    else:
        env.pop("VIRTUAL_ENV", None)
    env["PATH"] = _prepend([str(Path(sys.prefix) / "bin")], env.get("PATH"))
    package_parent = str(Path(_package_model_file()).parent.parent)
    env["PYTHONPATH"] = _prepend([package_parent, *_site_packages()], env.get("PYTHONPATH"))
    return env
