"""Readiness after a (simulated) sticky CUDA error, and requests cancelled while queued.

One server serves three nn.Module models (compile disabled, plain Python forwards):

* ``sticky``: ``y = x * 2``; a value of 13 makes the forward raise the text CUDA gives for an
  illegal memory access, which is what a real sticky error looks like to the backend;
* ``slow`` (default scheduler) and ``slow_batched`` (dynamic batcher): ``y = x``, plus ``seen``,
  the number of rows the instance has computed so far (this one included); a row whose value
  is positive makes the forward sleep that many seconds first.

Cancellation needs gRPC (HTTP clients cannot cancel). The bundled tritonserver 2.51 can crash in
its gRPC server when a cancellation races with the response of the same request (server #7368,
#8034, fixed in 24.12), so the test cancels only requests queued behind a multi-second execution.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from pytorch_backend import metrics
from pytorch_backend.errors import RequestCancelled
from tests.client_utils import InferenceServerException, infer, write_model
from tests.integration.test_metrics import scrape, value

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

import torch


class Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x: torch.Tensor):
        pause = float(x.max())
        if pause > 0:
            time.sleep(pause)
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


Y = '{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }'
SEEN = '{ name: "seen" data_type: TYPE_INT64 dims: [ 1 ] }'


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    repo = tmp_path_factory.mktemp("faults-repo")
    write_model(repo, "sticky", config("sticky", Y), {"1/model.py": STICKY.encode()})
    write_model(repo, "slow", config("slow", f"{Y}, {SEEN}"), {"1/model.py": SLOW.encode()})
    write_model(
        repo,
        "slow_batched",
        config("slow_batched", f"{Y}, {SEEN}", "dynamic_batching { }"),
        {"1/model.py": SLOW.encode()},
    )
    return triton(repo)


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


@pytest.mark.parametrize("model", ["slow", "slow_batched"])
def test_requests_cancelled_while_queued_are_not_computed(server, model):
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

    send("blocker", 4.0)  # one execution that sleeps 4 s
    time.sleep(1.5)  # it is running now: the next ones queue behind it
    queued = {f"q{i}": send(f"q{i}", 0.0) for i in range(6)}
    time.sleep(0.3)
    cancelled = ["q0", "q2", "q4"]
    for key in cancelled:
        queued[key].cancel()
    assert done.wait(120), results
    for key in cancelled:
        assert isinstance(results[key], InferenceServerException), results
        assert "cancelled" in str(results[key]).lower()
    computed = [results[k] for k in ("blocker", "q1", "q3", "q5")]
    assert all(isinstance(v, int) for v in computed), results
    # the model computed the blocker and the three live requests, nothing for cancelled ones
    assert max(computed) == seen_before + 4, results
    assert int(infer("grpc", server, model, x(0.0))["seen"].item()) == seen_before + 5
    time.sleep(3 * metrics.FLUSH_SECONDS)
    counted = value(scrape(server), metrics.FAILED.name, model, kind=RequestCancelled.kind)
    assert counted == len(cancelled)  # the metrics count them as cancelled
    client.close()
