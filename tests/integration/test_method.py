"""Parameter ``METHOD`` end to end: ``encode`` and ``decode`` of one file served as two models.

One TorchScript file and one nn.Module file, each served twice (``METHOD: encode`` and
``METHOD: decode``) in both install modes; a missing method and a ``.pt2`` with a method fail their
load with the reason while the rest keep serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pytorch_backend
from tests import aoti_models
from tests.client_utils import PROTOCOLS, infer, write_model

ADAPTER = Path(pytorch_backend.__file__).parent / "model.py"


class Codec(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.full((3,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.scale, x + y

    @torch.jit.export
    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return code / self.scale


MODULE_FILE = """
import torch


class Codec(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.full((3,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.scale, x + y

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return code / self.scale
"""


def io(name: str) -> str:
    return f'{{ name: "{name}" data_type: TYPE_FP32 dims: [ 3 ] }}'


def config(name: str, inputs, outputs, params, backend="pytorch_python", extra="") -> str:
    text = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}\n'
        for k, v in params.items()
    )
    return (
        f'name: "{name}" backend: "{backend}" max_batch_size: 4 {extra}\n'
        f"input [ {', '.join(io(n) for n in inputs)} ]\n"
        f"output [ {', '.join(io(n) for n in outputs)} ]\n{text}"
    )


ENCODE = (["x", "y"], ["OUTPUT__0", "OUTPUT__1"])
DECODE = (["code"], ["OUTPUT__0"])
DYNAMO = {"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"backend": "eager"}'}
ENCODERS = ["ts_encode", "dropin_ts_encode", "module_encode", "dropin_module_encode"]
DECODERS = ["ts_decode", "dropin_ts_decode", "module_decode", "dropin_module_decode"]


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    repo = tmp_path_factory.mktemp("method-repo")
    scripted = tmp_path_factory.mktemp("method-artifacts") / "codec.pt"
    torch.jit.script(Codec()).save(str(scripted))
    weights = tmp_path_factory.mktemp("method-weights") / "codec_weights.pt"
    torch.save(Codec().state_dict(), weights)
    module = MODULE_FILE.encode()
    for method, (inputs, outputs) in (("encode", ENCODE), ("decode", DECODE)):
        params = {"METHOD": method}
        write_model(
            repo,
            f"ts_{method}",
            config(f"ts_{method}", inputs, outputs, params),
            {"1/model.pt": scripted},
        )
        write_model(
            repo,
            f"dropin_ts_{method}",
            config(f"dropin_ts_{method}", inputs, outputs, params, backend="python"),
            {"1/model.py": ADAPTER, "1/model.pt": scripted},
        )
        write_model(
            repo,
            f"module_{method}",
            config(f"module_{method}", inputs, outputs, {**params, **DYNAMO}),
            {"1/model.py": module, "1/model.pt": weights},
        )
        dropin = {**params, **DYNAMO, "MODULE_FILENAME": "codec.py"}
        write_model(
            repo,
            f"dropin_module_{method}",
            config(f"dropin_module_{method}", inputs, outputs, dropin, backend="python"),
            {"1/model.py": ADAPTER, "1/codec.py": module, "1/codec.pt": weights},
        )
    write_model(
        repo,
        "missing",
        config("missing", ["x"], ["y"], {"METHOD": "embed"}),
        {"1/model.pt": scripted},
    )
    padded = aoti_models.build_padded()
    write_model(
        repo,
        "aoti_method",
        config("aoti_method", ["INPUT__0"], ["OUTPUT__0"], {"METHOD": "encode"})
        .replace("dims: [ 3 ]", "dims: [ -1 ]")
        .replace('backend: "pytorch_python"', 'backend: "pytorch_python" platform: "torch_aoti"'),
        {"1/model.pt2": padded},
    )
    return triton(repo)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("encoder", "decoder"), list(zip(ENCODERS, DECODERS)))
def test_encode_then_decode_round_trips(server, protocol, encoder, decoder):
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3)).astype(np.float32)
        y = rng.standard_normal((batch, 3)).astype(np.float32)
        encoded = infer(protocol, server, encoder, {"x": x, "y": y})
        np.testing.assert_allclose(encoded["OUTPUT__0"], x * 2, rtol=1e-6)
        np.testing.assert_allclose(encoded["OUTPUT__1"], x + y, rtol=1e-6)
        decoded = infer(protocol, server, decoder, {"code": encoded["OUTPUT__0"]})
        np.testing.assert_allclose(decoded["OUTPUT__0"], x, rtol=1e-6)


def test_method_is_logged(server):
    log = server.log_text()
    assert "model 'ts_encode' instance 'ts_encode_0': METHOD = encode" in log
    assert "serving method 'decode'" in log
    assert "decode runs compiled" in log


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        ("missing", ["parameter 'METHOD' = 'embed'", "it has: decode, encode, forward"]),
        (
            "aoti_method",
            ["cannot be served from the AOT-Inductor package 'model.pt2'", "no other methods"],
        ),
    ],
)
def test_method_load_errors(server, model, fragments):
    status = server.model(model)
    assert status.state == "UNAVAILABLE", status
    for fragment in fragments:
        assert fragment in status.reason, (fragment, status.reason)
