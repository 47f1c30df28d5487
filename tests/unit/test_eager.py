"""nn.Module and torch.export kinds without Triton: selection, module file, weights, names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pytorch_backend.config import BackendParameters, InstanceKind, ModelKind, parse_model_config
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.eager.signature import forward_signature
from pytorch_backend.executors.registry import resolve_model
from pytorch_backend.instance import InstanceArgs, build_instance
from pytorch_backend.requests import RequestInputs
from tests.unit.builders import Sink

MODULE = """
from typing import Dict, List

import torch
from torch import nn
from torch.nn import Linear  # imported: never a candidate


class Double(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((2,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class Keyword(nn.Module):
    def forward(self, a: torch.Tensor, *, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a - b
"""


def io(name: str, dims: list[int], dtype: str = "TYPE_FP32") -> dict:
    return {"name": name, "data_type": dtype, "dims": dims}


def cfg(params: dict[str, str] | None = None, **fields) -> dict:
    base = {
        "name": "m",
        "backend": "pytorch_python",
        "max_batch_size": 4,
        "input": [io("x", [2])],
        "output": [io("y", [2])],
        "parameters": {k: {"string_value": v} for k, v in (params or {}).items()},
    }
    return {**base, **fields}


def repo(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    for name, content in files.items():
        target = version / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return tmp_path / "m"


def build(model_dir: Path, config: dict):
    return build_instance(InstanceArgs(config, "m_0", InstanceKind.CPU, 0, model_dir, "1"))


EAGERLY = {"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"disable": true}', "MODULE_CLASS": "Double"}


# ---- kind resolution --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "params", "files", "kind"),
    [
        ({}, {}, ["model.py"], ModelKind.EAGER),
        ({"default_model_filename": "net.py"}, {}, ["net.py"], ModelKind.EAGER),
        ({"runtime": "model.py"}, {}, ["model.py"], ModelKind.EAGER),
        ({"backend": "python"}, {"MODULE_FILENAME": "net.py"}, ["net.py"], ModelKind.EAGER),
        ({"platform": "torch_aoti"}, {}, ["model.py", "model.pt2"], ModelKind.AOTI),
        (
            {"default_model_filename": "model.pt"},
            {},
            ["model.py", "model.pt"],
            ModelKind.TORCHSCRIPT,
        ),
        ({"backend": "python"}, {}, ["model.py", "model.pt"], ModelKind.TORCHSCRIPT),
        ({}, {"MODEL_FILENAME": "w.pt"}, ["model.py", "w.pt"], ModelKind.TORCHSCRIPT),
    ],
)
def test_resolve_model(tmp_path, fields, params, files, kind):
    for name in files:
        (tmp_path / name).write_text("x")
    config = parse_model_config(cfg(params, **fields))
    from pytorch_backend.config import parse_parameters

    parsed = parse_parameters(
        "m", {k: v["string_value"] for k, v in cfg(params)["parameters"].items()}, print
    )
    resolved = resolve_model(config, tmp_path, parsed)
    assert resolved.kind is kind
    assert resolved.reason


def test_model_filename_naming_a_python_file_points_at_module_filename(tmp_path):
    config = parse_model_config(cfg())
    params = BackendParameters(model_filename="net.py")
    with pytest.raises(ModelLoadError, match="with the parameter 'MODULE_FILENAME'"):
        resolve_model(config, tmp_path, params)


def test_the_plugin_itself_is_never_a_module(tmp_path):
    (tmp_path / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    (tmp_path / "model.pt").write_text("x")
    config = parse_model_config(cfg())
    assert resolve_model(config, tmp_path, BackendParameters()).kind is ModelKind.TORCHSCRIPT


def test_exported_program_is_routed_whatever_the_platform(tmp_path):
    program = torch.export.export(torch.nn.ReLU(), (torch.zeros(2, 2),))
    torch.export.save(program, tmp_path / "model.pt2")
    for fields in ({"platform": "torch_aoti"}, {"default_model_filename": "model.pt2"}):
        resolved = resolve_model(parse_model_config(cfg(**fields)), tmp_path, BackendParameters())
        assert resolved.kind is ModelKind.EXPORTED_PROGRAM
        assert "torch.export program" in resolved.reason


# ---- the module file, class selection, weights --------------------------------------------------


def test_module_with_weights_and_class_selection(tmp_path):
    model_dir = repo(tmp_path, {"model.py": MODULE})
    torch.save({"weight": torch.tensor([5.0, -1.0])}, model_dir / "1" / "model.pt")
    instance = build(model_dir, cfg(EAGERLY))
    (out,) = instance.infer([RequestInputs({"x": torch.ones(3, 2)})])
    assert out["y"].tolist() == [[5.0, -1.0]] * 3
    assert instance.kind is ModelKind.EAGER


def test_keyword_only_arguments_are_passed_by_keyword(tmp_path):
    model_dir = repo(tmp_path, {"model.py": MODULE})
    config = cfg(
        {"MODULE_CLASS": "Keyword", "TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"backend": "eager"}'},
        input=[io("b", [2]), io("a", [2])],
        output=[io("OUTPUT__1", [2])],
    )
    instance = build(model_dir, config)
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 1.0]])
    (out,) = instance.infer([RequestInputs({"a": a, "b": b})])
    assert out["OUTPUT__1"].tolist() == [[2.0, 3.0]]


@pytest.mark.parametrize(
    ("params", "weights", "fragment"),
    [
        ({}, None, "defines 2 nn.Module subclasses: Double, Keyword"),
        ({"MODULE_CLASS": "Linear"}, None, "it defines: Double, Keyword"),
        (EAGERLY, {"weight": torch.ones(2), "extra": torch.ones(1)}, "unexpected keys: extra"),
        (EAGERLY, {}, "missing keys: weight"),
        (EAGERLY, {"weight": torch.ones(3)}, "does not fit the module"),
        (EAGERLY, [torch.ones(2)], "holds a list, not a state dict"),
    ],
)
def test_module_load_errors(tmp_path, params, weights, fragment):
    model_dir = repo(tmp_path, {"model.py": MODULE})
    if weights is not None:
        torch.save(weights, model_dir / "1" / "model.pt")
    with pytest.raises(ModelLoadError, match="model 'm'") as info:
        build(model_dir, cfg(params))
    assert fragment in str(info.value)


def test_forward_signature_from_type_hints():
    class Hinted(torch.nn.Module):
        def forward(self, t: list[str], d: torch.Tensor, u) -> tuple[list[str], torch.Tensor]:
            return t, d

    class Mapping(torch.nn.Module):
        def forward(self, inputs: dict[str, torch.Tensor]):
            return inputs

    config = parse_model_config(cfg())
    signature = forward_signature(config, Hinted())
    assert signature.arg_names == ("t", "d", "u")
    assert signature.arg_types == ("List[str]", "Tensor", "Tensor")
    assert signature.output_types == ("List[str]", "Tensor")
    mapping = forward_signature(config, Mapping())
    assert mapping.arg_types == ("Dict[str, Tensor]",) and mapping.output_types is None


def test_varargs_fail_the_load():
    class Star(torch.nn.Module):
        def forward(self, *xs):
            return xs

    with pytest.raises(ModelLoadError, match=r"forward takes \*xs"):
        forward_signature(parse_model_config(cfg()), Star())


# ---- torch.export programs ----------------------------------------------------------------------


class _Pair(torch.nn.Module):
    def forward(self, x: torch.Tensor, opts: dict[str, torch.Tensor]):
        return {"sum": x + opts["k"], "max": torch.argmax(x, 1, keepdim=True)}


def _save_program(path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=6)
    program = torch.export.export(
        _Pair(),
        (torch.zeros(2, 3), {"k": torch.zeros(2, 3)}),
        dynamic_shapes={"x": {0: batch}, "opts": {"k": {0: batch}}},
    )
    torch.export.save(program, path)


def test_exported_program_names_batch_range_and_values(tmp_path):
    model_dir = repo(tmp_path, {})
    _save_program(model_dir / "1" / "model.pt2")
    config = cfg(
        {"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"disable": true}'},
        default_model_filename="model.pt2",
        input=[io("ARGS[0]", [3]), io("INPUT__1", [3])],
        output=[io("RESULT[max]", [1], "TYPE_INT64"), io("OUTPUT__0", [3])],
    )
    instance = build(model_dir, config)
    assert instance.kind is ModelKind.EXPORTED_PROGRAM
    assert instance.executor.capabilities.batch_range == (1, 6)
    x = torch.tensor([[1.0, 5.0, 2.0]])
    (out,) = instance.infer([RequestInputs({"ARGS[0]": x, "INPUT__1": torch.ones(1, 3)})])
    assert out["OUTPUT__0"].tolist() == [[2.0, 6.0, 3.0]]
    assert out["RESULT[max]"].tolist() == [[1]]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"max_batch_size": 8}, "exceeds the program's exported maximum batch size 6"),
        ({"input": [io("ARGS[0]", [3], "TYPE_FP16"), io("INPUT__1", [3])]}, "expects TYPE_FP32"),
        ({"input": [io("ARGS[0]", [4]), io("INPUT__1", [3])]}, "takes [3]"),
        ({"output": [io("RESULT[max]", [1])]}, "model provides TYPE_INT64"),
        ({"output": [io("RESULT[min]", [1])]}, "matches no model output"),
    ],
)
def test_exported_program_load_errors(tmp_path, fields, fragment):
    model_dir = repo(tmp_path, {})
    _save_program(model_dir / "1" / "model.pt2")
    base = {
        "default_model_filename": "model.pt2",
        "input": [io("ARGS[0]", [3]), io("INPUT__1", [3])],
        "output": [io("OUTPUT__0", [3])],
    }
    config = cfg({"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"disable": true}'}, **{**base, **fields})
    with pytest.raises(ModelLoadError) as info:
        build(model_dir, config)
    assert fragment in str(info.value)


class _Affine(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1


def test_exported_program_pads_below_its_minimum_and_the_metric_counts_it(tmp_path):
    from pytorch_backend import metrics
    from tests.unit.test_metrics import FakeRegistry

    model_dir = repo(tmp_path, {})
    batch = torch.export.Dim("batch", min=3, max=8)
    program = torch.export.export(_Affine(), (torch.zeros(4, 2),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, model_dir / "1" / "model.pt2")
    config = cfg(
        {"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"disable": true}'},
        default_model_filename="model.pt2",
        input=[io("INPUT__0", [2])],
        output=[io("OUTPUT__0", [2])],
    )
    registry = FakeRegistry()
    instance = build_instance(
        InstanceArgs(config, "m_0", InstanceKind.CPU, 0, model_dir, "1"), metrics=registry
    )
    assert instance.executor.capabilities.batch_range == (3, 8)
    counters = instance.executor.capabilities.counters
    before = counters.padded_rows
    for rows in (1, 2, 4):  # padded by 2, by 1, not at all
        x = torch.arange(rows * 2.0).view(rows, 2)
        (out,) = instance.infer([RequestInputs({"INPUT__0": x})])
        assert torch.equal(out["OUTPUT__0"], x * 2 + 1)  # the padded rows are dropped
    assert counters.padded_rows - before == 3
    instance.close()  # flushes the metrics
    assert registry.get(metrics.PADDED.name).value == counters.padded_rows


def test_compile_options_logged_and_warm_up_counts_graphs(tmp_path):
    model_dir = repo(tmp_path, {"model.py": MODULE})
    sink = Sink()

    config = cfg(
        {"MODULE_CLASS": "Double", "TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"backend": "eager"}'}
    )
    instance = build_instance(
        InstanceArgs(config, "m_0", InstanceKind.CPU, 0, model_dir, "1"), sink=sink
    )
    for batch in range(1, 5):
        instance.infer([RequestInputs({"x": torch.ones(batch, 2)})])
    text = logged(sink)
    assert (
        json.dumps(
            {"backend": "eager", "dynamic": None, "fullgraph": False, "mode": None}, sort_keys=True
        )
        in text
    )
    assert "torch.compile warm-up over batch sizes [1, 2, 4]" in text
    assert "recompiled while serving" not in text
    counters = instance.executor.capabilities.counters
    assert counters.warmup_seconds is not None and counters.warmup_seconds > 0
    assert counters.recompilations == 0
    # A forward that compiled one new graph after load is counted as a recompilation.
    watch = instance.executor.watch
    watch.seen -= 1  # as if the last forward had compiled one
    watch.check({"x": torch.ones(1, 2)})
    assert counters.recompilations == 1
    assert "recompiled while serving: 1 new graph(s)" in logged(sink)


def test_without_warmup_the_compile_pass_still_runs_and_the_watch_counts_after_it(tmp_path):
    model_dir = repo(tmp_path, {"model.py": MODULE})
    sink = Sink()

    config = cfg(
        {
            "MODULE_CLASS": "Double",
            "TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"backend": "eager"}',
            "WARMUP": "false",
        }
    )
    instance = build_instance(
        InstanceArgs(config, "m_0", InstanceKind.CPU, 0, model_dir, "1"), sink=sink
    )
    text = logged(sink)
    assert "torch.compile warm-up over batch sizes [1, 2, 4]" in text
    assert "'m_0': warm-up over batch sizes" not in text  # no bucket runs
    watch = instance.executor.capabilities.compilation
    assert watch is instance.executor.watch and not watch.paused
    assert instance.executor.capabilities.counters.warmup_seconds > 0
    for batch in (3, 1, 4):
        instance.infer([RequestInputs({"x": torch.ones(batch, 2)})])
    assert instance.executor.capabilities.counters.recompilations == 0
    assert "recompiled while serving" not in logged(sink)


def logged(sink: Sink) -> str:
    """Every line the instance logged, at every level."""
    return "\n".join(message for _, message in sink.lines)
