# ruff: noqa: UP006, UP035  (TorchScript signatures spelled with typing generics on purpose)
"""Our metrics on Triton's metrics port after a known sequence of good, bad and batched requests."""

from __future__ import annotations

import concurrent.futures
import re
import urllib.request
from typing import List

import numpy as np
import pytest
import torch

from pytorch_backend import metrics
from pytorch_backend.step_times import STEPS
from tests.client_utils import InferenceServerException, infer, write_model
from tests.compat import STRINGS_NEED_NUMPY1
from tests.deploy_utils import dashboard_metrics, hpa_source_metrics
from tests.server_procs import wait_for

pytestmark = STRINGS_NEED_NUMPY1  # every model here takes a TYPE_STRING input

CONFIG = """
name: "{name}"
backend: "pytorch_python"
max_batch_size: 8
{batching}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] }},
        {{ name: "text" data_type: TYPE_STRING dims: [ 1 ] reshape: {{ shape: [ ] }} }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }} ]
{parameters}
"""
# A full batch (8 rows) leaves the queue at once; a partial one would wait 30 s.
FILL_BATCH = (
    "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 30000000 }"
)
METRICS_OFF = 'parameters { key: "ENABLE_METRICS" value: { string_value: "false" } }'


class Metered(torch.nn.Module):
    """y = x + 1; raises on a negative x (a model error); strings make bad input possible."""

    def forward(self, x: torch.Tensor, text: List[str]) -> torch.Tensor:
        if bool((x < 0).any()):
            raise RuntimeError("negative input is not allowed")
        return x + 1


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    repo = tmp_path_factory.mktemp("metrics-repo")
    artifact = tmp_path_factory.mktemp("metrics-artifacts") / "model.pt"
    torch.jit.save(torch.jit.script(Metered()), str(artifact))
    models = {
        "metered": ("dynamic_batching { }", ""),
        "gathered": (FILL_BATCH, ""),
        "quiet": ("dynamic_batching { }", METRICS_OFF),
    }
    for name, (batching, parameters) in models.items():
        config = CONFIG.format(name=name, batching=batching, parameters=parameters)
        write_model(repo, name, config, {"1/model.pt": artifact})
    return triton(repo)


def request(rows: int, sign: float = 1.0, text: bytes = b"ok") -> dict[str, np.ndarray]:
    return {
        "x": np.full((rows, 2), sign, dtype=np.float32),
        "text": np.array([[text]] * rows, dtype=np.object_),
    }


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """Every sample of the metrics endpoint: (name, labels) -> value."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.metrics_url, timeout=10) as response:
        text = response.read().decode("utf-8")
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples, name: str, model: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``model`` and ``labels``."""
    wanted = {("model", model), *labels.items()}
    found = [v for (n, lab), v in samples.items() if n == name and wanted <= lab]
    assert found, f"no sample {name} for {wanted}"
    return sum(found)


@pytest.fixture(scope="module")
def after_known_requests(server):
    """Send the known sequence once; return the scrape that follows."""
    infer("http", server, "metered", request(1))  # good: 1 row
    infer("grpc", server, "metered", request(3))  # good: 3 rows
    with pytest.raises(InferenceServerException, match="UTF-8"):
        infer("http", server, "metered", request(1, text=b"\xff\xfe"))  # bad input
    with pytest.raises(InferenceServerException, match="negative input"):
        infer("grpc", server, "metered", request(2, sign=-1.0))  # model error: 2 rows ran
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # four requests, one execution
        results = list(pool.map(lambda _: infer("grpc", server, "gathered", request(2)), range(4)))
    assert all(np.array_equal(r["y"], np.full((2, 2), 2.0)) for r in results)
    infer("http", server, "quiet", request(1))

    def flushed() -> bool:  # the instances flush at most once a FLUSH_SECONDS, between executes
        samples = scrape(server)
        try:
            failed = sum(
                value(samples, metrics.FAILED.name, "metered", kind=k) for k in metrics.ERROR_KINDS
            )
            return (
                value(samples, metrics.ANSWERED.name, "metered") == 2
                and failed == 2
                and value(samples, metrics.ANSWERED.name, "gathered") == 4
            )
        except AssertionError:  # a series not there yet
            return False

    wait_for(flushed, "every request is counted on the metrics port", deadline=60)
    return scrape(server)


