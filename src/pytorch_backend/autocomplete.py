"""Config auto-completion: fill what a partial ``config.pbtxt`` leaves out from the model file.

Triton's Python backend calls ``TritonPythonModel.auto_complete_config`` before loading a model
(unless the server runs with ``--disable-auto-complete-config``). The adapter hands the config,
as a plain dict, and the version directory to :func:`complete_config`, which

1. finds the artifact exactly as the load does (kind from ``platform``, file name from
   ``MODEL_FILENAME``/``default_model_filename``), so a missing file gives the load's error;
2. asks the kind's describer (``KindEntry.describer``) what the file says (:class:`ModelIO`);
3. fills every missing input, the outputs when none are declared, a declared tensor's missing
   ``data_type`` or ``dims``, ``max_batch_size`` and ``dynamic_batching``, logging one line per
   completed field. What the user wrote is never changed: a written value that contradicts the
   model is a load error naming both values (for output dims only with ``OUTPUT_SHAPE_CHECK``
   ``error``; otherwise the load serves the model's shape and warns, as for a complete config).

A config whose tensors are all written and whose ``max_batch_size`` is set is left alone without
opening the model. Nothing here touches Triton; the adapter applies :class:`Completion` through
``pb_utils.ModelConfig`` (``add_input``, ``add_output``, ``set_max_batch_size``,
``set_dynamic_batching``) and :meth:`Completion.apply` does the same on a plain dict.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ModelConfig, OutputShapeCheck, parse_model_header, parse_parameters
from .errors import PyTorchBackendError
from .executors.description import DescribeContext, ModelIO, TensorIO
from .executors.registry import REGISTRY, resolve_model
from .logs import InstanceLog, Sink
from .runtime.settings import load_custom_op_libraries

_ORDINAL_RE = re.compile(r"^(INPUT|OUTPUT)__\d+$")
_UNSET_TYPES = ("", "TYPE_INVALID")
_SCHEDULERS = ("dynamic_batching", "sequence_batching", "ensemble_scheduling")


@dataclass
class Completion:
    """What auto-completion adds to a config (empty: nothing)."""

    inputs: list[dict[str, Any]] = field(default_factory=list)  # for ``add_input``
    outputs: list[dict[str, Any]] = field(default_factory=list)  # for ``add_output``
    reshapes: dict[str, list[int]] = field(default_factory=dict)  # tensor name -> reshape
    max_batch_size: int | None = None  # for ``set_max_batch_size``
    dynamic_batching: bool = False  # ``set_dynamic_batching``
    lines: list[str] = field(default_factory=list)  # what was completed, one line per field

    @property
    def empty(self) -> bool:
        return not (self.inputs or self.outputs or self.max_batch_size or self.dynamic_batching)

    def apply(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A completed copy of ``config``, as Triton's ``pb_utils.ModelConfig`` would build it."""
        out = copy.deepcopy(dict(config))
        for key, entries in (("input", self.inputs), ("output", self.outputs)):
            declared = out.setdefault(key, [])
            for entry in entries:
                existing = next((e for e in declared if e.get("name") == entry["name"]), None)
                if existing is None:
                    declared.append(dict(entry))
                else:
                    existing.update(entry)
            for item in declared:
                if item.get("name") in self.reshapes:
                    item["reshape"] = {"shape": list(self.reshapes[item["name"]])}
        if self.max_batch_size is not None:
            out["max_batch_size"] = self.max_batch_size
        if self.dynamic_batching and not any(k in out for k in _SCHEDULERS):
            out["dynamic_batching"] = {}
        return out


def _type_set(entry: Mapping[str, Any]) -> bool:
    return entry.get("data_type", "") not in _UNSET_TYPES


def _dims_set(entry: Mapping[str, Any]) -> bool:
    return bool(entry.get("dims")) or bool(entry.get("reshape"))


def _complete_tensors(config: Mapping[str, Any]) -> bool:
    entries = [*(config.get("input") or ()), *(config.get("output") or ())]
    return (
        bool(config.get("input"))
        and bool(config.get("output"))
        and all(_type_set(e) and _dims_set(e) for e in entries)
    )


