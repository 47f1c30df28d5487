"""ENABLE_WEIGHT_SHARING: one copy of a model's CPU weights shared by instance processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pytorch_backend.runtime import weight_sharing
from pytorch_backend.runtime.weight_sharing import (
    PREFIX,
    Owner,
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
instances = int(sys.argv[5]) if len(sys.argv) > 5 else None
baseline = private_kib()
module = torch.jit.load(path)
info = None
if share:
    info = share_module_weights(
        module, "big|1|" + path, lambda _: None, Path(directory), instances=instances
    )
out = module(torch.ones(2, 1024)).sum().item()
print(json.dumps({"baseline_kib": baseline, "created": bool(info and info.created),
                  "unlinked": bool(info and info.unlinked), "out": out}), flush=True)
if ending == "wait":
    sys.stdin.readline()
    if info is not None:
        info.release()
elif ending == "crash":
    os._exit(0)  # no atexit: the files stay behind
"""


def start_child(
    tmp_path: Path,
    model: Path,
    share: bool,
    directory: Path,
    ending: str,
    instances: int | None = None,
) -> Any:
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    argv = [sys.executable, str(script), str(model), "1" if share else "0", str(directory), ending]
    if instances is not None:
        argv.append(str(instances))
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


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
        # the children's server is this process (their parent), as tritonserver is a stub's
        assert sweep(shm, log, owner=Owner.of(os.getpid())) == 1
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


# --- the file is unlinked once every instance mapped it; nothing ever blocks ---------------------


def test_file_unlinked_once_every_instance_mapped(tmp_path: Path) -> None:
    path = scripted_file(tmp_path, Mixed())
    shm = tmp_path / "shm"
    shm.mkdir()
    x = torch.randn(4, 5)
    modules = [torch.jit.load(str(path)) for _ in range(4)]
    expected = modules[0](x)
    key = weights_key("m", 1, path)
    lines, log = logs()
    infos = [share_module_weights(m, key, log, shm, instances=3) for m in modules[:2]]
    assert infos[0].created and not infos[1].created
    assert not any(info.unlinked for info in infos)
    assert infos[0].path is not None and infos[0].path.exists()
    assert len(files(shm)) == 2  # weights + lock, until the third instance maps them

    infos.append(share_module_weights(modules[2], key, log, shm, instances=3))
    assert infos[2].unlinked and not infos[2].created
    assert files(shm) == []  # every instance mapped it: gone from the directory ...
    assert any("mapped by all of 3 instances: unlinked" in x for x in lines)
    for module in modules[:3]:  # ... while the mappings keep serving
        weight = module.a.weight
        assert weight.untyped_storage().nbytes() > weight.nbytes  # a view of the whole mapping
        assert torch.equal(module(x), expected)

    # A later instance (a restarted stub) finds no file, writes a new one and cleans it up.
    late = share_module_weights(modules[3], key, log, shm, instances=3)
    assert late.created and not late.unlinked and len(files(shm)) == 2
    assert torch.equal(modules[3](x), expected)
    assert [info.release() for info in infos] == [False, False, False]  # already unlinked
    assert len(files(shm)) == 2  # the late instance's file is not theirs to delete
    assert late.release() is True
    assert files(shm) == []
    assert torch.equal(modules[0](x), expected)


def test_single_instance_unlinks_at_once(tmp_path: Path) -> None:
    module = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    expected = module(x)
    info = share_module_weights(module, "one|1", lambda _: None, tmp_path, instances=1)
    assert info.created and info.unlinked and info.tensors == 2
    assert files(tmp_path) == []
    assert torch.equal(module(x), expected)
    assert info.release() is False
    assert files(tmp_path) == []


def test_sigkilled_holder_leaves_nothing_once_others_mapped(tmp_path: Path) -> None:
    model = scripted_file(tmp_path, torch.nn.Sequential(torch.nn.Linear(1024, 64)))
    shm = tmp_path / "shm"
    shm.mkdir()
    first = start_child(tmp_path, model, True, shm, "wait", instances=2)
    second = None
    try:
        report = json.loads(first.stdout.readline())
        assert report["created"] and not report["unlinked"]
        assert len(files(shm)) == 2
        second = start_child(tmp_path, model, True, shm, "wait", instances=2)
        report2 = json.loads(second.stdout.readline())
        assert not report2["created"] and report2["unlinked"]
        assert report2["out"] == report["out"]
        assert files(shm) == []
        first.kill()  # SIGKILL: no finalize, no atexit
        assert first.wait(timeout=60) == -signal.SIGKILL
        assert files(shm) == []
        second.communicate("\n", timeout=60)
        assert second.returncode == 0
        assert files(shm) == []
    finally:
        for child in (first, second):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(timeout=60)


