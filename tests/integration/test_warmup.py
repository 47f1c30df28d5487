"""Warm-up before READY, end to end: each instance runs its batch buckets inside ``initialize``
(logged), the first request after READY is answered, the parameters turn it off or set the
buckets, and Triton's own ``model_warmup`` keeps working beside it."""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pytest
import torch

from tests import aoti_models
from tests.client_utils import PROTOCOLS, infer, write_model


class Mlp(torch.nn.Module):
    """y = relu(x W1 + b1) W2 + b2, 4 -> 8 -> 3, fixed weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def mlp_config(name: str, parameters: dict[str, str] | None = None, extra: str = "") -> str:
    params = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in (parameters or {}).items()
    )
    return (
        f'name: "{name}" backend: "pytorch_python" max_batch_size: 8\n'
        "dynamic_batching { preferred_batch_size: [ 6 ] }\n"
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        f"{extra}\n{params}"
    )


TRITON_WARMUP = """model_warmup [ {
  name: "zeros" batch_size: 2
  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
} ]"""

PADDED = """name: "padded" backend: "pytorch_python" platform: "torch_aoti" max_batch_size: 16
dynamic_batching { }
input [ { name: "ARGS[0]" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "RESULT" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]"""


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    repo = tmp_path_factory.mktemp("warmup-repo")
    scripted = tmp_path_factory.mktemp("warmup-model") / "model.pt"
    torch.jit.script(Mlp().eval()).save(str(scripted))
    files = {"1/model.pt": scripted}
    write_model(repo, "default", mlp_config("default"), files)
    write_model(repo, "sizes", mlp_config("sizes", {"WARMUP_BATCH_SIZES": "3,1"}), files)
    write_model(repo, "off", mlp_config("off", {"WARMUP": "false"}, TRITON_WARMUP), files)
    write_model(repo, "too_big", mlp_config("too_big", {"WARMUP_BATCH_SIZES": "1,64"}), files)
    write_model(repo, "padded", PADDED, {"1/model.pt2": aoti_models.build_padded()})
    return triton(repo)


def expected(x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return Mlp().eval()(torch.from_numpy(x)).numpy()


def warmup_lines(log: str, model: str) -> list[str]:
    return re.findall(rf"model '{model}' instance '{model}_[0-9_]+': (warm-up over [^\n]*)", log)


def answered(server, model: str) -> float:
    """``pytorch_backend_requests_answered_total`` of ``model`` (0 before the first flush)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    pattern = rf'pytorch_backend_requests_answered_total{{[^}}]*model="{model}"[^}}]*}} (\S+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_triton_model_warmup_still_runs_beside_ours(server):
    # Runs first in this module, before any client request. "off" has WARMUP false and a
    # model_warmup of its own, which Triton runs through execute before READY; our own warm-up
    # does not count as answered requests ("default" answered none).
    deadline = time.monotonic() + 15
    while answered(server, "off") < 1 and time.monotonic() < deadline:
        time.sleep(0.5)  # the metrics are flushed once a second
    assert answered(server, "off") >= 1  # Triton sends batch_size 2 as two requests
    assert answered(server, "default") == 0


def test_each_instance_warms_up_over_its_buckets_before_ready(server):
    log = server.log_text()
    (line,) = warmup_lines(log, "default")
    # powers of two up to max_batch_size 8, and the preferred batch size 6; TorchScript: 3 runs
    assert line.startswith("warm-up over batch sizes [1, 2, 4, 6, 8]: 15 run(s) (3 per batch size)")
    (line,) = warmup_lines(log, "sizes")
    assert line.startswith("warm-up over batch sizes [1, 3]: 6 run(s)")
    (line,) = warmup_lines(log, "padded")  # a .pt2 runs once per size, padded below 3
    assert line.startswith("warm-up over batch sizes [1, 2, 4, 8, 16]: 5 run(s) (1 per batch size)")
    assert warmup_lines(log, "off") == []
    assert re.search(r"model 'off' instance 'off_[0-9_]+': WARMUP = false", log)
    for model in ("default", "sizes", "off", "padded"):
        assert server.model(model).state == "READY"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_first_requests_after_ready_are_answered(server, protocol):
    x = np.random.default_rng(3).random((2, 4), dtype=np.float32)
    for model in ("default", "sizes", "off"):
        out = infer(protocol, server, model, {"x": x})["y"]
        np.testing.assert_allclose(out, expected(x), rtol=1e-5, atol=1e-6)
    v = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_allclose(
        infer(protocol, server, "padded", {"ARGS[0]": v})["RESULT"], v * 2 + 1
    )


def test_a_warmup_batch_size_above_max_fails_the_load(server):
    status = server.model("too_big")
    assert status.state == "UNAVAILABLE"
    assert "WARMUP_BATCH_SIZES" in status.reason
    assert "batch size 64 exceeds max_batch_size 8" in status.reason
