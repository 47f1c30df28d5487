"""Faults that Triton itself (the bundled tritonserver 2.51 and its Python backend) mishandles.

Each test asserts the server's known, wrong outcome, so that a server that fixes it fails the
test and tells us to update README "Known server issues". They run on a throwaway server of
their own: the last one kills it. A plain Python-backend model (``probe``, a trivial model.py that
records every execute) shows whether a request ever reaches a ``model.py``, i.e. whether this
backend could defend against it.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests import ts_models
from tests.bad_requests import CALC_MODULE, Case, RawInput, Text, send_raw, strings
from tests.client_utils import InferenceServerException, infer, write_model

PER_ITEM = "[ 1 ] reshape: { shape: [] }"
BATCHING = "max_batch_size: 4 dynamic_batching { max_queue_delay_microseconds: 2000000 }"

PROBE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

MARKER = {marker!r}


class TritonPythonModel:
    def execute(self, requests):
        with open(MARKER, "a") as f:
            f.write("execute %d\\n" % len(requests))
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()
            out = pb_utils.Tensor("OUTPUT__0", text.astype(np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def _config(name: str, backend: str, inputs: str, outputs: str, extra: str = "") -> str:
    return f"""
name: "{name}" backend: "{backend}" {BATCHING}
input [ {inputs} ] output [ {outputs} ] {extra}
"""


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    repo = tmp_path_factory.mktemp("known-issues-repo")
    artifacts = tmp_path_factory.mktemp("known-issues-artifacts")
    marker = artifacts / "probe-executes.txt"
    fp32 = '{ name: "%s" data_type: TYPE_FP32 dims: [ 4 ] }'
    compile_off = json.dumps('{"disable": true}')
    write_model(
        repo,
        "calc",
        _config(
            "calc",
            "pytorch_python",
            fp32 % "x",
            fp32 % "y",
            'parameters { key: "TORCH_COMPILE_OPTIONAL_PARAMETERS" '
            f"value: {{ string_value: {compile_off} }} }}",
        ),
        {"1/model.py": CALC_MODULE.encode()},
    )
    text_in = f'{{ name: "text" data_type: TYPE_STRING dims: {PER_ITEM} }}'
    text_out = f'{{ name: "OUTPUT__0" data_type: TYPE_STRING dims: {PER_ITEM} }}'
    lengths = '{ name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 1 ] }'
    write_model(
        repo,
        "text",
        _config("text", "pytorch_python", text_in, f"{text_out}, {lengths}"),
        {"1/model.pt": ts_models.save(Text(), artifacts / "text.pt")},
    )
    # dims [1] with reshape [] as this backend's string models; plain dims [1] would make the
    # core refuse the request ("expected 1 string elements ..., got 0")

    def string_io(name: str) -> str:
        return f'{{ name: "{name}" data_type: TYPE_STRING dims: {PER_ITEM} }}'

    write_model(
        repo,
        "probe",
        _config("probe", "python", string_io("text"), string_io("OUTPUT__0")),
        {"1/model.py": PROBE_MODEL.format(marker=str(marker)).encode()},
    )
    running = triton(repo)
    running.marker = marker
    return running


def _with_batch_mates(server, model: str, bad: Case, goods: list[dict]) -> tuple[object, list]:
    """Send ``bad`` with ``goods`` concurrently over HTTP; (bad's error, each good's outcome)."""

    def good(inputs):
        try:
            return infer("http", server, model, inputs)
        except InferenceServerException as error:
            return error

    def faulty():
        try:
            send_raw("http", server, model, bad)
        except InferenceServerException as error:
            return error

    with ThreadPoolExecutor(len(goods) + 1) as pool:
        futures = [pool.submit(good, inputs) for inputs in goods]
        bad_outcome = pool.submit(faulty).result(timeout=120)
        return bad_outcome, [f.result(timeout=120) for f in futures]


def test_a_batch_dimension_of_2_pow_40_fails_every_request_of_its_batch(server):
    """Core 2.51 lets a batch dim of 2**40 through (it counts no batch size for it); the Python
    backend then counts the request's [4] tensor as 4 rows and fails the whole batch."""
    row = np.full((1, 4), 0.25, dtype=np.float32)
    bad = Case("huge_batch", "calc", "core", (RawInput.of("x", row, shape=[2**40, 4]),))
    error, goods = _with_batch_mates(server, "calc", bad, [{"x": row}] * 3)
    texts = [str(g) for g in goods]
    assert all(isinstance(g, InferenceServerException) for g in goods), texts
    assert all("batch size 7 for 'calc_0', max allowed is 4" in t for t in texts), texts
    assert isinstance(error, InferenceServerException)
    # alone, it reaches this backend, which refuses the [4] tensor it was handed
    alone, _ = _with_batch_mates(server, "calc", bad, [])
    assert "model 'calc': input 'x' has shape [4]; the model expects [-1, 4]" in str(alone)


def test_a_string_length_prefix_past_the_payload_fails_every_request_of_its_batch(server):
    """The BYTES element says 100 bytes, 3 follow: the whole batch gets the bad one's error."""
    bad = Case(
        "string_length_prefix_overruns",
        "text",
        "core",
        (RawInput("text", [1, 1], "BYTES", (100).to_bytes(4, "little") + b"abc"),),
    )
    error, goods = _with_batch_mates(server, "text", bad, [{"text": strings(b"good")}] * 3)
    expected = "incomplete string data for inference input 'text', expecting string of length 100"
    assert expected in str(error)
    assert all(isinstance(g, InferenceServerException) and expected in str(g) for g in goods)


def test_a_batch_of_zero_strings_kills_the_server(server):
    """Known crash: a [0, 1] TYPE_STRING request (per-item strings: dims [1], reshape []) SIGSEGVs
    tritonserver 2.51 in TRITONBACKEND_ModelInstanceExecute of libtriton_python.so, before any
    model.py runs (the probe records no execute): no backend written in Python can defend."""
    process = server.server._proc
    zero = Case("batch0_strings", "probe", "core", (RawInput("text", [0, 1], "BYTES", b""),))
    with pytest.raises((InferenceServerException, ConnectionError, OSError)):
        send_raw("http", server, "probe", zero)
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() == -signal.SIGSEGV, process.poll()
    marker = Path(server.marker)
    assert not marker.exists(), marker.read_text()
    assert "Signal (11) received." in server.log_text()
    assert "libtriton_python.so" in server.log_text()
