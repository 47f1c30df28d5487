"""Find, prepare and run a ``tritonserver`` for this package (plain Python, no Triton import).

- :func:`find_tritonserver` locates a server binary.
- :func:`assemble_backends` builds a ``--backend-directory`` holding the Python backend and
  ``pytorch_python/model.py`` (this package's adapter).
- :func:`server_environment` builds the child environment so the Python backend stub imports
  this package and torch from the running interpreter.
- :class:`TritonServer` starts the server, waits until the repository is loaded and stops it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Optional, Union

from .errors import PyTorchBackendError

NGC_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
"""Where the NGC ``tritonserver`` container installs the server."""

NO_BUNDLED_SERVER_ENV = "PYTORCH_BACKEND_NO_BUNDLED_SERVER"
"""Set to ``1`` to skip the well-known locations (NGC path, nvidia-pytriton wheel) in discovery."""

PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB_NAME = "triton_python_backend_stub"
LOCALE_VARIABLES = ("LANG", "LANGUAGE", "PYTHONUTF8", "PYTHONCOERCECLOCALE")

LogTarget = Union[str, os.PathLike, IO, None]


class TritonServerNotFoundError(PyTorchBackendError):
    """No ``tritonserver`` binary could be found."""


class BackendAssemblyError(PyTorchBackendError):
    """The backends folder cannot be built from the server installation."""


class ServerError(PyTorchBackendError):
    """The server died or did not become ready; ``log_tail`` holds the end of its log."""

    def __init__(self, message: str, *, returncode: Optional[int] = None, log_tail: str = ""):
        full = (
            f"{message}\n--- last lines of the tritonserver log ---\n{log_tail}"
            if log_tail
            else message
        )
        super().__init__(full)
        self.summary = message
        self.returncode = returncode
        self.log_tail = log_tail


# --------------------------------------------------------------------------- discovery


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
        "nvidia-pytriton wheel): run `pip install 'pytorch-backend[server]'` or use the NGC "
        "tritonserver container"
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


def assemble_backends(dest: Path, server: Path) -> Path:
    """Write a backends folder for ``server`` into ``dest`` and return ``dest``.

    ``dest/python/`` gets the Python backend library, its utils module and the stub matching the
    running Python; ``dest/pytorch_python/model.py`` is a copy of this package's ``model.py``.
    Everything is copied (Triton refuses a library whose real path leaves the folder).
    """
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
    plugin_dir = dest / "pytorch_python"
    plugin_dir.mkdir(exist_ok=True)
    if model.is_file():
        _copy_file(model, plugin_dir / "model.py")
    return dest


def _copy_file(src: Path, dst: Path) -> None:
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


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    """Whether ``port`` cannot be bound on ``host`` (something is listening there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------- server process


@dataclass(frozen=True)
class ModelStatus:
    """One entry of the server's repository index."""

    name: str
    version: str
    state: str
    reason: str


class TritonServer:
    """A ``tritonserver`` child process serving ``repository`` (a context manager).

    ``log`` is a file path, a stream or ``None``; the server's stdout and stderr go there.
    ``strip_locale`` removes LANG/LANGUAGE/LC_* (and PYTHONUTF8/PYTHONCOERCECLOCALE) from the
    child so it runs in the C locale. ``server``/``backend_directory`` default to
    :func:`find_tritonserver` and a freshly assembled temporary folder.
    """

    def __init__(
        self,
        repository: Path,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        log: LogTarget = None,
        extra_args: Iterable[str] = (),
        env_overrides: Optional[Mapping[str, str]] = None,
        strip_locale: bool = False,
        server: Optional[Path] = None,
        backend_directory: Optional[Path] = None,
    ) -> None:
        self.repository = Path(repository).absolute()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.extra_args = tuple(extra_args)
        self.env_overrides = dict(env_overrides or {})
        self.strip_locale = strip_locale
        self.server = Path(server) if server is not None else None
        self.backend_directory = Path(backend_directory) if backend_directory else None
        self._log = log
        self._sink: Optional[IO] = None
        self._owns_sink = False
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._workdir: Optional[tempfile.TemporaryDirectory] = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- command and environment

    def command(self, backend_directory: Path) -> list[str]:
        """The full command line (the server path must be known)."""
        if self.server is None:
            self.server = find_tritonserver()
        return [
            str(self.server),
            f"--model-repository={self.repository}",
            f"--backend-directory={Path(backend_directory).absolute()}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--exit-on-error=false",
            "--strict-readiness=false",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        """The child's environment."""
        if self.server is None:
            self.server = find_tritonserver()
        env = server_environment(self.server)
        if self.strip_locale:
            for key in list(env):
                if key in LOCALE_VARIABLES or key.startswith("LC_"):
                    del env[key]
        env.update(self.env_overrides)
        return env

    # -- lifecycle

    def start(self) -> TritonServer:
        """Start the server (returns at once; see :meth:`wait_ready`)."""
        if self._proc is not None:
            raise ServerError("this TritonServer was already started")
        if self.server is None:
            self.server = find_tritonserver()
        self._workdir = tempfile.TemporaryDirectory(prefix="pytorch-backend-")
        workdir = Path(self._workdir.name)
        backends = self.backend_directory or assemble_backends(workdir / "backends", self.server)
        self._open_sink()
        self._proc = subprocess.Popen(
            self.command(backends),
            env=self.environment(),
            cwd=workdir,  # an empty folder: nothing there can shadow a module
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the server cleanly
        )
        self._reader = threading.Thread(target=self._pump, name="tritonserver-log", daemon=True)
        self._reader.start()
        return self

    def _open_sink(self) -> None:
        if self._log is None:
            self._sink = None
        elif isinstance(self._log, (str, os.PathLike)):
            self._sink = open(self._log, "wb")  # noqa: SIM115 - closed in stop()
            self._owns_sink = True
        else:
            self._sink = self._log

    def _pump(self) -> None:
        """Copy the server's output to the log target, keeping the last lines."""
        assert self._proc is not None and self._proc.stdout is not None
        sink, stream = self._sink, self._proc.stdout
        try:
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", errors="replace")
                self._tail.append(text)
                if sink is None:
                    continue
                try:
                    sink.write(text if isinstance(sink, io.TextIOBase) else raw)
                    sink.flush()
                except (OSError, ValueError):  # closed or broken sink: keep draining the pipe
                    sink = None
        except (OSError, ValueError):  # the pipe was closed under us by stop()
            pass

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the server printed."""
        return "".join(list(self._tail)[-lines:])

    @property
    def returncode(self) -> Optional[int]:
        """The exit status, or ``None`` while running (or before start)."""
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    def _check_alive(self, doing: str) -> None:
        if self._proc is None:
            raise ServerError("the server was not started")
        code = self._proc.poll()
        if code is not None:
            if self._reader is not None:
                self._reader.join(timeout=2)
            raise ServerError(
                f"tritonserver exited with code {code} {doing}",
                returncode=code,
                log_tail=self.log_tail(),
            )

    def wait_ready(self, timeout: Optional[float] = 120.0) -> list[ModelStatus]:
        """Wait until the server is live and no model is still loading; return the models.

        Raises :class:`ServerError` if the server dies first or ``timeout`` seconds pass
        (``None`` waits as long as the server lives).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_alive("before it was ready")
            try:
                if self._get("/v2/health/live") == 200:
                    models = self.models()
                    if not any(_still_loading(m) for m in models):
                        return models
            except (OSError, ValueError):
                pass  # not listening yet
            if deadline is not None and time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver was not ready after {timeout:g} s", log_tail=self.log_tail()
                )
            time.sleep(0.2)

    def models(self) -> list[ModelStatus]:
        """The repository index (``POST /v2/repository/index``)."""
        request = urllib.request.Request(
            self._url("/v2/repository/index"),
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with self._opener.open(request, timeout=5) as response:
            entries = json.loads(response.read().decode("utf-8"))
        return [
            ModelStatus(
                name=str(entry.get("name", "")),
                version=str(entry.get("version", "")),
                state=str(entry.get("state", "")),
                reason=str(entry.get("reason", "")),
            )
            for entry in entries
        ]

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def _get(self, path: str) -> int:
        try:
            with self._opener.open(self._url(path), timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def stop(self, timeout: float = 45.0) -> Optional[int]:
        """SIGTERM the server, SIGKILL it (and its stubs) after ``timeout`` s; return its code.

        On SIGTERM tritonserver waits up to ``--exit-timeout-secs`` (default 30) for in-flight
        requests and open HTTP connections, hence the longer default here.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the server and its stubs
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self._owns_sink and self._sink is not None:
            self._sink.close()
            self._sink, self._owns_sink = None, False
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        return None if proc is None else proc.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _still_loading(model: ModelStatus) -> bool:
    return model.state == "LOADING" or (model.state == "UNAVAILABLE" and not model.reason)
