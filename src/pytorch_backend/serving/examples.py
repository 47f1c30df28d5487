"""Build the artifacts of the example model repository (``model_repository_examples/``).

The model folders and their ``config.pbtxt`` files are committed; the artifacts are built here from
the model definitions below and written to ``<repo>/<model>/1/model.pt`` (TorchScript) or
``model.pt2`` (AOT Inductor package). Each artifact gets a ``<artifact>.stamp`` beside it holding a
hash of this module's source and the torch version; an artifact whose stamp matches is skipped.

The examples (all batching with ``max_batch_size: 8``; ``B`` is the batch dimension):

``mlp_batched`` (TorchScript) -- ``INPUT__0`` FP32 ``[B, 4]`` -> ``OUTPUT__0`` FP32 ``[B, 3]``.
    A two-layer MLP (Linear 4->8, ReLU, Linear 8->3) with fixed, hand-written weights, so that
    ``OUTPUT__0 = [sum(x), sum(|x|), x[0] - x[3] + 1]`` per row.
``named_multi_output`` (TorchScript) -- ``forward(self, image, scale)``; config inputs use the
    forward-argument names. ``image`` FP32 ``[B, 2, 3]``, ``scale`` FP32 ``[B, 1]``;
    ``scaled = image * scale`` (per row), then ``OUTPUT__0`` FP32 ``[B, 2, 3] = scaled``,
    ``OUTPUT__1`` INT64 ``[B, 1]`` = index of the maximum of the flattened ``scaled`` row (first
    one on ties), ``OUTPUT__2`` BOOL ``[B, 2, 3] = scaled > 0``.
``dict_input`` (TorchScript) -- ``forward(self, inputs: Dict[str, Tensor])``; config inputs are
    the dict keys ``x`` and ``y``, FP32 ``[B, 4]``: ``OUTPUT__0 = x + y``, ``OUTPUT__1 = x * y``.
``string_io`` (TorchScript) -- ``forward(self, text: List[str])``; ``INPUT__0`` STRING (one string
    per batch row): ``OUTPUT__0`` STRING = ASCII letters upper-cased (other characters unchanged),
    ``OUTPUT__1`` STRING = the space-separated words in reverse order, ``OUTPUT__2`` INT64
    ``[B, 1]`` = length of each string in UTF-8 bytes.
``aoti_nested`` / ``aoti_nested_ordinal`` (AOT Inductor, one package in both folders) --
    ``forward(self, x, pair, opts, *, scale)`` with ``pair = (a, b)`` and
    ``opts = {"gain": g, "bias": c}`` (that insertion order); all inputs FP32 ``[B, 4]`` except
    ``scale`` ``[B, 1]``. ``total = (x + a * b) * g * scale + c``; it returns
    ``{"total": total, "parts": (a - b, argmax(total, dim=1, keepdim=True))}``: FP32 ``[B, 4]``,
    FP32 ``[B, 4]``, INT64 ``[B, 1]``. Names (forward-based = ordinal):
    ``ARGS[0]`` = ``INPUT__0`` (x), ``ARGS[1][0]`` = ``INPUT__1`` (a), ``ARGS[1][1]`` =
    ``INPUT__2`` (b), ``ARGS[2][gain]`` = ``INPUT__3``, ``ARGS[2][bias]`` = ``INPUT__4``,
    ``KWARGS[scale]`` = ``INPUT__5``; ``RESULT[total]`` = ``OUTPUT__0``, ``RESULT[parts][0]`` =
    ``OUTPUT__1``, ``RESULT[parts][1]`` = ``OUTPUT__2``. Exported with a dynamic batch dimension
    ``Dim("batch", min=1, max=8)`` and compiled for CPU (the configs use ``KIND_CPU``).
``dropin_python`` -- the ``mlp_batched`` model served by a copy of this package's ``model.py``
    placed in ``dropin_python/1/model.py`` (``backend: "python"``).
``packaged_mlp`` (AOT Inductor) -- the ``mlp_batched`` model written by ``pytorch_backend.package``
    (``format="pt2"``, ``max_batch_size=8``): the whole folder, ``config.pbtxt`` included, is
    generated; names ``ARGS[0]`` FP32 ``[B, 4]`` -> ``RESULT`` FP32 ``[B, 3]``.
``eager_module`` (nn.Module) -- ``1/model.py`` is a copy of :mod:`.example_module` (``EagerMlp``,
    random initial weights) and ``1/model.pt`` the ``state_dict`` of :class:`Mlp`: input ``x`` FP32
    ``[B, 4]`` -> ``OUTPUT__0`` as ``mlp_batched``. Compiled with ``torch.compile`` at load.
``exported_nested`` (torch.export program) -- :class:`AotiNested` exported with the same dynamic
    batch and written by ``torch.export.save`` (no AOT-Inductor code): the names and math of
    ``aoti_nested``.
``accumulator`` (TorchScript, ``sequence_batching`` with implicit state, ``oldest`` strategy) --
    :class:`Accumulator`: ``INPUT__0`` FP32 ``[B, 4]`` -> ``OUTPUT__0`` FP32 ``[B, 4]`` = the
    running sum of the sequence's inputs; the state is ``STATE__1`` -> ``STATE_OUT__1`` and the
    START control ``START__2`` (INT32) resets it. Not in :data:`MODELS` (it needs a sequence id).

The NumPy oracle of these outputs lives with the tests (``tests/oracles.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .package_pt2 import utf8_ctype

__all__ = [
    "AOTI_MODELS",
    "BATCH_MAX",
    "EAGER_MODEL",
    "EXPORTED_MODEL",
    "MODELS",
    "PACKAGED_MODEL",
    "SEQUENCE_MODEL",
    "TORCHSCRIPT_MODELS",
    "build_examples",
]

#: Largest batch every example accepts (``max_batch_size`` in the configs, the export's Dim max).
BATCH_MAX = 8
TORCHSCRIPT_MODELS = ("mlp_batched", "named_multi_output", "dict_input", "string_io")
AOTI_MODELS = ("aoti_nested", "aoti_nested_ordinal")
DROPIN_MODEL = "dropin_python"
#: Written entirely (config.pbtxt included) by ``pytorch_backend.package``; nothing committed.
PACKAGED_MODEL = "packaged_mlp"
EAGER_MODEL = "eager_module"
EXPORTED_MODEL = "exported_nested"
#: A stateful model (sequence_batching): requests need a sequence id, so it is not in MODELS.
SEQUENCE_MODEL = "accumulator"
MODELS = TORCHSCRIPT_MODELS + AOTI_MODELS + (DROPIN_MODEL, EAGER_MODEL, EXPORTED_MODEL)
VERSION = "1"


# --------------------------------------------------------------------------------------------
# Model definitions
# --------------------------------------------------------------------------------------------


class Mlp(torch.nn.Module):
    """Linear(4, 8) -> ReLU -> Linear(8, 3) with fixed weights (see the module docstring).

    The hidden layer is ``[relu(x), relu(-x)]``; since ``relu(v) - relu(-v) = v`` and
    ``relu(v) + relu(-v) = |v|`` the output is ``[sum(x), sum(|x|), x[0] - x[3] + 1]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)
        eye = torch.eye(4)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.cat([eye, -eye]))
            self.hidden.bias.zero_()
            self.out.weight.copy_(
                torch.tensor(
                    [
                        [1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0],
                        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                        [1.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 1.0],
                    ]
                )
            )
            self.out.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
        self.requires_grad_(False)  # a serving artifact: no autograd on the weights

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(x)))


