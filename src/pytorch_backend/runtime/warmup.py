"""Warm-up before READY: the one load-time warm-up of every kind, driven by ``Capabilities``.

TorchScript's profiling executor re-optimises a graph after its first calls for each shape,
``torch.compile`` compiles per graph and AOT-Inductor's runner and torch's kernels initialise
lazily: without a warm-up the first requests after Triton marks the model READY pay for all of
it. :func:`warm_up` runs inside ``initialize`` (a load phase of ``build_instance``), so the
model is ready only once it is warm. Every run is one request of zeros through an engine of the
instance (validation, gather, the forward under the instance's hooks, output checks, split)
built without the metrics hook; the rows it pads are not counted (it serves no request).

* **Compile** (an executor that declares ``Capabilities.compilation``, a forward
  ``torch.compile`` compiles; whatever ``WARMUP`` says): batch sizes 1, 2 and
  ``max_batch_size`` (:func:`compile_batches`), with the batch dimension and every ``-1`` config
  dim marked dynamic from 2 rows up: one graph then serves every batch size >= 2 and a batch of 1
  gets its own (0/1 specialisation). The graphs compiled and the time are logged; a failure of
  torch.compile itself fails the load. The executor's recompilation watch is paused until the
  whole warm-up is over.
* **Buckets** (``WARMUP``; :func:`warmup_buckets`): the powers of two up to ``max_batch_size``,
  ``max_batch_size`` itself and the config's ``preferred_batch_size`` values; or the sizes of
  ``WARMUP_BATCH_SIZES``. A model that does not batch runs once, as configured. Each bucket runs
  ``Capabilities.warmup_runs`` times (TorchScript: 3, so that its profiling executor settles).
* **Inputs** (:func:`warmup_request`): zeros with the config's dtypes and dims; a ``-1`` dim gets
  the size the executor reports it needs (``Capabilities.warmup_shapes``: an AOT-Inductor
  package's exported minimum), else :data:`VARIABLE_DIM`; a ``TYPE_STRING`` element is
  :data:`STRING_VALUE`.

A run that fails (the model may reject all-zero data) is logged as a warning and ends its pass;
the load goes on. Triton's own ``model_warmup`` runs after this, unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import torch

from .. import torch_compat
from ..config import BackendParameters, ModelConfig
from ..config.dtypes import TRITON_TO_TORCH
from ..errors import PyTorchBackendError
from ..executors.base import Capabilities, Executor
from ..logs import InstanceLog
from ..requests import InputValue, Outcome, RequestInputs, Value
from ..strings import Strings

#: The size a ``-1`` config dim gets, when the executor does not need another one.
VARIABLE_DIM = 2
#: Every element of a ``TYPE_STRING`` input in a warm-up request.
STRING_VALUE = "0"
PARAMETER = "WARMUP_BATCH_SIZES"

Infer = Callable[[list[RequestInputs]], list[Outcome]]


def warmup_buckets(config: ModelConfig, params: BackendParameters) -> list[int | None]:
    """The batch sizes the warm-up runs, ascending (``[None]``: a model that does not batch).

    Raises a load error for a ``WARMUP_BATCH_SIZES`` size above ``max_batch_size``.
    """
    if not config.batching:
        return [None]
    limit = config.max_batch_size
    given = params.warmup_batch_sizes
    if given is not None:
        too_big = [n for n in given if n > limit]
        if too_big:
            raise config.error(
                f"parameter '{PARAMETER}' = {','.join(map(str, given))!r}: batch size "
                f"{too_big[0]} exceeds max_batch_size {limit}"
            )
        return list(given)
    sizes = {limit}
    size = 1
    while size <= limit:
        sizes.add(size)
        size *= 2
    sizes.update(n for n in config.preferred_batch_sizes if 0 < n <= limit)
    return sorted(sizes)


def compile_batches(config: ModelConfig) -> list[int | None]:
    """The batch sizes a compiled forward is compiled for (``[None]``: a model that does not
    batch, run once as configured)."""
    if not config.batching:
        return [None]
    return sorted({1, min(2, config.max_batch_size), config.max_batch_size})


def warmup_request(
    config: ModelConfig,
    batch: int | None,
    shapes: Mapping[str, tuple[int, ...]],
) -> RequestInputs:
    """One request of ``batch`` rows (None: as configured) on zeros shaped from the config.

    ``shapes``: per-item shapes the executor needs (variable dims resolved), by input name.
    """
    inputs: dict[str, InputValue] = {}
    for spec in config.inputs:
        dims = shapes.get(spec.name) or tuple(d if d >= 0 else VARIABLE_DIM for d in spec.shape)
        shape = (batch, *dims) if batch is not None else tuple(dims)
        if spec.is_string:
            count = 1
            for d in shape:
                count *= d
            inputs[spec.name] = Strings([STRING_VALUE] * count, shape)
        else:
            inputs[spec.name] = torch.zeros(shape, dtype=TRITON_TO_TORCH[spec.dtype])
    return RequestInputs(inputs)


def warm_up(
    config: ModelConfig,
    executor: Executor,
    engine: Callable[[Executor], Infer],
    buckets: Sequence[int | None],
    log: InstanceLog,
) -> float | None:
    """Compile what ``executor`` compiles, then run ``buckets`` (empty: ``WARMUP`` is false).

    ``engine`` builds the instance's engine without metrics around an executor. Returns the
    seconds the warm-up took (None: nothing ran).
    """
    capabilities = executor.capabilities
    counters = capabilities.counters
    padded = counters.padded_rows
    compilation = capabilities.compilation
    seconds: float | None = None
    if compilation is not None:
        compilation.pause()
        seconds = compile_graphs(config, executor, engine, log)
    if buckets:
        infer = engine(executor)
        ran = run_buckets(config, buckets, capabilities, infer, log.info, log.warn)
        seconds = (seconds or 0.0) + ran
    if compilation is not None:
        compilation.resume()
    counters.padded_rows = padded  # warm-up rows are no request's
    return seconds


class _Dynamic:
    """The executor while its graphs compile: inputs marked dynamic, how a run failed kept."""

    def __init__(self, config: ModelConfig, executor: Executor) -> None:
        self.executor = executor
        self.input_device = executor.input_device
        self.capabilities = executor.capabilities
        self.batching = config.batching
        offset = 1 if config.batching else 0
        self.variable = {
            spec.name: [offset + i for i, d in enumerate(spec.shape) if d < 0]
            for spec in config.inputs
        }
        self.failure: BaseException | None = None  # torch.compile itself failed
        self.raised: Exception | None = None  # the model's own code raised

    def run(self, inputs: Mapping[str, Value]) -> dict[str, Value]:
        for name, value in inputs.items():
            if not isinstance(value, torch.Tensor):
                continue
            if self.batching and value.shape[0] < 2:
                continue  # a batch of 1 is specialised: its own graph, nothing dynamic
            for dim in ([0] if self.batching else []) + self.variable.get(name, []):
                torch_compat.mark_dynamic(value, dim)
        try:
            return self.executor.run(inputs)
        except torch_compat.compile_error_types() as exc:
            self.failure = exc
            raise
        except Exception as exc:
            self.raised = exc
            raise

    def describe_bindings(self) -> list[str]:
        return self.executor.describe_bindings()


def compile_graphs(
    config: ModelConfig,
    executor: Executor,
    engine: Callable[[Executor], Infer],
    log: InstanceLog,
) -> float:
    """Run :func:`compile_batches` with dynamic dims; log the graphs compiled and the time taken,
    and return the seconds. A failure of torch.compile itself fails the load."""
    dynamic = _Dynamic(config, executor)
    infer = engine(dynamic)
    before = torch_compat.dynamo_unique_graphs()
    started = time.perf_counter()
    batches = compile_batches(config)
    for batch in batches:
        infer([warmup_request(config, batch, executor.capabilities.warmup_shapes)])
        failure, raised = dynamic.failure, dynamic.raised
        if failure is not None:
            text = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
            raise config.error(
                f"torch.compile failed at load (warm-up with a batch of {batch}): "
                f"{type(failure).__name__}: {text}"
            ) from None
        if raised is not None:
            log.warn(
                f"warm-up on zeros (batch {batch}) raised {type(raised).__name__}: {raised}; "
                "graphs not compiled now are compiled by the first requests"
            )
            break
    seconds = time.perf_counter() - started
    log.info(
        f"torch.compile warm-up over batch sizes [{_sizes(batches)}]: "
        f"{torch_compat.dynamo_unique_graphs() - before} graph(s) compiled in {seconds:.1f} s"
    )
    return seconds


def run_buckets(
    config: ModelConfig,
    buckets: Sequence[int | None],
    capabilities: Capabilities,
    infer: Infer,
    info: Callable[[str], None],
    warn: Callable[[str], None],
) -> float:
    """Run ``infer`` over ``buckets``, ``capabilities.warmup_runs`` times each; log and return
    the seconds."""
    started = time.perf_counter()
    runs = capabilities.warmup_runs
    done = 0
    for batch in buckets:
        request = warmup_request(config, batch, capabilities.warmup_shapes)
        outcome: Outcome | None = None
        for _ in range(runs):
            outcome = infer([request])[0]
            if isinstance(outcome, PyTorchBackendError):
                break
            done += 1
        if isinstance(outcome, PyTorchBackendError):
            what = "as configured" if batch is None else f"a batch of {batch}"
            warn(
                f"warm-up on zeros ({what}) failed: {outcome}; the remaining batch sizes warm "
                "up with the first requests"
            )
            break
    seconds = time.perf_counter() - started
    info(
        f"warm-up over batch sizes [{_sizes(buckets)}]: {done} run(s) ({runs} per batch size) "
        f"in {seconds:.2f} s"
    )
    return seconds


def _sizes(batches: Sequence[int | None]) -> str:
    return ", ".join("as configured" if b is None else str(b) for b in batches)
