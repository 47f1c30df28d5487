"""From per-request named inputs to per-request named outputs, through one batched forward.

Each request is validated on its own (a bad one gets its own error); valid requests with
compatible shapes are gathered with one ``torch.cat`` per input, run once, and every output is
split back into per-request views. If the batched forward raises, or returns outputs that fail
the config's checks, the batch is bisected so only the offending request(s) get the error. An
output shape that contradicts the config's dims is decided by the instance's
:class:`~pytorch_backend.runtime.output_shapes.OutputShapes` (``OUTPUT_SHAPE_CHECK``). What
runs around a forward or after an execute comes from :mod:`pytorch_backend.hooks`. Nothing here
knows about Triton.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter_ns

import torch

from .config import ModelConfig, OutputShapeCheck, TensorSpec
from .config.dtypes import TRITON_TO_TORCH, triton_name
from .errors import ExecutionError, ModelFailure, PyTorchBackendError, RequestError
from .executors.base import Executor
from .hooks import NO_FAILURES, ExecuteStats, Hooks
from .logs import InstanceLog
from .requests import InputValue, Outcome, RequestInputs, Value
from .runtime.output_shapes import OutputShapes
from .runtime.staging import PinnedStaging
from .strings import Strings, check_string_list
from .tracebacks import short_text


@dataclass(frozen=True)
class _Valid:
    index: int
    request: RequestInputs
    batch_size: int  # 0 for non-batching models


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _failures(outcomes: Sequence[Outcome | None]) -> Mapping[str, int]:
    """Failed requests per error kind (the shared empty mapping when none failed)."""
    failures: dict[str, int] | None = None
    for outcome in outcomes:
        if isinstance(outcome, PyTorchBackendError):
            failures = failures if failures is not None else {}
            failures[outcome.kind] = failures.get(outcome.kind, 0) + 1
    return failures if failures is not None else NO_FAILURES


class InferenceEngine:
    """Serves requests for one model instance with one executor."""

    def __init__(
        self,
        config: ModelConfig,
        executor: Executor,
        hooks: Hooks | None = None,
        log: InstanceLog | None = None,
        staging: PinnedStaging | None = None,
        output_shapes: OutputShapes | None = None,
    ) -> None:
        self.config = config
        self.executor = executor
        self.hooks = hooks if hooks is not None else Hooks()
        self.log = log
        #: The instance's output-shape check (default: ``OUTPUT_SHAPE_CHECK``'s default, warn).
        self.output_shapes = output_shapes or OutputShapes(
            config, log or InstanceLog(config.name), OutputShapeCheck.WARN
        )
        self._forwards = 0
        self._prepare_ns = self._forward_ns = self._split_ns = 0  # of the current infer
        self._inputs = {spec.name: spec for spec in config.inputs}
        self._dtypes = {
            spec.name: TRITON_TO_TORCH.get(spec.dtype) for spec in (*config.inputs, *config.outputs)
        }
        self._input_names = frozenset(self._inputs)
        self._all_outputs = frozenset(spec.name for spec in config.outputs)
        # Gathered inputs are moved only where the executor's device is not the CPU.
        device = executor.input_device
        self._move_to = device if device.type != "cpu" else None
        self._staging = staging  # CPU inputs of a GPU instance go through its pinned buffers
        self._output_specs = {spec.name: spec for spec in config.outputs}
        batch_dim = (-1,) if config.batching else ()
        self._expected_shapes = {spec.name: batch_dim + spec.shape for spec in config.inputs}
        # Per-item shapes without -1, compared in one go (None: some dim is variable).
        self._fixed_dims = {
            spec.name: (None if -1 in spec.shape else spec.shape) for spec in config.inputs
        }

    # -- public -------------------------------------------------------------------------------

    def infer(self, requests: Sequence[RequestInputs | PyTorchBackendError]) -> list[Outcome]:
        """One outcome per request, in order: a dict of requested outputs, or an error."""
        start = perf_counter_ns()
        outcomes: list[Outcome | None] = [None] * len(requests)
        groups: dict[object, list[_Valid]] = {}
        rejected = rows = 0
        for index, request in enumerate(requests):
            if isinstance(request, PyTorchBackendError):
                outcomes[index] = request
                rejected += 1
                continue
            try:
                batch_size, key = self._validate(request)
            except RequestError as exc:
                outcomes[index] = exc
                rejected += 1
                continue
            # Batching models gather requests whose non-batch shapes agree; others run alone.
            group_key = key if self.config.batching else ("single", index)
            groups.setdefault(group_key, []).append(_Valid(index, request, batch_size))
            rows += batch_size
        self._forwards = self._forward_ns = self._split_ns = 0
        self._prepare_ns = perf_counter_ns() - start
        try:
            for group in groups.values():
                for valid, outcome in self._run(group):
                    outcomes[valid.index] = outcome
        finally:
            failures = _failures(outcomes)
            self.hooks.after_execute(
                ExecuteStats(
                    len(requests),
                    rejected,
                    sum(failures.values()),
                    self._forwards,
                    rows,
                    failures,
                    self._prepare_ns,
                    self._forward_ns,
                    self._split_ns,
                )
            )
        return outcomes  # type: ignore[return-value]

    # -- validation ---------------------------------------------------------------------------

    def _validate(self, request: RequestInputs) -> tuple[int, tuple]:
        """Check names, dtypes and shapes; return the batch size and a gather-compatibility key."""
        if request.inputs.keys() != self._input_names:
            self._check_names(request)
        requested = request.requested_outputs
        if requested and not requested <= self._all_outputs:
            raise RequestError(
                f"unknown requested output(s) {sorted(requested - self._all_outputs)}; the model "
                f"has {sorted(self._all_outputs)}"
            )
        batch_sizes: dict[str, int] = {}
        key: list[tuple[int, ...]] = []
        for name, spec in self._inputs.items():
            shape = self._check_value(spec, request.inputs[name])
            if self.config.batching:
                batch_sizes[name] = shape[0]
                key.append(shape[1:])
        if not self.config.batching:
            return 0, ()
        sizes = set(batch_sizes.values())
        if len(sizes) > 1:
            raise RequestError(f"inputs disagree on the batch size (dimension 0): {batch_sizes}")
        batch_size = sizes.pop()
        if batch_size > self.config.max_batch_size:
            raise RequestError(
                f"batch size {batch_size} exceeds max_batch_size {self.config.max_batch_size}"
            )
        return batch_size, tuple(key)

    def _check_names(self, request: RequestInputs) -> None:
        missing = [name for name in self._inputs if name not in request.inputs]
        if missing:
            raise RequestError(
                f"missing input(s) {missing}; the model expects {list(self._inputs)}"
            )
        unknown = [name for name in request.inputs if name not in self._inputs]
        if unknown:
            raise RequestError(
                f"unknown input(s) {unknown}; the model expects {list(self._inputs)}"
            )

    def _check_value(self, spec: TensorSpec, value: InputValue) -> tuple[int, ...]:
        if spec.is_string:
            if not isinstance(value, Strings):
                raise RequestError(
                    f"input '{spec.name}' must be TYPE_STRING (BYTES), got "
                    f"{triton_name(value.dtype)}"
                )
            shape = value.shape
        else:
            if isinstance(value, Strings):
                raise RequestError(
                    f"input '{spec.name}' must be TYPE_{spec.dtype}, got TYPE_STRING (BYTES)"
                )
            if value.dtype != self._dtypes[spec.name]:
                raise RequestError(
                    f"input '{spec.name}' has datatype {triton_name(value.dtype)}; "
                    f"the model expects TYPE_{spec.dtype}"
                )
            shape = value.shape  # a tuple
        expected = self._expected_shapes[spec.name]
        fixed = self._fixed_dims[spec.name]
        if fixed is not None:  # no -1 past the batch dim: one comparison
            if len(shape) == len(expected) and shape[len(shape) - len(fixed) :] == fixed:
                return shape
            bad = True
        else:
            bad = len(shape) != len(expected) or any(
                e not in (-1, s) for e, s in zip(expected, shape)
            )
        if bad:
            raise RequestError(
                f"input '{spec.name}' has shape {_shape_text(shape)}; the model "
                f"expects {_shape_text(expected)}"
            )
        return shape

    # -- execution ----------------------------------------------------------------------------

    def _run(self, group: list[_Valid]) -> list[tuple[_Valid, Outcome]]:
        start = perf_counter_ns()
        forward = start
        try:
            batch = {name: self._gather(name, spec, group) for name, spec in self._inputs.items()}
            self._forwards += 1
            forward = perf_counter_ns()
            with self.hooks.forward():
                outputs = self.executor.run(batch)
        except Exception as exc:  # the forward failed: find the request(s) it fails for
            self._timed(start, forward)
            if len(group) > 1:
                middle = len(group) // 2
                return self._run(group[:middle]) + self._run(group[middle:])
            return [(group[0], self._forward_error(exc))]
        split = self._timed(start, forward)
        try:
            checked = self._check_outputs(group, outputs)
            return list(zip(group, self._split(group, checked)))
        except PyTorchBackendError as exc:  # what the model returned is wrong for this group
            if len(group) == 1:
                return [(group[0], exc)]
        finally:
            self._split_ns += perf_counter_ns() - split
        # The outputs may be wrong only because of some request's data: bisect, as for a raise.
        middle = len(group) // 2
        return self._run(group[:middle]) + self._run(group[middle:])

    def _timed(self, start: int, forward: int) -> int:
        """Add the gather (start..forward) and forward (forward..now) times; return now."""
        now = perf_counter_ns()
        self._prepare_ns += forward - start
        self._forward_ns += now - forward
        return now

    def _forward_error(self, exc: Exception) -> PyTorchBackendError:
        if isinstance(exc, PyTorchBackendError):
            return exc
        # The client gets the model's own message on one line (no interpreter traceback, no
        # source paths); the full text goes to the verbose log.
        if self.log is not None:
            self.log.verbose(f"forward raised {type(exc).__name__}: {exc}")
        return ModelFailure(short_text(exc), model=self.config.name)

    def _check_outputs(self, group: list[_Valid], outputs: Mapping[str, Value]) -> dict[str, Value]:
        needed: set[str] = set()
        for valid in group:
            needed |= valid.request.requested_outputs or self._all_outputs
        total = sum(valid.batch_size for valid in group)
        return {name: self._check_output(name, outputs.get(name), total) for name in needed}

    def _gather(self, name: str, spec: TensorSpec, group: list[_Valid]) -> Value:
        values = [valid.request.inputs[name] for valid in group]
        if spec.is_string:
            return [s for value in values for s in value.values]  # type: ignore[union-attr]
        if self._staging is not None and all(v.is_cpu for v in values):  # type: ignore[union-attr]
            return self._staging.gather(name, values)  # type: ignore[arg-type]
        tensor = values[0] if len(values) == 1 else torch.cat(values)  # type: ignore[arg-type]
        if self._move_to is None and tensor.is_cpu:
            return tensor
        return tensor.to(self.executor.input_device, non_blocking=True)

    def _check_output(self, name: str, value: object, total: int) -> Value:
        spec = self._output_specs[name]
        batching = self.config.batching
        if spec.is_string:
            strings = check_string_list(name, value)
            if batching and len(strings) != total:
                raise ExecutionError(
                    f"output '{name}' has {len(strings)} strings; the batch has {total} items"
                )
            return strings
        if not isinstance(value, torch.Tensor):
            raise ExecutionError(
                f"output '{name}' must be a Tensor (or List[str] for TYPE_STRING), "
                f"got {type(value).__name__}"
            )
        if value.dim() == 0:
            raise ExecutionError(
                f"output '{name}' is a scalar (0-d tensor), which is not "
                "supported; return a tensor with at least one dimension"
            )
        if value.dtype != self._dtypes[name]:
            raise ExecutionError(
                f"configuration expects datatype TYPE_{spec.dtype} for output "
                f"'{name}', model provides {triton_name(value.dtype)}"
            )
        if batching and value.shape[0] != total:
            raise ExecutionError(
                f"output '{name}' has {value.shape[0]} rows in dimension 0; the "
                f"batch has {total} items"
            )
        self.output_shapes.check(name, value.shape)
        if value.requires_grad:
            value = value.detach()
        return value.contiguous()

    def _split(self, group: list[_Valid], outputs: dict[str, Value]) -> list[Outcome]:
        if self.config.batching and len(group) > 1:
            sizes = [valid.batch_size for valid in group]
            pieces: dict[str, list[Value]] = {}
            for name, value in outputs.items():
                if isinstance(value, torch.Tensor):
                    pieces[name] = list(value.split_with_sizes(sizes))
                else:
                    starts = [sum(sizes[:i]) for i in range(len(sizes))]
                    pieces[name] = [value[s : s + n] for s, n in zip(starts, sizes)]
        else:
            pieces = {name: [value] * len(group) for name, value in outputs.items()}
        results: list[Outcome] = []
        for position, valid in enumerate(group):
            wanted = valid.request.requested_outputs or self._all_outputs
            results.append({name: pieces[name][position] for name in wanted})
        return results
