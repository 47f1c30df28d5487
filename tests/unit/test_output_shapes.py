"""OUTPUT_SHAPE_CHECK without Triton: warn (the default), error and off, per request and at load.

The model of upstream's ``qa/L0_libtorch_instance_group_kind_model``: ``dims: [ 4 ]`` declared
for an output the model returns as ``[batch, 16]``. The C++ backend serves the model's shape.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from pytorch_backend.autocomplete import complete_config
from pytorch_backend.config import InstanceKind, OutputShapeCheck, parse_model_config
from pytorch_backend.engine import InferenceEngine
from pytorch_backend.errors import ExecutionError, ModelLoadError
from pytorch_backend.executors.base import LoadRunOutputs
from pytorch_backend.executors.torchscript.executor import TorchScriptExecutor
from pytorch_backend.instance import InstanceArgs, build_instance
from pytorch_backend.logs import InstanceLog
from pytorch_backend.requests import RequestInputs
from pytorch_backend.runtime.output_shapes import OutputShapes
from pytorch_backend.serving.check import check_repository
from tests import aoti_models
from tests.unit import builders

CPU = torch.device("cpu")
WARN, ERROR, OFF = OutputShapeCheck.WARN, OutputShapeCheck.ERROR, OutputShapeCheck.OFF
SERVED = "served with the model's shape, as the C++ backend does"


class Wide(torch.nn.Module):
    """``[B, 4] -> [B, 16]`` and ``[B, 4] -> [B, 2]``: neither matches ``dims: [ 4 ]``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.repeat(1, 4), x[:, :2]


class Sink(builders.Sink):
    def warnings(self, text: str = "") -> list[str]:
        return [m for level, m in self.lines if level == "warn" and text in m]


def raw_config(mode: str | None = None, *, max_batch_size: int = 8, **fields) -> dict:
    dims = [4] if max_batch_size else [-1, 4]
    raw = {
        "name": "m",
        "backend": "pytorch_python",
        "max_batch_size": max_batch_size,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": dims}],
        "output": [
            {"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": dims},
            {"name": "OUTPUT__1", "data_type": "TYPE_FP32", "dims": dims},
        ],
        **fields,
    }
    if mode is not None:
        raw["parameters"] = {"OUTPUT_SHAPE_CHECK": {"string_value": mode}}
    return raw


def engines(mode: OutputShapeCheck, sink: Sink, count: int = 1, max_batch_size: int = 8):
    """``count`` engines of one instance (as its warm-up and serving engines), one shared check."""
    config = parse_model_config(raw_config(max_batch_size=max_batch_size))
    log = InstanceLog("m", "m_0", sink)
    shapes = OutputShapes(config, log, mode)
    executor = TorchScriptExecutor(config, torch.jit.script(Wide()), CPU)
    return [InferenceEngine(config, executor, log=log, output_shapes=shapes) for _ in range(count)]


X = torch.arange(8, dtype=torch.float32).reshape(2, 4)


# --- per request ---------------------------------------------------------------------------------


def test_warn_serves_the_models_shape_and_warns_once_per_output_per_instance():
    sink = Sink()
    warmup, serving = engines(WARN, sink, count=2)
    outcomes = [*warmup.infer([RequestInputs({"x": X})]), *serving.infer([RequestInputs({"x": X})])]
    outcomes += serving.infer([RequestInputs({"x": X[:1]}), RequestInputs({"x": X[1:]})])
    for outcome in outcomes[:2]:
        torch.testing.assert_close(outcome["OUTPUT__0"], X.repeat(1, 4))
        torch.testing.assert_close(outcome["OUTPUT__1"], X[:, :2])
    assert [o["OUTPUT__0"].shape for o in outcomes[2:]] == [(1, 16), (1, 16)]
    # one per output, for all three executes and both engines
    first, second = sorted(sink.warnings())
    assert first == (
        "pytorch_backend: model 'm' instance 'm_0': output 'OUTPUT__0' has shape [2, 16]; the "
        f"configuration declares dims [4] ([-1, 4] with the batch): {SERVED} (it never compares "
        'output shapes with the config). Correct the dims, or set OUTPUT_SHAPE_CHECK to "error" '
        'to refuse such outputs or "off" to silence this warning, logged once per output'
    )
    assert "output 'OUTPUT__1' has shape [2, 2]; the configuration declares dims [4]" in second
    assert set(warmup.output_shapes.seen) == {"OUTPUT__0", "OUTPUT__1"}


