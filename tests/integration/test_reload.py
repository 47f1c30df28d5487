"""A short reload-hygiene run (``tests/soak/reload.py``): nothing stays behind an unload.

Two cycles (``RELOAD_CYCLES`` overrides) of loading a TorchScript model, a ``.pt2`` package and a
weight-sharing model through the repository API, checking an answer of each and unloading them:
after every cycle no stub of the server is left and no file of the server is in ``/dev/shm``; the
server's descriptors come back to their count after the first cycle, and it stops cleanly.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.soak import reload
from tests.soak.models import build_repository

pytestmark = pytest.mark.slow


def test_load_unload_cycles_leave_nothing_behind(triton, tmp_path):
    repo = build_repository(tmp_path / "repo", reload.MODELS)
    running = triton(repo, extra_args=("--model-control-mode=explicit",))
    cycles = int(os.environ.get("RELOAD_CYCLES", "2"))
    summary = reload.run(running.http_url, running.server.pid, cycles)
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}, indent=2))
    assert summary["cycles"] == cycles
    assert summary["stubs_left_max"] == 0
    assert summary["shm_files_left_max"] == 0
    fds = summary["server_fds"]
    assert fds["last"] <= fds["first"] + 2, summary["curve"]
    assert running.stop() == 0
