"""ENABLE_WEIGHT_SHARING: one copy of a model's CPU weights shared by instance processes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pytorch_backend.runtime import weight_sharing
from pytorch_backend.runtime.weight_sharing import (
    PREFIX,
    SharedWeightsInfo,
    file_stem,
    share_module_weights,
    sweep,
    weights_key,
)


class Mixed(torch.nn.Module):
    """Tied weights, a view buffer and several dtypes (alignment inside the file)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(5, 5)
        self.b = torch.nn.Linear(5, 5)
        self.b.weight = self.a.weight  # tied
        self.register_buffer("flag", torch.tensor([True, False, True]))  # 3 bytes
        self.register_buffer("fp16", torch.randn(7).half())  # 14 bytes
        self.register_buffer("steps", torch.arange(3, dtype=torch.int64))
        self.register_buffer("fp64", torch.randn(3, dtype=torch.float64))
        self.register_buffer("bf", torch.randn(5).bfloat16())
        self.register_buffer("row", self.a.bias.detach()[1:4])  # view of a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x)) + self.fp16.float().sum() + self.bf.float().sum()
        y = y * self.flag.sum() + self.steps.sum() + self.fp64.sum().float()
        return y + self.row.sum()


class Counter(torch.nn.Module):
    """A stateful model: it writes into its own buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(4))
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(1)
        return x * self.weight + self.count


def logs() -> tuple[list[str], Any]:
    lines: list[str] = []
    return lines, lines.append


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def scripted_file(tmp_path: Path, module: torch.nn.Module, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.jit.script(module).save(str(path))
    return path


def backed_by(info: SharedWeightsInfo, tensor: torch.Tensor) -> bool:
    """True when the tensor's storage is a mapping of the whole shared file."""
    assert info.path is not None
    return tensor.untyped_storage().nbytes() == info.path.stat().st_size


@pytest.mark.parametrize("inference", [False, True])
def test_scripted_module_shares_and_gives_identical_results(
    tmp_path: Path, inference: bool
) -> None:
    path = scripted_file(tmp_path, Mixed())
    shm = tmp_path / "shm"
    shm.mkdir()
    x = torch.randn(4, 5)
    with torch.inference_mode(inference):
        first = torch.jit.load(str(path))
        second = torch.jit.load(str(path))
        expected = first(x)
    key = weights_key("m", 1, path)
    lines, log = logs()
    info1 = share_module_weights(first, key, log, shm)
    info2 = share_module_weights(second, key, log, shm)
    assert info1.created and not info2.created
    assert info1.path == info2.path and info1.path is not None
    assert info1.tensors == info2.tensors == 9  # a.weight (tied), 2 biases, 6 buffers
    assert info1.nbytes == info2.nbytes > 0
    assert files(shm) == sorted([info1.path.name, info1.path.with_suffix(".lock").name])
    assert any("written to" in x for x in lines) and any("mapped from" in x for x in lines)
    with torch.inference_mode(inference):
        for module in (first, second):
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                assert backed_by(info1, tensor), name
                assert tensor.data_ptr() % tensor.element_size() == 0, name
            assert torch.equal(module(x), expected)
    assert first.a.weight.data_ptr() == first.b.weight.data_ptr()  # still tied
    assert info1.release() is False  # the second instance still holds the file
    assert info1.release() is False  # idempotent
    assert info2.release() is True
    assert files(shm) == []
    with torch.inference_mode(inference):
        assert torch.equal(first(x), expected)  # mappings outlive the deleted file


def test_plain_module_keeps_ties_views_and_gradients(tmp_path: Path) -> None:
    module = Mixed()
    x = torch.randn(2, 5)
    expected = module(x)
    info = share_module_weights(module, "mixed|1", lambda _: None, tmp_path)
    assert info.created and info.tensors == 9 and info.skipped == 0
    assert module.b.weight is module.a.weight
    assert torch.equal(module(x), expected)
    # The view buffer still aliases the bias inside the shared mapping.
    assert module.row.data_ptr() == module.a.bias.data_ptr() + module.a.bias.element_size()
    module(x).sum().backward()
    assert module.a.weight.grad is not None and module.a.weight.requires_grad
    info.release()


