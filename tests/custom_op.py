"""A tiny torch custom-op library for tests, compiled once and cached under ``.test-artifacts/``.

Ops (namespace ``pbtest``):

* ``pbtest::add_one(Tensor x) -> Tensor``: ``x + 1``;
* ``pbtest::thread_counts() -> Tensor``: int64 ``[at::get_num_threads(),
  at::get_num_interop_threads()]`` as seen by the thread that calls it (TorchScript itself has no
  ``torch.get_num_threads()``, so a model calls this op to report its instance's thread pools).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ARTIFACTS = Path(__file__).resolve().parents[1] / ".test-artifacts"
LIBRARY_NAME = "libpbtest_ops.so"

OP_SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

static at::Tensor add_one(const at::Tensor& x) { return x + 1; }

static at::Tensor thread_counts() {
  return at::tensor(
      {static_cast<int64_t>(at::get_num_threads()),
       static_cast<int64_t>(at::get_num_interop_threads())},
      at::kLong);
}

TORCH_LIBRARY(pbtest, m) {
  m.def("add_one(Tensor x) -> Tensor", add_one);
  m.def("thread_counts() -> Tensor", thread_counts);
}
"""


def build_op_library() -> Path:
    """Compile the library with g++ (~15 s), cached by source, torch version and command line.

    Skips the calling test when no C++ compiler is installed.
    """
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [
        compiler,
        "-O1",
        "-shared",
        "-fPIC",
        "-std=c++20",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        "SOURCE",
        "-o",
        "OUTPUT",
        f"-L{torch_dir / 'lib'}",
        "-lc10",
        "-ltorch_cpu",
        f"-Wl,-rpath,{torch_dir / 'lib'}",
    ]
    digest = hashlib.sha256(
        (OP_SOURCE + torch.__version__ + " ".join(command)).encode()
    ).hexdigest()[:16]
    target_dir = ARTIFACTS / "custom_op" / digest
    library = target_dir / LIBRARY_NAME
    if library.exists():
        return library
    target_dir.mkdir(parents=True, exist_ok=True)
    source = target_dir / "ops.cpp"
    source.write_text(OP_SOURCE)
    tmp = target_dir / f"{LIBRARY_NAME}.tmp{os.getpid()}"
    argv = [str(source) if a == "SOURCE" else str(tmp) if a == "OUTPUT" else a for a in command]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    os.replace(tmp, library)
    return library
