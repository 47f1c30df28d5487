"""The orphan watchdog without Triton: a process whose parent dies is ended, not before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pytorch_backend.runtime import orphan
from tests.server_procs import alive, children, wait_for

# The "server": starts the "stub" and waits for the word to die. The stub starts its watchdog
# (its parent is the server) and then sleeps, the way a hung teardown would.
SERVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    stub = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
    print(stub.pid, flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)
    """
)
STUB = textwrap.dedent(
    """
    import time
    from pytorch_backend.runtime import orphan
    orphan.watch({region!r}, poll=0.1)
    print(orphan.orphaned(), flush=True)
    time.sleep(600)
    """
)


def _watchdogs_of(pid: int) -> list[int]:
    return list(children(pid, lambda argv: orphan.WATCHDOG_NAME.encode() in argv))


def _start_server(tmp_path: Path, region: Path, **popen) -> tuple[subprocess.Popen, int]:
    """A "server" whose "stub" watches ``region``; returns once the stub's watchdog runs."""
    region.write_bytes(b"shared memory")
    script = STUB.format(region=str(region))
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, script, str(tmp_path / "die")],
        stdout=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip
    stub = int(server.stdout.readline())
    deadline = time.monotonic() + 60
    while not _watchdogs_of(stub) and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, stub


def _end(stub: int, server: subprocess.Popen) -> None:
    """Leave nothing behind: the stub, its watchdog and the server's pipe."""
    for pid in (stub, *_watchdogs_of(stub)):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    server.stdout.close()


def test_the_stub_runs_while_its_server_lives_and_ends_when_it_dies(tmp_path):
    region = tmp_path / "region"
    server, stub = _start_server(tmp_path, region)
    try:
        assert _watchdogs_of(stub), "the stub started its watchdog"
        time.sleep(1.0)  # ten polls while the server lives: nothing happens
        assert alive(stub) and region.exists()
        server.send_signal(signal.SIGKILL)  # the server dies without a word
        server.wait()
        deadline = time.monotonic() + 10
        while alive(stub) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(stub), "the orphaned stub was ended"
        assert not region.exists(), "its shared-memory region was unlinked"
    finally:
        _end(stub, server)


def test_the_watchdog_ends_with_its_stub(tmp_path):
    stub = subprocess.Popen([sys.executable, "-c", STUB.format(region="")], stdout=subprocess.PIPE)
    try:
        assert stub.stdout.readline().strip() == b"False"  # not orphaned while its parent lives
        # Popen returns while the watchdog's exec may still be under way (an empty cmdline)
        wait_for(lambda: _watchdogs_of(stub.pid), "the stub's watchdog runs", deadline=60)
        (watchdog,) = _watchdogs_of(stub.pid)
        stub.kill()
        stub.wait()
        deadline = time.monotonic() + 10
        while alive(watchdog) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(watchdog), "no watchdog outlives its stub"
    finally:
        stub.stdout.close()


def test_the_stub_region_comes_from_the_stub_command_line():
    stub = "/opt/tritonserver/backends/python/triton_python_backend_stub"
    assert orphan.stub_shm_region([stub, "m/1/model.py", "triton_region_1", "1"]) == (
        "/dev/shm/triton_region_1"
    )
    assert orphan.stub_shm_region(["python", "x", "y"]) is None
    assert orphan.stub_shm_region([stub, "m", "../etc/passwd"]) is None


def test_a_group_kill_of_server_and_stub_still_unlinks_the_region(tmp_path):
    region = tmp_path / "region"
    server, stub = _start_server(tmp_path, region, start_new_session=True)
    try:
        (watchdog,) = _watchdogs_of(stub)
        os.killpg(server.pid, signal.SIGKILL)  # the server and its stub at once
        server.wait()
        deadline = time.monotonic() + 10
        while (region.exists() or alive(watchdog)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not region.exists(), "the watchdog unlinked the region of its dead stub"
        assert not alive(watchdog)
    finally:
        _end(stub, server)
