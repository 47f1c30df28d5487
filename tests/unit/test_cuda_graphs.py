"""CUDA_GRAPHS (runtime/cuda_graphs.py): buckets, padding, fallbacks, wiring; real graphs on CUDA.

On a CPU host the wrapper runs with :class:`FakeBackend`, whose "graph" re-runs the model on the
static inputs and writes into the static outputs in place, as a replayed CUDA graph does.
"""

from __future__ import annotations

import pytest
import torch

from pytorch_backend import instance as instance_module
from pytorch_backend.config import InstanceKind, parse_parameters
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.base import Capabilities
from pytorch_backend.executors.padding import pad_into
from pytorch_backend.requests import RequestInputs
from pytorch_backend.runtime import cuda_graphs
from pytorch_backend.runtime.cuda_graphs import GraphExecutor, pick_bucket
from pytorch_backend.strings import Strings
from tests.unit.builders import build, settings_logged, ts_config, ts_repo


class FakeGraph:
    def __init__(self, run, inputs, outputs) -> None:
        self.run, self.inputs, self.outputs = run, inputs, outputs
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        for name, value in self.run(self.inputs).items():
            self.outputs[name].copy_(value)


class FakeBackend:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.captured: list[int] = []

    def capture(self, run, inputs):
        if self.fail is not None:
            raise self.fail
        outputs = {k: torch.full_like(v, float("nan")) for k, v in run(inputs).items()}
        self.captured.append(next(iter(inputs.values())).shape[0])
        graph = FakeGraph(run, inputs, outputs)
        return graph, outputs


class RowSum:
    """An executor: y = x.sum(1, keepdim) + row index marker; counts its calls and their rows."""

    input_device = torch.device("cpu")

    def __init__(self, outputs=None) -> None:
        self.capabilities = Capabilities()
        self.calls: list[int] = []
        self.outputs = outputs

    def run(self, inputs):
        x = inputs["x"]
        self.calls.append(x.shape[0])
        if self.outputs is not None:
            return self.outputs(x)
        return {"y": x.sum(dim=-1, keepdim=True) * 2}

    def describe_bindings(self):
        return ["x -> x", "y <- y"]


def make(buckets=(1, 2, 4), inner=None, backend=None):
    warnings: list[str] = []
    inner = inner or RowSum()
    wrapper = GraphExecutor(inner, list(buckets), backend or FakeBackend(), warnings.append)
    return wrapper, inner, warnings


def warm(wrapper, buckets=(1, 2, 4), width=3):
    for b in buckets:
        wrapper.run({"x": torch.zeros(b, width)})
    return wrapper.seal()


def expected(x):
    return x.sum(dim=-1, keepdim=True) * 2


@pytest.mark.parametrize(
    ("buckets", "n", "bucket"), [([1, 2, 4], 3, 4), ([1, 2, 4], 2, 2), ([1, 2, 4], 5, None)]
)
def test_pick_bucket_is_the_smallest_that_holds_the_batch(buckets, n, bucket):
    assert pick_bucket(buckets, n) == bucket


def test_pad_into_repeats_the_last_row_and_counts_the_padding():
    static = torch.zeros(4, 2)
    rows = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert pad_into(static, rows) == 2
    assert static.tolist() == [[1, 2], [3, 4], [3, 4], [3, 4]]
    assert pad_into(static, torch.ones(4, 2)) == 0


def test_parameter_parses_as_a_boolean_and_defaults_off():
    assert parse_parameters("m", {}, warn=print).cuda_graphs is False
    assert parse_parameters("m", {"CUDA_GRAPHS": "on"}, warn=print).cuda_graphs is True
    with pytest.raises(ModelLoadError) as error:
        parse_parameters("m", {"CUDA_GRAPHS": "maybe"}, warn=print)
    assert "'CUDA_GRAPHS'" in str(error.value) and "maybe" in str(error.value)


def test_warm_up_captures_each_bucket_and_a_batch_replays_the_smallest_padded():
    wrapper, inner, warnings = make()
    assert warm(wrapper) == "true (graphs for batch sizes [1, 2, 4])"
    assert wrapper.backend.captured == [1, 2, 4]
    x = torch.arange(9.0).view(3, 3)
    inner.calls.clear()
    out = wrapper.run({"x": x})
    assert torch.equal(out["y"], expected(x))
    assert inner.calls == [4]  # the bucket-4 graph ran (3 rows + 1 padded)
    assert wrapper.graphs[4].graph.replays >= 1
    assert inner.capabilities.counters.padded_rows == 1
    assert warnings == []


