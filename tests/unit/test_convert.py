"""``pytorch-backend convert`` without a server: refusals, failures, samples, names of the package.

Successful conversions (AOT-Inductor compiles) are exercised end to end in
``tests/integration/test_convert.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

from pytorch_backend import convert
from pytorch_backend.config import parse_model_config
from pytorch_backend.executors.binding.callspec import parse_call_spec, resolve_bindings
from pytorch_backend.serving import examples
from pytorch_backend.serving.convert import ConvertError

EXAMPLES = Path(__file__).resolve().parents[2] / "model_repository_examples"


class Looping(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        for i in range(int(x.sum().item())):
            y = y + i
        return y


LOOP_CONFIG = """
name: "looping"
platform: "pytorch_libtorch"
max_batch_size: 4
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("convert-examples") / "repo"
    shutil.copytree(EXAMPLES, repo, ignore=shutil.ignore_patterns("1"))
    examples.build_examples(repo, aoti=False, log=lambda _: None)
    return repo


@pytest.fixture
def looping(tmp_path) -> Path:
    model = tmp_path / "looping"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(LOOP_CONFIG)
    torch.jit.script(Looping()).save(str(model / "1" / "model.pt"))
    return model


def test_strings_are_refused_with_the_reason(built, tmp_path):
    with pytest.raises(ConvertError) as error:
        convert(built / "string_io", tmp_path / "out", report=None)
    text = str(error.value)
    assert "TYPE_STRING" in text and "a .pt2 takes and returns tensors only" in text
    assert not (tmp_path / "out").exists()


def test_dict_input_is_refused(built, tmp_path):
    with pytest.raises(ConvertError, match="converts tensor arguments only"):
        convert(built / "dict_input", tmp_path / "out", report=None)
    assert not (tmp_path / "out").exists()


def test_unsupported_construct_is_reported_and_nothing_written(looping, tmp_path):
    with pytest.raises(ConvertError) as error:
        convert(looping, tmp_path / "out", report=None)
    text = str(error.value)
    assert "the first unsupported construct is the TorchScript node prim::Loop" in text
    assert "dynamic value of number of iterations" in text
    assert "for i in range(int(x.sum().item()))" in text  # where, in the model's source
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".convert-*"))


def test_cli_reports_the_failure(looping, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytorch_backend.serving.cli",
            "convert",
            str(looping),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "prim::Loop" in done.stderr
    assert not (tmp_path / "out").exists()


def test_sample_inputs_must_name_the_config_inputs(built, tmp_path):
    samples = tmp_path / "samples.npz"
    np.savez(samples, wrong=np.zeros((2, 4), np.float32))
    with pytest.raises(ConvertError, match=r"the sample inputs are \['wrong'\]"):
        convert(built / "mlp_batched", tmp_path / "out", sample_inputs=samples, report=None)


def test_missing_model_file_is_a_convert_error(tmp_path):
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(LOOP_CONFIG)
    with pytest.raises(ConvertError, match="unable to find"):
        convert(model, tmp_path / "out", report=None)


class Named(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"OUTPUT__1": inputs["image"] * 2, "OUTPUT__0": inputs["scale"] + 1}


def test_a_lone_dict_input_and_a_dict_result_bind_by_key():
    program = torch.export.export(
        Named(), ({"image": torch.ones(2, 3), "scale": torch.ones(2, 1)},)
    )
    spec = parse_call_spec(
        pytree.treespec_dumps(program.call_spec.in_spec),
        pytree.treespec_dumps(program.call_spec.out_spec),
    )
    config = parse_model_config(
        {
            "name": "m",
            "platform": "torch_aoti",
            "input": [
                {"name": "scale", "data_type": "TYPE_FP32", "dims": [1]},
                {"name": "image", "data_type": "TYPE_FP32", "dims": [3]},
            ],
            "output": [
                {"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [3]},
                {"name": "OUTPUT__1", "data_type": "TYPE_FP32", "dims": [1]},
            ],
        }
    )
    bindings = resolve_bindings(spec, config)
    assert bindings.inputs == ("image", "scale")
    # a key wins over another leaf's ordinal: the first leaf is keyed OUTPUT__1
    assert bindings.outputs == {"OUTPUT__0": 1, "OUTPUT__1": 0}
    assert [leaf.key for leaf in spec.inputs] == ["image", "scale"]
