"""``package(..., format="eager", compile_cache=True)``: compile at packaging time.

The staged model directory is loaded as the server would load it (:mod:`.check`, one CPU
instance: compile and warm-up) in a fresh Python process whose ``COMPILE_CACHE`` and inductor
cache are an empty temporary folder. The entry it saves (``<key>.bin``, ``<key>.json``) and
inductor's files (the compiled C++ kernels, which the artifacts do not carry; lock files left
out) are copied into ``<version>/compile_cache/``, which a server reads first and never writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ..executors.eager.compile_cache import ENV, INDUCTOR, PACKAGED
from .errors import ToolError

SAVED = "compile cache: saved"


class CompileCacheError(ToolError):
    """Compiling the staged model failed (the message holds the end of its log)."""


def compile_into(model_dir: Path, version: int, step: Callable[[str], None]) -> Path:
    """Compile ``model_dir`` (version ``version``) on CPU; return the filled ``compile_cache/``."""
    target = model_dir / str(version) / PACKAGED
    with tempfile.TemporaryDirectory(prefix="pytorch_backend_compile_") as tmp:
        cache = Path(tmp) / "cache"
        env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
        env[ENV] = str(cache)
        step("compiling on CPU as a server load would (torch.compile and warm-up)")
        done = subprocess.run(
            [sys.executable, "-m", __name__, str(model_dir)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            cwd=tmp,  # whatever is written relative to the working directory stays in tmp
        )
        log = done.stdout + done.stderr
        entries = sorted(cache.glob("*.bin"))
        if done.returncode != 0 or SAVED not in log or not entries:
            tail = "\n".join(log.strip().splitlines()[-15:])
            raise CompileCacheError(f"compiling the packaged model failed:\n{tail}")
        target.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            shutil.copyfile(entry, target / entry.name)
            shutil.copyfile(entry.with_suffix(".json"), target / f"{entry.stem}.json")
        if (cache / INDUCTOR).is_dir():
            shutil.copytree(
                cache / INDUCTOR,
                target / INDUCTOR,
                ignore=shutil.ignore_patterns("locks", "*.lock"),
            )
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    step(f"wrote {PACKAGED}/ ({len(entries)} entry, {size / 1e6:.1f} MB with inductor's kernels)")
    return target


def main(argv: Sequence[str]) -> int:
    """Load every version of one model directory, printing what the loads log."""
    from .check import check_model

    ok = True
    for result in check_model(Path(argv[0]), print):
        print(result.line())
        ok = ok and result.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
