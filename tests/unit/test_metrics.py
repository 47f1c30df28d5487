"""Metrics without Triton: the hook records into a fake registry what the engine did."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from pytorch_backend import metrics
from pytorch_backend.config import parse_model_config
from pytorch_backend.engine import InferenceEngine
from pytorch_backend.errors import RequestCancelled, Unavailable
from pytorch_backend.executors.base import Capabilities, ExecutorCounters
from pytorch_backend.hooks import Hooks
from pytorch_backend.instance import build_instance
from pytorch_backend.requests import RequestInputs
from pytorch_backend.runtime.execution import StickyErrorWatch
from pytorch_backend.step_times import STEPS
from tests.unit.builders import args, ts_config, ts_repo

README = Path(__file__).resolve().parents[2] / "README.md"
LABELS = metrics.series_labels("m", "1", "m_0")


class Series:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.value = 0.0
        self.calls = 0

    def increment(self, value: float) -> None:
        assert value > 0, "a counter is never incremented by 0 (each call costs a message)"
        self.value += value
        self.calls += 1

    def set(self, value: float) -> None:
        self.value = value
        self.calls += 1


class FakeRegistry:
    """Series by (name, labels); checks that one name keeps one kind and one help text."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, frozenset], Series] = {}
        self.families: dict[str, tuple[str, str]] = {}

    def _get(self, spec, labels: Mapping[str, str], kind: str) -> Series:
        assert set(metrics.LABELS) <= set(labels)
        family = self.families.setdefault(spec.name, (kind, spec.help))
        assert family == (kind, spec.help), f"{spec.name} registered twice differently"
        key = (spec.name, frozenset(labels.items()))
        assert key not in self.series, f"{key} created twice"
        self.series[key] = Series(kind)
        return self.series[key]

    def counter(self, spec, labels):
        return self._get(spec, labels, "counter")

    def gauge(self, spec, labels):
        return self._get(spec, labels, "gauge")

    def get(self, name: str, **extra: str) -> Series:
        return self.series[(name, frozenset({**LABELS, **extra}.items()))]

    def names(self) -> set[str]:
        return {name for name, _ in self.series}

    def count(self, spec) -> float:
        return self.get(spec.name + "_count").value

    def sum(self, spec) -> float:
        return self.get(spec.name + "_sum").value

    def buckets(self, spec) -> dict[str, float]:
        return {
            dict(labels)["le"]: series.value
            for (name, labels), series in self.series.items()
            if name == spec.name + "_bucket"
        }


class Doubler:
    """A fake executor: y = 2x; raises on a negative value; counts what a real one would."""

    input_device = torch.device("cpu")

    def __init__(self, error: str = "negative input") -> None:
        self.capabilities = Capabilities(counters=ExecutorCounters(warmup_seconds=0.25))
        self.error = error

    def run(self, inputs):
        x = inputs["x"]
        if (x < 0).any():
            raise RuntimeError(self.error)
        if x.shape[0] == 1:  # as an AOTI package exported with a minimum batch of 2
            self.capabilities.counters.padded_rows += 1
        if (x == 7).any():  # as an eager module recompiling for a new shape
            self.capabilities.counters.recompilations += 1
        return {"y": x * 2}

    def describe_bindings(self):
        return []


def engine_with_metrics(registry: FakeRegistry, executor=None, hooks=()):
    config = parse_model_config(
        {
            "name": "m",
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}],
        }
    )
    executor = executor or Doubler()
    hook = metrics.MetricsHook(
        registry, LABELS, max_batch_size=8, counters=executor.capabilities.counters
    )
    return InferenceEngine(config, executor, Hooks([*hooks, hook])), hook


def req(x) -> RequestInputs:
    return RequestInputs({"x": x})


