"""Unit tests of the tritonserver launcher (no real Triton: fake server layouts and processes)."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest

import pytorch_backend
from pytorch_backend.serving import install as srv
from pytorch_backend.serving.server import (
    BackendAssemblyError,
    ModelStatus,
    ServerError,
    TritonServer,
    TritonServerNotFoundError,
    assemble_backends,
    find_tritonserver,
    port_in_use,
    server_environment,
)

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _wheel_layout(tmp_path: Path, versions: tuple[str, ...] = (PY,)) -> Path:
    """A fake ``site-packages/pytriton/tritonserver`` tree; returns the server binary."""
    root = tmp_path / "site-packages" / "pytriton" / "tritonserver"
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "python" / "libtriton_python.so").write_bytes(b"\x7fELF lib")
    (root / "backends" / "python" / "triton_python_backend_utils.py").write_text("# utils\n")
    for version in versions:
        _executable(root / "python_backend_stubs" / version / srv.STUB_NAME, f"stub {version}")
    (tmp_path / "site-packages" / "nvidia_pytriton.libs").mkdir()
    return _executable(root / "bin" / "tritonserver")


def _ngc_layout(tmp_path: Path, linked: str = PY) -> Path:
    """A fake ``/opt/tritonserver`` tree; returns the server binary."""
    root = tmp_path / "opt" / "tritonserver"
    python = root / "backends" / "python"
    python.mkdir(parents=True)
    (python / "libtriton_python.so").write_bytes(b"\x7fELF lib")
    (python / "triton_python_backend_utils.py").write_text("# utils\n")
    _executable(python / srv.STUB_NAME, f"ELF ... libpython{linked}.so.1.0 ...")
    return _executable(root / "bin" / "tritonserver")


# --------------------------------------------------------------------------- discovery


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TRITONSERVER, an empty PATH, no NGC install; returns the empty PATH folder."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.delenv("TRITONSERVER", raising=False)
    monkeypatch.delenv(srv.NO_BUNDLED_SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(srv, "NGC_TRITONSERVER", tmp_path / "no-ngc" / "tritonserver")
    return empty


def test_env_var_wins_over_path(clean_env: Path, monkeypatch, tmp_path: Path) -> None:
    chosen = _executable(tmp_path / "mine" / "tritonserver")
    _executable(clean_env / "tritonserver")
    monkeypatch.setenv("TRITONSERVER", str(chosen))
    assert find_tritonserver() == chosen


def test_env_var_naming_missing_file_is_an_error(clean_env: Path, monkeypatch, tmp_path) -> None:
    _executable(clean_env / "tritonserver")  # would be found, but the explicit choice is wrong
    monkeypatch.setenv("TRITONSERVER", str(tmp_path / "nope"))
    with pytest.raises(TritonServerNotFoundError, match="TRITONSERVER is set to .*nope"):
        find_tritonserver()


def test_path_wins_over_ngc(clean_env: Path, monkeypatch, tmp_path: Path) -> None:
    on_path = _executable(clean_env / "tritonserver")
    monkeypatch.setattr(srv, "NGC_TRITONSERVER", _ngc_layout(tmp_path))
    assert find_tritonserver() == on_path


def test_ngc_wins_over_wheel(clean_env: Path, monkeypatch, tmp_path: Path) -> None:
    ngc = _ngc_layout(tmp_path)
    monkeypatch.setattr(srv, "NGC_TRITONSERVER", ngc)
    monkeypatch.setattr(srv, "_wheel_tritonserver", lambda: tmp_path / "wheel" / "tritonserver")
    assert find_tritonserver() == ngc


def test_wheel_is_the_last_resort(clean_env: Path) -> None:
    if srv._wheel_tritonserver() is None:
        pytest.skip("nvidia-pytriton is not installed")
    found = find_tritonserver()
    assert found.parts[-4:] == ("pytriton", "tritonserver", "bin", "tritonserver")


def test_none_found_says_how_to_get_one(clean_env: Path, monkeypatch) -> None:
    monkeypatch.setenv(srv.NO_BUNDLED_SERVER_ENV, "1")
    monkeypatch.setattr(srv, "NGC_TRITONSERVER", _ngc_layout(clean_env.parent))  # skipped too
    with pytest.raises(TritonServerNotFoundError) as info:
        find_tritonserver()
    message = str(info.value)
    assert "pip install 'pytorch-backend[server]'" in message and "NGC" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- backends folder


@pytest.fixture
def fake_model_py(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    model = tmp_path / "pkg" / "model.py"
    model.parent.mkdir()
    model.write_text("class TritonPythonModel: pass\n")
    monkeypatch.setattr(srv, "_package_model_file", lambda: model)
    return model


def _assert_real_copy(copy: Path, original: Path) -> None:
    assert copy.is_file() and not copy.is_symlink()
    assert copy.read_bytes() == original.read_bytes()
    assert copy.resolve().parent == copy.parent


def test_assemble_from_wheel_layout(tmp_path: Path, fake_model_py: Path) -> None:
    server = _wheel_layout(tmp_path, versions=("3.8", PY))
    root = server.parent.parent
    dest = assemble_backends(tmp_path / "out", server)
    assert dest == (tmp_path / "out").absolute()
    assert sorted(p.name for p in (dest / "python").iterdir()) == sorted(
        ["libtriton_python.so", "triton_python_backend_utils.py", srv.STUB_NAME]
    )
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _assert_real_copy(dest / "python" / name, root / "backends" / "python" / name)
    stub = dest / "python" / srv.STUB_NAME
    _assert_real_copy(stub, root / "python_backend_stubs" / PY / srv.STUB_NAME)
    assert os.access(stub, os.X_OK)
    _assert_real_copy(dest / "pytorch_python" / "model.py", fake_model_py)


def test_assemble_copies_through_symlinks_and_overwrites(tmp_path: Path, fake_model_py) -> None:
    server = _wheel_layout(tmp_path)
    dest = tmp_path / "out"
    (dest / "python").mkdir(parents=True)
    (dest / "python" / "libtriton_python.so").symlink_to(tmp_path / "elsewhere")
    link = tmp_path / "link-to-server"
    link.symlink_to(server)
    assemble_backends(dest, link)
    assert not (dest / "python" / "libtriton_python.so").is_symlink()
    assert (dest / "python" / "libtriton_python.so").read_bytes() == b"\x7fELF lib"


def test_assemble_from_ngc_layout(tmp_path: Path, fake_model_py: Path) -> None:
    server = _ngc_layout(tmp_path)
    dest = assemble_backends(tmp_path / "out", server)
    _assert_real_copy(
        dest / "python" / srv.STUB_NAME, server.parent.parent / "backends/python" / srv.STUB_NAME
    )
    assert (dest / "pytorch_python" / "model.py").read_text() == fake_model_py.read_text()


def test_no_stub_for_running_python_is_a_clear_error(tmp_path: Path, fake_model_py) -> None:
    server = _wheel_layout(tmp_path, versions=("2.7", "3.1"))
    with pytest.raises(BackendAssemblyError, match=rf"Python {PY} \(it has: 2.7, 3.1\)"):
        assemble_backends(tmp_path / "out", server)


def test_ngc_stub_for_another_python_is_a_clear_error(tmp_path: Path, fake_model_py) -> None:
    server = _ngc_layout(tmp_path, linked="2.7")
    with pytest.raises(BackendAssemblyError, match=rf"built for Python 2.7, not .* {PY}"):
        assemble_backends(tmp_path / "out", server)


def test_missing_python_backend_is_a_clear_error(tmp_path: Path, fake_model_py) -> None:
    server = _wheel_layout(tmp_path)
    (server.parent.parent / "backends" / "python" / "libtriton_python.so").unlink()
    with pytest.raises(BackendAssemblyError, match="libtriton_python.so missing"):
        assemble_backends(tmp_path / "out", server)


def test_package_model_file_is_this_package() -> None:
    assert srv._package_model_file() == Path(pytorch_backend.__file__).parent / "model.py"


# --------------------------------------------------------------------------- environment


def test_environment_for_wheel_server(tmp_path: Path) -> None:
    server = _wheel_layout(tmp_path)
    base = {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/x/lib", "PYTHONPATH": "/mine", "KEEP": "1"}
    env = server_environment(server, base)
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[0] == str((tmp_path / "site-packages" / "nvidia_pytriton.libs").resolve())
    assert libs[-1] == "/x/lib"
    assert env["PATH"].split(os.pathsep)[:2] == [str(Path(sys.prefix) / "bin"), "/usr/bin"]
    pythonpath = env["PYTHONPATH"].split(os.pathsep)
    assert pythonpath[0] == str(Path(pytorch_backend.__file__).parent.parent)
    import torch

    assert str(Path(torch.__file__).parent.parent) in pythonpath
    assert pythonpath[-1] == "/mine"
    assert env["KEEP"] == "1"
    if sys.prefix != sys.base_prefix:
        assert env["VIRTUAL_ENV"] == sys.prefix


def test_environment_for_ngc_server_adds_no_wheel_libs(tmp_path: Path) -> None:
    env = server_environment(_ngc_layout(tmp_path), {"PATH": "/usr/bin"})
    assert "nvidia_pytriton.libs" not in env.get("LD_LIBRARY_PATH", "")


def test_child_environment_strips_locale_and_applies_overrides(tmp_path, monkeypatch) -> None:
    for key, value in {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "LANGUAGE": "en"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONUTF8", "1")
    server = _wheel_layout(tmp_path)
    stripped = TritonServer(tmp_path, server=server, strip_locale=True, env_overrides={"A": "b"})
    env = stripped.environment()
    assert not [k for k in env if k.startswith("LC_") or k in ("LANG", "LANGUAGE", "PYTHONUTF8")]
    assert env["A"] == "b"
    assert TritonServer(tmp_path, server=server).environment()["LC_ALL"] == "C.UTF-8"


def test_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    server = TritonServer(
        Path("repo"), http_port=1, grpc_port=2, metrics_port=3, server=Path("/bin/ts"),
        extra_args=["--log-verbose=1"],
    )  # fmt: skip
    command = server.command(Path("backends"))
    assert command == [
        "/bin/ts",
        f"--model-repository={tmp_path / 'repo'}",
        f"--backend-directory={tmp_path / 'backends'}",
        "--http-port=1",
        "--grpc-port=2",
        "--metrics-port=3",
        "--exit-on-error=false",
        "--strict-readiness=false",
        "--log-verbose=1",
    ]


def test_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


# --------------------------------------------------------------------------- process control

FAKE_SERVER = """\
#!{python}
# A stand-in for tritonserver: prints its argv, serves health + repository index from a file.
import http.server, json, os, sys