def test_each_instance_warns_for_itself():
    sinks = [Sink(), Sink()]
    for sink in sinks:
        (engine,) = engines(WARN, sink)
        engine.infer([RequestInputs({"x": X})])
    assert [len(s.warnings(SERVED)) for s in sinks] == [2, 2]


def test_error_refuses_each_request_naming_both_shapes():
    sink = Sink()
    (engine,) = engines(ERROR, sink)
    for _ in range(2):
        (outcome,) = engine.infer([RequestInputs({"x": X})])
        assert isinstance(outcome, ExecutionError)
        assert str(outcome) in (
            "output 'OUTPUT__0' has shape [2, 16]; the configuration declares [-1, 4] "
            "(-1: the batch dimension)",
            "output 'OUTPUT__1' has shape [2, 2]; the configuration declares [-1, 4] "
            "(-1: the batch dimension)",
        )
    assert sink.warnings() == []


def test_off_serves_and_says_nothing():
    sink = Sink()
    (engine,) = engines(OFF, sink)
    (outcome,) = engine.infer([RequestInputs({"x": X})])
    assert outcome["OUTPUT__0"].shape == (2, 16)
    assert sink.warnings() == [] and engine.output_shapes.seen == {}


def test_without_batching_the_whole_shape_is_compared():
    sink = Sink()
    (engine,) = engines(WARN, sink, max_batch_size=0)
    (outcome,) = engine.infer([RequestInputs({"x": X})])
    assert outcome["OUTPUT__0"].shape == (2, 16)
    (warning,) = sink.warnings("'OUTPUT__0'")
    assert "output 'OUTPUT__0' has shape [2, 16]; the configuration declares dims [-1, 4]: " in (
        warning
    )
    (engine,) = engines(ERROR, Sink(), max_batch_size=0)
    (outcome,) = engine.infer([RequestInputs({"x": X})])
    assert re.search(
        r"has shape \[2, (16|2)\]; the configuration declares \[-1, 4\]$", str(outcome)
    )


def test_an_engine_without_a_check_uses_the_default_warn():
    config = parse_model_config(raw_config())
    sink = Sink()
    engine = InferenceEngine(
        config,
        TorchScriptExecutor(config, torch.jit.script(Wide()), CPU),
        log=InstanceLog("m", "m_0", sink),
    )
    assert engine.output_shapes.mode is WARN
    (outcome,) = engine.infer([RequestInputs({"x": X})])
    assert outcome["OUTPUT__0"].shape == (2, 16) and len(sink.warnings(SERVED)) == 2