def test_counters_and_histograms_follow_good_bad_and_batched_requests():
    registry = FakeRegistry()
    engine, hook = engine_with_metrics(registry)
    ones = torch.ones
    engine.infer([req(ones(1, 2))])  # 1 good request, padded by 1 row
    hook.responded(1_000)
    engine.infer([req(ones(2, 2)), req(ones(3, 2)), req(ones(1, 3))])  # 2 good + 1 bad input
    hook.responded(2_000)
    engine.infer([req(ones(1, 2)), req(-ones(1, 2))])  # bisected: 1 good, 1 model error
    hook.responded(3_000)
    engine.infer([RequestCancelled("cancelled"), Unavailable("gone")])  # never reach a forward
    hook.responded(4_000)
    assert registry.get(metrics.ANSWERED.name).value == 0  # buffered until a flush
    hook.flush()

    assert registry.get(metrics.ANSWERED.name).value == 4
    failed = {k: registry.get(metrics.FAILED.name, kind=k).value for k in metrics.ERROR_KINDS}
    assert failed == {"bad_input": 1, "model_error": 1, "cancelled": 1, "unavailable": 1}
    assert registry.get(metrics.FORWARDS.name).value == 1 + 1 + 3  # 2 together, then 1 + 1
    # rows per execution: 1, 5 (2 + 3; the bad one never ran) and 2 (before the bisection)
    assert (registry.count(metrics.ROWS), registry.sum(metrics.ROWS)) == (3, 8)
    assert registry.buckets(metrics.ROWS) == {"1": 1, "2": 2, "4": 2, "8": 3, "+Inf": 3}
    assert registry.get(metrics.PADDED.name).value == 2  # the batch of 1, and the bisected good
    assert registry.count(metrics.FORWARD) == 3  # executes with a forward
    assert registry.count(metrics.PREPARE) == 4  # every execute
    assert registry.count(metrics.RESPOND) == 4
    assert registry.sum(metrics.RESPOND) > 10e-6  # the adapter's 10 µs and the engine's splits
    assert registry.buckets(metrics.RESPOND)["+Inf"] == 4
    assert registry.get(metrics.RECOMPILATIONS.name).value == 0


def test_forward_time_is_the_forward_in_seconds():
    registry = FakeRegistry()
    executor = Doubler()
    run = executor.run
    executor.run = lambda batch: (time.sleep(0.03), run(batch))[1]
    engine, hook = engine_with_metrics(registry, executor)
    engine.infer([req(torch.ones(2, 2))])
    hook.flush()
    forward = registry.sum(metrics.FORWARD)
    assert 0.03 <= forward < 5
    assert registry.buckets(metrics.FORWARD)["0.01"] == 0
    assert registry.buckets(metrics.FORWARD)["5"] == 1
    assert 0 < registry.sum(metrics.PREPARE) < forward


def test_a_respond_the_adapter_did_not_report_is_observed_at_the_next_execute():
    registry = FakeRegistry()
    engine, hook = engine_with_metrics(registry)
    engine.infer([req(torch.ones(2, 2))])
    hook.flush()
    assert registry.count(metrics.RESPOND) == 0
    engine.infer([req(torch.ones(2, 2))])
    hook.flush()
    assert registry.count(metrics.RESPOND) == 1


def test_calls_are_one_per_changed_series_per_flush_whatever_the_request_rate():
    registry = FakeRegistry()
    engine, hook = engine_with_metrics(registry)
    for _ in range(50):
        engine.infer([req(torch.ones(2, 2))])
        hook.responded(1000)
    hook.flush()
    hook.flush()  # nothing changed since
    assert registry.get(metrics.ANSWERED.name).calls == 1
    assert registry.get(metrics.ANSWERED.name).value == 50
    assert registry.get(metrics.FAILED.name, kind="bad_input").calls == 0
    assert registry.get(metrics.PADDED.name).calls == 0
    assert registry.get(metrics.RECOMPILATIONS.name).calls == 0
    assert registry.get(metrics.FORWARD.name + "_count").calls == 1


def test_background_flushing_and_close(tmp_path):
    registry = FakeRegistry()
    engine, hook = engine_with_metrics(registry)
    hook.start(interval=0.05)
    engine.infer([req(torch.ones(2, 2))])
    deadline = time.monotonic() + 30
    while registry.get(metrics.ANSWERED.name).value == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert registry.get(metrics.ANSWERED.name).value == 1
    engine.infer([req(torch.ones(2, 2)), req(torch.ones(1, 3))])
    hook.close()  # flushes what is left
    assert registry.get(metrics.ANSWERED.name).value == 2
    assert registry.get(metrics.FAILED.name, kind="bad_input").value == 1


