"""A stub whose server dies while it still imports ``model.py`` ends too (the watchdog starts at
import, before torch: on a busy machine a stub can spend minutes importing it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

from tests.server_procs import alive

# The "stub": a Python whose argv[0] is named like Triton's stub, with a region in argv[2]. It
# imports model.py (a stand-in triton_python_backend_utils first), then hangs before initialize.
STUB = textwrap.dedent(
    """
    import sys, time, types
    sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
    import pytorch_backend.model
    print("imported", flush=True)
    time.sleep(600)
    """
)
# The "server": starts the stub, passes its output on, then waits to be killed.
SERVER = textwrap.dedent(
    """
    import subprocess, sys, time
    stub = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
    print(stub.pid, flush=True)
    print(stub.stdout.readline().strip(), flush=True)
    time.sleep(600)
    """
)


def test_a_stub_killed_while_importing_model_py_is_ended_and_its_region_unlinked(tmp_path):
    stub_exe = tmp_path / "triton_python_backend_stub"
    stub_exe.symlink_to(sys.executable)
    script = tmp_path / "model_import.py"
    script.write_text(STUB)
    region = f"pytorch_backend_test_region_{uuid.uuid4().hex}"
    shm = Path("/dev/shm") / region
    shm.write_bytes(b"shared memory")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(stub_exe), str(script), region],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    stub = None
    try:
        stub = int(server.stdout.readline())
        assert server.stdout.readline().strip() == "imported"
        time.sleep(1.0)  # the watchdog polls every 0.5 s: it must not fire while the server lives
        assert alive(stub) and shm.exists()
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=60)
        deadline = time.monotonic() + 30
        while (alive(stub) or shm.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(stub), "the stub outlived its server"
        assert not shm.exists(), "the stub's shared-memory region was left behind"
    finally:
        server.stdout.close()
        if stub is not None and alive(stub):
            os.kill(stub, signal.SIGKILL)
        shm.unlink(missing_ok=True)
