"""Readiness after sticky CUDA errors, decided with plain torch (simulated error texts).

A real device-side assert is in ``test_readiness_cuda_assert`` (marked ``cuda``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytorch_backend import instance as instance_module
from pytorch_backend.errors import ModelFailure, RequestCancelled, Unavailable
from pytorch_backend.instance import build_instance
from pytorch_backend.requests import RequestInputs
from pytorch_backend.runtime.execution import StickyErrorWatch, sticky_error_line, stop_server
from tests.unit.builders import Sink, args, ts_config

ILLEGAL = "CUDA error: an illegal memory access was encountered"


@pytest.mark.parametrize(
    ("text", "sticky"),
    [
        (ILLEGAL, True),
        ("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`", True),
        ("CUDA error: unspecified launch failure", True),
        ("CUDA error: uncorrectable ECC error encountered", True),
        ("CUDA error: misaligned address", True),
        ("CUDA error: an illegal instruction was encountered", True),
        ("CUDA error: hardware stack error", True),
        ("cudaErrorIllegalAddress at model_container_runner.cpp:81", True),
        ("CUDA out of memory. Tried to allocate 2.00 GiB", False),  # recoverable
        ("CUDA error: out of memory", False),
        ("illegal instruction in my tokenizer", False),  # names no CUDA error
        ("misaligned address of field 'x'", False),
        ("negative input", False),
    ],
)
def test_which_errors_are_sticky(text, sticky):
    line = sticky_error_line(RuntimeError(f"The following operation failed.\n{text}\nmore"))
    assert (line is not None) is sticky
    if sticky:
        assert line.startswith("RuntimeError: ") and "\n" not in line


class RaisesFor(torch.nn.Module):
    """y = x * 2; a row whose first value is negative makes the forward raise ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] < 0).any()):
            raise RuntimeError(self.message)
        return x * 2


def raising_instance(tmp_path: Path, message: str, sink: Sink, **parameters: str):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    torch.jit.script(RaisesFor(message)).save(str(model_dir / "1" / "model.pt"))
    config = ts_config(parameters={k: {"string_value": v} for k, v in parameters.items()})
    instance = build_instance(args(model_dir, config), sink)
    forwards = []
    run = instance.engine.executor.run

    def counting(batch):
        forwards.append(batch["x"].shape[0])
        return run(batch)

    instance.engine.executor.run = counting  # type: ignore[method-assign]
    return instance, forwards


def req(value: float) -> RequestInputs:
    return RequestInputs({"x": torch.full((1, 2), value)})


def test_a_sticky_error_makes_the_instance_not_ready_and_unavailable(tmp_path, monkeypatch):
    stops = []
    monkeypatch.setattr(instance_module, "stop_server", lambda log: stops.append(log))
    sink = Sink()
    instance, forwards = raising_instance(tmp_path, ILLEGAL, sink)
    assert instance.ready
    (good,) = instance.infer([req(1.0)])
    assert torch.equal(good["y"], torch.full((1, 2), 2.0))

    (failed,) = instance.infer([req(-1.0)])
    assert isinstance(failed, ModelFailure) and "illegal memory access" in str(failed)
    assert not instance.ready
    calls = len(forwards)
    later = instance.infer([req(1.0), RequestCancelled("gone"), req(2.0)])
    assert len(forwards) == calls  # nothing runs on a poisoned context
    assert isinstance(later[0], Unavailable) and isinstance(later[2], Unavailable)
    assert isinstance(later[1], RequestCancelled)
    assert "illegal memory access" in str(later[0]) and "reloaded" in str(later[0])
    instance.infer([req(3.0)])
    errors = [line for line in sink.text("error") if "sticky CUDA error" in line]
    assert len(errors) == 1 and "not ready" in errors[0]  # logged once
    assert stops == []  # STOP_SERVER_ON_STICKY_ERROR is off by default


def test_a_sticky_error_inside_a_batch_answers_the_rest_unavailable(tmp_path):
    instance, forwards = raising_instance(tmp_path, ILLEGAL, Sink())
    outcomes = instance.infer([req(1.0), req(-1.0), req(2.0)])
    assert forwards == [3]  # the batch ran once; its halves are not re-run on a broken context
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert not instance.ready


