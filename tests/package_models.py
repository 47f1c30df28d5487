"""Model directories written by ``pytorch_backend.package``, built once and cached on disk.

:func:`packaged` returns ``<cache>/<format>-<hash>/<name>`` (``config.pbtxt`` + ``1/...``) for
:class:`TwoHeads` packaged with batching (``max_batch_size`` :data:`MAX_BATCH`). The hash covers
this file and the package sources and the torch version; concurrent test processes serialise on
a lock file (the ``pt2`` compile takes ~30 s).

:class:`TwoHeads`: ``forward(self, x, y)`` with x FP32 ``[B, 4]``, y FP32 ``[B, 3]`` returns
``(lin(x) + y, argmax(lin(x) + y, 1, keepdim=True))``: FP32 ``[B, 3]`` and INT64 ``[B, 1]``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import torch

import pytorch_backend
from pytorch_backend.serving import package as package_module

DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".test-artifacts" / "package"
MAX_BATCH = 8


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10 - 0.5)
            self.lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.lin(x) + y
        return h, torch.argmax(h, dim=1, keepdim=True)


def examples(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, generator=g), torch.randn(batch, 3, generator=g)


def _digest() -> str:
    sources = [Path(__file__), Path(package_module.__file__)]
    sources += sorted(Path(package_module.__file__).parent.glob("package_*.py"))
    sources.append(Path(package_module.__file__).parents[1] / "executors" / "aoti" / "describe.py")
    text = "".join(p.read_text() for p in sources) + torch.__version__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def packaged(format: str, name: str = "two_heads", dest_dir: Path | None = None) -> Path:
    """The model directory of :class:`TwoHeads` packaged in ``format`` (cached)."""
    dest = Path(dest_dir) if dest_dir is not None else DEFAULT_DIR
    dest.mkdir(parents=True, exist_ok=True)
    root = dest / f"{format}-{_digest()}"
    if (root / name / "config.pbtxt").exists():
        return root / name
    with open(dest / f".{format}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / name / "config.pbtxt").exists():
            return root / name
        tmp = dest / f".{format}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        pytorch_backend.package(
            TwoHeads(),
            examples(2),
            tmp,
            name,
            format=format,
            max_batch_size=MAX_BATCH,
            progress=None,
        )
        root.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / name, root / name)
        shutil.rmtree(tmp, ignore_errors=True)
    return root / name
