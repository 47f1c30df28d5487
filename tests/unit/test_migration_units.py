"""The pure parts of migration support: short error texts, output shapes, load-error causes,
the .pt2 log lines, the missing-file hint, the 'pytorch' alias and the serve command line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pytorch_backend import torch_compat
from pytorch_backend.config import ModelKind, OutputShapeCheck, parse_model_config
from pytorch_backend.config.decision import Decision
from pytorch_backend.config.parameter_parsing import parse_parameters
from pytorch_backend.engine import InferenceEngine
from pytorch_backend.errors import ExecutionError, ModelFailure, ModelLoadError
from pytorch_backend.executors.registry import artifact_path, resolve_kind
from pytorch_backend.executors.torchscript.executor import TorchScriptExecutor, load_torchscript
from pytorch_backend.logs import InstanceLog
from pytorch_backend.requests import RequestInputs
from pytorch_backend.runtime.output_shapes import OutputShapes
from pytorch_backend.runtime.report import EffectiveSettings, effective_lines
from pytorch_backend.runtime.settings import apply_runtime_settings
from pytorch_backend.serving import cli
from pytorch_backend.serving.install import BackendAssemblyError, check_pytorch_alias
from pytorch_backend.serving.server import TritonServer, client_host
from pytorch_backend.tracebacks import short_text, split_message
from tests import ts_models
from tests.custom_op import build_op_library
from tests.unit.builders import Sink as Recorder

CPU = torch.device("cpu")


def config(inputs=((2,),), outputs=((2,),), max_batch_size=8, **fields):
    return parse_model_config(
        {
            "name": "m",
            "max_batch_size": max_batch_size,
            "input": [
                {"name": f"x{i}" if i else "x", "data_type": "TYPE_FP32", "dims": list(d)}
                for i, d in enumerate(inputs)
            ],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": list(outputs[0])}],
            **fields,
        }
    )


# --- short error texts ---------------------------------------------------------------------


def _raised(module: torch.nn.Module, x: torch.Tensor, tmp_path: Path) -> Exception:
    path = ts_models.save(module, tmp_path / "m.pt")
    with pytest.raises(Exception) as info:  # noqa: B017 - torch.jit.Error is not importable
        torch.jit.load(str(path))(x)
    return info.value


def test_torchscript_raise_is_message_first_with_an_archive_location(tmp_path):
    error = _raised(ts_models.FailOnNegative(), -torch.ones(1, 2), tmp_path)
    assert "Traceback" in str(error) and ts_models.__file__ in str(error)  # what torch gives
    text = short_text(error)
    assert text.startswith("RuntimeError: negative input is not allowed (at code/__torch__/")
    assert text.endswith(", in forward)") and "\n" not in text
    assert ts_models.__file__ not in text and "Traceback" not in text


def test_op_failure_inside_torchscript_keeps_torchs_message(tmp_path):
    class View(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(3, -1)

    text = short_text(_raised(View(), torch.ones(2, 5), tmp_path))
    assert text.startswith("RuntimeError: shape '[3, -1]' is invalid for input of size 10 (at ")


def test_plain_exceptions_and_cpp_stacks():
    assert short_text(ValueError("first\nsecond")) == "ValueError: first second"
    cpp = RuntimeError("bad thing\nException raised from f at /src/x.cpp:3:\nframe #0: g")
    assert short_text(cpp) == "RuntimeError: bad thing"
    assert split_message('\nUnknown op.\n:\n  File "code/__torch__.py", line 8\n  x') == (
        "Unknown op.",
        "code/__torch__.py:8",
    )
    # a location outside the archive (an author's path) is never given
    assert split_message('boom\n  File "/home/me/model.py", line 3, in f') == ("boom", None)


def test_engine_sends_short_error_and_logs_the_full_text_verbose(tmp_path):
    cfg = config()
    sink = Recorder()
    module = torch.jit.load(str(ts_models.save(ts_models.FailOnNegative(), tmp_path / "f.pt")))
    engine = InferenceEngine(
        cfg, TorchScriptExecutor(cfg, module, CPU), log=InstanceLog("m", "m_0", sink)
    )
    (outcome,) = engine.infer([RequestInputs({"x": -torch.ones(1, 2)})])
    assert isinstance(outcome, ModelFailure)
    assert str(outcome).startswith("model 'm' failed: RuntimeError: negative input is not allowed")
    verbose = [m for level, m in sink.lines if level == "verbose"]
    assert len(verbose) == 1 and ts_models.__file__ in verbose[0]


# --- output shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "out_dims", "x", "error"),
    [
        (
            8,
            (3,),
            torch.ones(2, 2),
            "output 'y' has shape [2, 2]; the configuration declares [-1, 3]",
        ),
        (8, (-1,), torch.ones(2, 2), None),
        (8, (2, 1), torch.ones(2, 2), "declares [-1, 2, 1]"),
        (
            0,
            (4, 2),
            torch.ones(3, 2),
            "output 'y' has shape [3, 2]; the configuration declares [4, 2]",
        ),
        (0, (-1, 2), torch.ones(3, 2), None),
    ],
)
def test_output_shapes_are_checked_against_the_config(batch, out_dims, x, error):
    """Under ``OUTPUT_SHAPE_CHECK: "error"``; the default (warn) is in test_output_shapes.py."""
    dims = (2,) if batch else (-1, 2)
    cfg = config(inputs=(dims,), outputs=(out_dims,), max_batch_size=batch)
    shapes = OutputShapes(cfg, InstanceLog("m"), OutputShapeCheck.ERROR)
    engine = InferenceEngine(
        cfg,
        TorchScriptExecutor(cfg, torch.jit.script(ts_models.Scale()), CPU),
        output_shapes=shapes,
    )
    (outcome,) = engine.infer([RequestInputs({"x": x})])
    if error is None:
        torch.testing.assert_close(outcome["y"], x * 2)
    else:
        assert isinstance(outcome, ExecutionError) and error in str(outcome)


# --- load errors -----------------------------------------------------------------------------


def test_missing_op_library_names_the_op_and_the_parameter(tmp_path):
    library = build_op_library()
    torch.ops.load_library(str(library))

    class AddOne(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.pbtest.add_one(x)

    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(AddOne()), str(path))
    # a fresh process has no pbtest ops: load it there
    code = (
        "import sys, torch\n"
        "from pytorch_backend.config import parse_model_config\n"
        "from pytorch_backend.executors.torchscript.executor import load_torchscript\n"
        "cfg = parse_model_config({'name': 'm', 'input': [{'name': 'x', 'data_type': "
        "'TYPE_FP32', 'dims': [2]}], 'output': [{'name': 'y', 'data_type': 'TYPE_FP32', "
        "'dims': [2]}], 'parameters': eval(sys.argv[2])})\n"
        "try:\n    load_torchscript(cfg, sys.argv[1], None)\n"
        "except Exception as e:\n    print(e)\n"
    )
    import subprocess

    def load(parameters: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, str(path), parameters],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    text = load("{}")
    assert "operator 'pbtest::add_one'" in text and "CUSTOM_OP_LIBRARIES parameter" in text
    assert "Unknown builtin op: pbtest::add_one" in text and "serve it with platform" not in text
    given = load("{'CUSTOM_OP_LIBRARIES': {'string_value': 'libother.so'}}")
    assert "none of the CUSTOM_OP_LIBRARIES (libother.so) defines it" in given


def test_file_kind_diagnosis_drops_torchs_corruption_text(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    sink = Recorder()
    with pytest.raises(ModelLoadError) as info:
        load_torchscript(config(), garbage, CPU, InstanceLog("m", "m_0", sink))
    assert "not a zip archive" in str(info.value) and "corrupted" not in str(info.value)
    # torch's full text is in the log (2.13+ add "... your checkpoint file is corrupted"; 2.9 not)
    logged = [m for _, m in sink.lines if "torch.jit.load(" in m]
    assert logged and "PytorchStreamReader failed reading zip archive" in logged[0], sink.lines
    assert ("corrupted" in logged[0]) == (torch_compat.version() >= (2, 13))


def test_missing_model_file_names_the_file_that_is_there(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"x")
    (tmp_path / "model.py").write_text("")
    cfg = config(platform="pytorch_libtorch")
    with pytest.raises(ModelLoadError) as info:
        artifact_path(cfg, resolve_kind(cfg), tmp_path, None)
    text = str(info.value)
    assert "unable to find" in text and "holds 'model.pth'" in text
    assert "default_model_filename" in text and "model.py" not in text.split("holds")[1]
    dropin = config(backend="python")
    with pytest.raises(ModelLoadError, match="MODEL_FILENAME parameter"):
        artifact_path(dropin, resolve_kind(dropin), tmp_path, None)


# --- .pt2 log lines ----------------------------------------------------------------------------


def _logged(kind: ModelKind, parameters: dict[str, str]) -> dict[str, str]:
    cfg = config(parameters={k: {"string_value": v} for k, v in parameters.items()})
    params = parse_parameters("m", cfg.parameters, warn=lambda m: None)
    settings = apply_runtime_settings(params, cfg, CPU)
    lines = effective_lines(EffectiveSettings(params, settings, CPU, 1, Decision.off(), kind))
    return dict(line.split(" = ", 1) for line in lines)


def test_pt2_models_say_jit_settings_have_no_effect():
    aoti = _logged(ModelKind.AOTI, {"ENABLE_JIT_PROFILING": "false"})
    assert aoti["ENABLE_JIT_EXECUTOR"] == "no effect on AOT-Inductor packages"
    assert aoti["ENABLE_JIT_PROFILING"] == "false given, no effect on AOT-Inductor packages"
    assert aoti["DISABLE_OPTIMIZED_EXECUTION"] == "no effect on AOT-Inductor packages"
    assert aoti["INFERENCE_MODE"].startswith("true")  # applies to both kinds: unchanged
    torchscript = _logged(ModelKind.TORCHSCRIPT, {"ENABLE_JIT_PROFILING": "false"})
    assert torchscript["ENABLE_JIT_PROFILING"] == "false (given)"


# --- serving -----------------------------------------------------------------------------------


def test_pytorch_alias_is_refused_over_the_cpp_backend(tmp_path):
    check_pytorch_alias(tmp_path)  # nothing there: fine
    (tmp_path / "pytorch").mkdir()
    (tmp_path / "pytorch" / "model.py").write_text("")
    check_pytorch_alias(tmp_path)  # a Python-based 'pytorch' (ours): fine
    (tmp_path / "pytorch" / "libtriton_pytorch.so").write_bytes(b"")
    with pytest.raises(BackendAssemblyError, match=r"holds the C\+\+ PyTorch backend"):
        check_pytorch_alias(tmp_path)


def test_serve_address_goes_to_every_endpoint(tmp_path):
    server = TritonServer(tmp_path, server=Path("/bin/true"), address="127.0.0.1")
    command = server.command(tmp_path)
    for api in ("http", "grpc", "metrics"):
        assert f"--{api}-address=127.0.0.1" in command
    assert not any(
        "-address=" in a for a in TritonServer(tmp_path, server=Path("/x")).command(tmp_path)
    )
    assert client_host("0.0.0.0") == "127.0.0.1" and client_host("10.0.0.5") == "10.0.0.5"
    assert client_host("::1") == "[::1]"


def test_arguments_after_double_dash_go_to_serve_only(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(cli, "_serve", lambda args: seen.setdefault("args", args) and 0)
    cli.main(["serve", "repo", "--", "--log-verbose=1", "--model-control-mode=explicit"])
    args = seen["args"]
    assert args.server_args == ["--log-verbose=1", "--model-control-mode=explicit"]
    assert args.address == "127.0.0.1"
    with pytest.raises(SystemExit):
        cli.main(["examples", "repo", "--", "--log-verbose=1"])
    assert "only serve passes arguments after --" in capsys.readouterr().err