def test_writes_are_copy_on_write(tmp_path: Path) -> None:
    one, two, three = Counter(), Counter(), Counter()
    infos = [share_module_weights(m, "counter|1", lambda _: None, tmp_path) for m in (one, two)]
    one(torch.ones(4))  # writes into its (shared) buffer
    assert torch.equal(one.count, torch.ones(4))
    assert torch.equal(two.count, torch.zeros(4))
    info3 = share_module_weights(three, "counter|1", lambda _: None, tmp_path)
    assert not info3.created  # the file was not modified, so it still verifies
    assert torch.equal(three.count, torch.zeros(4))
    for info in (*infos, info3):
        info.release()


def test_stale_file_with_same_key_is_replaced(tmp_path: Path) -> None:
    old, new = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    old_weight = old.weight.detach().clone()
    info_old = share_module_weights(old, "lin|1", lambda _: None, tmp_path)
    lines, log = logs()
    info_new = share_module_weights(new, "lin|1", log, tmp_path)
    assert info_new.created and any("replacing stale" in x for x in lines)
    assert torch.equal(old.weight, old_weight)  # the old mapping is untouched
    assert not torch.equal(new.weight, old_weight)
    info_old.release()
    info_new.release()
    assert files(tmp_path) == []


def test_non_cpu_tensors_are_skipped_with_a_log_line(tmp_path: Path) -> None:
    lines, log = logs()
    meta = torch.nn.Linear(3, 3, device="meta")
    info = share_module_weights(meta, "meta|1", log, tmp_path)
    assert info.path is None and info.skipped == 2 and info.tensors == 0
    assert any("2 on meta" in x for x in lines) and any("no CPU tensors" in x for x in lines)
    assert files(tmp_path) == []

    mixed = torch.nn.Linear(3, 3, device="meta")
    mixed.register_buffer("cpu_buffer", torch.ones(3))
    info = share_module_weights(mixed, "mixed-meta|1", log, tmp_path)
    assert info.tensors == 1 and info.skipped == 2 and info.path is not None
    info.release()


def test_unusable_directory_leaves_weights_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = torch.nn.Linear(3, 3)
    weight = module.weight.detach().clone()
    warnings: list[str] = []
    info = share_module_weights(
        module, "lin|1", lambda _: None, tmp_path / "missing", warn=warnings.append
    )
    assert info.path is None and info.tensors == 0
    assert any("not a directory" in x for x in warnings)

    def disk_full(*_: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weight_sharing, "_write", disk_full)
    info = share_module_weights(module, "lin|1", lambda _: None, tmp_path, warn=warnings.append)
    assert info.path is None and not info.created
    assert any("No space left" in x for x in warnings)
    assert torch.equal(module.weight, weight)
    assert not any(p.suffix == ".weights" for p in tmp_path.iterdir())


