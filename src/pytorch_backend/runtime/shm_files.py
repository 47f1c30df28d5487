"""The ``/dev/shm`` file protocol behind weight sharing: names, locks, holders, counts, sweep.

See :mod:`.weight_sharing` for the protocol as a whole. Every wait here is bounded, so neither
a load nor a release (``finalize``, interpreter exit) can hang on another process.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PREFIX = "pytorch_backend_w_"
RELEASE_TIMEOUT = 5.0  # bound on waiting for ``L`` (and the holder's mutex) in release
_ATEXIT_TIMEOUT = 1.0


def weights_key(model_name: str, version: str | int, artifact: str | os.PathLike[str]) -> str:
    """A key naming one artifact: model, version, resolved path, mtime and size."""
    path = Path(artifact).resolve()
    stat = path.stat()
    return f"{model_name}|{version}|{path}|{stat.st_mtime_ns}|{stat.st_size}"


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if there is no such one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; fields after ')' start at 3
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Owner:
    """The server a weights file belongs to: its pid and start time (a reused pid differs)."""

    pid: int
    start: int  # 0: unknown (no /proc)

    @classmethod
    def of(cls, pid: int) -> Owner:
        return cls(pid, _start_time(pid) or 0)

    @property
    def tag(self) -> str:
        return f"o{self.pid}-{self.start}"

    def alive(self) -> bool:
        """Whether the owning process still runs (the same process, not a reuse of its pid)."""
        if self.start == 0:
            return _pid_alive(self.pid)
        return _start_time(self.pid) == self.start


def server_owner() -> Owner:
    """This process's server: a stub's parent is the tritonserver that started it."""
    return Owner.of(os.getppid())


_OWNER_TAG = re.compile(r"_o(\d+)-(\d+)\.(?:lock|weights)$")


def file_owner(path: Path) -> Owner | None:
    """The owner named in a weights or lock file's name (None: a name without one)."""
    match = _OWNER_TAG.search(path.name)
    return Owner(int(match[1]), int(match[2])) if match else None


def file_stem(key: str, owner: Owner | None = None) -> str:
    """File name stem for ``key``: readable model-name part, a hash of key and user id, and the
    owning server (default :func:`server_owner`), so one server's files never shadow another's."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", key.split("|", 1)[0])[:40]
    digest = hashlib.sha256(f"{os.getuid()}|{key}".encode()).hexdigest()[:24]
    return f"{PREFIX}{readable}_{digest}_{(owner or server_owner()).tag}"


def _lock(path: Path, timeout: float = 0.0) -> int | None:
    """Exclusive flock on ``path`` (created if missing); None if not had within ``timeout`` s.

    Polls with ``LOCK_NB`` instead of a blocking ``flock``: no caller can wait forever for a
    lock that another process keeps (or never gives back). ``timeout=0`` tries once.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    delay = 0.002
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _same_file(path, os.fstat(fd)):
            return fd
        os.close(fd)  # the lock file was deleted (and maybe recreated) meanwhile: lock the new one
        if time.monotonic() >= deadline:
            return None


def _share_lock(fd: int, timeout: float) -> bool:
    """Shared flock on ``fd`` within ``timeout`` s (polled, like :func:`_lock`)."""
    deadline = time.monotonic() + max(0.0, timeout)
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)


