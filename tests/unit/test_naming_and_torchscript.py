"""TorchScript naming conventions (binding/forward.py) and load-time validation."""

from __future__ import annotations

import pytest
import torch

from pytorch_backend.config import parse_model_config
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.binding.forward import (
    CONFIG_ORDER,
    DICT_INPUT,
    FORWARD_ARGUMENT,
    NAMED_INDEX,
)
from pytorch_backend.executors.torchscript.executor import TorchScriptExecutor, load_torchscript
from tests import ts_models

CPU = torch.device("cpu")


def config(inputs, outputs, *, dtype="TYPE_FP32", max_batch_size=0, dims=(2,)):
    def specs(names):
        return [
            {"name": n, "data_type": d, "dims": list(dims)}
            for n, d in (x if isinstance(x, tuple) else (x, dtype) for x in names)
        ]

    return parse_model_config(
        {
            "name": "m",
            "max_batch_size": max_batch_size,
            "input": specs(inputs),
            "output": specs(outputs),
        }
    )


def executor(module, cfg):
    return TorchScriptExecutor(cfg, torch.jit.script(module), CPU)


A = torch.tensor([5.0, 7.0])
B = torch.tensor([1.0, 2.0])


@pytest.mark.parametrize(
    ("inputs", "outputs", "in_conv", "feed", "expect"),
    [
        # the cases of Triton's L0_libtorch_io_names QA
        (
            ["INPUT0", "INPUT1"],
            ["OUTPUT__0", "OUTPUT__1"],
            FORWARD_ARGUMENT,
            (A, B),
            (A - B, A + B),
        ),
        (["INPUT__0", "INPUT__1"], ["OUTPUT__0", "OUTPUT__1"], NAMED_INDEX, (A, B), (A - B, A + B)),
        (["INPUTA", "INPUTB"], ["OUTPUTA", "OUTPUTB"], CONFIG_ORDER, (A, B), (A - B, A + B)),
        (["INPUTA", "INPUT__1"], ["OUTPUTA", "OUTPUT__1"], CONFIG_ORDER, (A, B), (A - B, A + B)),
        (["INPUT0", "INPUTB"], ["OUTPUTA", "OUTPUT__1"], CONFIG_ORDER, (A, B), (A - B, A + B)),
        (["INPUT0", "INPUT__1"], ["OUTPUT0", "OUTPUT__1"], CONFIG_ORDER, (A, B), (A - B, A + B)),
        # config order reversed: forward names and __N win over config order
        (["INPUT1", "INPUT0"], ["OUT__1", "OUT__0"], FORWARD_ARGUMENT, (B, A), (A + B, A - B)),
        (["x__1", "y__0"], ["o__1", "p__0"], NAMED_INDEX, (B, A), (A + B, A - B)),
    ],
)
def test_io_naming_conventions(inputs, outputs, in_conv, feed, expect):
    ex = executor(ts_models.AddSub(), config(inputs, outputs))
    assert ex.inputs.convention == in_conv
    result = ex.run(dict(zip(inputs, feed)))
    for name, value in zip(outputs, expect):
        torch.testing.assert_close(result[name], value)


def test_dict_input_binds_config_names_as_keys():
    ex = executor(ts_models.DictInput(), config(["a", "b"], ["OUTPUT__0"]))
    assert ex.inputs.convention == DICT_INPUT
    torch.testing.assert_close(ex.run({"a": A, "b": B})["OUTPUT__0"], A * B)


def test_output_subset_by_index():
    ex = executor(ts_models.AddSub(), config(["INPUT0", "INPUT1"], ["OUTPUT__1"]))
    assert set(ex.run({"INPUT0": A, "INPUT1": B})) == {"OUTPUT__1"}


@pytest.mark.parametrize(
    ("module", "inputs", "outputs", "message"),
    [
        (ts_models.AddSub(), ["INPUT0"], ["OUTPUT__0"], "declares 1 inputs but forward takes 2"),
        (ts_models.AddSub(), ["INPUT__0", "INPUT__5"], ["OUTPUT__0"], "index 5"),
        (ts_models.AddSub(), ["INPUT__0", "foo__0"], ["OUTPUT__0"], "both refer to index 0"),
        (ts_models.AddSub(), ["INPUT0", "INPUT1"], ["OUTPUT__2"], "index 2"),
        (ts_models.AddSub(), ["INPUT0", "INPUT1"], ["A", "B", "C"], "declares 3 outputs"),
        (ts_models.ReturnsDict(), ["x"], ["y"], "must be Tensor or List[str]"),
        (ts_models.Scale(), [("x", "TYPE_STRING")], ["y"], "TYPE_STRING but forward argument"),
        (ts_models.Strings(), ["text"], ["a", "b"], "is List[str] (declare it TYPE_STRING)"),
    ],
)
def test_load_time_validation_errors(module, inputs, outputs, message):
    with pytest.raises(ModelLoadError) as info:
        executor(module, config(inputs, outputs, dims=(-1,)))
    assert message in str(info.value)
    assert "model 'm'" in str(info.value)


def test_count_error_lists_what_the_model_accepts():
    with pytest.raises(ModelLoadError, match=r"INPUT0, INPUT1\) or INPUT__0, INPUT__1"):
        executor(ts_models.AddSub(), config(["a", "b", "c"], ["OUTPUT__0"]))


def test_load_errors_say_what_the_file_is(tmp_path):
    cfg = config(["x"], ["y"])
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(2)}, checkpoint)
    with pytest.raises(ModelLoadError, match="torch.save"):
        load_torchscript(cfg, checkpoint, CPU)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a zip archive"):
        load_torchscript(cfg, garbage, CPU)
