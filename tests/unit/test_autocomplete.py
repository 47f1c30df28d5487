"""Config auto-completion without Triton: the compiled-check parser, the describers, completion."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pytorch_backend.autocomplete import Completion, complete_config
from pytorch_backend.config import parse_model_config
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.aoti.checks import DimCheck, package_source, parse_input_checks
from tests import aoti_models, ts_models
from tests.aoti_models import COMPLEX_INPUTS, COMPLEX_OUTPUTS

SOURCE = """
AOTI_NOINLINE static void check_input_0(
    AtenTensorHandle* input_handles
) {
    int32_t arg0_1_expected_dtype = aoti_torch_dtype_bfloat16();
    if (arg0_1_size[0] < 2) {
    }
    if (arg0_1_size[0] > 8) {
    }
    if (4 != arg0_1_size[1]) {
    }
    if (1 != arg0_1_stride[2]) {
    }
}

AOTI_NOINLINE static void check_input_1(
    AtenTensorHandle* input_handles
) {
    int32_t arg1_1_expected_dtype = aoti_torch_dtype_int64();
    if (arg1_1_size[0] < 3) {
    }
    if (1 != arg1_1_stride[0]) {
    }
}
"""


class Sink:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log_info(self, message: str) -> None:
        self.lines.append(message)

    log_warn = log_error = log_verbose = log_info


def test_parse_input_checks_reads_dtype_rank_and_ranges():
    first, second = parse_input_checks(SOURCE)
    assert first.dtype == "BF16"
    # dim 2 only appears in a stride check: present, unbounded
    assert first.dims == (DimCheck(2, 8), DimCheck(4, 4), DimCheck(0, None))
    assert second.dtype == "INT64" and second.dims == (DimCheck(3, None),)


def test_package_source_is_found_in_a_real_package():
    source = package_source(aoti_models.build_static())
    assert source is not None
    (check,) = parse_input_checks(source)
    assert check.dtype == "FP32" and check.dims == (DimCheck(4, 4), DimCheck(3, 3))


def version_dir(tmp_path: Path, artifact: Path, name: str = "model.pt2") -> Path:
    target = tmp_path / "m" / "1"
    target.mkdir(parents=True)
    shutil.copyfile(artifact, target / name)
    return target


def aoti(**fields) -> dict:
    return {"name": "m", "backend": "pytorch_python", "platform": "torch_aoti", **fields}


def test_empty_config_gets_every_field_of_a_batching_nested_package(tmp_path):
    sink = Sink()
    completion = complete_config(aoti(), version_dir(tmp_path, aoti_models.build_complex()), sink)
    config = parse_model_config(completion.apply(aoti()))
    assert config.max_batch_size == aoti_models.COMPLEX_MAX_BATCH and config.dynamic_batching
    assert {s.name: (s.dtype, s.dims) for s in (*config.inputs, *config.outputs)} == {
        n: (t, d) for table in (COMPLEX_INPUTS, COMPLEX_OUTPUTS) for n, (_, t, d) in table.items()
    }
    prefix = "pytorch_backend: model 'm': auto-complete: "
    assert f"{prefix}max_batch_size = 8 (the package's exported batch range 2..8)" in sink.lines
    assert len(sink.lines) == 1 + 6 + 5 + 1  # max_batch_size, inputs, outputs, dynamic_batching


def test_ordinal_names_when_the_config_uses_them(tmp_path):
    written = aoti(input=[{"name": "INPUT__3", "data_type": "TYPE_FP32", "dims": [4]}])
    completion = complete_config(written, version_dir(tmp_path, aoti_models.build_complex()))
    config = completion.apply(written)
    assert [e["name"] for e in config["input"]] == [
        "INPUT__3",
        "INPUT__0",
        "INPUT__1",
        "INPUT__2",
        "INPUT__4",
        "INPUT__5",
    ]
    assert [e["name"] for e in config["output"]] == [f"OUTPUT__{i}" for i in range(5)]
    assert completion.inputs[0]["name"] == "INPUT__0"  # the written entry is not re-added


def test_written_values_are_kept_and_missing_ones_filled(tmp_path):
    written = aoti(
        max_batch_size=4,
        input=[{"name": "ARGS[1][1]", "data_type": "TYPE_INT64", "dims": []}],
        output=[{"name": "RESULT[out]", "data_type": "TYPE_INVALID", "dims": [4]}],
    )
    completion = complete_config(written, version_dir(tmp_path, aoti_models.build_complex()))
    assert completion.max_batch_size is None  # 4 <= 8 was written: kept
    config = completion.apply(written)
    assert config["max_batch_size"] == 4
    entries = {e["name"]: e for e in config["input"] + config["output"]}
    assert entries["ARGS[1][1]"]["dims"] == [2]
    assert entries["RESULT[out]"]["data_type"] == "TYPE_FP32"
    assert [e["name"] for e in config["output"]] == ["RESULT[out]"]  # a declared subset stays


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (
            {"input": [{"name": "ARGS[0]", "data_type": "TYPE_FP64", "dims": [4]}]},
            "input 'ARGS[0]' data_type: the configuration says TYPE_FP64, the model provides "
            "TYPE_FP32",
        ),
        (
            {"input": [{"name": "INPUT__4", "data_type": "TYPE_FP32", "dims": [5]}]},
            "input 'INPUT__4' dims: the configuration says [ 5 ], the model provides [ 3 ] "
            "(ARGS[2][beta])",
        ),
        (
            {"max_batch_size": 9},
            "max_batch_size: the configuration says 9, the model accepts at most 8 (the "
            "package's exported batch range 2..8)",
        ),
    ],
)
def test_contradictions_name_both_values(tmp_path, written, message):
    with pytest.raises(ModelLoadError) as error:
        complete_config(aoti(**written), version_dir(tmp_path, aoti_models.build_complex()))
    assert str(error.value) == f"model 'm': {message}"


def test_static_and_variable_dims(tmp_path):
    static = complete_config(aoti(), version_dir(tmp_path, aoti_models.build_static()))
    assert static.max_batch_size is None and not static.dynamic_batching
    assert [e["dims"] for e in static.inputs + static.outputs] == [[4, 3], [4, 3]]
    padded = complete_config(aoti(), version_dir(tmp_path / "p", aoti_models.build_padded()))
    assert padded.max_batch_size == aoti_models.PADDED_MAX_BATCH
    assert [e["dims"] for e in padded.inputs + padded.outputs] == [[-1], [-1]]


def test_full_rank_dims_with_max_batch_size_0_keep_the_model_unbatched(tmp_path):
    written = aoti(input=[{"name": "ARGS[0]", "data_type": "TYPE_FP32", "dims": [-1, -1]}])
    completion = complete_config(written, version_dir(tmp_path, aoti_models.build_padded()))
    assert completion.max_batch_size is None and not completion.dynamic_batching
    assert completion.outputs == [{"name": "RESULT", "data_type": "TYPE_FP32", "dims": [-1, -1]}]


def test_complete_config_is_left_alone_without_opening_the_model(tmp_path):
    written = aoti(
        max_batch_size=2,
        input=[{"name": "a", "data_type": "TYPE_FP32", "dims": [1]}],
        output=[{"name": "b", "data_type": "TYPE_FP32", "dims": [1]}],
    )
    assert complete_config(written, tmp_path / "does-not-exist").empty


def test_missing_artifact_gives_the_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model 'm': unable to find '.*model.pt2'"):
        complete_config(aoti(), tmp_path)


def test_torchscript_without_sidecar_names_what_to_write(tmp_path):
    path = ts_models.save(ts_models.Scale(), tmp_path / "1" / "model.pt")
    with pytest.raises(ModelLoadError) as error:
        complete_config({"name": "m", "backend": "pytorch_python"}, path.parent)
    text = str(error.value)
    assert "cannot complete the configuration from the TorchScript file model.pt" in text
    assert "input 'x' (forward argument 'x' (Tensor)): data_type and dims" in text
    assert "output 'OUTPUT__0' (returned value 0 (Tensor)): data_type and dims" in text


class Strings(torch.nn.Module):
    def forward(self, text: list[str]) -> list[str]:
        return [s.upper() for s in text]


def test_torchscript_strings_complete_without_sidecar(tmp_path):
    path = ts_models.save(Strings(), tmp_path / "1" / "model.pt")
    written = {"name": "m", "backend": "pytorch_python", "max_batch_size": 4}
    completion = complete_config(written, path.parent)
    config = parse_model_config(completion.apply(written))
    (inp,), (out,) = config.inputs, config.outputs
    assert (inp.name, inp.dtype, inp.dims, inp.reshape) == ("text", "STRING", (1,), ())
    assert (out.name, out.dtype, out.reshape) == ("OUTPUT__0", "STRING", ())
    assert completion.dynamic_batching


def test_apply_merges_by_name_like_pb_utils():
    completion = Completion(
        inputs=[{"name": "a", "data_type": "TYPE_FP32", "dims": [3]}],
        reshapes={"a": []},
        max_batch_size=2,
        dynamic_batching=True,
    )
    config = completion.apply({"input": [{"name": "a", "data_type": "TYPE_INVALID"}]})
    assert config == {
        "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [3], "reshape": {"shape": []}}],
        "output": [],
        "max_batch_size": 2,
        "dynamic_batching": {},
    }


def test_complete_torchscript_config_without_sidecar_is_not_opened(tmp_path):
    target = tmp_path / "1"
    target.mkdir()
    (target / "model.pt").write_bytes(b"not even a zip")  # the load reports it, not completion
    written = {
        "name": "m",
        "backend": "pytorch_python",
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}],
    }
    assert complete_config(written, target).empty


class Pair(torch.nn.Module):
    """A torch.export program with nested inputs and a dict of outputs."""

    def forward(self, x: torch.Tensor, extra: dict[str, torch.Tensor]):
        return {"a": x * 2, "b": (x.sum(1, keepdim=True) + extra["k"]).double()}


def _exported(tmp_path: Path, batch: torch.export.Dim | None) -> Path:
    examples = (torch.zeros(2, 4), {"k": torch.zeros(2, 1)})
    shapes = ({0: batch}, {"k": {0: batch}}) if batch is not None else None
    program = torch.export.export(Pair(), examples, dynamic_shapes=shapes)
    target = tmp_path / "1"
    target.mkdir(exist_ok=True)
    torch.export.save(program, str(target / "model.pt2"))
    return target


def test_exported_program_completes_from_its_metadata_and_range(tmp_path):
    target = _exported(tmp_path, torch.export.Dim("batch", min=1, max=6))
    sink = Sink()
    completion = complete_config(aoti(), target, sink)
    config = parse_model_config(completion.apply(aoti()))
    assert config.max_batch_size == 6 and completion.dynamic_batching
    assert [(t.name, t.dtype, t.dims) for t in config.inputs] == [
        ("ARGS[0]", "FP32", (4,)),
        ("ARGS[1][k]", "FP32", (1,)),
    ]
    assert [(t.name, t.dtype, t.dims) for t in config.outputs] == [
        ("RESULT[a]", "FP32", (4,)),
        ("RESULT[b]", "FP64", (1,)),
    ]
    assert any("range_constraints give the batch range 1..6" in line for line in sink.lines)


def test_static_exported_program_keeps_full_shapes_and_ordinal_names(tmp_path):
    target = _exported(tmp_path, None)
    written = aoti(input=[{"name": "INPUT__0"}])
    config = parse_model_config(complete_config(written, target).apply(written))
    assert config.max_batch_size == 0
    assert [(t.name, t.dims) for t in config.inputs] == [("INPUT__0", (2, 4)), ("INPUT__1", (2, 1))]
    assert [(t.name, t.dtype) for t in config.outputs] == [
        ("OUTPUT__0", "FP32"),
        ("OUTPUT__1", "FP64"),
    ]


def test_exported_program_contradiction_names_both_values(tmp_path):
    target = _exported(tmp_path, torch.export.Dim("batch", min=1, max=6))
    written = aoti(input=[{"name": "ARGS[0]", "data_type": "TYPE_INT64", "dims": [4]}])
    with pytest.raises(ModelLoadError, match="says TYPE_INT64, the model provides TYPE_FP32"):
        complete_config(written, target)


def _module_dir(tmp_path: Path, source: str) -> Path:
    target = tmp_path / "1"
    target.mkdir()
    (target / "model.py").write_text(source)
    return target


MODULE_SOURCE = """
import torch
from typing import List


