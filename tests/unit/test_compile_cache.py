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
    assert "differs in: module" not in changed  # the module digest is what entries are found by
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


def test_relative_directory_is_refused():
    from pytorch_backend.config import parse_parameters

    with pytest.raises(ModelLoadError, match="'off' or an absolute directory path"):
        parse_parameters("m", {"COMPILE_CACHE": "cache"}, print)
