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


# --------------------------------------------------------------------------- migration options


def _listen_addresses(port: int) -> set[str]:
    """Addresses something listens on at ``port`` (/proc/net/tcp and tcp6; IPv4-mapped IPv6
    addresses as IPv4, any other IPv6 address as "ipv6:<hex>")."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            host, hex_port = fields[1].rsplit(":", 1)
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            if len(host) == 8 or host.startswith("0000000000000000FFFF0000"):
                v4 = host[-8:]
                found.add(".".join(str(int(v4[i : i + 2], 16)) for i in (6, 4, 2, 0)))
            else:
                found.add(f"ipv6:{host}")
    return found


def test_serve_binds_loopback_passes_server_args_and_serves_cpp_configs(
    tritonserver_path: Path, tmp_path: Path, free_ports
) -> None:
    import tritonclient.http as httpclient

    from tests import ts_models

    repo = _write_repo(tmp_path / "repo")
    cpp = repo / "cpp"  # written for the C++ backend, unchanged
    ts_models.save(ts_models.Scale(), cpp / "1" / "model.pt")
    (cpp / "config.pbtxt").write_text(
        'platform: "pytorch_libtorch"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
    )
    http_port, grpc_port, metrics_port = free_ports(3)
    process = subprocess.Popen(
        [*_cli(), "serve", str(repo), "--http-port", str(http_port),
         "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--",
         "--log-verbose=1", "--model-control-mode=explicit", "--load-model=echo",
         "--load-model=cpp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        output = _Lines(process.stdout)
        output.wait_for("pytorch-backend: serving", timeout=180)
        lines = output.lines
        assert "  bound to 127.0.0.1; --address 0.0.0.0 accepts other hosts" in lines
        assert "    echo (version 1): READY" in lines
        assert "    cpp (version 1): READY" in lines
        # --model-control-mode=explicit reached the server: "broken" was not loaded at all
        assert not any(line.startswith("    broken (version 1)") for line in lines)
        # a --log-verbose=1 line
        assert any("Server side auto-completed config" in line for line in lines)
        for port in (http_port, grpc_port, metrics_port):
            assert _listen_addresses(port) == {"127.0.0.1"}, port

        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        data = np.array([[1.0, -2.5]], dtype=np.float32)
        request = httpclient.InferInput("x", list(data.shape), "FP32")
        request.set_data_from_numpy(data)
        np.testing.assert_array_equal(client.infer("cpp", [request]).as_numpy("y"), data * 2)
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:  # a failed assertion: stop the server cleanly (own session)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_serve_refuses_server_args_it_sets_itself(tmp_path: Path, free_ports) -> None:
    http, grpc, metrics = (str(p) for p in free_ports(3))
    ports = ("--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics)
    result = _run_cli("serve", str(tmp_path), *ports, "--", "--http-port=9")
    _assert_one_line_error(result, "--http-port is set by pytorch-backend serve")
    result = _run_cli("serve", str(tmp_path), *ports, "--address", "256.1.1.1")
    _assert_one_line_error(result, "cannot bind to --address 256.1.1.1")


def test_backends_as_pytorch(tritonserver_path: Path, tmp_path: Path) -> None:
    result = _run_cli("backends", str(tmp_path / "b"), "--as-pytorch")
    assert result.returncode == 0, result.stderr
    for name in ("pytorch_python", "pytorch"):
        assert (tmp_path / "b" / name / "model.py").is_file()
    # a folder holding the C++ PyTorch backend: refused, nothing written over it
    cpp = tmp_path / "ngc" / "pytorch"
    cpp.mkdir(parents=True)
    (cpp / "libtriton_pytorch.so").write_bytes(b"\x7fELF")
    (cpp / "model.py").write_text("# upstream's Python runtime\n")
    result = _run_cli("backends", str(tmp_path / "ngc"), "--as-pytorch")
    _assert_one_line_error(result, "holds the C++ PyTorch backend (libtriton_pytorch.so)")
    assert (cpp / "model.py").read_text() == "# upstream's Python runtime\n"
    result = _run_cli("backends", str(tmp_path / "ngc"))  # without the alias: fine
    assert result.returncode == 0, result.stderr
    assert (cpp / "model.py").read_text() == "# upstream's Python runtime\n"
