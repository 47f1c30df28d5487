"""``pytorch-backend`` as a user runs it: a subprocess serving a tiny repository, and bad args."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ECHO_CONFIG = """\
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

ECHO_MODEL = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            output = pb_utils.Tensor("OUTPUT0", data * 2)
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses
"""

BROKEN_MODEL = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("this model is broken on purpose")
"""


def _cli() -> list[str]:
    script = shutil.which("pytorch-backend", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "pytorch_backend.serving.cli"]


def _write_repo(root: Path) -> Path:
    for name, code in (("echo", ECHO_MODEL), ("broken", BROKEN_MODEL)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(ECHO_CONFIG)
        (root / name / "1" / "model.py").write_text(code)
    return root


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_cli(), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pytorch-backend: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


# --------------------------------------------------------------------------- serving


class _Lines:
    """Reads a process's stdout on a thread so tests can wait for a line with a timeout."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                line = None
            if line is None:  # timed out, or the stream ended
                output = "\n".join(self.lines[-40:])
                pytest.fail(f"no line containing {text!r}; output ended with:\n{output}")
            self.lines.append(line)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_serve_reports_endpoints_and_states_serves_and_stops_on_signal(
    tritonserver_path: Path, tmp_path: Path, free_ports, stop_signal: signal.Signals
) -> None:
    import tritonclient.http as httpclient

    repo = _write_repo(tmp_path / "repo")
    http_port, grpc_port, metrics_port = free_ports(3)
    process = subprocess.Popen(
        [*_cli(), "serve", str(repo), "--http-port", str(http_port),
         "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        output = _Lines(process.stdout)
        output.wait_for("pytorch-backend: serving", timeout=180)
        lines = output.lines
        assert f"  HTTP     http://localhost:{http_port}" in lines
        assert f"  gRPC     localhost:{grpc_port}" in lines
        assert f"  metrics  http://localhost:{metrics_port}/metrics" in lines
        assert "    echo (version 1): READY" in lines
        broken = [line for line in lines if line.startswith("    broken (version 1): ")]
        assert len(broken) == 1
        assert "UNAVAILABLE - " in broken[0]
        assert "this model is broken on purpose" in broken[0]
        assert any("Started HTTPService" in line for line in lines)  # the server log is forwarded

        client = httpclient.InferenceServerClient(f"localhost:{http_port}")
        data = np.array([1.0, -2.5, 3.0], dtype=np.float32)
        request = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
        request.set_data_from_numpy(data)
        result = client.infer("echo", [request])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data * 2)
        client.close()  # an open connection makes tritonserver wait 30 s before exiting

        process.send_signal(stop_signal)
        assert process.wait(timeout=60) == 0
        output.wait_for("pytorch-backend: stopping tritonserver", timeout=10)
        assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", http_port), timeout=5).close()


def test_backends_command_writes_a_usable_folder(tritonserver_path: Path, tmp_path: Path) -> None:
    result = _run_cli("backends", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str((tmp_path / "b").absolute())
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        assert (tmp_path / "b" / "python" / name).is_file()
    stub = tmp_path / "b" / "python" / "triton_python_backend_stub"
    assert stub.is_file() and not stub.is_symlink() and os.access(stub, os.X_OK)


# --------------------------------------------------------------------------- bad arguments


def test_missing_repository(tmp_path: Path) -> None:
    _assert_one_line_error(_run_cli("serve", str(tmp_path / "nope")), "does not exist")


def test_repository_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    _assert_one_line_error(_run_cli("serve", str(tmp_path / "file")), "is not a folder")


def test_port_in_use(tmp_path: Path, free_ports) -> None:
    http, metrics = (str(p) for p in free_ports(2))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        args = ("serve", str(tmp_path), "--http-port", http, "--metrics-port", metrics)
        result = _run_cli(*args, "--grpc-port", str(port))
    _assert_one_line_error(result, f"port {port} (--grpc-port) is already in use")


def _no_server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITONSERVER"}
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    env.update(PATH=str(empty), PYTORCH_BACKEND_NO_BUNDLED_SERVER="1", **extra)
    return env


def test_no_tritonserver_found(tmp_path: Path, free_ports) -> None:
    http, grpc, metrics = (str(p) for p in free_ports(3))
    args = ("serve", str(tmp_path), "--http-port", http, "--grpc-port", grpc)
    result = _run_cli(*args, "--metrics-port", metrics, env=_no_server_env(tmp_path))
    _assert_one_line_error(result, "no tritonserver found", "pip install 'pytorch-backend[server]'")


def test_tritonserver_env_var_pointing_at_missing_file(tmp_path: Path, free_ports) -> None:
    http, grpc, metrics = (str(p) for p in free_ports(3))
    env = _no_server_env(tmp_path, TRITONSERVER=str(tmp_path / "missing" / "tritonserver"))
    args = ("serve", str(tmp_path), "--http-port", http, "--grpc-port", grpc)
    result = _run_cli(*args, "--metrics-port", metrics, env=env)
    _assert_one_line_error(result, "TRITONSERVER is set to", "not an executable file")


def test_backends_without_tritonserver(tmp_path: Path) -> None:
    result = _run_cli("backends", str(tmp_path / "b"), env=_no_server_env(tmp_path))
    _assert_one_line_error(result, "no tritonserver found")
