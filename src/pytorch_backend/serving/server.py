"""Run a ``tritonserver`` for this package: start it, wait until the repository is loaded, stop it.

Finding the server and assembling its backends folder is :mod:`.install`.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional, Union

from .errors import ToolError
from .install import (
    BackendAssemblyError,
    TritonServerNotFoundError,
    assemble_backends,
    check_pytorch_alias,
    find_tritonserver,
    server_environment,
)

__all__ = [
    "BackendAssemblyError",
    "check_pytorch_alias",
    "ModelStatus",
    "ServerError",
    "TritonServer",
    "TritonServerNotFoundError",
    "assemble_backends",
    "client_host",
    "find_tritonserver",
    "port_in_use",
    "server_environment",
]

LOCALE_VARIABLES = ("LANG", "LANGUAGE", "PYTHONUTF8", "PYTHONCOERCECLOCALE")

LogTarget = Union[str, os.PathLike, IO, None]


class ServerError(ToolError):
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


def client_host(address: Optional[str]) -> str:
    """Where a local client reaches a server bound to ``address`` (all addresses: loopback)."""
    if not address or address in ("0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


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
    :func:`find_tritonserver` and a freshly assembled temporary folder. ``address`` binds the
    HTTP, gRPC and metrics endpoints there (``None``: tritonserver's default, all addresses).
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
        env_overrides: Optional[Mapping[str, Optional[str]]] = None,
        strip_locale: bool = False,
        server: Optional[Path] = None,
        backend_directory: Optional[Path] = None,
        address: Optional[str] = None,
    ) -> None:
        self.repository = Path(repository).absolute()
        self.address = address
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
            *(
                [f"--{api}-address={self.address}" for api in ("http", "grpc", "metrics")]
                if self.address
                else []
            ),
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
        for key, value in self.env_overrides.items():  # None: not in the child's environment
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
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
        return f"http://{client_host(self.address)}:{self.http_port}{path}"

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
