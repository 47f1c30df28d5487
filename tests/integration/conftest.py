"""Shared fixtures for integration tests: a real tritonserver started on free ports.

Fixtures:
- ``tritonserver_path`` (session): the server binary; skips the test when none is found (fails
  it when ``PYTORCH_BACKEND_REQUIRE_SERVER=1``, as CI sets: a run that skipped every
  integration test must not pass; see :mod:`tests.prerequisites`).
- ``backends_dir`` (session): the assembled ``--backend-directory`` (``python/`` and
  ``pytorch_python/model.py``), built once per session.
- ``triton`` (module): ``start(repo, **kwargs) -> RunningServer``; kwargs go to
  ``TritonServer`` (``extra_args``, ``env_overrides``, ``backend_directory``...) except
  ``timeout`` (readiness wait, default 180 s). Servers run with ``strip_locale=True`` and
  ``--exit-timeout-secs=5`` (a later value in ``extra_args`` wins), log to a file, and stop at
  module end. A server that aborts at startup with the upstream :data:`UPSTREAM_STARTUP_ABORT`
  is started again once.
- ``free_ports`` (function): ``free_ports(n)`` returns n distinct TCP ports free right now.

Every test in this folder is marked ``integration``.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from pytorch_backend.serving.server import ModelStatus, ServerError, TritonServer, assemble_backends
from tests import prerequisites

HERE = Path(__file__).parent
#: tritonserver 2.51 sometimes aborts while several Python-backend instances start, before any
#: request (server #8882, open; README "Lifecycle"). A server that dies so is started again
#: once, on fresh ports; any other failure to start fails the test.
UPSTREAM_STARTUP_ABORT = "boost::interprocess::lock_exception"
STARTS = 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free right now (all bound at once, then released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("0.0.0.0", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class RunningServer:
    """A started, ready tritonserver as seen by a test."""

    def __init__(self, server: TritonServer, log_path: Path) -> None:
        self.server = server
        self.log_path = log_path
        self.http_url = f"localhost:{server.http_port}"
        self.grpc_url = f"localhost:{server.grpc_port}"
        self.metrics_url = f"http://localhost:{server.metrics_port}/metrics"

    def log_text(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def models(self) -> list[ModelStatus]:
        return self.server.models()

    def model(self, name: str) -> ModelStatus:
        """The (first) index entry of model ``name``."""
        matches = [m for m in self.models() if m.name == name]
        assert matches, f"model {name!r} is not in the repository index"
        return matches[0]

    def stop(self) -> int | None:
        """Stop the server (idempotent); return its exit code."""
        return self.server.stop()


@pytest.fixture(scope="session")
def tritonserver_path() -> Path:
    return prerequisites.tritonserver()


@pytest.fixture(scope="session")
def backends_dir(tritonserver_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_backends(tmp_path_factory.mktemp("backends"), tritonserver_path)


@pytest.fixture
def free_ports() -> Callable[[int], list[int]]:
    return _free_ports


@pytest.fixture(scope="module")
def triton(
    tritonserver_path: Path, backends_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(repo: Path, *, timeout: float = 180.0, **kwargs: object) -> RunningServer:
        kwargs.setdefault("strip_locale", True)
        # open client connections delay shutdown by --exit-timeout-secs: keep that short
        kwargs["extra_args"] = ("--exit-timeout-secs=5", *kwargs.get("extra_args", ()))
        for attempt in range(1, STARTS + 1):
            log_path = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
            http_port, grpc_port, metrics_port = _free_ports(3)
            server = TritonServer(
                Path(repo),
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                log=log_path,
                server=tritonserver_path,
                **{"backend_directory": backends_dir, **kwargs},  # type: ignore[arg-type]
            )
            running = RunningServer(server, log_path)
            started.append(running)
            server.start()
            try:
                server.wait_ready(timeout=timeout)
                return running
            except ServerError as error:
                server.stop()
                log = log_path.read_text(errors="replace") if log_path.exists() else ""
                if attempt < STARTS and UPSTREAM_STARTUP_ABORT in log:
                    aborted = f"server #8882 abort at startup, started again: {log_path}"
                    warnings.warn(aborted, stacklevel=2)
                    continue
                pytest.fail(f"tritonserver did not start for {repo}: {error}", pytrace=False)
        raise AssertionError("unreachable")

    yield start
    for running in started:
        running.stop()
