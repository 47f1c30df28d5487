"""Small AOT-Inductor (``.pt2``) test packages, compiled once and cached on disk.

Each ``build_*`` function returns the path of a package compiled from the module documented next
to it. Packages are cached as ``<dest_dir>/<name>-<hash>.pt2``; the hash covers the builder's and
the model's source and the torch version, so editing either rebuilds. Compiling takes ~30 s per
package on 2 cores; concurrent test processes serialise on a lock file and publish atomically.

Models (all float tensors are FP32):

* ``build_complex`` -> :class:`ComplexModel`, batch ``Dim("batch", min=1, max=8)`` on every
  input. Note that AOTI compiles min=1 as a runtime lower bound of 2 (0/1 specialisation), so the
  executor reports ``batch_range == (2, 8)`` and pads batches of 1.

  ============================  ==========  ======  ==========================  ===========
  input                          ordinal    dtype   shape                       math
  ============================  ==========  ======  ==========================  ===========
  ``ARGS[0]``       (x)         INPUT__0    FP32    [B, 4]
  ``ARGS[1][0]``    (pair[0])   INPUT__1    FP32    [B, 4]
  ``ARGS[1][1]``    (pair[1])   INPUT__2    INT64   [B, 2]
  ``ARGS[2][alpha]``            INPUT__3    FP32    [B, 4]
  ``ARGS[2][beta]``             INPUT__4    FP32    [B, 3]
  ``KWARGS[scale]``             INPUT__5    FP32    [B, 4]
  ============================  ==========  ======  ==========================  ===========

  ============================  ==========  ======  ======  ==================================
  output                         ordinal    dtype   shape   value
  ============================  ==========  ======  ======  ==================================
  ``RESULT[out]``               OUTPUT__0   FP32    [B, 4]  ``x * scale + pair[0]``
  ``RESULT[pair][0]``           OUTPUT__1   FP32    [B, 4]  ``x - pair[0]``
  ``RESULT[pair][1]``           OUTPUT__2   INT64   [B, 2]  ``pair[1] * 2``
  ``RESULT[extra][t][0]``       OUTPUT__3   FP32    [B, 4]  ``opts["alpha"] + x``
  ``RESULT[extra][t][1]``       OUTPUT__4   FP32    [B, 3]  ``opts["beta"] * 3``
  ============================  ==========  ======  ======  ==================================

* ``build_padded`` -> :class:`PaddedModel`: ``forward(x) -> x * 2 + 1``, x FP32 ``[B, F]`` with
  ``Dim("batch", min=3, max=16)`` and a dynamic feature dim ``Dim("features", max=32)`` (config
  ``dims: [-1]``). Single tensor output: names ``ARGS[0]``/``INPUT__0`` -> ``RESULT``/``OUTPUT__0``.
  Batches of 1 and 2 are padded up to 3 by the executor.

* ``build_sequence`` -> :class:`SequenceModel`: ``forward(x) -> x * 2``, x FP32 ``[B, L]`` with
  ``Dim("batch", min=1, max=8)`` and ``Dim("seq", min=1, max=64)`` (config ``dims: [-1]``). Both
  are compiled with a minimum of 2: batches of 1 are padded, sequences of length 1 are refused.

* ``build_static`` -> :class:`StaticModel`: ``forward(x) -> x + 1``, x FP32 ``[4, 3]`` exported
  with static shapes (batch dimension fixed at 4).
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path

import torch

DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".test-artifacts" / "aoti"

COMPLEX_INPUTS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    # forward name: (ordinal name, Triton dtype, per-item dims)
    "ARGS[0]": ("INPUT__0", "FP32", (4,)),
    "ARGS[1][0]": ("INPUT__1", "FP32", (4,)),
    "ARGS[1][1]": ("INPUT__2", "INT64", (2,)),
    "ARGS[2][alpha]": ("INPUT__3", "FP32", (4,)),
    "ARGS[2][beta]": ("INPUT__4", "FP32", (3,)),
    "KWARGS[scale]": ("INPUT__5", "FP32", (4,)),
}
COMPLEX_OUTPUTS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "RESULT[out]": ("OUTPUT__0", "FP32", (4,)),
    "RESULT[pair][0]": ("OUTPUT__1", "FP32", (4,)),
    "RESULT[pair][1]": ("OUTPUT__2", "INT64", (2,)),
    "RESULT[extra][t][0]": ("OUTPUT__3", "FP32", (4,)),
    "RESULT[extra][t][1]": ("OUTPUT__4", "FP32", (3,)),
}
COMPLEX_MAX_BATCH = 8
PADDED_MIN_BATCH = 3
PADDED_MAX_BATCH = 16


class ComplexModel(torch.nn.Module):
    """Nested args, a kwarg and a nested dict output (see the module docstring for names)."""

    def forward(
        self,
        x: torch.Tensor,
        pair: tuple[torch.Tensor, torch.Tensor],
        opts: dict[str, torch.Tensor],
        *,
        scale: torch.Tensor,
    ) -> dict[str, object]:
        return {
            "out": x * scale + pair[0],
            "pair": (x - pair[0], pair[1] * 2),
            "extra": {"t": (opts["alpha"] + x, opts["beta"] * 3)},
        }


class PaddedModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1


class SequenceModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class StaticModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def complex_example(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs for :class:`ComplexModel`, keyed by forward-based names."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, (_, dtype, dims) in COMPLEX_INPUTS.items():
        if dtype == "INT64":
            out[name] = torch.randint(-100, 100, (batch, *dims), generator=g, dtype=torch.int64)
        else:
            out[name] = torch.randn((batch, *dims), generator=g)
    return out


def complex_reference(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Eager outputs of :class:`ComplexModel` keyed by forward-based output names."""
    res = ComplexModel()(
        inputs["ARGS[0]"],
        (inputs["ARGS[1][0]"], inputs["ARGS[1][1]"]),
        {"alpha": inputs["ARGS[2][alpha]"], "beta": inputs["ARGS[2][beta]"]},
        scale=inputs["KWARGS[scale]"],
    )
    return {
        "RESULT[out]": res["out"],
        "RESULT[pair][0]": res["pair"][0],
        "RESULT[pair][1]": res["pair"][1],
        "RESULT[extra][t][0]": res["extra"]["t"][0],
        "RESULT[extra][t][1]": res["extra"]["t"][1],
    }


