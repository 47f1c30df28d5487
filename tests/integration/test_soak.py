"""A short soak (``tests/soak/soak.py``) against a real server: nothing lost, nothing wrong.

One minute (``SOAK_SECONDS`` overrides) of 64 concurrent clients over HTTP and gRPC against
TorchScript, ``.pt2``, string and slow models, 10 % faulty requests and 1 % (of gRPC requests)
cancelled while queued. Every answer must match the client's reference, every failure must be
the one its fault expects, no stub may restart and no stub's RSS may grow by more than 5 % after
the first tenth of the run.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.soak import soak
from tests.soak.models import build_repository

pytestmark = pytest.mark.slow


def test_short_soak(triton, tmp_path):
    running = triton(build_repository(tmp_path / "repo"))
    summary = soak.run(
        running.http_url,
        running.grpc_url,
        running.server.pid,
        seconds=float(os.environ.get("SOAK_SECONDS", "60")),
        metrics_url=running.metrics_url,
    )
    print(json.dumps(summary, indent=2))
    assert summary["sent"] > 1000
    assert summary["mismatched"] == 0, summary["mismatch_examples"]
    assert summary["failed_unexpectedly"] == 0, summary["unexpected_examples"]
    assert summary["answered"] > 0.8 * summary["sent"]
    assert set(summary["failed_as_expected_by_kind"]) == set(soak.EXPECTED)
    assert summary["cancelled_by_client"] > 0
    assert summary["server_failures_by_kind"].get("cancelled", 0) > 0  # some reached the model
    assert len(summary["stubs"]) == 5 and summary["stub_restarts"] == 0
    assert summary["max_stub_rss_growth_pct"] <= 5.0, summary["stubs"]
    assert running.server.returncode is None  # the server survived
