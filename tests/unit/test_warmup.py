"""Warm-up before READY (runtime/warmup.py): buckets, parameters, the runs and their shapes."""

from __future__ import annotations

import json

import pytest
import torch

from pytorch_backend.config import ModelKind, parse_model_config, parse_parameters
from pytorch_backend.engine import InferenceEngine
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.base import Capabilities
from pytorch_backend.instance import build_instance
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

    def __init__(self, fail_at: int | None = None) -> None:
        self.input_device = torch.device("cpu")
        self.capabilities = Capabilities(warmup_shapes={"seq": (5,)})
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


def run_warmup(model, kind, buckets, executor):
    sink = Sink()
    engine = InferenceEngine(model, executor)
    seconds = warmup.warm_up(
        model,
        kind,
        buckets,
        executor.capabilities.warmup_shapes,
        engine.infer,
        sink.log_info,
        sink.log_warn,
    )
    return seconds, sink


def test_warmup_runs_the_executor_with_the_config_shapes():
    model = config(4, inputs=MIXED)
    executor = Recorder()
    seconds, sink = run_warmup(model, ModelKind.AOTI, [1, 2, 4], executor)
    v = warmup.VARIABLE_DIM
    s = warmup.STRING_VALUE
    assert executor.calls == [
        {"x": [b, v, 3], "seq": [b, 5], "s": [s] * b} for b in (1, 2, 4)
    ]  # -1 dims: the executor's size (seq), else VARIABLE_DIM; strings: STRING_VALUE
    assert seconds >= 0
    (line,) = sink.text()
    assert line.startswith("warm-up over batch sizes [1, 2, 4]: 3 run(s) (1 per batch size) in ")


def test_torchscript_runs_each_bucket_until_the_profiling_executor_settles():
    executor = Recorder()
    run_warmup(config(2), ModelKind.TORCHSCRIPT, [1, 2], executor)
    runs = warmup.TORCHSCRIPT_RUNS
    assert [c["x"][0] for c in executor.calls] == [1] * runs + [2] * runs


def test_a_model_that_does_not_batch_runs_as_configured():
    executor = Recorder()
    run_warmup(config(0, inputs=[io("x", [2, -1])]), ModelKind.AOTI, [None], executor)
    assert executor.calls == [{"x": [2, warmup.VARIABLE_DIM]}]


def test_a_failing_bucket_is_a_warning_and_stops_the_warmup():
    executor = Recorder(fail_at=2)
    _, sink = run_warmup(config(8), ModelKind.AOTI, [1, 2, 4, 8], executor)
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