def test_the_batch_rows_are_still_required():
    """Outputs are split per request: a batching model's dim 0 is checked in every mode."""

    class Short(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x[:1], x

    config = parse_model_config(raw_config())
    executor = TorchScriptExecutor(config, torch.jit.script(Short()), CPU)
    shapes = OutputShapes(config, InstanceLog("m", "m_0", Sink()), OFF)
    (outcome,) = InferenceEngine(config, executor, output_shapes=shapes).infer(
        [RequestInputs({"x": X})]
    )
    assert str(outcome) == "output 'OUTPUT__0' has 1 rows in dimension 0; the batch has 2 items"


def test_sequence_state_outputs_are_always_checked():
    """A state output comes back as the next request's state input, checked against its dims."""
    state = {"input_name": "S__1", "output_name": "S_OUT__1", "data_type": "TYPE_FP32", "dims": [1]}
    config = parse_model_config(
        {
            "name": "m",
            "platform": "pytorch_libtorch",
            "max_batch_size": 0,
            "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [1]}],
            "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [1]}],
            "sequence_batching": {"state": [state]},
        }
    )
    shapes = OutputShapes(config, InstanceLog("m", "m_0", Sink()), OFF)
    shapes.check("OUTPUT__0", (3,))  # served
    with pytest.raises(ExecutionError, match=r"output 'S_OUT__1' has shape \[3\]"):
        shapes.check("S_OUT__1", (3,))


# --- at load (a run whose output shapes the executor declares) ---------------------------------


def load_run(fixed: bool) -> LoadRunOutputs:
    return LoadRunOutputs(
        {"OUTPUT__0": (2, 16), "OUTPUT__1": (2, 4)}, fixed, {"OUTPUT__0": "RESULT[0] (= OUTPUT__0)"}
    )


@pytest.mark.parametrize("fixed", [True, False])
def test_warn_at_load_then_not_again(fixed):
    sink = Sink()
    config = parse_model_config(raw_config())
    shapes = OutputShapes(config, InstanceLog("m", "m_0", sink), WARN)
    shapes.at_load(load_run(fixed))
    (warning,) = sink.warnings()
    assert (
        "output 'OUTPUT__0' (RESULT[0] (= OUTPUT__0)) has shape [2, 16] in a test run on zeros; "
        f"the configuration declares dims [4] ([-1, 4] with the batch): {SERVED}"
    ) in warning
    shapes.check("OUTPUT__0", (5, 16))
    assert len(sink.warnings()) == 1


def test_error_at_load_refuses_a_fixed_shape():
    config = parse_model_config(raw_config())
    shapes = OutputShapes(config, InstanceLog("m", "m_0", Sink()), ERROR)
    with pytest.raises(ModelLoadError) as info:
        shapes.at_load(load_run(fixed=True))
    assert str(info.value) == (
        "model 'm': output 'OUTPUT__0' (RESULT[0] (= OUTPUT__0)) has shape [2, 16] in a test run "
        "on zeros; the configuration declares dims [4] ([-1, 4] with the batch): correct the "
        'output\'s dims in config.pbtxt (or set OUTPUT_SHAPE_CHECK to "warn" to serve the '
        "model's shape, as the C++ backend does)"
    )


def test_error_at_load_only_warns_when_inputs_vary_then_refuses_requests():
    sink = Sink()
    config = parse_model_config(raw_config())
    shapes = OutputShapes(config, InstanceLog("m", "m_0", sink), ERROR)
    shapes.at_load(load_run(fixed=False))
    (warning,) = sink.warnings()
    assert warning.endswith(
        "has shape [2, 16] in a test run on zeros; the configuration declares dims [4] "
        "([-1, 4] with the batch); requests whose outputs differ from the dims will fail"
    )
    with pytest.raises(ExecutionError):
        shapes.check("OUTPUT__0", (1, 16))
    shapes.check("OUTPUT__0", (1, 4))  # a request whose output does match is served


def test_off_at_load_says_nothing():
    sink = Sink()
    shapes = OutputShapes(parse_model_config(raw_config()), InstanceLog("m", "m_0", sink), OFF)
    shapes.at_load(load_run(fixed=True))
    assert sink.warnings() == [] and shapes.seen == {}


# --- whole instances: TorchScript (warm-up) and a .pt2 (its test run) ----------------------------


def torchscript_model(tmp_path: Path, raw: dict) -> InstanceArgs:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    torch.jit.script(Wide()).save(str(model_dir / "1" / "model.pt"))
    return InstanceArgs(raw, "m_0", InstanceKind.CPU, 0, model_dir, "1")


@pytest.mark.parametrize("warmup", ["true", "false"])
def test_torchscript_instance_warns_at_load_with_a_warmup_else_at_the_first_request(
    tmp_path, warmup
):
    raw = raw_config()
    raw["parameters"] = {"WARMUP": {"string_value": warmup}}
    sink = Sink()
    instance = build_instance(torchscript_model(tmp_path, raw), sink)
    assert len(sink.warnings(SERVED)) == (2 if warmup == "true" else 0)
    for _ in range(2):
        (outcome,) = instance.infer([RequestInputs({"x": X})])
        assert outcome["OUTPUT__0"].shape == (2, 16)
    assert len(sink.warnings(SERVED)) == 2
    assert "OUTPUT_SHAPE_CHECK = warn (an output shape that contradicts the dims: served with " in (
        "\n".join(m for _, m in sink.lines)
    )


def aoti_raw(mode: str | None) -> dict:
    def entries(table: dict, wrong: str = "") -> list[dict]:
        return [
            {"name": o, "data_type": f"TYPE_{t}", "dims": [16] if o == wrong else list(d)}
            for o, t, d in table.values()
        ]

    raw = {
        "name": "m",
        "backend": "pytorch_python",
        "platform": "torch_aoti",
        "max_batch_size": 8,
        "input": entries(aoti_models.COMPLEX_INPUTS),
        "output": entries(aoti_models.COMPLEX_OUTPUTS, wrong="OUTPUT__0"),
    }
    if mode is not None:
        raw["parameters"] = {"OUTPUT_SHAPE_CHECK": {"string_value": mode}}
    return raw


def aoti_model(tmp_path: Path, raw: dict) -> InstanceArgs:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(aoti_models.build_complex(), model_dir / "1" / "model.pt2")
    return InstanceArgs(raw, "m_0", InstanceKind.CPU, 0, model_dir, "1")


def complex_request(batch: int = 3) -> RequestInputs:
    example = aoti_models.complex_example(batch)
    return RequestInputs({aoti_models.COMPLEX_INPUTS[k][0]: v for k, v in example.items()})


@pytest.mark.parametrize("mode", [None, "warn", "off"])
def test_pt2_with_wrong_output_dims_is_served(tmp_path, mode):
    sink = Sink()
    instance = build_instance(aoti_model(tmp_path, aoti_raw(mode)), sink)
    warnings = sink.warnings("output 'OUTPUT__0'")
    if mode == "off":
        assert warnings == []
    else:  # warned at load, from the test run; not again for requests
        assert len(warnings) == 1 and "has shape [2, 4] in a test run on zeros" in warnings[0]
        assert "the configuration declares dims [16] ([-1, 16] with the batch)" in warnings[0]
    for batch in (3, 1):
        (outcome,) = instance.infer([complex_request(batch)])
        assert outcome["OUTPUT__0"].shape == (batch, 4)
    assert len(sink.warnings("output 'OUTPUT__0'")) == len(warnings)


def test_pt2_with_wrong_output_dims_is_refused_under_error(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        build_instance(aoti_model(tmp_path, aoti_raw("error")))
    text = str(info.value)
    assert text.startswith("model 'm': output 'OUTPUT__0' (RESULT[out] (= OUTPUT__0)) has shape")
    assert "[2, 4] in a test run on zeros; the configuration declares dims [16]" in text


def test_pt2_executor_declares_its_test_run():
    from pytorch_backend.executors.aoti.executor import AotiExecutor

    config = parse_model_config(aoti_raw(None))
    executor = AotiExecutor(config, aoti_models.build_complex(), CPU)
    run = executor.capabilities.load_run
    assert run is not None and run.fixed
    assert run.shapes == {o: (2, *d) for o, _, d in aoti_models.COMPLEX_OUTPUTS.values()}
    assert run.slots["OUTPUT__0"] == "RESULT[out] (= OUTPUT__0)"


# --- pytorch-backend check, auto-completion ------------------------------------------------------


def write_repository(tmp_path: Path, mode: str | None, name: str) -> None:
    raw = raw_config(mode)
    args = torchscript_model(tmp_path / "repo", raw)
    dims = "dims: [ 4 ]"
    args.model_dir.joinpath("config.pbtxt").write_text(
        'backend: "pytorch_python"\nmax_batch_size: 8\n'
        f'input [ {{ name: "x" data_type: TYPE_FP32 {dims} }} ]\n'
        f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 {dims} }},\n'
        f'         {{ name: "OUTPUT__1" data_type: TYPE_FP32 {dims} }} ]\n'
        + (
            f'parameters {{ key: "OUTPUT_SHAPE_CHECK" value: {{ string_value: "{mode}" }} }}\n'
            if mode
            else ""
        )
    )
    args.model_dir.rename(args.model_dir.parent / name)