def _export_complex() -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=COMPLEX_MAX_BATCH)
    ex = complex_example(4)
    args = (
        ex["ARGS[0]"],
        (ex["ARGS[1][0]"], ex["ARGS[1][1]"]),
        {"alpha": ex["ARGS[2][alpha]"], "beta": ex["ARGS[2][beta]"]},
    )
    kwargs = {"scale": ex["KWARGS[scale]"]}
    dynamic = {
        "x": {0: batch},
        "pair": ({0: batch}, {0: batch}),
        "opts": {"alpha": {0: batch}, "beta": {0: batch}},
        "scale": {0: batch},
    }
    return torch.export.export(ComplexModel(), args, kwargs, dynamic_shapes=dynamic)


def _export_padded() -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=PADDED_MIN_BATCH, max=PADDED_MAX_BATCH)
    features = torch.export.Dim("features", max=32)
    return torch.export.export(
        PaddedModel(), (torch.randn(4, 5),), dynamic_shapes={"x": {0: batch, 1: features}}
    )


def _export_sequence() -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=8)
    seq = torch.export.Dim("seq", min=1, max=64)
    return torch.export.export(
        SequenceModel(), (torch.randn(2, 5),), dynamic_shapes={"x": {0: batch, 1: seq}}
    )


def _export_static() -> torch.export.ExportedProgram:
    return torch.export.export(StaticModel(), (torch.randn(4, 3),))


def _build(
    name: str,
    export: Callable[[], torch.export.ExportedProgram],
    model: type,
    dest_dir: Path | None,
) -> Path:
    dest = Path(dest_dir) if dest_dir is not None else DEFAULT_DIR
    dest.mkdir(parents=True, exist_ok=True)
    key = "\n".join(
        (inspect.getsource(export), inspect.getsource(model), inspect.getsource(_build)),
    )
    digest = hashlib.sha256(f"{key}\n{torch.__version__}".encode()).hexdigest()[:16]
    path = dest / f"{name}-{digest}.pt2"
    if path.exists():
        return path
    with open(dest / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():  # built by another process while we waited
            return path
        tmp = dest / f".{name}-{digest}.{os.getpid()}.tmp.pt2"
        from torch._inductor import aoti_compile_and_package  # heavy: only when compiling

        aoti_compile_and_package(export(), package_path=str(tmp))
        os.replace(tmp, path)
    return path


def build_complex(dest_dir: Path | None = None) -> Path:
    """Package of :class:`ComplexModel` (dynamic batch 1..8, compiled lower bound 2)."""
    return _build("complex", _export_complex, ComplexModel, dest_dir)


def build_padded(dest_dir: Path | None = None) -> Path:
    """Package of :class:`PaddedModel` (dynamic batch 3..16, dynamic feature dim)."""
    return _build("padded", _export_padded, PaddedModel, dest_dir)


def build_sequence(dest_dir: Path | None = None) -> Path:
    """Package of :class:`SequenceModel` (dynamic batch and sequence, each compiled min 2)."""
    return _build("sequence", _export_sequence, SequenceModel, dest_dir)


def build_static(dest_dir: Path | None = None) -> Path:
    """Package of :class:`StaticModel` (static shape [4, 3])."""
    return _build("static", _export_static, StaticModel, dest_dir)