@pytest.mark.parametrize("text", ["CUDA out of memory. Tried to allocate 8.00 GiB", "bad row"])
def test_recoverable_errors_keep_the_instance_ready(tmp_path, text):
    instance, _ = raising_instance(tmp_path, text, Sink())
    outcomes = instance.infer([req(1.0), req(-1.0), req(2.0)])
    assert isinstance(outcomes[1], ModelFailure)
    assert torch.equal(outcomes[0]["y"], torch.full((1, 2), 2.0))
    assert torch.equal(outcomes[2]["y"], torch.full((1, 2), 4.0))
    assert instance.ready


def test_stop_server_on_sticky_error_asks_once(tmp_path, monkeypatch):
    stops = []
    monkeypatch.setattr(instance_module, "stop_server", lambda log: stops.append(log))
    instance, _ = raising_instance(tmp_path, ILLEGAL, Sink(), STOP_SERVER_ON_STICKY_ERROR="true")
    instance.infer([req(-1.0)])
    instance.infer([req(-1.0)])
    assert len(stops) == 1


def test_the_watch_reports_the_first_error_once():
    seen = []
    watch = StickyErrorWatch(seen.append)
    with pytest.raises(RuntimeError), watch:
        raise RuntimeError("CUDA out of memory")
    assert watch.error is None
    with pytest.raises(RuntimeError), watch:
        raise RuntimeError(ILLEGAL)
    assert seen == [f"RuntimeError: {ILLEGAL}"] and watch.error == seen[0]
    with pytest.raises(Unavailable), watch:  # no forward is entered any more
        raise AssertionError("not reached")
    watch.__exit__(RuntimeError, RuntimeError("CUDA error: misaligned address"), None)
    assert len(seen) == 1


def test_stop_server_signals_only_a_parent_named_tritonserver(tmp_path):
    # pytest's parent is no tritonserver: nothing is signalled
    lines: list[str] = []
    assert stop_server(lines.append) is False and "not a tritonserver" in lines[0]
    # a parent whose executable is named tritonserver gets SIGTERM
    fake = tmp_path / "tritonserver"
    shutil.copy2(os.path.realpath(sys.executable), fake)
    child = (
        "from pytorch_backend.runtime.execution import stop_server; "
        "print(stop_server(print), flush=True)"
    )
    parent = (
        "import subprocess, sys, time; "
        f"subprocess.run([{sys.executable!r}, '-c', {child!r}]); time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [str(fake), "-c", parent], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == -15, done.stderr
    assert "SIGTERM to tritonserver" in done.stdout and "True" in done.stdout


DEVICE_ASSERT_SCRIPT = r"""
import sys, torch
from pathlib import Path
from pytorch_backend.config import InstanceKind
from pytorch_backend.errors import ModelFailure, Unavailable
from pytorch_backend.instance import build_instance
from pytorch_backend.requests import RequestInputs
from tests.unit.builders import Sink, args, io

class Lookup(torch.nn.Module):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        table = torch.arange(4, device=idx.device, dtype=torch.float32)
        return table[idx].unsqueeze(1)  # an index >= 4 trips a device-side assert

root = Path(sys.argv[1]) / "m"
(root / "1").mkdir(parents=True)
torch.jit.script(Lookup()).save(str(root / "1" / "model.pt"))
config = {"name": "m", "platform": "pytorch_libtorch", "max_batch_size": 4,
          "input": [io("idx", [], "TYPE_INT64")], "output": [io("y", [1])]}
sink = Sink()
inst = build_instance(args(root, config, InstanceKind.GPU), sink)
req = lambda v: RequestInputs({"idx": torch.tensor([v])})
(ok,) = inst.infer([req(2)])
assert ok["y"].item() == 2.0 and inst.ready
(bad,) = inst.infer([req(7)])
assert isinstance(bad, (ModelFailure, Unavailable)), bad
assert not inst.ready, "a device-side assert must make the instance not ready"
(later,) = inst.infer([req(1)])
assert isinstance(later, Unavailable), later
print("WATCHED:", inst.sticky.error)
"""


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_device_side_assert_makes_a_gpu_instance_not_ready(tmp_path):
    # in a child process: a device-side assert poisons the CUDA context of the whole process
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", DEVICE_ASSERT_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WATCHED: " in done.stdout and "device-side assert" in done.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_out_of_memory_keeps_a_gpu_instance_ready(tmp_path):
    watch = StickyErrorWatch(devices=(torch.device("cuda", 0),))
    with pytest.raises(torch.OutOfMemoryError), watch:
        torch.empty(1 << 50, device="cuda")
    assert watch.error is None
    with watch:
        assert torch.ones(2, device="cuda").sum().item() == 2.0
