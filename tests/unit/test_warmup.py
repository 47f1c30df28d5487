"""Warm-up before READY (runtime/warmup.py): buckets, parameters, the runs and their shapes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pytorch_backend.config import parse_model_config, parse_parameters
from pytorch_backend.engine import InferenceEngine
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.base import Capabilities
from pytorch_backend.executors.torchscript.executor import TORCHSCRIPT_RUNS
from pytorch_backend.instance import build_instance
from pytorch_backend.logs import InstanceLog
from pytorch_backend.runtime import warmup
from tests.unit.builders import Sink, args, io, ts_config, ts_repo


def config(max_batch_size: int, preferred=None, inputs=None, **fields):
    data = {
        "name": "m",
        "max_batch_size": max_batch_size,
        "input": inputs or [io("x", [3])],
        "output": [io("y", [3])],
        **fields,
    }
    if preferred is not None:
        data["dynamic_batching"] = {"preferred_batch_size": preferred}
    return parse_model_config(data)


def params(**raw):
    return parse_parameters("m", {k: str(v) for k, v in raw.items()}, warn=lambda _: None)


@pytest.mark.parametrize(
    ("max_batch_size", "preferred", "expected"),
    [
        (8, None, [1, 2, 4, 8]),
        (6, [3], [1, 2, 3, 4, 6]),
        (1, None, [1]),
        (12, [12, 5, 40], [1, 2, 4, 5, 8, 12]),  # a preferred size above max is not run
    ],
)
def test_buckets_are_powers_of_two_max_and_preferred(max_batch_size, preferred, expected):
    assert warmup.warmup_buckets(config(max_batch_size, preferred), params()) == expected


def test_a_model_that_does_not_batch_runs_once_as_configured():
    assert warmup.warmup_buckets(config(0), params()) == [None]


def test_warmup_batch_sizes_replace_the_buckets():
    assert warmup.warmup_buckets(config(16), params(WARMUP_BATCH_SIZES="16, 4,1,4")) == [1, 4, 16]


def test_a_warmup_batch_size_above_max_fails_the_load_naming_it():
    with pytest.raises(ModelLoadError) as error:
        warmup.warmup_buckets(config(8), params(WARMUP_BATCH_SIZES="4,32"))
    text = str(error.value)
    assert "model 'm'" in text and "WARMUP_BATCH_SIZES" in text
    assert "batch size 32 exceeds max_batch_size 8" in text


@pytest.mark.parametrize("value", ["", "0", "4,a", "-1", "1,,2"])
def test_bad_warmup_batch_sizes_fail_the_load(value):
    with pytest.raises(ModelLoadError, match=r"WARMUP_BATCH_SIZES.*invalid value"):
        params(WARMUP_BATCH_SIZES=value)


def test_warmup_parameter_parses_as_a_boolean():
    assert params().warmup is True
    assert params(WARMUP="off").warmup is False
    with pytest.raises(ModelLoadError, match="WARMUP"):
        params(WARMUP="maybe")


class Recorder:
    """An executor that records the shapes (and string lists) it is run with."""

    def __init__(self, fail_at: int | None = None, runs: int = 1) -> None:
        self.input_device = torch.device("cpu")
        self.capabilities = Capabilities(warmup_shapes={"seq": (5,)}, warmup_runs=runs)
        self.calls: list[dict] = []
        self.fail_at = fail_at

    def run(self, inputs):
        self.calls.append(
            {
                k: list(v.shape) if isinstance(v, torch.Tensor) else list(v)
                for k, v in inputs.items()
            }
        )
        x = inputs["x"]
        if self.fail_at is not None and x.shape[0] == self.fail_at:
            raise RuntimeError("zeros are not allowed")
        return {"y": torch.zeros(x.shape[0], 3)}

    def describe_bindings(self):
        return []


MIXED = [
    io("x", [-1, 3]),
    io("seq", [-1], "TYPE_INT64"),
    {**io("s", [1], "TYPE_STRING"), "reshape": {"shape": []}},
]


def run_warmup(model, buckets, executor):
    sink = Sink()
    engine = InferenceEngine(model, executor)
    seconds = warmup.run_buckets(
        model, buckets, executor.capabilities, engine.infer, sink.log_info, sink.log_warn
    )
    return seconds, sink


def test_warmup_runs_the_executor_with_the_config_shapes():
    model = config(4, inputs=MIXED)
    executor = Recorder()
    seconds, sink = run_warmup(model, [1, 2, 4], executor)
    v = warmup.VARIABLE_DIM
    s = warmup.STRING_VALUE
    assert executor.calls == [
        {"x": [b, v, 3], "seq": [b, 5], "s": [s] * b} for b in (1, 2, 4)
    ]  # -1 dims: the executor's size (seq), else VARIABLE_DIM; strings: STRING_VALUE
    assert seconds >= 0
    (line,) = sink.text()
    assert line.startswith("warm-up over batch sizes [1, 2, 4]: 3 run(s) (1 per batch size) in ")


def test_each_bucket_runs_as_often_as_the_executor_declares():
    executor = Recorder(runs=TORCHSCRIPT_RUNS)
    run_warmup(config(2), [1, 2], executor)
    runs = TORCHSCRIPT_RUNS
    assert [c["x"][0] for c in executor.calls] == [1] * runs + [2] * runs


def test_a_model_that_does_not_batch_runs_as_configured():
    executor = Recorder()
    run_warmup(config(0, inputs=[io("x", [2, -1])]), [None], executor)
    assert executor.calls == [{"x": [2, warmup.VARIABLE_DIM]}]


def test_a_failing_bucket_is_a_warning_and_stops_the_warmup():
    executor = Recorder(fail_at=2)
    _, sink = run_warmup(config(8), [1, 2, 4, 8], executor)
    assert [c["x"][0] for c in executor.calls] == [1, 2]
    (warning,) = sink.text("warn")
    assert "warm-up on zeros (a batch of 2) failed" in warning
    assert "zeros are not allowed" in warning
    assert "1 run(s)" in sink.text()[0]


def test_build_instance_warms_up_before_returning_and_logs_it(tmp_path):
    sink = Sink()
    instance = build_instance(args(ts_repo(tmp_path), ts_config()), sink)
    lines = [line for line in sink.text() if "warm-up over batch sizes" in line]
    assert len(lines) == 1 and "[1, 2, 4]:" in lines[0]
    assert f"({TORCHSCRIPT_RUNS} per batch size)" in lines[0]  # TorchScript's profiling runs
    assert "WARMUP = true" in "\n".join(sink.text())
    assert "WARMUP_BATCH_SIZES = [1, 2, 4] (not given" in "\n".join(sink.text())
    assert instance.executor.capabilities.counters.warmup_seconds is not None


def test_warmup_false_runs_nothing(tmp_path):
    sink = Sink()
    raw = ts_config(parameters={"WARMUP": {"string_value": "false"}})
    build_instance(args(ts_repo(tmp_path), json.loads(json.dumps(raw))), sink)
    text = "\n".join(sink.text())
    assert "warm-up over batch sizes" not in text
    assert "WARMUP = false" in text
    assert "WARMUP_BATCH_SIZES = no effect: WARMUP is false" in text


# -- the compile pass: executors that declare a compilation ----------------------------------------


class Compiles(Recorder):
    """A Recorder declaring a compilation, recording when the warm-up pauses and resumes it."""

    def __init__(self, fail_at: int | None = None, raises: Exception | None = None) -> None:
        super().__init__(fail_at)
        self.capabilities = dataclasses.replace(self.capabilities, compilation=self)
        self.events: list[object] = []
        self.raises = raises

    def pause(self) -> None:
        self.events.append("pause")

    def resume(self) -> None:
        self.events.append(("resume after runs", len(self.calls)))

    def run(self, inputs):
        if self.raises is not None:
            raise self.raises
        return super().run(inputs)


def warm(model, executor, buckets):
    sink = Sink()
    seconds = warmup.warm_up(
        model,
        executor,
        lambda runs: InferenceEngine(model, runs).infer,
        buckets,
        InstanceLog("m", "m_0", sink),
    )
    return seconds, sink


VARIABLE = [io("x", [-1, 3]), io("seq", [-1], "TYPE_INT64")]


def test_a_compiled_forward_compiles_first_with_dynamic_dims_whatever_warmup_says(monkeypatch):
    marked: list[tuple[tuple[int, ...], int]] = []
    monkeypatch.setattr(
        warmup.torch_compat, "mark_dynamic", lambda t, dim: marked.append((tuple(t.shape), dim))
    )
    executor = Compiles()
    seconds, sink = warm(config(4, inputs=VARIABLE), executor, [])  # WARMUP false: no buckets
    assert [c["x"][0] for c in executor.calls] == [1, 2, 4]
    assert executor.events == ["pause", ("resume after runs", 3)]
    v = warmup.VARIABLE_DIM
    # batch 1 is specialised (nothing marked); from 2 rows the batch dim and every -1 dim
    assert marked == [
        ((2, v, 3), 0),
        ((2, v, 3), 1),
        ((2, 5), 0),
        ((2, 5), 1),
        ((4, v, 3), 0),
        ((4, v, 3), 1),
        ((4, 5), 0),
        ((4, 5), 1),
    ]
    (line,) = sink.text()
    assert "torch.compile warm-up over batch sizes [1, 2, 4]: " in line
    assert seconds is not None and seconds >= 0


def test_the_buckets_run_after_the_compile_pass_and_the_watch_resumes_after_both():
    executor = Compiles()
    seconds, sink = warm(config(4), executor, [1, 2, 4])
    assert [c["x"][0] for c in executor.calls] == [1, 2, 4, 1, 2, 4]
    assert executor.events == ["pause", ("resume after runs", 6)]
    compiled, buckets = sink.text()
    assert "torch.compile warm-up over batch sizes [1, 2, 4]" in compiled
    assert "'m_0': warm-up over batch sizes [1, 2, 4]: 3 run(s)" in buckets


def test_a_torch_compile_failure_fails_the_load():
    from torch._dynamo.exc import TorchDynamoException

    executor = Compiles(raises=TorchDynamoException("graph break under fullgraph=True"))
    with pytest.raises(ModelLoadError) as error:
        warm(config(4), executor, [1, 2, 4])
    assert (
        "torch.compile failed at load (warm-up with a batch of 1): TorchDynamoException: "
        "graph break under fullgraph=True"
    ) in str(error.value)


def test_a_model_raising_on_zeros_ends_the_compile_pass_with_a_warning():
    executor = Compiles(fail_at=2)
    _, sink = warm(config(4), executor, [])
    assert [c["x"][0] for c in executor.calls] == [1, 2]
    (warning,) = sink.text("warn")
    assert "warm-up on zeros (batch 2) raised RuntimeError: zeros are not allowed" in warning
    assert executor.events == ["pause", ("resume after runs", 2)]


def test_an_executor_that_does_not_compile_runs_only_the_buckets_or_nothing():
    executor = Recorder()
    assert warm(config(4), executor, [])[0] is None
    assert executor.calls == []
    seconds, sink = warm(config(4), executor, [1, 4])
    assert [c["x"][0] for c in executor.calls] == [1, 4] and seconds is not None
    assert len(sink.text()) == 1 and "torch.compile" not in sink.text()[0]


def test_rows_padded_while_warming_up_are_not_counted():
    class Pads(Recorder):
        def run(self, inputs):
            self.capabilities.counters.padded_rows += 2  # as an artifact with a minimum batch
            return super().run(inputs)

    executor = Pads()
    warm(config(4), executor, [1, 2, 4])
    assert len(executor.calls) == 3 and executor.capabilities.counters.padded_rows == 0