def test_holders_killed_before_all_mapped_are_swept_at_the_next_load(tmp_path: Path) -> None:
    model = scripted_file(tmp_path, torch.nn.Sequential(torch.nn.Linear(1024, 64)))
    shm = tmp_path / "shm"
    shm.mkdir()
    child = start_child(tmp_path, model, True, shm, "wait", instances=2)
    try:
        assert json.loads(child.stdout.readline())["created"]
    finally:
        child.kill()
        child.wait(timeout=60)
    stale = files(shm)
    assert len(stale) == 2  # killed before the second instance mapped it: nobody holds it now

    # The next load of the same model (a restarted instance of the same server: the child's
    # parent, this process) sweeps it and starts over.
    module = torch.jit.load(str(model))
    lines, log = logs()
    server = Owner.of(os.getpid())
    info = share_module_weights(module, "big|1|" + str(model), log, shm, instances=2, owner=server)
    assert any("removed unused shared weights file" in x for x in lines)
    assert info.created and not info.unlinked
    assert len(files(shm)) == 2
    assert info.release() is True
    assert files(shm) == []


LOCKER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


def hold_lock(path: Path) -> Any:
    """A process that holds an exclusive flock on ``path`` until its stdin gets a line."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout.readline().strip() == "locked"
    return locker


def finishes(function: Any, deadline: float = 60.0) -> Any:
    """Run ``function`` in a thread; fail (instead of hanging) if it does not return in time."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(function()), daemon=True)
    thread.start()
    thread.join(deadline)
    assert not thread.is_alive(), f"{function} still blocked after {deadline:g} s"
    return result[0]


def test_release_never_blocks_when_another_process_holds_the_lock(tmp_path: Path) -> None:
    module = torch.nn.Linear(8, 8)
    info = share_module_weights(module, "held|1", lambda _: None, tmp_path, instances=2)
    assert info.path is not None and not info.unlinked
    lock_path = info.path.with_suffix(".lock")
    locker = hold_lock(lock_path)
    try:
        # release: gives up on the lock after its bound, but still drops its reference
        assert finishes(lambda: info.release(timeout=0.2)) is False
        assert weight_sharing._unused(info.path)
        assert finishes(lambda: info.release(timeout=0.2)) is False  # idempotent
        # the interpreter-exit path is bounded too
        other = share_module_weights(
            torch.nn.Linear(8, 8), "held-too|1", lambda _: None, tmp_path, instances=2
        )
        other_lock = hold_lock(other.path.with_suffix(".lock"))
        try:
            finishes(weight_sharing._release_all)
            assert not weight_sharing._HOLDERS
        finally:
            other_lock.communicate("\n", timeout=60)
        # a load waits for the lock only up to lock_timeout, then keeps its weights private
        warnings: list[str] = []
        blocked = torch.nn.Linear(8, 8)
        late = finishes(
            lambda: share_module_weights(
                blocked, "held|1", lambda _: None, tmp_path, warn=warnings.append, lock_timeout=0.2
            )
        )
        assert late.path is None and late.tensors == 0
        assert any("stayed locked" in x for x in warnings)
    finally:
        locker.communicate("\n", timeout=60)
    # The late load's sweep already removed the "held-too" leftover (its lock was free again);
    # now that nobody holds the other one either, the next sweep removes it.
    assert sweep(tmp_path, lambda _: None) == 1
    assert files(tmp_path) == []


def test_release_does_not_wait_for_a_busy_holder(tmp_path: Path) -> None:
    info = share_module_weights(torch.nn.Linear(4, 4), "busy|1", lambda _: None, tmp_path)
    holder = info._holder
    assert holder is not None
    assert holder._mutex.acquire()  # as if another thread of this process were releasing it
    try:
        assert finishes(lambda: info.release(timeout=0.2)) is False
    finally:
        holder._mutex.release()
    assert info.release() is True
    assert files(tmp_path) == []
