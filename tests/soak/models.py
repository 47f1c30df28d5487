"""The models the soak and reload commands serve, and the references a client checks them with.

* ``ts_mlp`` (TorchScript, 2 KIND_CPU instances, dynamic batching): ``y = tanh(x @ W.T + b)``
  with seeded weights, x FP32 ``[B, 16]``; a row whose first value is -7 makes the forward raise
  ``poisoned row`` (a model that raises for one value);
* ``pt2`` (AOT-Inductor package, ragged batching): ``OUTPUT__0 = INPUT__0 * 2 + 1``, FP32 ``[B, F]``
  with 2 <= F <= 32 (a larger F is refused by the package's compiled checks);
* ``strings`` (TorchScript, ``TYPE_STRING``): upper-cased text and its length in bytes;
* ``sleepy`` (nn.Module, compile disabled, 1 instance): ``y = x`` after sleeping 20 ms per
  execution: requests queue behind it, so a client can cancel queued ones;
* ``shared`` (TorchScript, 2 KIND_CPU instances, ``ENABLE_WEIGHT_SHARING``): the MLP again.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from tests import aoti_models
from tests.client_utils import write_model
from tests.ts_models import Strings

WIDTH = 16
POISON = -7.0
PT2_MAX_FEATURES = 32


class PoisonedMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.fc = torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] == -7.0).any()):
            raise RuntimeError("poisoned row")
        return torch.tanh(self.fc(x))


SLEEPY = """
import time

import torch


class Sleepy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return x.clone()
"""


@functools.lru_cache(maxsize=1)
def _mlp_weights() -> tuple[np.ndarray, np.ndarray]:
    fc = PoisonedMLP().fc  # seeds torch's global generator: build once, not in client threads
    return fc.weight.detach().numpy().astype(np.float64), fc.bias.detach().numpy()


_mlp_weights()


def mlp_reference(x: np.ndarray) -> np.ndarray:
    """What ``ts_mlp`` answers for ``x``, computed in NumPy from the same seeded weights."""
    weight, bias = _mlp_weights()
    return np.tanh(x.astype(np.float64) @ weight.T + bias).astype(np.float32)


def _io(name: str, dtype: str, dims: str, extra: str = "") -> str:
    return f'{{ name: "{name}" data_type: {dtype} dims: {dims} {extra}}}'


def _config(name: str, inputs: list[str], outputs: list[str], extra: str = "") -> str:
    return (
        f'name: "{name}" backend: "pytorch_python" max_batch_size: 16\n'
        f"input [ {', '.join(inputs)} ]\noutput [ {', '.join(outputs)} ]\n"
        f"dynamic_batching {{ }}\n{extra}\n"
    )


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: {json.dumps(value)} }} }}\n'


MLP_IO = ([_io("x", "TYPE_FP32", f"[ {WIDTH} ]")], [_io("y", "TYPE_FP32", f"[ {WIDTH} ]")])
TWO_CPU = "instance_group [ { kind: KIND_CPU count: 2 } ]"


def build_repository(repo: Path, names: tuple[str, ...] = ("ts_mlp", "pt2", "strings", "sleepy")):
    """Write the named models into ``repo`` (the ``.pt2`` package is compiled once, cached)."""
    artifacts = repo.parent / f"{repo.name}-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    mlp = artifacts / "mlp.pt"
    torch.jit.script(PoisonedMLP()).save(str(mlp))
    if "ts_mlp" in names:
        write_model(repo, "ts_mlp", _config("ts_mlp", *MLP_IO, TWO_CPU), {"1/model.pt": mlp})
    if "shared" in names:
        extra = TWO_CPU + "\n" + _parameter("ENABLE_WEIGHT_SHARING", "true")
        write_model(repo, "shared", _config("shared", *MLP_IO, extra), {"1/model.pt": mlp})
    if "pt2" in names:
        inputs = [_io("INPUT__0", "TYPE_FP32", "[ -1 ]", "allow_ragged_batch: true ")]
        outputs = [_io("OUTPUT__0", "TYPE_FP32", "[ -1 ]")]
        write_model(
            repo,
            "pt2",
            _config("pt2", inputs, outputs, 'platform: "torch_aoti"'),
            {"1/model.pt2": aoti_models.build_padded()},
        )
    if "strings" in names:
        strings = artifacts / "strings.pt"
        torch.jit.script(Strings()).save(str(strings))
        flat = "reshape: { shape: [] } "  # one string per batch row
        text = _io("text", "TYPE_STRING", "[ 1 ]", flat)
        outputs = [
            _io("upper", "TYPE_STRING", "[ 1 ]", flat),
            _io("length", "TYPE_INT64", "[ 1 ]", flat),
        ]
        write_model(repo, "strings", _config("strings", [text], outputs), {"1/model.pt": strings})
    if "sleepy" in names:
        extra = (
            "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
            + _parameter("TORCH_COMPILE_OPTIONAL_PARAMETERS", '{"disable": true}')
            # its clients cancel queued requests: check whatever the warm-up measures
            + _parameter("ENABLE_CANCELLATION_CHECK", "true")
        )
        config = _config("sleepy", *MLP_IO, extra)
        write_model(repo, "sleepy", config, {"1/model.py": SLEEPY.encode()})
    return repo
