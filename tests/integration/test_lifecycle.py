"""Lifecycle under load: reloads that overlap a finalizing instance, the reload harness, SIGKILL.

* A reload whose new instance starts while the old one is still busy: the old one's teardown must
  not take the new one's metric series with it (on 2.51 it did, and the new stub then wrote into
  freed memory in the server: heap corruption, then an abort).
* A short run of ``tests.soak.lifecycle`` (single, several-at-once and version-change reloads
  under HTTP and gRPC load, checked after every cycle), ending with exit code 0.
* SIGKILL of the server under load: no stub of it alive 5 s later, no shared-memory region of
  theirs left, a new server on the same ports.
"""

from __future__ import annotations

import json
import os
import re
import threading

import numpy as np
import pytest
import tritonclient.http as httpclient

from pytorch_backend import metrics
from tests.client_utils import write_model
from tests.server_procs import server_stubs, wait_for
from tests.soak import lifecycle

pytestmark = pytest.mark.slow

HOLDER = """
import time
from pathlib import Path

import torch

STARTED, RELEASE = Path({started!r}), Path({release!r})


class Holder(torch.nn.Module):
    \"\"\"y = x + 1; a request whose first value is positive holds the instance until RELEASE.\"\"\"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x[0, 0]) > 0:
            STARTED.touch()
            deadline = time.monotonic() + 300
            while not RELEASE.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return x + 1
"""
CONFIG = """
name: "holder" backend: "pytorch_python" max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "TORCH_COMPILE_OPTIONAL_PARAMETERS" value: { string_value: '{"disable": true}' } }
"""
ABORT = lifecycle.ABORT


def _answered(server) -> dict[str, float]:
    """``pytorch_backend_requests_answered_total`` of model ``holder``, per ``pid`` label (or
    ``-`` for a series without one)."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(metrics.ANSWERED.name + "{") and 'model="holder"' in line:
            pid = re.search(r'pid="(\d+)"', line)
            found[pid[1] if pid else "-"] = float(line.rsplit(" ", 1)[1])
    return found


def _infer(url: str, value: float) -> np.ndarray:
    client = httpclient.InferenceServerClient(url, network_timeout=300)
    try:
        x = np.full((1, 2), value, np.float32)
        item = httpclient.InferInput("x", [1, 2], "FP32")
        item.set_data_from_numpy(x)
        return client.infer("holder", [item]).as_numpy("y")
    finally:
        client.close()


def test_reload_over_a_busy_instance_keeps_the_new_instance_series(triton, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    source = HOLDER.format(started=str(started), release=str(release))
    write_model(tmp_path / "repo", "holder", CONFIG, {"1/model.py": source.encode()})
    running = triton(tmp_path / "repo", extra_args=("--model-control-mode=explicit",))
    admin = httpclient.InferenceServerClient(running.http_url, network_timeout=300)
    admin.load_model("holder")
    (old_pid,) = server_stubs(running.server.pid)
    held: list[np.ndarray] = []
    holder = threading.Thread(target=lambda: held.append(_infer(running.http_url, 1.0)))
    holder.start()
    wait_for(started.exists, "the old instance holds a request")
    admin.unload_model("holder")  # the old instance finalizes once its request is answered
    admin.load_model("holder")  # the new instance starts beside it, with the same names
    new_pids = set(server_stubs(running.server.pid)) - {old_pid}
    assert new_pids, "the new instance was loaded while the old one was still busy"
    release.touch()
    holder.join(timeout=300)
    assert held and np.allclose(held[0], 2.0)
    wait_for(lambda: old_pid not in server_stubs(running.server.pid), "the old stub exits")
    for _ in range(3):
        assert np.allclose(_infer(running.http_url, 0.0), 1.0)
    (new_pid,) = new_pids

    def new_series_counted() -> bool:
        return _answered(running).get(str(new_pid)) == 3

    wait_for(
        new_series_counted,
        "the new instance's answered series counts its 3 requests",
        details=lambda: f"series by pid: {_answered(running)}",
        deadline=30,
    )
    assert str(old_pid) not in _answered(running)  # the old one's series went with it
    admin.close()
    assert running.stop() == 0
    aborts = [line for line in running.log_text().splitlines() if ABORT.search(line)]
    assert aborts == []


def test_reload_harness_short_run(free_ports, tmp_path):
    repo = lifecycle.build_repository(tmp_path / "repo")
    cycles = int(os.environ.get("LIFECYCLE_CYCLES", "6"))
    summary = lifecycle.run_cycles(repo, tuple(free_ports(3)), tmp_path / "server.log", cycles, 1)
    print(json.dumps(summary, indent=2))
    assert summary["failures"] == []
    assert summary["cycles"] == cycles
    assert summary["server_exit_code"] == 0
    assert summary["wrong_answers"] == 0
    assert all(summary["answered"].get(m, 0) > 0 for m in lifecycle.MODELS)


def test_sigkill_leaves_no_stub_and_frees_the_ports(free_ports, tmp_path):
    repo = lifecycle.build_repository(tmp_path / "repo")
    summary = lifecycle.kill_check(repo, tuple(free_ports(3)), tmp_path / "server.log")
    print(json.dumps(summary, indent=2))
    assert summary["stubs"] == len(lifecycle.MODELS)
    assert summary["failures"] == []
    assert summary["stubs_alive_after_grace"] == 0
