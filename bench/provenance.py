"""What every saved benchmark result records about its run: machine, versions, load, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


def git_commit() -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files differ from it (None: no git)."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def provenance() -> dict:
    """Machine, versions, git commit, the date and the load average now."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "load_average_start": list(os.getloadavg()),
        "torch": torch.__version__,
        "torch_threads_in_process": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