print("fake tritonserver", " ".join(sys.argv[1:]), "LANG=" + os.environ.get("LANG", ""),
      flush=True)
port = int(next(a for a in sys.argv if a.startswith("--http-port=")).split("=")[1])
index_file = os.environ["FAKE_INDEX"]

class Handler(http.server.BaseHTTPRequestHandler):
    def _reply(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply(200 if self.path == "/v2/health/live" else 404)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(index_file, "rb") as f:
            self._reply(200 if self.path == "/v2/repository/index" else 404, f.read())

    def log_message(self, *args):
        pass

http.server.HTTPServer(("0.0.0.0", port), Handler).serve_forever()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def test_wait_ready_waits_for_loading_models_then_reports_states(tmp_path: Path) -> None:
    fake = _executable(tmp_path / "bin" / "tritonserver", FAKE_SERVER.format(python=sys.executable))
    index = tmp_path / "index.json"
    index.write_text(json.dumps([{"name": "a", "version": "1", "state": "LOADING"}]))
    backends = tmp_path / "backends"
    backends.mkdir()
    log = tmp_path / "server.log"
    server = TritonServer(
        tmp_path / "repo",
        http_port=_free_port(),
        log=log,
        server=fake,
        backend_directory=backends,
        env_overrides={"FAKE_INDEX": str(index), "LANG": "xx"},
    )
    with server:
        assert server.returncode is None
        with pytest.raises(ServerError, match="not ready after 1 s"):
            server.wait_ready(timeout=1)
        final = [
            {"name": "a", "version": "1", "state": "READY"},
            {"name": "b", "version": "1", "state": "UNAVAILABLE", "reason": "bad config"},
            {"name": "c"},
        ]
        index.write_text(json.dumps(final))
        assert server.wait_ready(timeout=10) == [
            ModelStatus("a", "1", "READY", ""),
            ModelStatus("b", "1", "UNAVAILABLE", "bad config"),
            ModelStatus("c", "", "", ""),
        ]
    assert server.returncode == -15  # SIGTERM
    text = log.read_text()
    assert f"--model-repository={tmp_path / 'repo'}" in text and "LANG=xx" in text


def test_server_dying_during_start_raises_with_log_tail(tmp_path: Path) -> None:
    fake = _executable(
        tmp_path / "tritonserver", "#!/bin/sh\necho 'error: boom at start'\nexit 3\n"
    )
    backends = tmp_path / "backends"
    backends.mkdir()
    server = TritonServer(tmp_path, http_port=_free_port(), server=fake, backend_directory=backends)
    server.start()
    try:
        with pytest.raises(ServerError) as info:
            server.wait_ready(timeout=30)
    finally:
        server.stop()
    assert info.value.returncode == 3
    assert "exited with code 3 before it was ready" in info.value.summary
    assert "error: boom at start" in str(info.value)
    assert server.returncode == 3


def test_log_to_stream(tmp_path: Path) -> None:
    import io

    fake = _executable(tmp_path / "tritonserver", "#!/bin/sh\necho line one\necho line two\n")
    backends = tmp_path / "backends"
    backends.mkdir()
    stream = io.StringIO()
    server = TritonServer(tmp_path, log=stream, server=fake, backend_directory=backends)
    server.start()
    server._proc.wait(timeout=10)  # type: ignore[union-attr]
    assert server.stop() == 0
    assert stream.getvalue() == "line one\nline two\n"
    assert server.log_tail(1) == "line two\n"