def test_series_carry_this_process_id():
    # A reloaded instance's series differ from those of the stub it replaces (server #8663).
    expected = {"model": "m", "version": "1", "model_instance": "m_0", "pid": str(os.getpid())}
    assert expected == LABELS


class WatchedSeries(Series):
    """Records every registry call made while an execute body runs (``inside`` is set)."""

    inside = threading.Event()
    overlaps: list[str] = []

    def increment(self, value: float) -> None:
        if self.inside.is_set():
            self.overlaps.append(threading.current_thread().name)
        super().increment(value)

    def set(self, value: float) -> None:
        if self.inside.is_set():
            self.overlaps.append(threading.current_thread().name)
        super().set(value)


def test_registry_calls_never_overlap_an_execute_and_idle_values_still_arrive():
    registry = FakeRegistry()
    registry_get = registry._get

    def watched(spec, labels, kind):
        series = registry_get(spec, labels, kind)
        series.__class__ = WatchedSeries
        return series

    registry._get = watched
    engine, hook = engine_with_metrics(registry)
    hook.watch_sequences(lambda: 1)  # a gauge: set at every flush, busy or not
    hook.start(interval=0.01)
    WatchedSeries.overlaps.clear()
    for _ in range(40):
        with hook.executing():
            WatchedSeries.inside.set()
            engine.infer([req(torch.ones(1, 2))])
            time.sleep(0.005)  # the flusher's interval passes while the execute runs
            WatchedSeries.inside.clear()
    assert WatchedSeries.overlaps == []
    deadline = time.monotonic() + 30  # idle now: the flusher delivers what is left
    while registry.get(metrics.ANSWERED.name).value < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert registry.get(metrics.ANSWERED.name).value == 40
    hook.close()


def test_an_execute_flushes_at_its_end_only_when_a_flush_is_due():
    registry = FakeRegistry()
    engine, hook = engine_with_metrics(registry)
    hook.flush()
    with hook.executing():
        engine.infer([req(torch.ones(1, 2))])
    assert registry.get(metrics.ANSWERED.name).value == 0  # not due: buffered
    hook._flushed_at -= metrics.FLUSH_SECONDS
    with hook.executing():
        engine.infer([req(torch.ones(1, 2))])
    assert registry.get(metrics.ANSWERED.name).value == 2  # due: flushed at the end


def test_executor_counters_are_the_seam_for_recompilations_and_warmup():
    registry = FakeRegistry()
    engine, hook = engine_with_metrics(registry)
    hook.loaded(1.5)
    engine.infer([req(torch.full((2, 2), 7.0))])
    engine.infer([req(torch.full((2, 2), 7.0)), req(torch.full((2, 2), 7.0))])
    hook.flush()
    assert registry.get(metrics.RECOMPILATIONS.name).value == 2
    assert registry.get(metrics.LOAD.name).value == 1.5
    assert registry.get(metrics.WARMUP.name).value == 0.25


def test_live_sequences_seam_reports_its_source_after_each_execute():
    registry = FakeRegistry()
    engine, hook = engine_with_metrics(registry)
    held = [3]
    hook.watch_sequences(lambda: held[0])
    hook.flush()
    assert registry.get(metrics.SEQUENCES.name).value == 3
    held[0] = 5
    engine.infer([req(torch.ones(1, 2))])
    hook.flush()
    assert registry.get(metrics.SEQUENCES.name).value == 5


@pytest.mark.parametrize(
    ("text", "sticky"),
    [
        ("CUDA error: an illegal memory access was encountered", True),
        (
            "The following operation failed in the TorchScript interpreter.\nCUDA error: "
            "device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA",
            True,
        ),  # fmt: skip
        ("CUDA out of memory. Tried to allocate 2.00 GiB", False),
        ("negative input", False),
    ],
)
def test_sticky_cuda_errors_make_the_instance_unavailable(tmp_path, text, sticky):
    registry = FakeRegistry()
    watch = StickyErrorWatch()
    engine, hook = engine_with_metrics(registry, Doubler(text), hooks=[watch])
    hook.watch_sticky_error(lambda: watch.error is not None)
    engine.infer([req(-torch.ones(1, 2))])
    hook.flush()
    assert (watch.error is not None) is sticky
    assert registry.get(metrics.STICKY.name).value == (1.0 if sticky else 0.0)
    if sticky:
        assert "RuntimeError: " in watch.error and "CUDA" in watch.error
        instance = build_instance(args(ts_repo(tmp_path), ts_config()))
        instance.sticky = watch
        (outcome,) = instance.infer([req(torch.ones(1, 2))])
        assert isinstance(outcome, Unavailable) and watch.error in str(outcome)


