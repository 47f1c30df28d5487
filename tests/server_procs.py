"""What a running tritonserver and its Python-backend stubs hold, read from ``/proc`` (Linux).

Shared by the reload and soak checks: the server's stubs (and which model instance each serves),
their resident memory and open descriptors, the shared weights files they map, this backend's
files in ``/dev/shm`` owned by a server, and a bounded wait.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pytorch_backend.runtime.shm_files import PREFIX, file_owner

SHM = Path("/dev/shm")
STUB = b"triton_python_backend_stub"


def _status(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None


def _ppid(pid: int) -> int | None:
    match = re.search(r"^PPid:\s+(\d+)", _status(pid) or "", re.M)
    return int(match[1]) if match else None


def _argv(pid: int) -> list[bytes]:
    """The command line of ``pid`` (empty if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def children(parent: int, match: Callable[[list[bytes]], bool]) -> dict[int, list[bytes]]:
    """``{pid: command line}`` of the processes whose parent is ``parent`` and whose command
    line ``match`` accepts."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _argv(int(entry))
        if argv and match(argv) and _ppid(int(entry)) == parent:
            found[int(entry)] = argv
    return found


def server_stubs(server_pid: int, script: Path | None = None) -> dict[int, str]:
    """``{pid: instance name}`` of the server's stubs (only those running ``script`` if given).

    A stub's command line is ``stub <model.py> <shm region> ... <instance name> ...``; its
    parent is the server.
    """
    wanted = str(script).encode() if script is not None else None

    def is_stub(argv: list[bytes]) -> bool:
        return argv[0].endswith(STUB) and len(argv) > 8 and wanted in (None, argv[1])

    stubs = children(server_pid, is_stub)
    return {pid: argv[8].decode(errors="replace") for pid, argv in stubs.items()}


def stub_regions(pids: Iterable[int]) -> dict[int, str]:
    """The shared-memory region each stub maps (its command line's second argument)."""
    regions = {}
    for pid in pids:
        argv = _argv(pid)
        if len(argv) > 2:
            regions[pid] = argv[2].decode().lstrip("/")
    return regions


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    status = _status(pid)
    return status is not None and not re.search(r"^State:\s+Z", status, re.M)


def rss_kib(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB (None if it is gone)."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", _status(pid) or "", re.M)
    return int(match[1]) if match else None


def open_fds(pid: int) -> int | None:
    """How many file descriptors ``pid`` has open (None if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def mapped_weight_files(pid: int) -> set[str]:
    """Paths of shared weights files a process maps (``(deleted)`` marks an unlinked one)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {line.split(None, 5)[-1] for line in maps.splitlines() if PREFIX in line}


def server_shm_files(server_pid: int, directory: Path = SHM) -> list[str]:
    """Names of this backend's files in ``directory`` (weights, locks, temporary files) that are
    named after the server ``server_pid``."""
    found = []
    for path in directory.glob(f"{PREFIX}*"):
        base = path.with_name(path.name.split(".tmp.", 1)[0])  # x.weights.tmp.<writer pid>
        owner = file_owner(base)
        if owner is not None and owner.pid == server_pid:
            found.append(path.name)
    return sorted(found)


def diagnose(pids: Iterable[int]) -> str:
    """Where stuck processes are: kernel wait channel and, if py-spy is installed, Python stacks."""
    spy = shutil.which("py-spy")
    parts = []
    for pid in pids:
        try:
            wchan = Path(f"/proc/{pid}/wchan").read_text()
        except OSError:
            wchan = "?"
        parts.append(f"--- pid {pid} wchan={wchan}")
        if spy:
            try:
                done = subprocess.run(
                    [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
                )
                parts.append(done.stdout + done.stderr)
            except (OSError, subprocess.SubprocessError) as exc:
                parts.append(f"py-spy failed: {exc}")
    return "\n".join(parts)


class WaitTimeout(AssertionError):
    """A condition did not hold within its deadline."""


def wait_for(
    condition: Callable[[], bool],
    what: str,
    details: Callable[[], str] = lambda: "",
    deadline: float = 120.0,
) -> None:
    """Poll ``condition`` until true; raise :class:`WaitTimeout` naming ``what`` after
    ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise WaitTimeout(f"{what} within {deadline:g} s\n{details()}")
        time.sleep(0.2)