def complete_config(
    config: Mapping[str, Any], version_dir: Path, sink: Sink | None = None
) -> Completion:
    """Complete ``config`` (Triton's model config as a dict) from the artifact in ``version_dir``.

    Raises :class:`~pytorch_backend.errors.PyTorchBackendError` (naming the model) when the
    artifact cannot be found or described, when a written value contradicts the model, or when
    something needed cannot be known from the file (the text says what to write).
    """
    header = parse_model_header(config)
    log = InstanceLog(header.name, None, sink)
    complete = _complete_tensors(config)
    if complete and header.max_batch_size > 0:
        return Completion()
    if config.get("sequence_batching") is not None:
        # The model's controls and states are arguments that must not become config inputs.
        log.info("auto-complete: skipped for a sequence_batching model (config left as written)")
        return Completion()
    try:
        io = _describe(header, Path(version_dir), log, need_tensors=not complete)
    except PyTorchBackendError as error:
        if not complete:
            raise error.for_model(header.name) from None
        # Only max_batch_size was in question; the load reports what is wrong with the model.
        log.warn(
            f"auto-complete: the model could not be described, config left as written: {error}"
        )
        return Completion()
    if io is None:
        return Completion()
    try:
        return _Completer(header, config, io, strict=not complete).run(log)
    except PyTorchBackendError as error:
        raise error.for_model(header.name) from None


def _describe(
    header: ModelConfig, version_dir: Path, log: InstanceLog, need_tensors: bool
) -> ModelIO | None:
    params = parse_parameters(header.name, header.parameters, warn=lambda _: None)
    libraries = tuple(str(version_dir / lib) for lib in params.custom_op_libraries)
    load_custom_op_libraries(header.name, libraries)
    resolved = resolve_model(header, version_dir, params)
    context = DescribeContext(header, resolved.path, log, need_tensors=need_tensors)
    return REGISTRY[resolved.kind].describe(context)


def _dims_text(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]" if dims else "[ ]"


def _where(tensor: TensorIO, name: str) -> str:
    """`` (what the tensor is in the model)`` unless that is just the name."""
    return f" ({tensor.where})" if tensor.where and tensor.where != name else ""


def _compatible(written: Sequence[int], model: Sequence[int]) -> bool:
    return len(written) == len(model) and all(
        w == m or w == -1 or m == -1 for w, m in zip(written, model)
    )


