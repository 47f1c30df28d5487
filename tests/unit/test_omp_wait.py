"""The OpenMP wait policy the adapter sets before torch loads (``runtime.omp_wait``).

The end-to-end check (libgomp in a real stub spins 0 times) is in
``tests/integration/test_parameters.py``.
"""

from __future__ import annotations

import subprocess
import sys

from pytorch_backend.runtime import omp_wait


def test_sets_passive_when_the_environment_is_silent() -> None:
    environ: dict[str, str] = {}
    decided = omp_wait.prefer_passive(environ, modules={})
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert decided == "PASSIVE (set by the backend before torch loaded)"
    assert omp_wait.describe() == decided


def test_keeps_what_the_environment_gives() -> None:
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    decided = omp_wait.prefer_passive(environ, modules={})
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert decided == "ACTIVE (given in the environment)"


def test_says_so_when_torch_was_loaded_first() -> None:
    environ: dict[str, str] = {}
    decided = omp_wait.prefer_passive(environ, modules={"torch": object()})
    assert environ == {}  # too late: libgomp has read its environment already
    assert decided.startswith("libgomp's default (torch was loaded before")


def test_libgomp_takes_it_when_set_before_torch_loads() -> None:
    """In a fresh process, as in a stub: libgomp's spin count drops from its default to 0."""
    script = (
        "from pytorch_backend.runtime import omp_wait\n"
        "omp_wait.prefer_passive()\n"
        "import torch\n"
        "torch.ones(64, 64).sum()\n"
    )
    env = {"OMP_DISPLAY_ENV": "VERBOSE", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "GOMP_SPINCOUNT = '0'" in done.stderr, done.stderr