def _same_file(path: Path, stat: os.stat_result) -> bool:
    """True when ``path`` currently names the file ``stat`` describes."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (current.st_ino, current.st_dev) == (stat.st_ino, stat.st_dev)


def _mapped_by_all(lock_fd: int, data_path: Path, instances: int) -> bool:
    """Count one more mapping of ``data_path``; True when that makes ``instances``."""
    try:
        return _count_mapping(lock_fd, os.stat(data_path)) >= instances
    except OSError:  # cannot count: keep the file; the last release deletes it
        return False


def _count_mapping(lock_fd: int, stat: os.stat_result) -> int:
    """Add one to the mapping count of the weights file ``stat`` (kept in the lock file)."""
    try:
        dev, ino, count = (int(x) for x in os.pread(lock_fd, 100, 0).split())
    except ValueError:
        dev = ino = count = -1
    if (dev, ino) != (stat.st_dev, stat.st_ino):
        count = 0  # a new weights file (or a new lock file): start over
    count += 1
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{stat.st_dev} {stat.st_ino} {count}\n".encode(), 0)
    return count


def _unused(path: Path) -> bool:
    """True when no process holds a shared lock on the weights file ``path`` (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(
    directory: Path,
    log: Callable[[str], None],
    keep: Path | None = None,
    owner: Owner | None = None,
) -> int:
    """Delete weights files of this backend in ``directory`` that no live process holds.

    Only files of ``owner`` (default: this process's server) or of a server that is gone are
    considered: another live server's files are never touched, even while none of its instances
    holds them (between a stub's death and its replacement, say). A considered file is provably
    stale when its lock can be had at once and nobody holds a shared lock on it (the kernel drops
    those when a process dies). Lock files without a weights file and temporary files of dead
    writers go too. Never waits; skips what it cannot check. Returns the number of weights files
    deleted; ``log`` is called after every lock is released.
    """
    owner = owner or server_owner()
    removed: list[Path] = []
    for lock_path in sorted(directory.glob(f"{PREFIX}*.lock")):
        if keep is not None and lock_path == keep:
            continue
        named = file_owner(lock_path)
        if named is not None and named != owner and named.alive():
            continue  # another server's, and that server still runs
        try:
            fd = _lock(lock_path)
        except OSError:  # e.g. another user's file
            continue
        if fd is None:
            continue
        try:
            data_path = lock_path.with_suffix(".weights")
            if _unused(data_path):
                existed = data_path.exists()
                _remove(data_path)
                _remove(lock_path)
                if existed:
                    removed.append(data_path)
        except OSError:
            pass
        finally:
            os.close(fd)
    for tmp in directory.glob(f"{PREFIX}*.weights.tmp.*"):
        pid = tmp.name.rsplit(".", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                _remove(tmp)
    for data_path in removed:
        log(f"removed unused shared weights file {data_path}")
    return len(removed)


class _Holder:
    """One instance's reference to a weights file: a shared flock on its open descriptor."""

    def __init__(self, data_path: Path, lock_path: Path, fd: int) -> None:
        self.data_path = data_path
        self.lock_path = lock_path
        self.fd: int | None = fd
        self.stat = os.fstat(fd)
        self._mutex = threading.Lock()
        _HOLDERS.add(self)

    def release(self, timeout: float = RELEASE_TIMEOUT) -> bool:
        """Drop the reference; delete the files if no other instance holds them.

        Waits at most ``timeout`` s for anything; if the lock cannot be had by then the reference
        is still dropped and the deletion is left to the other holders (or the next sweep).
        """
        if not self._mutex.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            fd, self.fd = self.fd, None
            _HOLDERS.discard(self)
            if fd is None:
                return False
            lock_fd: int | None = None
            try:
                if not _same_file(self.data_path, self.stat):
                    return False  # already unlinked (every instance mapped it) or replaced
                lock_fd = _lock(self.lock_path, timeout)
                os.close(fd)  # drop this instance's shared lock before asking who else holds D
                fd = None
                if lock_fd is None:
                    return False  # the other holders (or the next sweep) will delete it
                if not self.data_path.exists():
                    _remove(self.lock_path)  # we hold it; no weights file left to guard
                    return False
                if _same_file(self.data_path, self.stat) and _unused(self.data_path):
                    _remove(self.data_path)
                    _remove(self.lock_path)
                    return True
                return False
            finally:
                if fd is not None:
                    os.close(fd)
                if lock_fd is not None:
                    os.close(lock_fd)
        except OSError:
            return False
        finally:
            self._mutex.release()


_HOLDERS: set[_Holder] = set()  # strong: a holder lives as long as its mapping may be in use


@atexit.register
def _release_all() -> None:
    for holder in list(_HOLDERS):
        with contextlib.suppress(OSError):
            holder.release(timeout=_ATEXIT_TIMEOUT)
