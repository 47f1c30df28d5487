"""The bad-input matrix, end to end: one faulty request among good ones in one dynamic batch.

Each kind (``tests/bad_cases.py``) is sent over HTTP and gRPC concurrently with good requests to
a model whose dynamic batcher waits up to 2 s for a full batch of 4 rows, so the faulty request
and the good ones share one execute when the faulty one reaches the backend (Triton's statistics
prove it: one execution for the lot). The faulty request gets its error (asserted on the text;
the layer that answers is noted in the case), every good request gets the answer computed here,
and the server stays live. Malformed model loads (``tests/bad_loads.py``) go through the
repository API on the same server (``--model-control-mode=explicit``).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests import ts_models
from tests.bad_cases import CASES
from tests.bad_loads import LOADS
from tests.bad_requests import CALC_MODULE, MAX_BATCH, Case, Text, calc_reference, send_raw
from tests.client_utils import PROTOCOLS, InferenceServerException, client, infer, write_model
from tests.compat import STRINGS_NEED_NUMPY1

DELAY_US = 2_000_000  # the batcher waits for a full batch; a full one leaves at once
STATUS = {
    "invalid": ("400", "StatusCode.INVALID_ARGUMENT"),
    "internal": ("500", "StatusCode.INTERNAL"),
}
PER_ITEM = "[ 1 ] reshape: { shape: [] }"  # one string per row, List[str] for the model
NO_COMPILE = '{"disable": true}'


def _io(name: str, dtype: str, dims: str = "[ 4 ]") -> str:
    return f'{{ name: "{name}" data_type: {dtype} dims: {dims} }}'


def _config(name: str, inputs: list[str], outputs: list[str], extra: str = "") -> str:
    return f"""
name: "{name}"
backend: "pytorch_python"
max_batch_size: {MAX_BATCH}
dynamic_batching {{ max_queue_delay_microseconds: {DELAY_US} }}
input [ {", ".join(inputs)} ]
output [ {", ".join(outputs)} ]
{extra}
"""


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    repo = tmp_path_factory.mktemp("bad-inputs-repo")
    artifacts = tmp_path_factory.mktemp("bad-inputs-artifacts")
    compile_off = (
        'parameters { key: "TORCH_COMPILE_OPTIONAL_PARAMETERS" '
        f"value: {{ string_value: {json.dumps(NO_COMPILE)} }} }}\n"
        # a wrong output shape is one of the faults: refused for its request, as before
        'parameters { key: "OUTPUT_SHAPE_CHECK" value: { string_value: "error" } }'
    )
    write_model(
        repo,
        "calc",
        _config("calc", [_io("x", "TYPE_FP32")], [_io("y", "TYPE_FP32")], compile_off),
        {"1/model.py": CALC_MODULE.encode()},
    )
    write_model(
        repo,
        "pair",
        _config(
            "pair",
            [_io("INPUT0", "TYPE_FP32"), _io("INPUT1", "TYPE_FP32")],
            [_io("OUTPUT__0", "TYPE_FP32"), _io("OUTPUT__1", "TYPE_FP32")],
        ),
        {"1/model.pt": ts_models.save(ts_models.AddSub(), artifacts / "pair.pt")},
    )
    write_model(
        repo,
        "text",
        _config(
            "text",
            [_io("text", "TYPE_STRING", PER_ITEM)],
            [_io("OUTPUT__0", "TYPE_STRING", PER_ITEM), _io("OUTPUT__1", "TYPE_INT64", "[ 1 ]")],
        ),
        {"1/model.pt": ts_models.save(Text(), artifacts / "text.pt")},
    )
    return triton(
        repo,
        extra_args=(
            "--model-control-mode=explicit",
            "--load-model=calc",
            "--load-model=pair",
            "--load-model=text",
        ),
    )


# -- good requests and their references ----------------------------------------------------------


def _good(model: str, index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A one-row request for ``model`` and the answer computed here."""
    rng = np.random.default_rng(index)
    if model == "text":
        word = f"good-{index}-{rng.integers(1000)}"
        text = np.array([[word.encode()]], dtype=np.object_)
        return {"text": text}, {
            "OUTPUT__0": np.array([[word.upper().encode()]], dtype=np.object_),
            "OUTPUT__1": np.array([[len(word)]], dtype=np.int64),
        }
    a = rng.random((1, 4), dtype=np.float32)
    if model == "pair":
        b = rng.random((1, 4), dtype=np.float32)
        return {"INPUT0": a, "INPUT1": b}, {"OUTPUT__0": a - b, "OUTPUT__1": a + b}
    return {"x": a}, {"y": calc_reference(a)}