def test_buckets_below_the_minimum_batch_are_captured_at_the_minimum_and_padding_counted():
    inner = RowSum()
    inner.capabilities = Capabilities(batch_range=(3, 8))  # an artifact taking 3..8 rows
    wrapper, _, warnings = make(buckets=(1, 2, 4, 8), inner=inner)
    assert warm(wrapper, buckets=(1, 2, 4, 8)) == "true (graphs for batch sizes [3, 4, 8])"
    assert wrapper.backend.captured == [3, 4, 8]
    assert min(inner.calls) == 3  # the artifact never saw a batch below its minimum
    before = inner.capabilities.counters.padded_rows
    x = torch.ones(1, 3)
    assert torch.equal(wrapper.run({"x": x})["y"], expected(x))
    assert inner.capabilities.counters.padded_rows - before == 2  # 1 row replayed as 3
    assert warnings == []


def test_outputs_are_copies_the_next_replay_does_not_overwrite():
    wrapper, _, _ = make()
    warm(wrapper)
    first = wrapper.run({"x": torch.ones(3, 3)})["y"]
    wrapper.run({"x": torch.full((4, 3), 5.0)})
    assert first.tolist() == [[6.0]] * 3


def test_a_batch_larger_than_every_bucket_runs_the_forward_and_warns_once():
    wrapper, inner, warnings = make()
    warm(wrapper)
    inner.calls.clear()
    for _ in range(2):
        x = torch.ones(6, 3)
        assert torch.equal(wrapper.run({"x": x})["y"], expected(x))
    assert inner.calls == [6, 6]
    assert (
        len(warnings) == 1
        and "a batch of 6 exceeds the largest captured batch size 4" in (warnings[0])
    )


def test_other_non_batch_dims_run_the_forward_and_warn_once():
    wrapper, inner, warnings = make()
    warm(wrapper, width=3)
    inner.calls.clear()
    for _ in range(2):
        x = torch.ones(2, 5)
        assert torch.equal(wrapper.run({"x": x})["y"], expected(x))
    assert inner.calls == [2, 2]
    assert len(warnings) == 1 and "input 'x' of shape [2, 5]" in warnings[0]
    assert torch.equal(wrapper.run({"x": torch.ones(2, 3)})["y"], expected(torch.ones(2, 3)))


def test_a_failing_capture_turns_graphs_off_and_every_batch_runs_the_forward():
    wrapper, inner, warnings = make(backend=FakeBackend(fail=RuntimeError("capture refused")))
    decision = warm(wrapper)
    assert decision.startswith("true, no effect: capturing batch size 1 failed")
    assert "capture refused" in decision
    x = torch.ones(3, 3)
    assert torch.equal(wrapper.run({"x": x})["y"], expected(x))
    assert len(warnings) == 1 and "every batch runs the normal forward" in warnings[0]
    assert wrapper.graphs == {}


def test_string_inputs_are_not_captured():
    wrapper, inner, warnings = make(inner=RowSum(outputs=lambda x: {"y": torch.zeros(1)}))
    wrapper.run({"x": Strings(["a"], (1,))})
    assert wrapper.seal().startswith("true, no effect: input 'x' is not a tensor")


def test_outputs_without_the_batch_rows_first_are_not_captured():
    wrapper, _, _ = make(inner=RowSum(outputs=lambda x: {"y": x.sum()}))
    assert "output 'y' is not a tensor with the batch's rows first" in warm(wrapper)


def test_no_capture_after_the_warm_up_and_unwarmed_sizes_use_a_larger_graph():
    wrapper, inner, _ = make(buckets=(1, 2, 4))
    warm(wrapper, buckets=(1, 4))  # the warm-up stopped before bucket 2 (say)
    inner.calls.clear()
    out = wrapper.run({"x": torch.ones(2, 3)})
    assert wrapper.backend.captured == [1, 4]
    assert inner.calls == [4] and out["y"].shape == (2, 1)


