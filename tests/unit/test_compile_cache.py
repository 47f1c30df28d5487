"""``COMPILE_CACHE``: compiled artifacts saved after the warm-up and restored by a new process.

Each load runs in a fresh Python process (as a stub does), with inductor's default cache dir
pointed at an empty temporary folder so that only this backend's cache can make it warm.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.eager.compile_cache import entry_name, key_parts

MODULE = """
import torch


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((4,), 3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).relu() + 1
"""

LOAD = """
import json, sys
from pathlib import Path
from pytorch_backend.config import InstanceKind
from pytorch_backend.instance import InstanceArgs, build_instance

class Sink:
    lines = []
    def log_info(self, m): self.lines.append(m)
    log_warn = log_error = log_verbose = log_info

config = json.loads(sys.argv[2])
build_instance(InstanceArgs(config, "m_0", InstanceKind.CPU, 0, Path(sys.argv[1]), "1"), Sink())
print(json.dumps([line for line in Sink.lines if "compile cache" in line]))
"""


def config(cache: str) -> dict:
    return {
        "name": "m",
        "backend": "pytorch_python",
        "max_batch_size": 4,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
        "parameters": {"COMPILE_CACHE": {"string_value": cache}},
    }


def load(model_dir: Path, cache: str, tmp: Path) -> str:
    # No TORCHINDUCTOR_CACHE_DIR: inductor's default (under TMPDIR) unless the cache moves it.
    env = {"HOME": str(tmp), "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp)}
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(model_dir), json.dumps(config(cache))],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tmp,  # anything written relative to the working directory stays in tmp
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return "\n".join(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text(MODULE)
    return tmp_path / "m"


def test_saved_then_restored_and_a_corrupt_entry_is_not_fatal(model_dir, tmp_path):
    store = tmp_path / "store"
    first = load(model_dir, str(store), tmp_path)
    assert "compiling afresh" in first and "compile cache: saved" in first
    (entry,) = store.glob("*.bin")
    assert "compile cache: restored" in load(model_dir, str(store), tmp_path)
    entry.write_bytes(b"not an artifact")
    corrupt = load(model_dir, str(store), tmp_path)
    assert "cannot restore" in corrupt or "holds no artifacts" in corrupt
    assert "compiling afresh" in corrupt
    # a changed module file is another key: the old entry is named as the mismatch
    (model_dir / "1" / "model.py").write_text(MODULE.replace("+ 1", "+ 2"))
    changed = load(model_dir, str(store), tmp_path)
    assert "differs in: module file)" in changed
    assert "compiling afresh" in changed


def test_off_and_keys(model_dir, tmp_path):
    assert "compile cache: off" in load(model_dir, "off", tmp_path)
    module, weights = model_dir / "1" / "model.py", model_dir / "1" / "model.pt"
    base = key_parts(module, weights, "Affine", "forward", "{}", "cpu")
    variants = [
        key_parts(module, weights, "Affine", "forward", '{"mode": "max-autotune"}', "cpu"),
        key_parts(module, weights, "Affine", "forward", "{}", "cuda"),
        key_parts(module, weights, "Affine", "encode", "{}", "cpu"),
        {**base, "torch": "0.0.0"},
    ]
    weights.write_bytes(b"weights")
    variants.append(key_parts(module, weights, "Affine", "forward", "{}", "cpu"))
    names = {entry_name(parts) for parts in [base, *variants]}
    assert len(names) == 1 + len(variants)


def test_mismatch_names_the_parts_of_the_closest_entry(tmp_path, monkeypatch):
    from pytorch_backend.executors.eager.compile_cache import CompileCache
    from pytorch_backend.logs import InstanceLog

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # left as it is
    module, weights = tmp_path / "model.py", tmp_path / "model.pt"
    module.write_text(MODULE)
    parts = key_parts(module, weights, "Affine", "forward", "{}", "cpu")
    store = tmp_path / "store"
    store.mkdir()
    saved = [
        {**parts, "torch": "2.0.0", "device": "cuda", "method": "encode", "options": "{}x"},
        {**parts, "torch": "2.0.0", "module": "0" * 64, "weights": "1" * 64},
        {**parts, "class": "Other", "torch": "2.0.0"},  # another class: never named
    ]
    for i, entry in enumerate(saved):
        (store / f"entry{i}.json").write_text(json.dumps(entry))

    class Sink:
        lines: list[str] = []

        def log_info(self, message: str) -> None:
            self.lines.append(message)

        log_warn = log_error = log_verbose = log_info

    sink = Sink()
    cache = CompileCache(parts, store, tmp_path / "packaged", InstanceLog("m", "m_0", sink))
    assert not cache.restore()
    (line,) = [line for line in sink.lines if "no entry" in line]
    assert line.endswith(
        f"(entry entry1 in '{store}' differs in: torch version (saved 2.0.0, now "
        f"{parts['torch']}); module file; weights file (absent))"
    )


def test_relative_directory_is_refused():
    from pytorch_backend.config import parse_parameters

    with pytest.raises(ModelLoadError, match="'off' or an absolute directory path"):
        parse_parameters("m", {"COMPILE_CACHE": "cache"}, print)


def package_affine(tmp_path: Path, repo: Path, name: str) -> Path:
    """Package ``Affine`` (from a module file in ``tmp_path``) with its compile cache."""
    import importlib.util

    import torch

    from pytorch_backend.serving.package import package

    (tmp_path / "affine_module.py").write_text(MODULE)
    spec = importlib.util.spec_from_file_location("affine_module", tmp_path / "affine_module.py")
    imported = importlib.util.module_from_spec(spec)
    sys.modules["affine_module"] = imported  # inspect finds the source file through it
    try:
        spec.loader.exec_module(imported)
        return package(imported.Affine(), (torch.ones(2, 4),), repo, name, format="eager",
                       max_batch_size=4, compile_cache=True, progress=None)  # fmt: skip
    finally:
        del sys.modules["affine_module"]


def test_packaged_entry_loads_warm_from_a_read_only_version_directory(tmp_path):
    import os
    import stat

    repo, writable = tmp_path / "repo", tmp_path / "writable"
    package_affine(tmp_path, repo, "m")
    packaged = repo / "m" / "1" / "compile_cache"
    (entry,) = packaged.glob("*.bin")
    kernels = {p.name for p in packaged.rglob("*.so")}
    assert kernels and not list(packaged.rglob("*.lock"))
    tree = [repo / "m", *(repo / "m").rglob("*")]
    for path in tree:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
        env.update(
            HOME=str(tmp_path), TMPDIR=str(tmp_path), PYTORCH_BACKEND_COMPILE_CACHE=str(writable)
        )
        done = subprocess.run(
            [sys.executable, "-m", "pytorch_backend.serving.precompile", str(repo / "m")],
            capture_output=True, text=True, check=False, env=env, cwd=tmp_path,
        )  # fmt: skip
    finally:
        for path in tree:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"compile cache: restored '{entry}'" in done.stdout
    assert "packaged inductor file(s) copied" in done.stdout
    # the kernels came from the package: none was compiled again
    assert {p.name for p in (writable / "inductor").rglob("*.so")} == kernels