class Tagger(torch.nn.Module):
    def forward(self, x: torch.Tensor, words: List[str]) -> List[str]:
        return [w + str(int(x.sum())) for w in words]
"""


def test_module_file_without_sidecar_gives_names_and_strings(tmp_path):
    target = _module_dir(tmp_path, MODULE_SOURCE)
    written = {"name": "m", "backend": "pytorch_python", "max_batch_size": 2}
    with pytest.raises(ModelLoadError) as error:
        complete_config(written, target)
    text = str(error.value)
    assert "cannot complete the configuration from the module file model.py" in text
    assert "input 'x' (forward argument 'x' (Tensor)): data_type and dims" in text
    assert "'words'" not in text  # List[str] is known: TYPE_STRING


def test_module_file_with_the_packagers_sidecar_completes(tmp_path):
    from tests import package_models

    source = package_models.packaged("eager")
    target = tmp_path / "m"
    shutil.copytree(source, target)
    written = {"name": "m", "backend": "pytorch_python"}
    completion = complete_config(written, target / "1")
    config = parse_model_config(completion.apply(written))
    assert config.max_batch_size == package_models.MAX_BATCH
    assert [t.name for t in config.inputs] == ["x", "y"]
    assert [(t.name, t.dtype, t.dims) for t in config.outputs] == [
        ("OUTPUT__0", "FP32", (3,)),
        ("OUTPUT__1", "INT64", (1,)),
    ]