def test_a_model_that_does_not_batch_replays_its_one_graph_unpadded():
    wrapper, inner, _ = make(buckets=[None])
    wrapper.run({"x": torch.zeros(2, 3)})
    assert wrapper.seal() == "true (graphs for batch sizes [as configured])"
    x = torch.arange(6.0).view(2, 3)
    assert torch.equal(wrapper.run({"x": x})["y"], expected(x))
    assert inner.capabilities.counters.padded_rows == 0
    other = torch.ones(3, 3)  # a variable first dim: no batch dim to pad, so not the graph
    assert torch.equal(wrapper.run({"x": other})["y"], expected(other))
    assert inner.calls[-1] == 3


def test_the_wrapper_keeps_the_executor_interface():
    wrapper, inner, _ = make()
    assert wrapper.input_device == inner.input_device
    assert wrapper.capabilities is inner.capabilities
    assert wrapper.describe_bindings() == inner.describe_bindings()


def test_on_a_cpu_instance_the_load_logs_that_it_has_no_effect(tmp_path):
    config = ts_config(parameters={"CUDA_GRAPHS": {"string_value": "true"}})
    instance, sink = build(ts_repo(tmp_path), config)
    logged = settings_logged(sink)["CUDA_GRAPHS"]
    assert (
        logged == "true, no effect: the instance runs on cpu (CUDA graphs need a KIND_GPU instance)"
    )
    assert not isinstance(instance.executor, GraphExecutor)
    assert settings_logged(build(ts_repo(tmp_path / "b"), ts_config())[1])["CUDA_GRAPHS"] == "false"


def test_wired_into_the_load_the_warm_up_captures_and_requests_replay(tmp_path, monkeypatch):
    """The instance path with the CUDA parts replaced: capture in the warm-up, replay after."""
    backend = FakeBackend()
    monkeypatch.setattr(instance_module, "cuda_graphs_unsupported", lambda *_: None)
    monkeypatch.setattr(instance_module, "CudaGraphBackend", lambda device: backend)
    config = ts_config(parameters={"CUDA_GRAPHS": {"string_value": "true"}})
    instance, sink = build(ts_repo(tmp_path), config)
    assert settings_logged(sink)["CUDA_GRAPHS"] == "true (graphs for batch sizes [1, 2, 4])"
    assert backend.captured == [1, 2, 4]
    xs = [torch.full((1, 2), float(i)) for i in range(3)]
    outcomes = instance.infer([RequestInputs({"x": x}) for x in xs])
    assert [o["y"].tolist() for o in outcomes] == [(x * 2).tolist() for x in xs]
    assert instance.executor.graphs[4].graph.replays >= 2  # capture run + this batch
    assert instance.executor.capabilities.counters.padded_rows == 1


def test_unsupported_reasons_name_the_instance_setting():
    cpu = torch.device("cpu")
    assert "KIND_GPU" in cuda_graphs.cuda_graphs_unsupported(cpu, cpu, True)
    assert "KIND_MODEL" in cuda_graphs.cuda_graphs_unsupported(None, cpu, True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_graphs_match_the_eager_forward():
    device = torch.device("cuda", 0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    module = torch.jit.script(module.to(device).eval())

    class Executor:
        input_device = device
        capabilities = Capabilities()

        def run(self, inputs):
            return {"y": module(inputs["x"])}

        def describe_bindings(self):
            return []

    warnings: list[str] = []
    wrapper = GraphExecutor(
        Executor(), [1, 2, 4], cuda_graphs.CudaGraphBackend(device), warnings.append
    )
    with torch.inference_mode():
        for b in (1, 2, 4):
            wrapper.run({"x": torch.zeros(b, 3, device=device)})
        assert wrapper.seal() == "true (graphs for batch sizes [1, 2, 4])", warnings
        for n in (1, 3, 4):
            x = torch.randn(n, 3, device=device)
            got = wrapper.run({"x": x})["y"]
            torch.testing.assert_close(got, module(x))
    assert warnings == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_instance_captures_at_load_and_serves_from_graphs(tmp_path):
    config = ts_config(parameters={"CUDA_GRAPHS": {"string_value": "true"}})
    instance, sink = build(ts_repo(tmp_path), config, InstanceKind.GPU)
    assert settings_logged(sink)["CUDA_GRAPHS"] == "true (graphs for batch sizes [1, 2, 4])"
    xs = [torch.full((1, 2), float(i)) for i in range(3)]
    outcomes = instance.infer([RequestInputs({"x": x}) for x in xs])
    assert [o["y"].cpu().tolist() for o in outcomes] == [(x * 2).tolist() for x in xs]