def test_weights_key_follows_the_artifact(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pt"
    artifact.write_bytes(b"x" * 10)
    key = weights_key("m", 1, artifact)
    assert key == weights_key("m", "1", artifact)
    assert key != weights_key("m", 2, artifact) and key != weights_key("n", 1, artifact)
    artifact.write_bytes(b"y" * 11)
    assert weights_key("m", 1, artifact) != key
    stem = file_stem(key)
    assert stem.startswith(f"{PREFIX}m_") and "/" not in stem


CHILD = r"""
import json, os, sys
from pathlib import Path
import torch
from pytorch_backend.runtime.weight_sharing import share_module_weights

def private_kib():
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields["Private_Clean"] + fields["Private_Dirty"]

path, share, directory, ending = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
baseline = private_kib()
module = torch.jit.load(path)
info = None
if share:
    info = share_module_weights(module, "big|1|" + path, lambda _: None, Path(directory))
out = module(torch.ones(2, 1024)).sum().item()
print(json.dumps({"baseline_kib": baseline, "created": bool(info and info.created),
                  "out": out}), flush=True)
if ending == "wait":
    sys.stdin.readline()
    if info is not None:
        info.release()
elif ending == "crash":
    os._exit(0)  # no atexit: the files stay behind
"""


def start_child(tmp_path: Path, model: Path, share: bool, directory: Path, ending: str) -> Any:
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    return subprocess.Popen(
        [sys.executable, str(script), str(model), "1" if share else "0", str(directory), ending],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def rollup(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


class Big(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(1024, 1024) for _ in range(50))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~200 MB TorchScript model, generated (never committed)."""
    path = tmp_path_factory.mktemp("big") / "model.pt"
    torch.manual_seed(0)
    torch.jit.script(Big()).save(str(path))
    return path


def measure(tmp_path: Path, model: Path, share: bool, directory: Path) -> list[dict[str, Any]]:
    children = [start_child(tmp_path, model, share, directory, "wait") for _ in range(3)]
    try:
        reports = []
        for child in children:
            line = child.stdout.readline()
            assert line, "child failed"
            reports.append(json.loads(line))
        # Measure while all three are alive: a page counts as shared only while mapped twice.
        for child, report in zip(children, reports):
            fields = rollup(child.pid)
            private = fields["Private_Clean"] + fields["Private_Dirty"]
            report["private_growth"] = (private - report["baseline_kib"]) * 1024
            report["pss"] = fields["Pss"] * 1024
    finally:
        for child in children:
            if child.poll() is None:
                child.stdin.write("\n")
                child.stdin.flush()
        for child in children:
            assert child.wait(timeout=60) == 0
    return reports


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux smaps")
def test_three_processes_hold_one_copy(tmp_path: Path, big_model: Path) -> None:
    size = big_model.stat().st_size
    assert size > 190 * 2**20
    shm = tmp_path / "shm"
    shm.mkdir()

    private = measure(tmp_path, big_model, False, shm)
    shared = measure(tmp_path, big_model, True, shm)

    assert len({r["out"] for r in private + shared}) == 1  # identical results
    assert sum(r["created"] for r in shared) == 1  # exactly one instance wrote the file
    growth_private = sum(r["private_growth"] for r in private)
    growth_shared = sum(r["private_growth"] for r in shared)
    # Without sharing every process holds its own copy ...
    assert growth_private > 0.9 * 3 * size, growth_private
    # ... with sharing the three hold (far) less private memory than one copy together.
    assert growth_shared < 0.25 * size, growth_shared
    assert sum(r["pss"] for r in shared) < sum(r["pss"] for r in private) - 1.5 * size
    assert files(shm) == []  # the last release removed the file


def test_files_outlive_a_crash_and_are_swept(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()

    def crash(name: str, width: int) -> list[str]:
        model = scripted_file(tmp_path, torch.nn.Sequential(torch.nn.Linear(1024, width)), name)
        before = set(files(shm))
        start_child(tmp_path, model, True, shm, "crash").communicate(timeout=120)
        return sorted(set(files(shm)) - before)

    assert len(crash("a.pt", 8)) == 2  # weights + lock stay behind; nobody holds them

    # The next instance that creates a weights file sweeps unheld leftovers ...
    held_model = scripted_file(tmp_path, torch.nn.Sequential(torch.nn.Linear(1024, 4)), "b.pt")
    live = start_child(tmp_path, held_model, True, shm, "wait")
    try:
        assert live.stdout.readline()
        held = files(shm)
        assert len(held) == 2
        # ... and so does sweep(), which never touches a file a live process holds.
        leftover = crash("c.pt", 16)
        assert len(leftover) == 2
        lines, log = logs()
        assert sweep(shm, log) == 1
        assert files(shm) == held
        assert any("removed unused shared weights file" in x for x in lines)
    finally:
        live.communicate("\n", timeout=60)
    assert files(shm) == []


def test_normal_exit_without_release_cleans_up(tmp_path: Path) -> None:
    model = scripted_file(tmp_path, torch.nn.Sequential(torch.nn.Linear(1024, 8)))
    shm = tmp_path / "shm"
    shm.mkdir()
    child = start_child(tmp_path, model, True, shm, "exit")
    out, _ = child.communicate(timeout=120)
    assert json.loads(out)["created"] is True
    assert child.returncode == 0
    assert files(shm) == []  # atexit released the last reference


def test_concurrent_creation_yields_one_writer(tmp_path: Path) -> None:
    model = scripted_file(tmp_path, torch.nn.Sequential(torch.nn.Linear(1024, 64)))
    shm = tmp_path / "shm"
    shm.mkdir()
    children = [start_child(tmp_path, model, True, shm, "wait") for _ in range(4)]
    reports = [json.loads(c.stdout.readline()) for c in children]
    assert sum(r["created"] for r in reports) == 1
    assert len({r["out"] for r in reports}) == 1
    for child in children:
        child.communicate("\n", timeout=60)
    deadline = time.monotonic() + 5
    while files(shm) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert files(shm) == []
    assert not os.listdir(shm)