class _Completer:
    """One completion: the config as written, the model's description, the decisions taken."""

    def __init__(
        self, header: ModelConfig, config: Mapping[str, Any], io: ModelIO, strict: bool
    ) -> None:
        self.header = header
        self.config = config
        self.io = io
        self.strict = strict  # check written values against the model (off: the load does)
        # Written output dims that contradict the model are the load's to judge, unless refused.
        params = parse_parameters(header.name, header.parameters, warn=lambda _: None)
        self.refuse_output_dims = params.output_shape_check is OutputShapeCheck.ERROR
        self.result = Completion()
        self.missing: list[str] = []
        names = [e.get("name", "") for k in ("input", "output") for e in config.get(k) or ()]
        self.ordinal = any(_ORDINAL_RE.match(n) for n in names)

    def run(self, log: InstanceLog) -> Completion:
        batching = self._batching()
        lead = (-1,) if self.io.max_batch_size and not batching else ()
        declared_inputs = list(self.config.get("input") or ())
        declared_outputs = list(self.config.get("output") or ())
        self._tensors("input", self.io.inputs, declared_inputs, lead, add_missing=True)
        self._tensors(
            "output", self.io.outputs, declared_outputs, lead, add_missing=not declared_outputs
        )
        if self.io.unknown_inputs and not declared_inputs:
            self.missing.append(self.io.unknown_inputs)
        if self.missing:
            raise self.header.error(
                f"cannot complete the configuration from {self.io.source}: it does not store "
                "these dtypes or shapes; write in config.pbtxt "
                + "; ".join(self.missing)
                + " (or write the model with pytorch_backend.package, which stores them in a "
                "sidecar next to it)"
            )
        if batching and not any(k in self.config for k in _SCHEDULERS):
            self.result.dynamic_batching = True
            self.result.lines.append("auto-complete: dynamic_batching { } (the model batches)")
        for line in self.result.lines:
            log.info(line)
        for note in self.io.notes:
            log.info(f"auto-complete: {note}")
        return self.result

    def _batching(self) -> bool:
        """Whether the completed config batches; sets max_batch_size when it was left out."""
        written, model = self.header.max_batch_size, self.io.max_batch_size
        if model is None:
            return written > 0
        if written > 0:
            if self.strict and model == 0:
                raise self.header.error(
                    f"max_batch_size: the configuration says {written}, but the model does not "
                    f"batch ({self.io.batch_note}); set max_batch_size: 0"
                )
            if self.strict and written > model:
                raise self.header.error(
                    f"max_batch_size: the configuration says {written}, the model accepts at "
                    f"most {model} ({self.io.batch_note})"
                )
            return True
        if model == 0 or self._written_full_rank():
            return False
        self.result.max_batch_size = model
        self.result.lines.append(f"auto-complete: max_batch_size = {model} ({self.io.batch_note})")
        return True

    def _written_full_rank(self) -> bool:
        """``max_batch_size: 0`` with dims that include the batch: the user chose no batching."""
        for key, tensors in (("input", self.io.inputs), ("output", self.io.outputs)):
            for entry in self.config.get(key) or ():
                tensor = self._match(entry, tensors)
                dims = entry.get("dims") or ()
                if tensor and tensor.dims is not None and len(dims) == len(tensor.dims) + 1:
                    return True
        return False

    @staticmethod
    def _match(entry: Mapping[str, Any], tensors: Sequence[TensorIO]) -> TensorIO | None:
        return next((t for t in tensors if entry.get("name") in t.names), None)

    def _tensors(
        self,
        kind: str,
        tensors: Sequence[TensorIO],
        declared: list[Mapping[str, Any]],
        lead: tuple[int, ...],
        add_missing: bool,
    ) -> None:
        entries = self.result.inputs if kind == "input" else self.result.outputs
        for tensor in tensors:
            if lead and tensor.dims is not None:
                tensor = dataclasses.replace(tensor, dims=lead + tensor.dims)
            entry = next((e for e in declared if e.get("name") in tensor.names), None)
            if entry is None:
                if add_missing:
                    self._add(kind, tensor, entries)
            else:
                self._fill(kind, tensor, entry, entries)

    def _add(self, kind: str, tensor: TensorIO, entries: list[dict[str, Any]]) -> None:
        name = tensor.ordinal if self.ordinal and tensor.ordinal else tensor.name
        if tensor.dtype is None or tensor.dims is None:
            self.missing.append(f"{kind} '{name}'{_where(tensor, name)}: data_type and dims")
            return
        entries.append(
            {"name": name, "data_type": f"TYPE_{tensor.dtype}", "dims": list(tensor.dims)}
        )
        where = _where(tensor, name)
        reshape = ""
        if tensor.reshape is not None:
            self.result.reshapes[name] = list(tensor.reshape)
            reshape = f" reshape: {{ shape: {_dims_text(tensor.reshape)} }}"
        self.result.lines.append(
            f"auto-complete: {kind} '{name}'{where}: data_type TYPE_{tensor.dtype}, dims "
            f"{_dims_text(tensor.dims)}{reshape} (from {self.io.source})"
        )

    def _fill(
        self,
        kind: str,
        tensor: TensorIO,
        entry: Mapping[str, Any],
        entries: list[dict[str, Any]],
    ) -> None:
        name = entry["name"]
        written_type = entry.get("data_type", "") if _type_set(entry) else None
        written_dims = [int(d) for d in entry.get("dims") or ()] if _dims_set(entry) else None
        model_type = f"TYPE_{tensor.dtype}" if tensor.dtype else None
        if self.strict and written_type and model_type and written_type != model_type:
            raise self.header.error(
                f"{kind} '{name}' data_type: the configuration says {written_type}, the model "
                f"provides {model_type}{_where(tensor, name)}"
            )
        if (
            self.strict
            and (kind == "input" or self.refuse_output_dims)
            and written_dims is not None
            and not entry.get("reshape")
            and tensor.dims is not None
            and not _compatible(written_dims, tensor.dims)
        ):
            raise self.header.error(
                f"{kind} '{name}' dims: the configuration says {_dims_text(written_dims)}, the "
                f"model provides {_dims_text(tensor.dims)}{_where(tensor, name)}"
            )
        if written_type and written_dims is not None:
            return
        data_type = written_type or model_type
        dims = written_dims if written_dims is not None else tensor.dims
        if data_type is None or dims is None:
            what = " and ".join(
                w for w, v in (("data_type", written_type), ("dims", written_dims)) if v is None
            )
            self.missing.append(f"{kind} '{name}'{_where(tensor, name)}: {what}")
            return
        entries.append({"name": name, "data_type": data_type, "dims": list(dims)})
        if written_type is None:
            self.result.lines.append(
                f"auto-complete: {kind} '{name}' data_type = {data_type} (from {self.io.source})"
            )
        if written_dims is None:
            if tensor.reshape is not None:
                self.result.reshapes[name] = list(tensor.reshape)
            self.result.lines.append(
                f"auto-complete: {kind} '{name}' dims = {_dims_text(dims)} (from {self.io.source})"
            )