def _check_good(result: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(result) == set(expected)
    for name, want in expected.items():
        if want.dtype == np.object_:
            assert [bytes(v) for v in result[name].reshape(-1)] == list(want.reshape(-1))
        else:
            np.testing.assert_array_equal(result[name], want)


def _stats(server, model: str) -> tuple[int, int]:
    """(execution_count, inference_count) of ``model`` version 1, from Triton's statistics."""
    stats = client("http", server).get_inference_statistics(model, "1")["model_stats"][0]
    return int(stats["execution_count"]), int(stats["inference_count"])


def _send_bad(protocol: str, server, case: Case):
    """The faulty request: its outputs (data cases) or the error it got."""
    try:
        if case.raw or case.http_body is not None:
            send_raw(protocol, server, case.model, case)
            return None
        return infer(protocol, server, case.model, case.inputs, version=case.version)
    except InferenceServerException as error:
        return error


def _dump(kind: str, protocol: str, status: object, text: str) -> None:
    """With BAD_INPUTS_DUMP=<file>, record every error text (to review the wording)."""
    target = os.environ.get("BAD_INPUTS_DUMP")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps([kind, protocol, str(status), text]) + "\n")


# -- the matrix -----------------------------------------------------------------------------------


def test_the_matrix_has_at_least_forty_kinds():
    kinds = [c.kind for c in CASES] + [c.kind for c in LOADS]
    assert len(kinds) == len(set(kinds)) and len(kinds) >= 40


@pytest.mark.parametrize(
    ("case", "protocol"),
    [
        pytest.param(
            c,
            p,
            id=f"{c.kind}-{p}",
            marks=[STRINGS_NEED_NUMPY1] if c.model == "text" else [],
        )
        for c in CASES
        for p in PROTOCOLS
        if p in c.protocols
    ],
)
def test_a_bad_request_gets_its_own_answer_and_its_batch_is_served(server, case, protocol):
    # The faulty request joins the batch only if it gets past the core: fill the batch either way.
    joins = case.layer != "core"
    goods = [_good(case.model, i) for i in range(MAX_BATCH - (case.rows if joins else 0))]
    executions, _ = _stats(server, case.model)
    with ThreadPoolExecutor(len(goods) + 1) as pool:
        good_futures = [
            pool.submit(infer, protocol, server, case.model, inputs) for inputs, _ in goods
        ]
        bad = pool.submit(_send_bad, protocol, server, case).result(timeout=120)
        results = [f.result(timeout=120) for f in good_futures]
    for result, (_, expected) in zip(results, goods):
        _check_good(result, expected)
    if case.layer == "data":
        assert not isinstance(bad, Exception), f"{case.kind}: {bad}"
        case.answer(bad)
    else:
        assert isinstance(bad, InferenceServerException), f"{case.kind} was answered: {bad}"
        text = bad.message()
        _dump(case.kind, protocol, bad.status(), text)
        missing = [e for e in case.expected(protocol) if e not in text]
        assert not missing, f"{case.kind}: {missing} not in {text!r}"
        if case.layer == "backend":
            assert bad.status() in STATUS[case.code], bad.status()
    # one execute served the good requests together with the faulty one when it got that far
    deadline = time.monotonic() + 10
    while _stats(server, case.model)[0] == executions and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    assert _stats(server, case.model)[0] - executions == 1
    live = client(protocol, server)
    assert live.is_server_live() and live.is_model_ready(case.model)


@pytest.mark.parametrize(
    ("load", "protocol"),
    [pytest.param(c, PROTOCOLS[i % 2], id=c.kind) for i, c in enumerate(LOADS)],
)
def test_a_bad_model_fails_its_own_load_and_the_server_keeps_serving(server, load, protocol):
    repo = Path(server.server.repository)
    name = f"load_{load.kind}"
    load.write(repo / name)
    control = client(protocol, server)
    with pytest.raises(InferenceServerException) as info:
        control.load_model(name, config=json.dumps(load.config(name)))
    text = info.value.message()
    _dump(load.kind, protocol, info.value.status(), text)
    missing = [e for e in load.expect if e not in text]
    assert not missing, f"{load.kind}: {missing} not in {text!r}"
    assert f"model '{name}'" in text
    assert not control.is_model_ready(name)
    _serve_full_batch(protocol, server, "calc")


def _serve_full_batch(protocol: str, server, model: str) -> None:
    goods = [_good(model, 100 + i) for i in range(MAX_BATCH)]
    with ThreadPoolExecutor(MAX_BATCH) as pool:
        futures = [pool.submit(infer, protocol, server, model, inputs) for inputs, _ in goods]
        for future, (_, expected) in zip(futures, goods):
            _check_good(future.result(timeout=120), expected)
