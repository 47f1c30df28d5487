"""The /dev/shm sweep touches only its own server's files and those of servers that are gone.

Two "servers" are two live processes (their pid and start time name the files they own); a third
one is started and killed to stand for a server that is gone.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pytorch_backend.runtime.shm_files import (
    PREFIX,
    Owner,
    file_owner,
    file_stem,
    server_owner,
    sweep,
)
from pytorch_backend.runtime.weight_sharing import share_module_weights


@pytest.fixture
def servers() -> Iterator[tuple[Owner, Owner, Owner]]:
    """(this server, another live server, a server that is gone)."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    other = subprocess.Popen(sleeper)
    gone_process = subprocess.Popen(sleeper)
    gone = Owner.of(gone_process.pid)
    gone_process.kill()
    gone_process.wait(timeout=60)
    try:
        yield Owner.of(os.getpid()), Owner.of(other.pid), gone
    finally:
        other.kill()
        other.wait(timeout=60)


def leftover(directory: Path, model: str, owner: Owner | None) -> Path:
    """An unheld weights + lock pair of ``model`` (a name without owner when ``owner`` is None)."""
    stem = file_stem(f"{model}|1|/m.pt", owner) if owner else f"{PREFIX}{model}_legacy"
    (directory / f"{stem}.lock").write_bytes(b"")
    (directory / f"{stem}.weights").write_bytes(b"w" * 64)
    return directory / f"{stem}.weights"


def test_owners_are_named_in_the_files_and_recognised(servers, tmp_path):
    me, other, gone = servers
    assert me.alive() and other.alive() and not gone.alive()
    assert Owner(me.pid, me.start + 1).alive() is False  # a reused pid is another process
    path = leftover(tmp_path, "m", other)
    assert file_owner(path) == other == file_owner(path.with_suffix(".lock"))
    assert file_owner(tmp_path / f"{PREFIX}m_legacy.weights") is None
    assert server_owner() == Owner.of(os.getppid())


def test_the_sweep_spares_another_live_servers_files(servers, tmp_path):
    me, other, gone = servers
    mine = leftover(tmp_path, "a", me)
    theirs = leftover(tmp_path, "a", other)  # same model, other server: another file
    orphan = leftover(tmp_path, "b", gone)
    legacy = leftover(tmp_path, "c", None)
    assert len({mine, theirs, orphan}) == 3
    lines: list[str] = []
    assert sweep(tmp_path, lines.append, owner=me) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [theirs.name, theirs.with_suffix(".lock").name]
    )
    assert all(str(p) in "\n".join(lines) for p in (mine, orphan, legacy))
    # the other server sweeps its own once it no longer holds it
    assert sweep(tmp_path, lines.append, owner=other) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_gone_servers_file_that_a_process_still_maps_is_kept(servers, tmp_path):
    me, _, gone = servers
    orphan = leftover(tmp_path, "b", gone)
    fd = os.open(orphan, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # an instance of that server still maps it
    try:
        assert sweep(tmp_path, lambda _: None, owner=me) == 0
        assert orphan.exists()
    finally:
        os.close(fd)
    assert sweep(tmp_path, lambda _: None, owner=me) == 1


def test_a_load_leaves_another_servers_unheld_file_alone(servers, tmp_path):
    me, other, _ = servers
    theirs = leftover(tmp_path, "shared", other)
    info = share_module_weights(
        torch.nn.Linear(4, 4), "shared|1|/m.pt", lambda _: None, tmp_path, owner=me
    )
    try:
        assert info.created and info.path != theirs and file_owner(info.path) == me
        assert theirs.exists()
    finally:
        assert info.release() is True
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [theirs.name, theirs.with_suffix(".lock").name]
    )