class NamedMultiOutput(torch.nn.Module):
    """Two named inputs, three outputs of different dtypes (FP32, INT64, BOOL)."""

    def forward(self, image: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scaled = image * scale.reshape(-1, 1, 1)
        best = torch.argmax(scaled.flatten(1), dim=1, keepdim=True)
        return scaled, best, scaled > 0


class DictInput(torch.nn.Module):
    """A single ``Dict[str, Tensor]`` argument; the config input names are its keys."""

    def forward(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        x = inputs["x"]
        y = inputs["y"]
        return x + y, x * y


class StringIO(torch.nn.Module):
    """``List[str]`` in; two ``List[str]`` outputs and one INT64 tensor out."""

    def forward(self, text: list[str]) -> tuple[list[str], list[str], Tensor]:
        upper = [s.upper() for s in text]  # TorchScript: ASCII letters only
        reversed_words: list[str] = []
        for s in text:
            words = s.split(" ")
            words.reverse()
            reversed_words.append(" ".join(words))
        # TorchScript strings are UTF-8 bytes, so len() counts bytes.
        lengths = torch.tensor([len(s) for s in text], dtype=torch.int64).reshape(-1, 1)
        return upper, reversed_words, lengths


class Accumulator(torch.nn.Module):
    """A running sum per sequence: the state is fed back by the backend (sequence_batching)."""

    def forward(
        self, INPUT__0: Tensor, STATE__1: Tensor, START__2: Tensor
    ) -> tuple[Tensor, Tensor]:  # noqa: N803
        total = STATE__1 * (1 - START__2) + INPUT__0
        return total, total


class AotiNested(torch.nn.Module):
    """Nested inputs (a tuple, a dict, a keyword-only tensor) and a dict-of-tuple output."""

    def forward(
        self,
        x: Tensor,
        pair: tuple[Tensor, Tensor],
        opts: dict[str, Tensor],
        *,
        scale: Tensor,
    ) -> dict[str, object]:
        a, b = pair
        total = (x + a * b) * opts["gain"] * scale + opts["bias"]
        return {"total": total, "parts": (a - b, torch.argmax(total, dim=1, keepdim=True))}


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _stamp_text() -> str:
    """What an up-to-date artifact's stamp holds: this builder's source hash and torch version."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return f"builder-sha256={digest}\ntorch={torch.__version__}\n"


def _stamp_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".stamp")


def _up_to_date(artifact: Path, stamp: str) -> bool:
    stamp_file = _stamp_path(artifact)
    return (
        artifact.is_file()
        and stamp_file.is_file()
        and stamp_file.read_text(encoding="utf-8") == stamp
    )


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write ``target`` through a temporary file in the same folder, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _save_torchscript(module: torch.nn.Module) -> Callable[[Path], None]:
    scripted = torch.jit.script(module.eval())
    return lambda path: scripted.save(str(path))


def _aoti_example_inputs(batch: int) -> tuple[tuple[object, ...], dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    x, a, b, gain, bias = (rand(batch, 4) for _ in range(5))
    args = (x, (a, b), {"gain": gain, "bias": bias})  # dict insertion order: gain, bias
    return args, {"scale": rand(batch, 1)}


def _export_nested() -> torch.export.ExportedProgram:
    """:class:`AotiNested` exported with a dynamic batch ``Dim("batch", min=1, max=BATCH_MAX)``."""
    batch = torch.export.Dim("batch", min=1, max=BATCH_MAX)
    dynamic_shapes = {
        "x": {0: batch},
        "pair": ({0: batch}, {0: batch}),
        "opts": {"gain": {0: batch}, "bias": {0: batch}},
        "scale": {0: batch},
    }
    args, kwargs = _aoti_example_inputs(2)
    with torch.no_grad():
        return torch.export.export(AotiNested().eval(), args, kwargs, dynamic_shapes=dynamic_shapes)


def _compile_aoti(path: Path) -> None:
    """Package :func:`_export_nested` (for CPU) at ``path``, which must end in ``.pt2``."""
    program = _export_nested()
    with torch.no_grad(), utf8_ctype():
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))


def _install(artifact: Path, write: Callable[[Path], None], stamp: str) -> None:
    _stamp_path(artifact).unlink(missing_ok=True)
    _write_atomically(artifact, write)
    _stamp_path(artifact).write_text(stamp, encoding="utf-8")


def _copy_from(source: Path) -> Callable[[Path], None]:
    return lambda path: shutil.copyfile(source, path)


def _build_packaged(repo: Path, stamp: str, log: Callable[[str], None]) -> list[Path]:
    """``packaged_mlp``: :class:`Mlp` through ``pytorch_backend.package`` (pt2, batching)."""
    target = repo / PACKAGED_MODEL / VERSION / "model.pt2"
    if _up_to_date(target, stamp) and (repo / PACKAGED_MODEL / "config.pbtxt").is_file():
        log(f"{PACKAGED_MODEL}: model.pt2 is up to date")
        return []
    from .package import package

    log(f"{PACKAGED_MODEL}: packaging Mlp with pytorch_backend.package (about 30 s)")
    _stamp_path(target).unlink(missing_ok=True)
    example = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    package(Mlp(), (example,), repo, PACKAGED_MODEL, max_batch_size=BATCH_MAX, overwrite=True)
    _stamp_path(target).write_text(stamp, encoding="utf-8")
    return [repo / PACKAGED_MODEL / "config.pbtxt", target]


def build_examples(
    repo: Path, *, aoti: bool = True, log: Callable[[str], None] = print
) -> list[Path]:
    """Build every example artifact under ``repo``; return the paths written by this call.

    Artifacts whose stamp matches (same builder source, same torch version) are skipped. The AOT
    Inductor package (about half a minute to compile) is only built when ``aoti`` is true. The
    drop-in example also gets a copy of this package's ``model.py`` (refreshed when it differs).
    """
    repo = Path(repo)
    missing = [m for m in MODELS if not (repo / m / "config.pbtxt").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{repo} is not the example repository: no config.pbtxt for {', '.join(missing)}"
        )
    stamp = _stamp_text()
    built: list[Path] = []

    def artifact(model: str, filename: str = "model.pt") -> Path:
        return repo / model / VERSION / filename

    torchscript = {
        "mlp_batched": Mlp,
        "named_multi_output": NamedMultiOutput,
        "dict_input": DictInput,
        "string_io": StringIO,
        DROPIN_MODEL: Mlp,
        SEQUENCE_MODEL: Accumulator,
    }
    for model, factory in torchscript.items():
        target = artifact(model)
        if _up_to_date(target, stamp):
            log(f"{model}: {target.name} is up to date")
            continue
        log(f"{model}: scripting {factory.__name__} -> {target}")
        _install(target, _save_torchscript(factory()), stamp)
        built.append(target)

    adapter = Path(__file__).parent.parent / "model.py"
    if not adapter.is_file():
        raise FileNotFoundError(f"{DROPIN_MODEL}: the drop-in adapter {adapter} is missing")
    module_source = Path(__file__).with_name("example_module.py")
    for model, source in ((DROPIN_MODEL, adapter), (EAGER_MODEL, module_source)):
        copy = artifact(model, "model.py")
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            log(f"{model}: copying {source} -> {copy}")
            _write_atomically(copy, _copy_from(source))
            built.append(copy)

    saved_writers = {
        (EAGER_MODEL, "model.pt"): lambda path: torch.save(Mlp().state_dict(), path),
        (EXPORTED_MODEL, "model.pt2"): lambda path: torch.export.save(_export_nested(), path),
    }
    for (model, filename), write in saved_writers.items():
        target = artifact(model, filename)
        if _up_to_date(target, stamp):
            log(f"{model}: {target.name} is up to date")
            continue
        log(f"{model}: writing {target}")
        _install(target, write, stamp)
        built.append(target)

    if not aoti:
        log(f"{', '.join(AOTI_MODELS)}: skipped (aoti=False)")
        return built
    built += _build_packaged(repo, stamp, log)
    targets = [artifact(m, "model.pt2") for m in AOTI_MODELS]
    stale = [t for t in targets if not _up_to_date(t, stamp)]
    if not stale:
        log(f"{', '.join(AOTI_MODELS)}: model.pt2 is up to date")
        return built
    with tempfile.TemporaryDirectory(prefix="pytorch_backend_aoti_") as tmp:
        package = Path(tmp) / "model.pt2"
        log(f"{', '.join(AOTI_MODELS)}: exporting and AOT-compiling AotiNested (about 30 s)")
        _compile_aoti(package)
        for target in stale:
            _install(target, _copy_from(package), stamp)
            built.append(target)
    return built
