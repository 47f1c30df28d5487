"""Readiness after a (simulated) sticky CUDA error, and requests cancelled while queued.

One server serves three nn.Module models (compile disabled, plain Python forwards):

* ``sticky``: ``y = x * 2``; a value of 13 makes the forward raise the text CUDA gives for an
  illegal memory access, which is what a real sticky error looks like to the backend;
* ``slow`` (default scheduler) and ``slow_batched`` (dynamic batcher): ``y = x``, plus ``seen``,
  the number of rows the instance has computed so far (this one included); a row whose value
  is positive makes the forward hold the instance first: it touches ``<signals>/running`` and
  waits for ``<signals>/release`` (at most that many seconds).

Cancellation needs gRPC (HTTP clients cannot cancel). The bundled tritonserver 2.51 can crash in
its gRPC server when a cancellation races with the response of the same request (server #7368,
#8034, fixed in 24.12), so the test cancels only requests queued behind an execution it holds.
The test orders its steps on what it observes (the held execution's ``running`` file, Triton's
pending-request gauge, the cancellations in its verbose log, our metrics), never on sleeps, so
it holds on a busy machine.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from pytorch_backend import metrics
from pytorch_backend.errors import RequestCancelled
from tests.client_utils import InferenceServerException, infer, write_model
from tests.integration.test_metrics import scrape, value
from tests.server_procs import wait_for

EAGER = json.dumps({"disable": True})

STICKY = """
import torch


class Sticky(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 13).any()):
            raise RuntimeError(
                "CUDA error: an illegal memory access was encountered\\n"
                "CUDA kernel errors might be asynchronously reported at some other API call"
            )
        return x * 2
"""

SLOW = """
import time
from pathlib import Path

import torch

SIGNALS = Path({signals!r})


class Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x: torch.Tensor):
        pause = float(x.max())
        if pause > 0:
            (SIGNALS / "running").touch()
            deadline = time.monotonic() + pause
            while not (SIGNALS / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        self.seen += x.shape[0]
        return x, torch.full((x.shape[0], 1), self.seen, dtype=torch.int64)
"""


def config(name: str, outputs: str, extra: str = "") -> str:
    return (
        f'name: "{name}" backend: "pytorch_python" max_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        f"output [ {outputs} ]\ninstance_group [ {{ kind: KIND_CPU count: 1 }} ]\n{extra}\n"
        'parameters { key: "TORCH_COMPILE_OPTIONAL_PARAMETERS" '
        f"value: {{ string_value: {json.dumps(EAGER)} }} }}\n"
        # the warm-up's zeros make the slow models fast: left unset, the check would be off
        'parameters { key: "ENABLE_CANCELLATION_CHECK" value: { string_value: "true" } }\n'
    )


DEADLINE = 60.0  # seconds for anything the tests wait for
#: What tritonserver's gRPC frontend logs (--log-verbose=1) when it passes a cancellation on.
CANCELLATION_ISSUED = "Issuing cancellation for"
Y = '{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }'
SEEN = '{ name: "seen" data_type: TYPE_INT64 dims: [ 1 ] }'


@pytest.fixture(scope="module")
def signal_root(tmp_path_factory) -> Path:
    """``<signal_root>/<model>``: where a Slow model says it holds an execution, and is released."""
    return tmp_path_factory.mktemp("faults-signals")


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory, signal_root):
    repo = tmp_path_factory.mktemp("faults-repo")
    write_model(repo, "sticky", config("sticky", Y), {"1/model.py": STICKY.encode()})
    for name, extra in (("slow", ""), ("slow_batched", "dynamic_batching { }")):
        (signal_root / name).mkdir()
        slow = SLOW.format(signals=str(signal_root / name))
        write_model(repo, name, config(name, f"{Y}, {SEEN}", extra), {"1/model.py": slow.encode()})
    return triton(repo, extra_args=("--log-verbose=1",))  # logs each cancellation


def x(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 1), value, dtype=np.float32)}


def test_models_report_ready_through_the_server(server):
    for name in ("sticky", "slow", "slow_batched"):
        assert httpclient.InferenceServerClient(server.http_url).is_model_ready(name)
        assert grpcclient.InferenceServerClient(server.grpc_url).is_model_ready(name)


def test_a_sticky_error_turns_every_later_request_into_unavailable(server):
    assert infer("http", server, "sticky", x(2.0))["y"].item() == 4.0
    with pytest.raises(InferenceServerException, match="illegal memory access") as failed:
        infer("grpc", server, "sticky", x(13.0))
    assert "model 'sticky' failed" in failed.value.message()
    for protocol, status in (("http", "503"), ("grpc", "StatusCode.UNAVAILABLE")):
        with pytest.raises(InferenceServerException) as refused:
            infer(protocol, server, "sticky", x(2.0))  # a good request, on a broken instance
        assert str(refused.value.status()) == status, refused.value
        message = refused.value.message()
        assert "model 'sticky'" in message and "illegal memory access" in message
        assert "reloaded or the server restarted" in message
    log = server.log_text()
    assert log.count("sticky CUDA error: RuntimeError: CUDA error: an illegal memory") == 1
    # Triton 2.51 never asks the model (is_ready needs a Python backend with readiness hooks),
    # so its ready endpoint still says ready: the UNAVAILABLE answers and the log are the signal.
    metadata = httpclient.InferenceServerClient(server.http_url).get_server_metadata()
    if tuple(int(p) for p in metadata["version"].split(".")[:2]) <= (2, 51):
        assert httpclient.InferenceServerClient(server.http_url).is_model_ready("sticky")
    # the other models are untouched
    assert infer("http", server, "slow", x(0.0))["y"].item() == 0.0


def pending(server, model: str) -> float:
    """Triton's count of ``model``'s requests that wait for an instance."""
    return value(scrape(server), "nv_inference_pending_request_count", model)


def cancellations(server) -> int:
    """Cancellations the server's gRPC frontend has passed on (logged with --log-verbose=1)."""
    return server.log_text().count(CANCELLATION_ISSUED)


@pytest.mark.parametrize("model", ["slow", "slow_batched"])
def test_requests_cancelled_while_queued_are_not_computed(server, signal_root, model):
    held = signal_root / model
    client = grpcclient.InferenceServerClient(server.grpc_url)
    seen_before = int(infer("grpc", server, model, x(0.0))["seen"].item())
    results: dict[str, object] = {}
    done = threading.Event()
    expected = 7  # the blocker and six queued requests

    def callback(key: str):
        def record(result, error) -> None:
            results[key] = error if error is not None else result.as_numpy("seen").item()
            if len(results) == expected:
                done.set()

        return record

    def send(key: str, pause: float):
        inputs = [grpcclient.InferInput("x", [1, 1], "FP32")]
        inputs[0].set_data_from_numpy(x(pause)["x"])
        return client.async_infer(model, inputs, callback(key))

    cancelled = ["q0", "q2", "q4"]
    send("blocker", DEADLINE)  # one execution, held until released
    try:
        wait_for((held / "running").exists, f"{model}: the blocker runs", deadline=DEADLINE)
        issued = cancellations(server)
        queued = {f"q{i}": send(f"q{i}", 0.0) for i in range(6)}
        wait_for(lambda: pending(server, model) == 6, "six requests queue", deadline=DEADLINE)
        for key in cancelled:
            queued[key].cancel()
        wait_for(
            lambda: cancellations(server) == issued + len(cancelled),
            "the server registers the cancellations",
            deadline=DEADLINE,
        )
    finally:
        (held / "release").touch()
    assert done.wait(DEADLINE), results
    for key in cancelled:
        assert isinstance(results[key], InferenceServerException), results
        assert "cancelled" in str(results[key]).lower()
    computed = [results[k] for k in ("blocker", "q1", "q3", "q5")]
    assert all(isinstance(v, int) for v in computed), results
    # the model computed the blocker and the three live requests, nothing for cancelled ones
    assert max(computed) == seen_before + 4, results
    assert int(infer("grpc", server, model, x(0.0))["seen"].item()) == seen_before + 5

    def counted() -> float:  # the metrics count them as cancelled (flushed between executes)
        return value(scrape(server), metrics.FAILED.name, model, kind=RequestCancelled.kind)

    wait_for(lambda: counted() == len(cancelled), "3 cancelled requests counted", deadline=DEADLINE)
    client.close()