def test_build_instance_labels_its_series_and_sets_the_load_time(tmp_path):
    registry = FakeRegistry()
    instance = build_instance(args(ts_repo(tmp_path), ts_config()), metrics=registry)
    assert 0 < registry.get(metrics.LOAD.name).value < 120
    assert 0 < registry.get(metrics.WARMUP.name).value < 120  # WARMUP defaults to true
    instance.infer([req(torch.ones(2, 2))])
    instance.responded(10)
    instance.close()  # flushes
    assert instance.metrics is None
    assert registry.get(metrics.ANSWERED.name).value == 1
    assert registry.count(metrics.RESPOND) == 1


def test_warmup_false_sets_no_warmup_gauge(tmp_path):
    registry = FakeRegistry()
    config = ts_config()
    config["parameters"] = {"WARMUP": {"string_value": "false"}}
    instance = build_instance(args(ts_repo(tmp_path), config), metrics=registry)
    assert metrics.WARMUP.name not in registry.names()
    instance.close()


def test_enable_metrics_false_creates_no_series_and_is_logged(tmp_path):
    from tests.unit.builders import Sink, settings_logged

    registry, sink = FakeRegistry(), Sink()
    config = ts_config(parameters={"ENABLE_METRICS": {"string_value": "false"}})
    instance = build_instance(args(ts_repo(tmp_path), config), sink, metrics=registry)
    instance.infer([req(torch.ones(2, 2))])
    assert registry.series == {} and instance.metrics is None
    assert settings_logged(sink)["ENABLE_METRICS"] == "false"


def test_a_server_without_a_metrics_api_is_logged(tmp_path):
    from tests.unit.builders import Sink, settings_logged

    sink = Sink()
    build_instance(args(ts_repo(tmp_path / "a"), ts_config()), sink)
    assert settings_logged(sink)["ENABLE_METRICS"].startswith("true, no effect: ")


def test_row_buckets_reach_max_batch_size():
    assert metrics.row_buckets(8) == (1, 2, 4, 8)
    assert metrics.row_buckets(12) == (1, 2, 4, 8, 12)
    assert metrics.row_buckets(1) == (1,)


def test_readme_lists_every_metric():
    assert metrics.markdown_table() in README.read_text(encoding="utf-8")
    names = [spec.name for spec in metrics.METRICS]
    assert len(names) == len(set(names))
    assert all(name.startswith("pytorch_backend_") for name in names)


def test_the_step_profile_says_where_each_execute_went(tmp_path):
    registry = FakeRegistry()
    config = ts_config(parameters={"ENABLE_CANCELLATION_CHECK": {"string_value": "true"}})
    instance = build_instance(args(ts_repo(tmp_path), config), metrics=registry)
    instance.metrics.flush()  # the warm-up is not profiled
    name = metrics.STEP_SECONDS.name
    assert all(registry.get(name, step=step).calls == 0 for step in STEPS)
    with instance.executing():
        instance.requests_read(1_000)  # the adapter's two steps
        instance.infer([RequestInputs({"x": torch.ones(2, 2)}, cancelled=lambda: False)])
        instance.responded(3_000)
    instance.metrics.flush()
    seconds = {step: registry.get(name, step=step).value for step in STEPS}
    assert seconds["read"] == pytest.approx(1e-6) and seconds["respond"] == pytest.approx(3e-6)
    assert all(seconds[step] > 0 for step in ("cancel_check", "prepare", "split", "metrics"))
    assert seconds["forward"] == pytest.approx(registry.sum(metrics.FORWARD))
    assert seconds["prepare"] == pytest.approx(registry.sum(metrics.PREPARE))
    instance.close()
