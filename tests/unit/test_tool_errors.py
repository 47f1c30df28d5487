"""The serving tools' errors share one root, apart from the model errors; the CLI catches it."""

from __future__ import annotations

import pytest

from pytorch_backend.errors import PyTorchBackendError
from pytorch_backend.serving import cli
from pytorch_backend.serving.convert import ConvertError
from pytorch_backend.serving.errors import ToolError
from pytorch_backend.serving.install import BackendAssemblyError, TritonServerNotFoundError
from pytorch_backend.serving.package import PackageError
from pytorch_backend.serving.precompile import CompileCacheError
from pytorch_backend.serving.serve_args import CliError
from pytorch_backend.serving.server import ServerError

TOOL_ERRORS = (
    CliError,
    PackageError,
    ConvertError,
    CompileCacheError,
    ServerError,
    TritonServerNotFoundError,
    BackendAssemblyError,
)


@pytest.mark.parametrize("error", TOOL_ERRORS, ids=lambda e: e.__name__)
def test_every_tool_error_is_a_tool_error_not_a_model_error(error):
    assert issubclass(error, ToolError)
    assert not issubclass(error, PyTorchBackendError)


def test_server_error_keeps_its_summary_and_log_tail():
    error = ServerError("not ready after 1 s", returncode=3, log_tail="E0 failed")
    assert (
        str(error) == "not ready after 1 s\n--- last lines of the tritonserver log ---\nE0 failed"
    )
    assert (error.summary, error.returncode, error.log_tail) == (
        "not ready after 1 s",
        3,
        "E0 failed",
    )


FACTORY = """
import torch


def build():
    return torch.nn.Identity()
"""

SEQUENCE_CONFIG = """
name: "seq"
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
sequence_batching { }
"""


def _one_error_line(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 1, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("pytorch-backend: error: ")
    return lines[0].removeprefix("pytorch-backend: error: ")


def test_the_cli_prints_a_package_error_as_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "identity_models.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = cli.main(
        ["package", "identity_models:build", "--input", "2", "--repository", "repo",
         "--name", "id", "--max-batch-size", "-1"]
    )  # fmt: skip
    assert _one_error_line(capsys, code) == "max_batch_size must be >= 0, got -1"


def test_the_cli_prints_a_convert_error_as_one_line(tmp_path, capsys):
    (tmp_path / "seq").mkdir()
    (tmp_path / "seq" / "config.pbtxt").write_text(SEQUENCE_CONFIG)
    code = cli.main(["convert", str(tmp_path / "seq"), str(tmp_path / "out")])
    assert _one_error_line(capsys, code) == "seq: sequence_batching models are not converted"


def test_the_cli_prints_a_backend_assembly_error_as_one_line(tmp_path, capsys):
    (tmp_path / "pytorch").mkdir()
    (tmp_path / "pytorch" / "libtriton_pytorch.so").write_bytes(b"")
    code = cli.main(["backends", str(tmp_path), "--as-pytorch"])
    assert "holds the C++ PyTorch backend" in _one_error_line(capsys, code)
