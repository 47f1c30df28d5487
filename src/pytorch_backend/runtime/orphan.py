"""Orphan exit: a stub whose tritonserver died ends at once instead of lingering.

When tritonserver is killed (SIGKILL, the OOM killer, a crash) its Python-backend stubs lose
their parent. The stub's own health thread notices within 300 ms, but then tears the interpreter
down the ordinary way while holding the GIL; with torch loaded and our metric series alive (each
one's teardown is a message to the dead server, never answered) that hangs in a futex wait. The
orphan then keeps its memory, its GPU memory, its shared-memory region and the listening sockets
it inherited from the server, so a client of the dead server's ports hangs instead of failing.
A thread of our own cannot help: it needs the GIL that the hung teardown holds.

So :func:`watch` starts a watchdog *process* per stub, a few lines of POSIX shell that need
nothing of the stub. Every :data:`POLL_SECONDS` it reads, from ``/proc``, its own parent (the
stub: when that changes, the stub ended and the watchdog exits) and the stub's parent (the server
*process*, not one of its threads: it changes only when the server is gone, so the check cannot
fire while the server lives). When the server is gone it unlinks the stub's shared-memory
region (nothing can attach to it any more) and sends the stub SIGKILL. It runs in a session of
its own, so a SIGKILL to the server's whole process group (a supervisor's last resort) kills the
server and the stub but not the watchdog, which then finds both gone and unlinks the region.
:func:`orphaned` lets ``finalize`` skip a teardown that would wait on the dead server.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

POLL_SECONDS = 0.5
#: argv[0] of the watchdog, as ``ps`` shows it.
WATCHDOG_NAME = "pytorch_backend-orphan-watchdog"
#: ``sh -c`` script; $1 the stub's pid, $2 the server's pid, $3 the region file ('' for none).
WATCHDOG = """
stub=$1 server=$2 region=$3
while :; do
  read -r line < /proc/$$/stat || exit 0
  set -- ${line##*) }
  if [ "$2" != "$stub" ]; then
    [ -n "$region" ] && [ ! -d /proc/$server ] && rm -f "$region"
    exit 0
  fi
  read -r line < /proc/$stub/stat || exit 0
  set -- ${line##*) }
  if [ "$2" != "$server" ]; then
    [ -n "$region" ] && rm -f "$region"
    kill -9 "$stub"
    exit 0
  fi
  sleep %s
done
"""

_state: dict[str, object] = {}


def orphaned() -> bool:
    """True once the server watched by :func:`watch` is gone (False if it never ran)."""
    server = _state.get("server")
    return server is not None and os.getppid() != server


def exit_now() -> None:
    """End this process at once, running no teardown (an orphan's)."""
    os._exit(70)


def watch(region: str | None = None, poll: float = POLL_SECONDS) -> subprocess.Popen | None:
    """Start this process's watchdog once (None if it already runs, or no ``/bin/sh``).

    ``region``: the file to unlink when the server is gone (the stub's shared-memory region).
    """
    if "server" in _state or not Path("/bin/sh").exists():
        return None
    _state["server"] = os.getppid()
    argv = ["/bin/sh", "-c", WATCHDOG % poll, WATCHDOG_NAME, str(os.getpid()),
            str(_state["server"]), region or ""]  # fmt: skip
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=True,  # never the server's listening sockets, which the stub inherited
        start_new_session=True,  # a SIGKILL to the server's process group spares it
    )  # fmt: skip
    _state["watchdog"] = process
    return process


def stub_shm_region(argv: list[str]) -> str | None:
    """``/dev/shm/<region>`` of a Python-backend stub, from its command line
    (``stub <model.py> <region> ...``); None when the command line is not a stub's."""
    if len(argv) < 3 or not argv[0].endswith("triton_python_backend_stub"):
        return None
    name = argv[2].lstrip("/")
    if not name or "/" in name:
        return None
    return str(Path("/dev/shm") / name)
