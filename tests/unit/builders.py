"""Builders of the unit tests that need an instance: a TorchScript model, its config, the
instance's arguments and a log sink (plain torch, no Triton)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pytorch_backend.config import InstanceKind
from pytorch_backend.instance import InstanceArgs, build_instance

PREFIX = "pytorch_backend: model 'm' instance 'm_0': "


class Sink:
    """Collects what the instance logs, by level."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def log_info(self, message: str) -> None:
        self.lines.append(("info", message))

    def log_warn(self, message: str) -> None:
        self.lines.append(("warn", message))

    def log_error(self, message: str) -> None:
        self.lines.append(("error", message))

    def log_verbose(self, message: str) -> None:
        self.lines.append(("verbose", message))

    def text(self, level: str = "info") -> list[str]:
        return [m for lvl, m in self.lines if lvl == level]


def io(name: str, dims: list[int], dtype: str = "TYPE_FP32") -> dict:
    return {"name": name, "data_type": dtype, "dims": dims}


class Doubler(torch.nn.Module):
    """y = x * weight, with a parameter weight of 2 (something to share)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((2,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def ts_repo(tmp_path: Path, filename: str = "model.pt") -> Path:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    torch.jit.script(Doubler()).save(str(model_dir / "1" / filename))
    return model_dir


def ts_config(**fields) -> dict:
    return {
        "name": "m",
        "platform": "pytorch_libtorch",
        "max_batch_size": 4,
        "input": [io("x", [2])],
        "output": [io("y", [2])],
        **fields,
    }


def args(model_dir: Path, config: dict, kind: InstanceKind = InstanceKind.CPU) -> InstanceArgs:
    return InstanceArgs(json.dumps(config), "m_0", kind, 0, model_dir, "1")


def build(model_dir: Path, config: dict, kind: InstanceKind = InstanceKind.CPU):
    sink = Sink()
    return build_instance(args(model_dir, config, kind), sink), sink


def settings_logged(sink: Sink) -> dict[str, str]:
    found = {}
    for line in sink.text():
        assert line.startswith(PREFIX), line
        key, sep, value = line[len(PREFIX) :].partition(" = ")
        if sep and " " not in key:
            assert key not in found, key
            found[key] = value
    return found
