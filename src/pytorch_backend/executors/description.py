"""What a model file says about its inputs and outputs, for completing a configuration.

Each model kind may register a *describer* next to its executor (``KindEntry.describer`` in
:mod:`.registry`): ``describe(DescribeContext) -> ModelIO``. A describer reports only what the
file knows; ``None`` marks what it cannot know (a TorchScript tensor's dtype, for instance).
:mod:`pytorch_backend.autocomplete` turns a :class:`ModelIO` into config fields.

The packager (``pytorch_backend.package``) also writes a *sidecar*, ``<artifact>.io.json``, with
the full description it verified; describers of kinds whose files store no dtypes or shapes
read it (:func:`read_sidecar`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..logs import InstanceLog

SIDECAR_SUFFIX = ".io.json"
SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class TensorIO:
    """One model input or output as the file describes it."""

    #: Names the model accepts for this tensor; the first is the default, e.g.
    #: ``("ARGS[0]", "INPUT__0")`` or ``("image", "INPUT__0")`` or ``("OUTPUT__0",)``.
    names: tuple[str, ...]
    dtype: str | None = None  # Triton type without ``TYPE_``; None: unknown
    #: Per-item dims (without the batch dimension when the model batches), -1 where variable;
    #: None: unknown.
    dims: tuple[int, ...] | None = None
    #: ``reshape`` the config needs (a batched ``List[str]`` is ``dims [1]``, ``reshape []``).
    reshape: tuple[int, ...] | None = None
    where: str = ""  # what the tensor is in the model, for messages ("forward argument 'x'")

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def ordinal(self) -> str | None:
        return next((n for n in self.names[1:] if n.rsplit("__", 1)[-1].isdigit()), None)


@dataclass(frozen=True)
class ModelIO:
    """A model file's inputs and outputs, and whether it batches."""

    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]
    #: 0: the model does not batch (dims are full shapes); N > 0: it batches up to N along dim 0;
    #: None: the file does not say (the config's value is kept).
    max_batch_size: int | None = None
    #: Where the batch range comes from, for the log ("the package's exported batch range 2..8").
    batch_note: str = ""
    #: What the file is, for the log ("the AOT-Inductor package", "the sidecar model.pt.io.json").
    source: str = "the model file"
    #: Input names the model cannot describe (e.g. a ``Dict[str, Tensor]`` forward argument).
    unknown_inputs: str = ""
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class DescribeContext:
    """What a describer gets: the (partial) config's header, the artifact, a log."""

    config: ModelConfig  # name, platform, max_batch_size, parameters; no tensors
    path: Path
    log: InstanceLog
    device: torch.device = torch.device("cpu")
    #: False when the config already declares every tensor (only batching is in question), so
    #: a describer that cannot tell batching without opening the file may return at once.
    need_tensors: bool = True


#: ``max_batch_size`` for an artifact whose batch dimension has no upper bound (Triton's own
#: ``default-max-batch-size``).
DEFAULT_MAX_BATCH_SIZE = 4


def batched_io(
    io: tuple[Sequence[TensorIO], Sequence[TensorIO]],
    batch: tuple[int, int | None] | None,
    what: str,
    bounded: str,
    source: str,
    notes: Sequence[str] = (),
) -> ModelIO:
    """A compiled artifact's ModelIO, its ``max_batch_size`` and note from its batch range.

    ``io``: (inputs, outputs); ``batch``: (lowest, highest or None) of the batch dimension, None
    when it is static; ``what``: the artifact ("the package"); ``bounded``: how a bounded range
    is named.
    """
    if batch is None:
        max_batch, note = 0, f"{what}'s batch dimension is static"
    elif batch[1] is None:
        max_batch = DEFAULT_MAX_BATCH_SIZE
        note = f"{what} accepts any batch >= {batch[0]}; Triton's default-max-batch-size"
    else:
        max_batch, note = batch[1], f"{bounded} {batch[0]}..{batch[1]}"
    inputs, outputs = io
    return ModelIO(
        tuple(inputs),
        tuple(outputs),
        max_batch_size=max_batch,
        batch_note=note,
        source=source,
        notes=tuple(notes),
    )


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + SIDECAR_SUFFIX)


def _tensor(raw: Mapping[str, Any]) -> TensorIO:
    reshape = raw.get("reshape")
    return TensorIO(
        names=tuple(raw["names"]),
        dtype=raw.get("data_type"),
        dims=tuple(int(d) for d in raw["dims"]),
        reshape=tuple(int(d) for d in reshape) if reshape is not None else None,
        where=str(raw.get("where", "")),
    )


def read_sidecar(artifact: Path) -> ModelIO | None:
    """The description the packager wrote next to ``artifact``; None when there is none."""
    path = sidecar_path(artifact)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        return ModelIO(
            inputs=tuple(_tensor(t) for t in data["inputs"]),
            outputs=tuple(_tensor(t) for t in data["outputs"]),
            max_batch_size=int(data["max_batch_size"]),
            batch_note=f"the sidecar {path.name}",
            source=f"the sidecar {path.name}",
        )
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read the sidecar '{path}': {error}") from None


def sidecar_text(io: ModelIO) -> str:
    """The sidecar's JSON for ``io`` (dtypes and dims must be known)."""

    def tensor(t: TensorIO) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "names": list(t.names),
            "data_type": t.dtype,
            "dims": list(t.dims or ()),
        }
        if t.reshape is not None:
            entry["reshape"] = list(t.reshape)
        if t.where:
            entry["where"] = t.where
        return entry

    data = {
        "format": SIDECAR_FORMAT,
        "max_batch_size": io.max_batch_size or 0,
        "inputs": [tensor(t) for t in io.inputs],
        "outputs": [tensor(t) for t in io.outputs],
    }
    return json.dumps(data, indent=1) + "\n"