def test_requests_answered_and_failed_per_kind(after_known_requests):
    s = after_known_requests
    assert value(s, metrics.ANSWERED.name, "metered") == 2
    failed = {k: value(s, metrics.FAILED.name, "metered", kind=k) for k in metrics.ERROR_KINDS}
    assert failed == {"bad_input": 1, "model_error": 1, "cancelled": 0, "unavailable": 0}
    # Why our counters exist: Triton counts both failed requests as successes.
    assert value(s, "nv_inference_request_success", "metered") == 4
    assert value(s, "nv_inference_request_failure", "metered") == 0


def test_rows_forwards_and_time_histograms(after_known_requests):
    s = after_known_requests
    rows, forward = metrics.ROWS.name, metrics.FORWARD.name
    # four executions: three reached a forward (1, 3 and 2 rows), the bad input did not
    assert value(s, rows + "_count", "metered") == 3
    assert value(s, rows + "_sum", "metered") == 6
    assert value(s, rows + "_bucket", "metered", le="4") == 3
    assert value(s, rows + "_bucket", "metered", le="2") == 2
    assert value(s, rows + "_bucket", "metered", le="+Inf") == 3
    assert value(s, metrics.FORWARDS.name, "metered") == 3
    assert value(s, forward + "_count", "metered") == 3
    assert value(s, metrics.PREPARE.name + "_count", "metered") == 4
    assert value(s, metrics.RESPOND.name + "_count", "metered") == 4
    assert value(s, forward + "_sum", "metered") > 0
    assert value(s, metrics.PADDED.name, "metered") == 0  # TorchScript never pads
    assert value(s, metrics.RECOMPILATIONS.name, "metered") == 0
    assert 0 < value(s, metrics.LOAD.name, "metered") < 600


def test_concurrent_requests_gathered_into_one_execution(after_known_requests):
    s = after_known_requests
    assert value(s, metrics.ANSWERED.name, "gathered") == 4
    assert value(s, metrics.ROWS.name + "_count", "gathered") == 1
    assert value(s, metrics.ROWS.name + "_sum", "gathered") == 8
    assert value(s, metrics.FORWARDS.name, "gathered") == 1


def test_series_carry_model_version_and_instance(after_known_requests):
    labels = [lab for (n, lab) in after_known_requests if n == metrics.ANSWERED.name]
    names = {dict(lab)["model"]: dict(lab) for lab in labels}
    assert names["metered"]["version"] == "1"
    assert names["metered"]["model_instance"].startswith("metered")
    assert names["metered"]["pid"].isdigit()  # the stub's: a reload never reuses a live one's


def test_enable_metrics_false_creates_none(after_known_requests):
    s = after_known_requests
    assert value(s, "nv_inference_request_success", "quiet") == 1
    ours = [n for (n, lab) in s if n.startswith("pytorch_backend_") and ("model", "quiet") in lab]
    assert ours == []


def test_the_autoscaler_and_dashboard_metrics_exist_in_a_real_scrape(after_known_requests):
    names = {n for n, _ in after_known_requests}
    needed = hpa_source_metrics()
    assert needed, "the prometheus-adapter rule names no source metric"
    assert needed <= names, f"missing from the scrape: {needed - names}"
    # GPU-only series (CUDA memory, the sticky flag) do not exist on this CPU server
    gpu_only = {s.name for s in (metrics.CUDA_ALLOCATED, metrics.CUDA_RESERVED, metrics.STICKY)}
    optional = gpu_only | {metrics.WARMUP.name, metrics.SEQUENCES.name}
    used = {n for n in dashboard_metrics() if n not in optional}
    assert used <= names, f"the dashboard queries metrics the server lacks: {used - names}"


def test_the_step_profile_of_a_fast_model_that_does_not_check_cancellation(
    server, after_known_requests
):
    s = after_known_requests
    seconds = {step: value(s, metrics.STEP_SECONDS.name, "metered", step=step) for step in STEPS}
    assert all(seconds[step] > 0 for step in STEPS if step != "cancel_check"), seconds
    assert seconds["forward"] == pytest.approx(value(s, metrics.FORWARD.name + "_sum", "metered"))
    # a forward this small costs less than asking Triton about cancellation: auto turned it off
    assert seconds["cancel_check"] == 0
    line = re.search(
        r"instance 'metered[^']*': ENABLE_CANCELLATION_CHECK = (.*)", server.log_text()
    )
    assert line is not None and line.group(1).startswith("auto -> false (a forward of "), line
