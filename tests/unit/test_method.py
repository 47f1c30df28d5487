"""Parameter ``METHOD``: serve a method other than forward (TorchScript and nn.Module kinds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytorch_backend.autocomplete import complete_config
from pytorch_backend.config import InstanceKind
from pytorch_backend.errors import ModelLoadError, PyTorchBackendError
from pytorch_backend.instance import InstanceArgs, build_instance
from pytorch_backend.requests import RequestInputs


class Codec(torch.nn.Module):
    """``encode``: (x, y) -> (x * 2, x + y); ``decode``: z -> z / 2; forward: identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x + y

    @torch.jit.export
    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return code / 2


MODULE_FILE = """
import torch


class Codec(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode(self, x: torch.Tensor, *, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x + y

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return code / 2
"""


def io(name: str) -> dict:
    return {"name": name, "data_type": "TYPE_FP32", "dims": [3]}


def cfg(inputs: list[str], outputs: list[str], params: dict[str, str], **fields) -> dict:
    return {
        "name": "m",
        "backend": "pytorch_python",
        "max_batch_size": 4,
        "input": [io(n) for n in inputs],
        "output": [io(n) for n in outputs],
        "parameters": {k: {"string_value": v} for k, v in params.items()},
        **fields,
    }


@pytest.fixture
def torchscript(tmp_path: Path) -> Path:
    (tmp_path / "m" / "1").mkdir(parents=True)
    torch.jit.script(Codec()).save(str(tmp_path / "m" / "1" / "model.pt"))
    return tmp_path / "m"


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text(MODULE_FILE)
    return tmp_path / "m"


def build(model_dir: Path, config: dict):
    return build_instance(InstanceArgs(config, "m_0", InstanceKind.CPU, 0, model_dir, "1"))


def run(instance, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    (out,) = instance.infer([RequestInputs(inputs)])
    assert not isinstance(out, PyTorchBackendError), out
    return {k: torch.as_tensor(v) for k, v in out.items()}


EAGERLY = {"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"disable": true}'}


@pytest.mark.parametrize("kind", ["torchscript", "module"])
def test_encode_and_decode_of_one_file(request, kind):
    model_dir = request.getfixturevalue("torchscript" if kind == "torchscript" else "module_dir")
    extra = EAGERLY if kind == "module" else {}
    x, y = torch.rand(2, 3), torch.rand(2, 3)
    encoder = build(
        model_dir, cfg(["x", "y"], ["OUTPUT__0", "OUTPUT__1"], {"METHOD": "encode", **extra})
    )
    out = run(encoder, x=x, y=y)
    torch.testing.assert_close(out["OUTPUT__0"], x * 2)
    torch.testing.assert_close(out["OUTPUT__1"], x + y)
    decoder = build(model_dir, cfg(["code"], ["OUTPUT__0"], {"METHOD": "decode", **extra}))
    torch.testing.assert_close(run(decoder, code=x)["OUTPUT__0"], x / 2)
    assert "serving method" in " ".join(encoder.executor.describe_bindings()) or kind == "module"


def test_compiled_method_of_a_module(module_dir):
    params = {"METHOD": "decode", "TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"backend": "eager"}'}
    instance = build(module_dir, cfg(["code"], ["OUTPUT__0"], params))
    assert instance.executor.compiled
    x = torch.rand(3, 3)
    torch.testing.assert_close(run(instance, code=x)["OUTPUT__0"], x / 2)
    assert "decode runs compiled" in instance.executor.describe_bindings()


@pytest.mark.parametrize(
    ("kind", "listed"),
    [("torchscript", "decode, encode, forward"), ("module", "decode, encode, forward")],
)
def test_missing_method_names_those_that_exist(request, kind, listed):
    model_dir = request.getfixturevalue("torchscript" if kind == "torchscript" else "module_dir")
    with pytest.raises(ModelLoadError) as error:
        build(model_dir, cfg(["x"], ["y"], {"METHOD": "embed", **EAGERLY}))
    text = str(error.value)
    assert "parameter 'METHOD' = 'embed'" in text and f"it has: {listed}" in text
    assert "model 'm'" in text


def test_config_names_are_checked_against_the_method(torchscript):
    with pytest.raises(ModelLoadError) as error:
        build(torchscript, cfg(["x"], ["OUTPUT__0"], {"METHOD": "encode"}))
    assert "declares 1 inputs" in str(error.value)


def test_method_name_must_be_an_identifier(torchscript):
    with pytest.raises(ModelLoadError) as error:
        build(torchscript, cfg(["x"], ["y"], {"METHOD": "encode()"}))
    assert "parameter 'METHOD' has invalid value 'encode()'" in str(error.value)


def test_pt2_refuses_a_method(tmp_path):
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=4)
    program = torch.export.export(Codec(), (torch.zeros(2, 3),), dynamic_shapes=({0: batch},))
    torch.export.save(program, version / "model.pt2")
    with pytest.raises(ModelLoadError) as error:
        build(tmp_path / "m", cfg(["x"], ["y"], {"METHOD": "encode"}, platform="torch_aoti"))
    text = str(error.value)
    assert "parameter 'METHOD' = 'encode' cannot be served from the torch.export program" in text
    assert "no other methods" in text
    # forward, the default, is accepted
    forward = {"METHOD": "forward", **EAGERLY}
    instance = build(
        tmp_path / "m", cfg(["INPUT__0"], ["OUTPUT__0"], forward, platform="torch_aoti")
    )
    x = torch.rand(2, 3)
    torch.testing.assert_close(run(instance, INPUT__0=x)["OUTPUT__0"], x)


def test_autocomplete_follows_the_method(torchscript):
    written = {
        "name": "m",
        "backend": "pytorch_python",
        "parameters": {"METHOD": {"string_value": "encode"}},
    }
    with pytest.raises(ModelLoadError) as error:
        complete_config(written, torchscript / "1")
    text = str(error.value)
    assert "input 'x' (encode argument 'x' (Tensor))" in text
    assert "input 'y' (encode argument 'y' (Tensor))" in text
    assert "OUTPUT__1" in text
