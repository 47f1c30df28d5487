"""The engine: per-request validation, one gathered forward, split, and failure isolation."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pytorch_backend.config import parse_model_config
from pytorch_backend.engine import InferenceEngine
from pytorch_backend.errors import ExecutionError, RequestError
from pytorch_backend.executors.base import Capabilities
from pytorch_backend.executors.torchscript.executor import TorchScriptExecutor
from pytorch_backend.hooks import ExecuteStats, Hook, Hooks
from pytorch_backend.requests import RequestInputs
from pytorch_backend.strings import Strings, decode_strings
from tests import ts_models


def make_engine(module, inputs, outputs, max_batch_size=8, **kw):
    cfg = parse_model_config(
        {"name": "m", "max_batch_size": max_batch_size, "input": inputs, "output": outputs}
    )
    executor = TorchScriptExecutor(cfg, torch.jit.script(module), torch.device("cpu"))
    calls = []
    original = executor.run

    def counting_run(batch):
        calls.append(
            {k: (v.shape if isinstance(v, torch.Tensor) else len(v)) for k, v in batch.items()}
        )
        return original(batch)

    executor.run = counting_run
    return InferenceEngine(cfg, executor, **kw), calls


def fp32(name, dims=(2,)):
    return {"name": name, "data_type": "TYPE_FP32", "dims": list(dims)}


def req(**inputs):
    return RequestInputs(inputs)


def test_batched_requests_run_in_one_forward_and_split_back():
    engine, calls = make_engine(ts_models.Scale(), [fp32("x")], [fp32("y")])
    xs = [torch.rand(n, 2) for n in (1, 3, 2)]
    out = engine.infer([req(x=x) for x in xs])
    assert len(calls) == 1 and calls[0]["x"] == torch.Size([6, 2])
    for x, o in zip(xs, out):
        torch.testing.assert_close(o["y"], x * 2)


def test_single_request_is_passed_without_copy():
    seen = []
    engine, _ = make_engine(ts_models.Scale(), [fp32("x")], [fp32("y")])
    run = engine.executor.run
    engine.executor.run = lambda batch: (seen.append(batch["x"]), run(batch))[1]
    x = torch.rand(2, 2)
    engine.infer([req(x=x)])
    assert seen[0].data_ptr() == x.data_ptr()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (req(x=torch.rand(1, 2).double()), "has datatype TYPE_FP64; the model expects TYPE_FP32"),
        (req(x=torch.rand(1, 3)), "has shape [1, 3]; the model expects [-1, 2]"),
        (req(x=torch.rand(2)), "has shape [2]; the model expects [-1, 2]"),
        (req(), "missing input(s) ['x']"),
        (req(x=torch.rand(1, 2), z=torch.rand(1, 2)), "unknown input(s) ['z']"),
        (req(x=torch.rand(9, 2)), "batch size 9 exceeds max_batch_size 8"),
        (req(x=Strings(["a"], (1,))), "must be TYPE_FP32, got TYPE_STRING"),
    ],
)
def test_bad_request_gets_its_own_error_and_others_are_served(bad, message):
    engine, calls = make_engine(ts_models.Scale(), [fp32("x")], [fp32("y")])
    good = torch.ones(2, 2)
    out = engine.infer([req(x=good), bad, req(x=good)])
    assert isinstance(out[1], RequestError) and message in str(out[1])
    torch.testing.assert_close(out[0]["y"], good * 2)
    torch.testing.assert_close(out[2]["y"], good * 2)
    assert len(calls) == 1 and calls[0]["x"] == torch.Size([4, 2])


def test_inputs_disagreeing_on_batch_size():
    engine, _ = make_engine(
        ts_models.AddSub(), [fp32("INPUT0"), fp32("INPUT1")], [fp32("OUTPUT__0"), fp32("OUTPUT__1")]
    )
    out = engine.infer([req(INPUT0=torch.rand(2, 2), INPUT1=torch.rand(3, 2))])
    assert isinstance(out[0], RequestError) and "disagree on the batch size" in str(out[0])


def test_model_raising_for_one_request_fails_only_that_request():
    engine, calls = make_engine(ts_models.FailOnNegative(), [fp32("x")], [fp32("y")])
    xs = [torch.ones(1, 2), torch.ones(2, 2), -torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2)]
    out = engine.infer([req(x=x) for x in xs])
    assert isinstance(out[2], ExecutionError)
    assert "model 'm' failed" in str(out[2]) and "negative input is not allowed" in str(out[2])
    for i in (0, 1, 3, 4):
        torch.testing.assert_close(out[i]["y"], xs[i] + 1)
    assert calls[0]["x"] == torch.Size([6, 2])  # tried as one batch first


def test_requests_with_different_trailing_shapes_run_in_separate_batches():
    engine, calls = make_engine(ts_models.Scale(), [fp32("x", (-1,))], [fp32("y", (-1,))])
    a, b, c = torch.rand(1, 3), torch.rand(2, 5), torch.rand(1, 3)
    out = engine.infer([req(x=a), req(x=b), req(x=c)])
    assert sorted(tuple(c["x"]) for c in calls) == [(2, 3), (2, 5)]
    for x, o in zip((a, b, c), out):
        torch.testing.assert_close(o["y"], x * 2)


def test_non_batching_model_runs_each_request_as_given():
    engine, calls = make_engine(
        ts_models.Scale(), [fp32("x", (-1,))], [fp32("y", (-1,))], max_batch_size=0
    )
    out = engine.infer([req(x=torch.ones(3)), req(x=torch.ones(5))])
    assert [c["x"] for c in calls] == [torch.Size([3]), torch.Size([5])]
    assert out[1]["y"].shape == (5,)


def test_only_requested_outputs_are_returned():
    engine, _ = make_engine(
        ts_models.AddSub(), [fp32("INPUT0"), fp32("INPUT1")], [fp32("OUTPUT__0"), fp32("OUTPUT__1")]
    )
    x = torch.ones(1, 2)
    out = engine.infer(
        [
            RequestInputs({"INPUT0": x, "INPUT1": x}, frozenset({"OUTPUT__1"})),
            RequestInputs({"INPUT0": x, "INPUT1": x}),
        ]
    )
    assert set(out[0]) == {"OUTPUT__1"} and set(out[1]) == {"OUTPUT__0", "OUTPUT__1"}


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (ts_models.ReturnsScalar(), "is a scalar"),
        (
            ts_models.WrongDtype(),
            "expects datatype TYPE_FP32 for output 'y', model provides TYPE_FP64",
        ),
    ],
)
def test_bad_model_outputs_are_clear_errors(module, message):
    engine, _ = make_engine(module, [fp32("x")], [fp32("y")])
    out = engine.infer([req(x=torch.ones(1, 2)), req(x=torch.ones(1, 2))])
    assert all(isinstance(o, ExecutionError) and message in str(o) for o in out)


def test_mixed_output_dtypes_and_bf16():
    engine, _ = make_engine(
        ts_models.MixedOutputs(),
        [fp32("image", (3,)), fp32("scale", (1,))],
        [
            fp32("OUTPUT__0", (3,)),
            {"name": "OUTPUT__1", "data_type": "TYPE_INT64", "dims": []},
            {"name": "OUTPUT__2", "data_type": "TYPE_BOOL", "dims": [3]},
        ],
    )
    image = torch.tensor([[1.0, -2.0, 3.0]])
    out = engine.infer([req(image=image, scale=torch.tensor([[2.0]]))])[0]
    assert out["OUTPUT__1"].tolist() == [2] and out["OUTPUT__2"].tolist() == [[True, False, True]]
    bf16 = {"name": "x", "data_type": "TYPE_BF16", "dims": [2]}
    engine, _ = make_engine(ts_models.Bf16(), [bf16], [dict(bf16, name="y")])
    x = torch.tensor([[1.5, 2.0]], dtype=torch.bfloat16)
    assert engine.infer([req(x=x)])[0]["y"].dtype == torch.bfloat16


def test_batched_strings_each_request_gets_its_own_slice():
    string = {"name": "text", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}}
    engine, calls = make_engine(
        ts_models.Strings(),
        [string],
        [
            dict(string, name="OUTPUT__0"),
            {"name": "OUTPUT__1", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}},
        ],
    )
    arrays = [np.array([b"ab", b"c"], dtype=object), np.array([b"xyz"], dtype=object)]
    out = engine.infer([req(text=decode_strings("text", a)) for a in arrays])
    assert len(calls) == 1
    assert out[0]["OUTPUT__0"] == ["AB", "C"] and out[1]["OUTPUT__0"] == ["XYZ"]
    assert out[1]["OUTPUT__1"].tolist() == [3]


def test_non_utf8_string_is_a_request_error():
    with pytest.raises(RequestError, match="not valid UTF-8"):
        decode_strings("text", np.array([b"\xff\xfe"], dtype=object))


def test_hooks_wrap_each_forward_and_observe_each_execute():
    events = []
    stats = []

    class Ctx:
        def __enter__(self):
            events.append("enter")

        def __exit__(self, *a):
            events.append("exit")

    class Recorder(Hook):
        def forward_context(self):
            return Ctx()

        def after_execute(self, s):
            events.append("after")
            stats.append(s)

    class ObserverOnly(Hook):
        def after_execute(self, s):
            events.append("observed")

    engine, _ = make_engine(
        ts_models.Scale(), [fp32("x")], [fp32("y")], hooks=Hooks([Recorder(), ObserverOnly()])
    )
    engine.infer([req(x=torch.ones(1, 2)), req(x=torch.ones(2, 2)), req(x=torch.ones(1, 3))])
    assert events == ["enter", "exit", "after", "observed"]
    assert [counts(s) for s in stats] == [(3, 1, 1, 1, 3, {"bad_input": 1})]


def test_stats_count_the_forwards_of_a_bisected_batch():
    stats = []

    class Recorder(Hook):
        def after_execute(self, s):
            stats.append(s)

    engine, _ = make_engine(
        ts_models.FailOnNegative(), [fp32("x")], [fp32("y")], hooks=Hooks([Recorder()])
    )
    good, bad = torch.ones(1, 2), -torch.ones(1, 2)
    engine.infer([req(x=good), req(x=bad), req(x=good), req(x=good)])
    # 4 together, then halves [good, bad] and [good, good], then [good] and [bad]
    assert [counts(s) for s in stats] == [(4, 0, 1, 5, 4, {"model_error": 1})]


def counts(s: ExecuteStats) -> tuple:
    return (s.requests, s.rejected, s.failed, s.forwards, s.rows, dict(s.failures))


def test_stats_time_the_forward_apart_from_preparing_and_splitting():
    stats = []

    class Recorder(Hook):
        def after_execute(self, s):
            stats.append(s)

    engine, _ = make_engine(ts_models.Scale(), [fp32("x")], [fp32("y")], hooks=Hooks([Recorder()]))
    run = engine.executor.run
    engine.executor.run = lambda batch: (time.sleep(0.05), run(batch))[1]
    engine.infer([req(x=torch.ones(1, 2)), req(x=torch.ones(2, 2))])
    engine.infer([req(x=torch.ones(1, 3))])  # rejected: no forward, nothing split
    served, rejected = stats
    assert served.forward_ns >= 50_000_000
    assert served.prepare_ns > 0 and served.split_ns > 0
    assert (served.failures, rejected.failures) == ({}, {"bad_input": 1})
    assert rejected.prepare_ns > 0 and rejected.forward_ns == rejected.split_ns == 0


class _RejectsNines:
    """An executor whose forward raises a backend error when any value is 9 (like AOTI checks)."""

    input_device = torch.device("cpu")
    capabilities = Capabilities()

    def run(self, inputs):
        if bool((inputs["x"] == 9).any()):
            raise RequestError("value 9 is outside what the package accepts")
        return {"y": inputs["x"] * 2}


def test_backend_errors_raised_by_the_forward_are_isolated_too():
    cfg = parse_model_config(
        {"name": "m", "max_batch_size": 8, "input": [fp32("x")], "output": [fp32("y")]}
    )
    engine = InferenceEngine(cfg, _RejectsNines())
    xs = [torch.ones(1, 2), torch.full((1, 2), 9.0), torch.ones(2, 2)]
    out = engine.infer([req(x=x) for x in xs])
    assert isinstance(out[1], RequestError) and "value 9" in str(out[1])
    torch.testing.assert_close(out[0]["y"], xs[0] * 2)
    torch.testing.assert_close(out[2]["y"], xs[2] * 2)


class WrongDtypeFor101(torch.nn.Module):
    """x * 2, but FP64 for the whole batch when any element is 101 (a data-dependent bad output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == 101).any()):
            return x.double()
        return x * 2


def test_bad_outputs_caused_by_one_request_fail_only_that_request():
    engine, calls = make_engine(WrongDtypeFor101(), [fp32("x")], [fp32("y")])
    xs = [torch.ones(1, 2), torch.full((1, 2), 101.0), torch.ones(2, 2) * 3, torch.ones(1, 2)]
    out = engine.infer([req(x=x) for x in xs])
    assert isinstance(out[1], ExecutionError) and "model provides TYPE_FP64" in str(out[1])
    for i in (0, 2, 3):
        torch.testing.assert_close(out[i]["y"], xs[i] * 2)
    assert calls[0]["x"] == torch.Size([5, 2])  # tried as one batch first
