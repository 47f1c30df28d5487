"""``pytorch_backend.package`` and ``pytorch-backend check``/``package`` without a server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import pytorch_backend
from pytorch_backend.config import parse_model_config
from pytorch_backend.executors.description import read_sidecar
from pytorch_backend.serving import cli
from pytorch_backend.serving.check import check_repository, read_config
from pytorch_backend.serving.package import PackageError, check_close
from tests import package_models
from tests.package_models import TwoHeads, examples

FACTORY = """
import torch


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def build():
    return Doubler()
"""


def test_torchscript_package_writes_config_artifact_and_sidecar(tmp_path):
    lines: list[str] = []
    model_dir = pytorch_backend.package(
        TwoHeads(), examples(2), tmp_path, "th", format="torchscript", max_batch_size=8,
        progress=lines.append,
    )  # fmt: skip
    config = parse_model_config(read_config(model_dir / "config.pbtxt"))
    assert (config.backend, config.platform, config.max_batch_size) == ("pytorch_python", "", 8)
    assert config.dynamic_batching
    assert [(s.name, s.dtype, s.dims) for s in config.inputs] == [
        ("x", "FP32", (4,)),
        ("y", "FP32", (3,)),
    ]
    assert [(s.name, s.dtype, s.dims) for s in config.outputs] == [
        ("OUTPUT__0", "FP32", (3,)),
        ("OUTPUT__1", "INT64", (1,)),
    ]
    sidecar = read_sidecar(model_dir / "1" / "model.pt")
    assert sidecar is not None and sidecar.max_batch_size == 8
    assert [t.names for t in sidecar.inputs] == [("x", "INPUT__0"), ("y", "INPUT__1")]
    # Stages are reported with the elapsed time.
    assert lines[0].startswith("[") and "s] running TwoHeads eagerly" in lines[0]
    assert any("checking the TorchScript file against the eager outputs" in x for x in lines)


def test_package_refuses_to_overwrite_and_bad_arguments(tmp_path):
    pytorch_backend.package(
        TwoHeads(), examples(1), tmp_path, "th", format="torchscript", progress=None
    )
    with pytest.raises(PackageError, match="already exist"):
        pytorch_backend.package(
            TwoHeads(), examples(1), tmp_path, "th", format="torchscript", progress=None
        )
    with pytest.raises(PackageError, match="format 'onnx' is not one of pt2, torchscript, eager"):
        pytorch_backend.package(TwoHeads(), examples(1), tmp_path, "x", format="onnx")


def test_nothing_is_written_when_the_artifact_differs(tmp_path, monkeypatch):
    def wrong(*args, **kwargs):
        raise PackageError("the TorchScript file differs from the module's eager output")

    monkeypatch.setattr("pytorch_backend.serving.package.check_close", wrong)
    with pytest.raises(PackageError):
        pytorch_backend.package(TwoHeads(), examples(2), tmp_path, "th", format="torchscript")
    assert not (tmp_path / "th").exists()


def test_check_close_names_the_leaf():
    a = (torch.zeros(2), torch.ones(2))
    check_close(a, (torch.zeros(2), torch.ones(2)), (1e-4, 1e-5), "it")
    with pytest.raises(
        PackageError, match="it differs from the module's eager output at output leaf 1"
    ):
        check_close(a, (torch.zeros(2), torch.zeros(2)), (1e-4, 1e-5), "it")


def test_eager_package_layout(tmp_path):
    model_dir = pytorch_backend.package(
        TwoHeads(), examples(2), tmp_path, "e", format="eager", max_batch_size=4, progress=None
    )
    assert (model_dir / "1" / "model.py").read_text() == Path(package_models.__file__).read_text()
    state = torch.load(model_dir / "1" / "model.pt", weights_only=True)
    assert sorted(state) == ["lin.bias", "lin.weight"]
    config = read_config(model_dir / "config.pbtxt")
    assert config["backend"] == "pytorch_python" and config["platform"] == ""
    assert [i["name"] for i in config["input"]] == ["x", "y"]


def test_check_repository_reports_good_and_broken_models(tmp_path):
    pytorch_backend.package(
        TwoHeads(), examples(2), tmp_path, "good", format="torchscript", progress=None
    )
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "pytorch_python"\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    )
    torch.save({"w": torch.zeros(1)}, broken / "1" / "model.pt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.pbtxt").write_text('name: "other"\nbackend: "onnxruntime"\n')
    lines: list[str] = []
    results = check_repository(tmp_path, report=lines.append)
    by_model = {r.model: r for r in results}
    assert by_model["good"].ok and by_model["other"].ok
    assert by_model["broken"].problem.startswith(
        "model 'broken': cannot load '" + str(broken / "1" / "model.pt")
    )
    assert "is a torch.save checkpoint" in by_model["broken"].problem
    assert lines[-1] == "3 model version(s) checked, 1 with problems"
    assert cli.main(["check", str(tmp_path)]) == 1


def test_cli_package_then_check(tmp_path, monkeypatch, capsys):
    (tmp_path / "doubler_models.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    code = cli.main(
        ["package", "doubler_models:build", "--input", "2,5", "--repository", "repo",
         "--name", "dbl", "--format", "torchscript", "--max-batch-size", "4"]
    )  # fmt: skip
    assert code == 0
    config = read_config(tmp_path / "repo" / "dbl" / "config.pbtxt")
    assert config["max_batch_size"] == 4
    assert cli.main(["check", "repo"]) == 0
    out = capsys.readouterr().out
    assert "dbl (version 1): OK - TorchScript, 1 input(s), 1 output(s), max_batch_size 4" in out
    assert (
        cli.main(["package", "nowhere:build", "--input", "2", "--repository", "r", "--name", "n"])
        == 1
    )
    assert "cannot import nowhere:build" in capsys.readouterr().err


def test_read_config_keeps_an_empty_reshape(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text(
        'name: "s"\nbackend: "pytorch_python"\nmax_batch_size: 2\n'
        'input [ { name: "t" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
    )
    assert read_config(path)["input"][0]["reshape"] == {"shape": []}