@pytest.mark.parametrize(("mode", "warned"), [(None, True), ("error", True), ("off", False)])
def test_check_reports_a_mismatch_as_a_warning(tmp_path, mode, warned):
    write_repository(tmp_path, mode, "wide")
    lines: list[str] = []
    (result,) = check_repository(tmp_path / "repo", report=lines.append)
    assert result.ok
    if not warned:
        assert result.warnings == () and lines[-1] == "1 model version(s) checked, 0 with problems"
        return
    # warn: both outputs; error: the warm-up stops at the first output refused
    assert len(result.warnings) == (1 if mode == "error" else 2)
    first, *others = result.line().splitlines()
    assert first.startswith("wide (version 1): OK - TorchScript, 1 input(s), 2 output(s)")
    assert len(others) == len(result.warnings)
    assert all(line.startswith("    WARNING - output 'OUTPUT__") for line in others)
    assert any("has shape [1, 16]; the configuration declares" in line for line in others) or (
        "has shape [1, 2]; the configuration declares" in others[0]
    )
    assert lines[-1] == "1 model version(s) checked, 0 with problems, 1 with warnings"


@pytest.mark.parametrize("mode", [None, "error"])
def test_autocomplete_leaves_contradicting_output_dims_to_the_load(tmp_path, mode):
    raw = aoti_raw(mode)
    # incomplete: auto-completion compares what is written with the model
    del raw["max_batch_size"], raw["input"][-1]["dims"]
    version = aoti_model(tmp_path, raw).version_dir
    if mode == "error":
        with pytest.raises(ModelLoadError, match=r"output 'OUTPUT__0' dims: the configuration "):
            complete_config(raw, version)
        return
    completed = complete_config(raw, version).apply(raw)
    assert completed["max_batch_size"] == aoti_models.COMPLEX_MAX_BATCH
    assert completed["input"][-1] == {"name": "INPUT__5", "data_type": "TYPE_FP32", "dims": [4]}
    assert completed["output"][0]["dims"] == [16]  # as written
