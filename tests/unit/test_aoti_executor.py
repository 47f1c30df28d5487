"""AotiExecutor on real (cached) AOT-Inductor packages from tests/aoti_models.py, on CPU."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from pytorch_backend.config import parse_model_config
from pytorch_backend.errors import ModelLoadError, RequestError
from pytorch_backend.executors.aoti.executor import AotiExecutor
from tests import aoti_models as models

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def complex_pkg() -> Path:
    return models.build_complex()


@pytest.fixture(scope="session")
def padded_pkg() -> Path:
    return models.build_padded()


@pytest.fixture(scope="session")
def static_pkg() -> Path:
    return models.build_static()


def make_config(max_batch_size: int, inputs: dict, outputs: dict, *, ordinal=(), name="aoti"):
    """``inputs``/``outputs``: forward name -> (ordinal, dtype, dims); names in ``ordinal`` use
    the ordinal spelling."""

    def entries(table: dict) -> list[dict]:
        return [
            {
                "name": o if n in ordinal else n,
                "data_type": f"TYPE_{dt}",
                "dims": list(dims),
            }
            for n, (o, dt, dims) in table.items()
        ]

    return parse_model_config(
        {
            "name": name,
            "platform": "torch_aoti",
            "max_batch_size": max_batch_size,
            "input": entries(inputs),
            "output": entries(outputs),
        }
    )


def complex_config(max_batch_size: int = 8, **kw):
    return make_config(max_batch_size, models.COMPLEX_INPUTS, models.COMPLEX_OUTPUTS, **kw)


PADDED_IN = {"ARGS[0]": ("INPUT__0", "FP32", (-1,))}
PADDED_OUT = {"RESULT": ("OUTPUT__0", "FP32", (-1,))}


@pytest.fixture(scope="module")
def complex_exec(complex_pkg) -> AotiExecutor:
    return AotiExecutor(complex_config(), complex_pkg, CPU)


@pytest.fixture(scope="module")
def padded_exec(padded_pkg) -> AotiExecutor:
    return AotiExecutor(make_config(16, PADDED_IN, PADDED_OUT), padded_pkg, CPU)


# -- complex model: naming, batching, padding --------------------------------------------------


def test_complex_load_reports_range_device_and_names(complex_exec):
    # Dim("batch", min=1, max=8): AOTI's runtime check has a lower bound of 2 (0/1 specialisation)
    assert complex_exec.batch_range == (2, 8)
    assert complex_exec.input_device == CPU
    spec = complex_exec.call_spec
    assert [leaf.name for leaf in spec.inputs] == list(models.COMPLEX_INPUTS)
    assert [leaf.ordinal for leaf in spec.inputs] == [f"INPUT__{i}" for i in range(6)]
    assert [leaf.name for leaf in spec.outputs] == list(models.COMPLEX_OUTPUTS)
    assert [leaf.ordinal for leaf in spec.outputs] == [f"OUTPUT__{i}" for i in range(5)]
    assert complex_exec.capabilities.batch_range == (2, 8)
    assert set(complex_exec.capabilities.warmup_shapes) == set(complex_exec.bindings.inputs)


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_complex_outputs_equal_eager(complex_exec, batch):
    inputs = models.complex_example(batch, seed=batch)
    out = complex_exec.run(inputs)
    ref = models.complex_reference(inputs)
    assert set(out) == set(models.COMPLEX_OUTPUTS)
    for name, expected in ref.items():
        assert out[name].shape == expected.shape == (batch, *models.COMPLEX_OUTPUTS[name][2])
        assert out[name].dtype == expected.dtype
        torch.testing.assert_close(out[name], expected)


def test_batch_of_one_is_padded_and_padding_dropped(complex_exec):
    inputs = models.complex_example(1, seed=7)
    out = complex_exec.run(inputs)
    assert out["RESULT[pair][1]"].shape == (1, 2)
    assert torch.equal(out["RESULT[pair][1]"], inputs["ARGS[1][1]"] * 2)
    # the caller's tensors are untouched
    assert inputs["ARGS[0]"].shape == (1, 4)


def test_ordinal_names_mixed_names_and_output_subset(complex_pkg):
    outputs = {
        k: v
        for k, v in models.COMPLEX_OUTPUTS.items()
        if k in ("RESULT[extra][t][1]", "RESULT[out]")
    }
    ordinal = {"ARGS[0]", "ARGS[2][alpha]", "KWARGS[scale]", "RESULT[out]"}
    cfg = make_config(8, models.COMPLEX_INPUTS, outputs, ordinal=ordinal)
    ex = AotiExecutor(cfg, complex_pkg, CPU)
    fwd = models.complex_example(4, seed=3)
    renamed = {(models.COMPLEX_INPUTS[k][0] if k in ordinal else k): v for k, v in fwd.items()}
    out = ex.run(renamed)
    ref = models.complex_reference(fwd)
    assert set(out) == {"OUTPUT__0", "RESULT[extra][t][1]"}
    torch.testing.assert_close(out["OUTPUT__0"], ref["RESULT[out]"])
    torch.testing.assert_close(out["RESULT[extra][t][1]"], ref["RESULT[extra][t][1]"])


def test_non_batching_config_runs_whole_tensors(complex_pkg):
    ins = {k: (o, dt, (3, *d)) for k, (o, dt, d) in models.COMPLEX_INPUTS.items()}
    outs = {k: (o, dt, (3, *d)) for k, (o, dt, d) in models.COMPLEX_OUTPUTS.items()}
    ex = AotiExecutor(make_config(0, ins, outs), complex_pkg, CPU)
    assert ex.batch_range is None
    inputs = models.complex_example(3, seed=11)
    out = ex.run(inputs)
    for name, expected in models.complex_reference(inputs).items():
        torch.testing.assert_close(out[name], expected)


def test_input_checks_stay_on_and_env_is_restored(complex_exec):
    assert "AOTI_RUNTIME_CHECK_INPUTS" not in os.environ
    inputs = models.complex_example(4)
    inputs["ARGS[2][beta]"] = torch.zeros(4, 5)  # wrong feature size: must not run unchecked
    with pytest.raises(RequestError, match=r"input_handles\[4\] is input 'ARGS\[2\]\[beta\]'"):
        complex_exec.run(inputs)


def test_non_contiguous_inputs_are_made_contiguous(complex_exec):
    inputs = models.complex_example(4, seed=5)
    inputs["ARGS[0]"] = torch.randn(4, 8)[:, ::2]
    assert not inputs["ARGS[0]"].is_contiguous()
    out = complex_exec.run(inputs)
    torch.testing.assert_close(out["RESULT[out]"], models.complex_reference(inputs)["RESULT[out]"])


# -- padded model: min=3, dynamic feature dim --------------------------------------------------


@pytest.mark.parametrize("batch,features", [(1, 5), (2, 7), (3, 2), (9, 32), (16, 2)])
def test_padded_model(padded_exec, batch, features):
    assert padded_exec.batch_range == (models.PADDED_MIN_BATCH, models.PADDED_MAX_BATCH)
    x = torch.randn(batch, features)
    out = padded_exec.run({"ARGS[0]": x})
    assert list(out) == ["RESULT"]
    assert out["RESULT"].shape == (batch, features)
    torch.testing.assert_close(out["RESULT"], x * 2 + 1)


def test_padding_rows_are_counted_for_metrics(padded_exec):
    counters = padded_exec.capabilities.counters
    before = counters.padded_rows
    padded_exec.run({"ARGS[0]": torch.randn(1, 4)})  # padded to the minimum, 3
    padded_exec.run({"ARGS[0]": torch.randn(2, 4)})
    padded_exec.run({"ARGS[0]": torch.randn(5, 4)})  # above the minimum: no padding
    assert counters.padded_rows - before == (models.PADDED_MIN_BATCH - 1) + (
        models.PADDED_MIN_BATCH - 2
    )


def test_padded_model_above_exported_max_fails_cleanly(padded_exec):
    with pytest.raises(
        RequestError, match=r"^AOT-Inductor execution failed: .*too large at 0.*<= 16"
    ):
        padded_exec.run({"ARGS[0]": torch.zeros(17, 3)})


# -- load errors -------------------------------------------------------------------------------


def test_max_batch_size_above_exported_max(padded_pkg):
    with pytest.raises(ModelLoadError) as e:
        AotiExecutor(make_config(32, PADDED_IN, PADDED_OUT), padded_pkg, CPU)
    msg = str(e.value)
    assert "model 'aoti'" in msg
    assert "max_batch_size 32 exceeds the package's exported maximum batch size 16" in msg
    assert 'torch.export.Dim("batch", min=1, max=32)' in msg


def test_static_batch_with_batching_config(static_pkg):
    cfg = make_config(
        4, {"ARGS[0]": ("INPUT__0", "FP32", (3,))}, {"RESULT": ("OUTPUT__0", "FP32", (3,))}
    )
    with pytest.raises(ModelLoadError) as e:
        AotiExecutor(cfg, static_pkg, CPU)
    msg = str(e.value)
    assert "model 'aoti'" in msg and "static batch dimension of 4" in msg
    assert 'torch.export.Dim("batch", min=1, max=4)' in msg


def test_static_model_without_batching(static_pkg):
    cfg = make_config(
        0, {"ARGS[0]": ("INPUT__0", "FP32", (4, 3))}, {"OUTPUT__0": ("OUTPUT__0", "FP32", (4, 3))}
    )
    ex = AotiExecutor(cfg, static_pkg, CPU)
    x = torch.randn(4, 3)
    assert ex.batch_range is None
    torch.testing.assert_close(ex.run({"ARGS[0]": x})["OUTPUT__0"], x + 1)


def test_config_dims_not_matching_the_package(static_pkg):
    cfg = make_config(
        0, {"ARGS[0]": ("INPUT__0", "FP32", (4, 5))}, {"RESULT": ("OUTPUT__0", "FP32", (4, 5))}
    )
    with pytest.raises(ModelLoadError, match=r"dims \[4, 5\] does not match.*expected: 3"):
        AotiExecutor(cfg, static_pkg, CPU)


def test_config_dtype_not_matching_the_package(complex_pkg):
    ins = dict(models.COMPLEX_INPUTS)
    ins["ARGS[1][1]"] = ("INPUT__2", "FP32", (2,))
    with pytest.raises(ModelLoadError) as e:
        AotiExecutor(make_config(8, ins, models.COMPLEX_OUTPUTS), complex_pkg, CPU)
    assert "input 'ARGS[1][1]' is declared TYPE_FP32, but the package expects TYPE_INT64" in str(
        e.value
    )


def test_unknown_name_lists_both_schemes(complex_pkg):
    ins = {
        ("KWARGSscale" if k == "KWARGS[scale]" else k): v for k, v in models.COMPLEX_INPUTS.items()
    }
    with pytest.raises(ModelLoadError) as e:
        AotiExecutor(make_config(8, ins, models.COMPLEX_OUTPUTS), complex_pkg, CPU)
    msg = str(e.value)
    assert "model 'aoti'" in msg and "input 'KWARGSscale' matches no model input" in msg
    assert "KWARGS[scale] (= INPUT__5)" in msg and "ARGS[0] (= INPUT__0)" in msg


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "1" / "model.pt2"
    with pytest.raises(ModelLoadError, match=re.escape(f"model file '{path}' does not exist")):
        AotiExecutor(make_config(0, PADDED_IN, PADDED_OUT), path, CPU)


class _Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def _write_torchscript(path: Path) -> None:
    torch.jit.save(torch.jit.script(_Double()), str(path))


def _write_state_dict(path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, path)


def _write_legacy_pickle(path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)


def _write_exported_program(path: Path) -> None:
    torch.export.save(torch.export.export(_Double(), (torch.zeros(2, 3),)), str(path))


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a model\n" * 10)


@pytest.mark.parametrize(
    "writer,what",
    [
        (_write_torchscript, "is a TorchScript archive"),
        (_write_state_dict, "is a torch.save checkpoint"),
        (_write_legacy_pickle, "is a legacy (non-zip) torch.save/pickle file"),
        (_write_exported_program, "is a PT2 archive without AOTInductor code"),
        (_write_garbage, "is not a zip archive"),
    ],
)
def test_not_an_aoti_package(tmp_path, writer, what):
    path = tmp_path / "model.pt2"
    writer(path)
    with pytest.raises(ModelLoadError) as e:
        AotiExecutor(make_config(0, PADDED_IN, PADDED_OUT), path, CPU)
    msg = str(e.value)
    assert f"model 'aoti': model file '{path}' {what}" in msg
    assert "expected an AOTInductor package" in msg


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_package_on_a_gpu_instance_runs_on_cpu(padded_pkg):
    ex = AotiExecutor(make_config(16, PADDED_IN, PADDED_OUT), padded_pkg, torch.device("cuda:0"))
    assert ex.input_device == CPU
    x = torch.randn(2, 3)
    torch.testing.assert_close(ex.run({"ARGS[0]": x})["RESULT"], x * 2 + 1)


# --- migration: output dims checked at load, minimum lengths of dynamic non-batch dims ---------


def test_wrong_fixed_output_dims_fail_the_load_under_error(complex_pkg):
    from pytorch_backend.config import OutputShapeCheck
    from pytorch_backend.logs import InstanceLog
    from pytorch_backend.runtime.output_shapes import OutputShapes

    outputs = dict(models.COMPLEX_OUTPUTS)
    outputs["RESULT[out]"] = ("OUTPUT__0", "FP32", (5,))
    cfg = make_config(8, models.COMPLEX_INPUTS, outputs)
    run = AotiExecutor(cfg, complex_pkg, CPU).capabilities.load_run  # the load does not judge
    assert run is not None and run.fixed and run.shapes["RESULT[out]"] == (2, 4)
    shapes = OutputShapes(cfg, InstanceLog("aoti"), OutputShapeCheck.ERROR)
    with pytest.raises(ModelLoadError, match=r"output 'RESULT\[out\]'.* has shape \[2, 4\]"):
        shapes.at_load(run)


def test_output_dims_that_may_depend_on_variable_inputs_are_only_warned_under_error(padded_pkg):
    from pytorch_backend.config import OutputShapeCheck
    from pytorch_backend.logs import InstanceLog
    from pytorch_backend.runtime.output_shapes import OutputShapes

    warnings: list[str] = []

    class Sink:
        log_info = log_verbose = log_error = staticmethod(lambda m: None)
        log_warn = staticmethod(warnings.append)

    cfg = make_config(16, {"ARGS[0]": ("INPUT__0", "FP32", (-1,))}, {"RESULT": ("O", "FP32", (5,))})
    log = InstanceLog("aoti", "aoti_0", Sink())
    run = AotiExecutor(cfg, padded_pkg, CPU, log).capabilities.load_run
    assert run is not None and not run.fixed
    OutputShapes(cfg, log, OutputShapeCheck.ERROR).at_load(run)
    assert any("declares dims [5]" in w and "will fail" in w for w in warnings)


def test_length_below_the_exported_minimum_is_refused_with_the_reason():
    cfg = make_config(8, {"ARGS[0]": ("INPUT__0", "FP32", (-1,))}, {"RESULT": ("O", "FP32", (-1,))})
    executor = AotiExecutor(cfg, models.build_sequence(), CPU)
    assert executor._minimums == [(0, 1, 2)]
    with pytest.raises(RequestError, match="has size 1 in dim 0, below the package's exported "
                       "minimum of 2 .torch.export specialises sizes 0 and 1"):  # fmt: skip
        executor.run({"ARGS[0]": torch.ones(3, 1)})
    x = torch.rand(1, 2)  # batch 1 is padded; length 2 is the minimum
    torch.testing.assert_close(executor.run({"ARGS[0]": x})["RESULT"], x * 2)
