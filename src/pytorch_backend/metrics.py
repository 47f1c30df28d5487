"""Torch-aware Prometheus metrics: what the backend did inside each execution.

:data:`METRICS` defines every metric (name, kind, help text, labels); :class:`MetricsHook` records
them after each execute from :class:`~pytorch_backend.hooks.ExecuteStats` and the executor's
:class:`~pytorch_backend.executors.base.ExecutorCounters`, into a :class:`Registry`. Nothing here
knows Triton: the adapter (model.py) supplies a registry built on ``pb_utils.MetricFamily``, so
the series appear on Triton's metrics port beside its own; tests use a fake one.

Every series carries the labels ``model``, ``version`` and ``model_instance``. A metric call of the
Python backend is a message to the server process, so the hook makes only the calls whose value
changed (a counter is not incremented by 0) and reads CUDA memory at most once a second.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Protocol

import torch

from .executors.base import ExecutorCounters
from .hooks import ExecuteStats, Hook


class MetricKind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


#: The labels of every series (not ``instance``: Prometheus sets that to the scraped target and
#: would rename ours to ``exported_instance``).
LABELS = ("model", "version", "model_instance")
#: The ``kind`` label of failed requests (``PyTorchBackendError.kind``).
ERROR_KINDS = ("bad_input", "model_error", "cancelled", "unavailable")
#: Seconds; from 100 µs (a tiny CPU forward) to 10 s (a big GPU batch).
TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
_MEMORY_INTERVAL_NS = 1_000_000_000  # CUDA memory gauges are refreshed at most once a second


@dataclass(frozen=True)
class MetricSpec:
    """One metric family."""

    name: str
    kind: MetricKind
    help: str  # the Prometheus HELP text, and the README's meaning
    labels: tuple[str, ...] = ()  # beyond LABELS
    exists: str = "every model"  # where the series exist (README)


ANSWERED = MetricSpec(
    "pytorch_backend_requests_answered_total",
    MetricKind.COUNTER,
    "Requests answered with outputs",
)
FAILED = MetricSpec(
    "pytorch_backend_requests_failed_total",
    MetricKind.COUNTER,
    "Requests answered with an error, by kind: bad_input (INVALID_ARG), model_error (the "
    "forward raised or returned something wrong), cancelled, unavailable (sticky CUDA error)",
    ("kind",),
)
FORWARDS = MetricSpec(
    "pytorch_backend_forwards_total",
    MetricKind.COUNTER,
    "Forward runs, re-runs of a bisected failing batch included",
)
ROWS = MetricSpec(
    "pytorch_backend_execution_rows",
    MetricKind.HISTOGRAM,
    "Batch rows that reached a forward per execution (the batch size the model really saw)",
    exists="batching models",
)
PADDED = MetricSpec(
    "pytorch_backend_padded_rows_total",
    MetricKind.COUNTER,
    "Rows added to reach an AOT-Inductor package's minimum batch (computed, then dropped)",
    exists="batching models",
)
PREPARE = MetricSpec(
    "pytorch_backend_prepare_seconds",
    MetricKind.HISTOGRAM,
    "Time per execution to validate the requests and gather the batch",
)
FORWARD = MetricSpec(
    "pytorch_backend_forward_seconds",
    MetricKind.HISTOGRAM,
    "Time per execution in the forward (stream synchronisation included); executions that "
    "ran no forward are not observed",
)
RESPOND = MetricSpec(
    "pytorch_backend_respond_seconds",
    MetricKind.HISTOGRAM,
    "Time per execution to check and split the outputs and build the responses",
)
LOAD = MetricSpec(
    "pytorch_backend_load_seconds",
    MetricKind.GAUGE,
    "Time the instance took to load (config, settings, artifact, warm-up, weight sharing)",
)
WARMUP = MetricSpec(
    "pytorch_backend_warmup_seconds",
    MetricKind.GAUGE,
    "Time the load-time warm-up took",
    exists="kinds that warm up at load",
)
RECOMPILATIONS = MetricSpec(
    "pytorch_backend_recompilations_total",
    MetricKind.COUNTER,
    "Graphs compiled while serving, after load (0 for kinds that never compile)",
)
SEQUENCES = MetricSpec(
    "pytorch_backend_live_sequences",
    MetricKind.GAUGE,
    "Sequences whose state the instance holds",
    exists="models with sequence state",
)
CUDA_ALLOCATED = MetricSpec(
    "pytorch_backend_cuda_memory_allocated_bytes",
    MetricKind.GAUGE,
    "CUDA memory held by tensors of this instance's process (torch.cuda.memory_allocated)",
    ("device",),
    "GPU instances",
)
CUDA_RESERVED = MetricSpec(
    "pytorch_backend_cuda_memory_reserved_bytes",
    MetricKind.GAUGE,
    "CUDA memory held by the process's caching allocator (torch.cuda.memory_reserved)",
    ("device",),
    "GPU instances",
)
STICKY = MetricSpec(
    "pytorch_backend_cuda_sticky_error",
    MetricKind.GAUGE,
    "1 once a sticky CUDA error (illegal address, device-side assert...) made the instance "
    "unusable; it then answers UNAVAILABLE until restarted",
    exists="GPU instances",
)

METRICS: tuple[MetricSpec, ...] = (ANSWERED, FAILED, FORWARDS, ROWS, PADDED, PREPARE, FORWARD,
                                   RESPOND, LOAD, WARMUP, RECOMPILATIONS, SEQUENCES,
                                   CUDA_ALLOCATED, CUDA_RESERVED, STICKY)  # fmt: skip


class Counter(Protocol):
    def increment(self, value: float) -> None: ...


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class Histogram(Protocol):
    def observe(self, value: float) -> None: ...


class Registry(Protocol):
    """Creates one series of a family (``pb_utils.MetricFamily(...).Metric(labels=...)``)."""

    #: Whether the server supports histograms (else each becomes ``_sum``/``_count`` counters).
    histograms: bool

    def counter(self, spec: MetricSpec, labels: Mapping[str, str]) -> Counter: ...
    def gauge(self, spec: MetricSpec, labels: Mapping[str, str]) -> Gauge: ...
    def histogram(
        self, spec: MetricSpec, labels: Mapping[str, str], buckets: Sequence[float]
    ) -> Histogram: ...


class _SumCount:
    """A histogram on a server without histograms: ``<name>_sum`` and ``<name>_count`` counters."""

    def __init__(self, registry: Registry, spec: MetricSpec, labels: Mapping[str, str]) -> None:
        def part(suffix: str, what: str) -> Counter:
            return registry.counter(
                MetricSpec(spec.name + suffix, MetricKind.COUNTER, f"{spec.help} ({what})"), labels
            )

        self._sum, self._count = part("_sum", "sum"), part("_count", "count")

    def observe(self, value: float) -> None:
        self._sum.increment(value)
        self._count.increment(1)


def row_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to ``max_batch_size``, and ``max_batch_size`` itself."""
    buckets, size = [], 1
    while size < max_batch_size:
        buckets.append(float(size))
        size *= 2
    return (*buckets, float(max(max_batch_size, 1)))


def markdown_table() -> str:
    """The README's metric table, generated from :data:`METRICS`."""
    lines = ["| metric | kind | meaning | extra labels | exists for |", "| --- | --- | --- | --- |"
             " --- |"]  # fmt: skip
    for spec in METRICS:
        extra = ", ".join(f"`{label}`" for label in spec.labels)
        cells = (f"`{spec.name}`", spec.kind.value, spec.help, extra, spec.exists)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class MetricsHook(Hook):
    """Records :data:`METRICS` for one instance; built by the composition root."""

    def __init__(
        self,
        registry: Registry,
        labels: Mapping[str, str],
        *,
        max_batch_size: int,
        counters: ExecutorCounters,
        cuda_devices: Sequence[torch.device] = (),
    ) -> None:
        self.registry, self.labels, self.counters = registry, dict(labels), counters
        self._answered = registry.counter(ANSWERED, labels)
        self._failed = {k: registry.counter(FAILED, {**labels, "kind": k}) for k in ERROR_KINDS}
        self._forwards = registry.counter(FORWARDS, labels)
        batching = max_batch_size > 0
        self._rows = self._histogram(ROWS, row_buckets(max_batch_size)) if batching else None
        self._padded = registry.counter(PADDED, labels) if batching else None
        self._prepare = self._histogram(PREPARE, TIME_BUCKETS)
        self._forward = self._histogram(FORWARD, TIME_BUCKETS)
        self._respond = self._histogram(RESPOND, TIME_BUCKETS)
        self._recompilations = registry.counter(RECOMPILATIONS, labels)
        self._seen_padded = counters.padded_rows
        self._seen_recompilations = counters.recompilations
        self._pending_split_ns: int | None = None
        self._sequences: tuple[Gauge, Callable[[], int]] | None = None
        self._sticky: tuple[Gauge, Callable[[], bool]] | None = None
        self._memory = tuple(
            (
                device,
                registry.gauge(CUDA_ALLOCATED, {**labels, "device": str(device.index)}),
                registry.gauge(CUDA_RESERVED, {**labels, "device": str(device.index)}),
            )
            for device in cuda_devices
        )
        self._memory_read_ns = 0
        self._read_memory(force=True)

    def _histogram(self, spec: MetricSpec, buckets: Sequence[float]) -> Histogram:
        if self.registry.histograms:
            return self.registry.histogram(spec, self.labels, buckets)
        return _SumCount(self.registry, spec, self.labels)

    # -- seams: what other parts of the backend report ------------------------------------------

    def loaded(self, load_seconds: float) -> None:
        """The instance is loaded: set the load (and warm-up) time gauges."""
        self.registry.gauge(LOAD, self.labels).set(load_seconds)
        if self.counters.warmup_seconds is not None:
            self.registry.gauge(WARMUP, self.labels).set(self.counters.warmup_seconds)

    def responded(self, nanoseconds: int) -> None:
        """The adapter built the responses of the last execute in ``nanoseconds``."""
        split = self._pending_split_ns
        self._pending_split_ns = None
        self._respond.observe(((split or 0) + nanoseconds) / 1e9)

    def watch_sequences(self, live: Callable[[], int]) -> None:
        """Report ``live()`` (sequences held) as a gauge after every execute."""
        self._sequences = (self.registry.gauge(SEQUENCES, self.labels), live)
        self._sequences[0].set(live())

    def watch_sticky_error(self, failed: Callable[[], bool]) -> None:
        """Report ``failed()`` (a sticky CUDA error happened) as a 0/1 gauge."""
        self._sticky = (self.registry.gauge(STICKY, self.labels), failed)
        self._sticky[0].set(1.0 if failed() else 0.0)

    # -- the hook -----------------------------------------------------------------------------

    def after_execute(self, stats: ExecuteStats) -> None:
        if self._pending_split_ns is not None:  # the adapter did not report the last respond
            self.responded(0)
        answered = stats.requests - stats.failed
        if answered:
            self._answered.increment(answered)
        for kind, count in stats.failures.items():
            self._failed.get(kind, self._failed["model_error"]).increment(count)
        if stats.forwards:
            self._forwards.increment(stats.forwards)
            self._forward.observe(stats.forward_ns / 1e9)
            if self._rows is not None and stats.rows:
                self._rows.observe(stats.rows)
        self._prepare.observe(stats.prepare_ns / 1e9)
        self._pending_split_ns = stats.split_ns
        self._report_counters()
        if self._sequences is not None:
            self._sequences[0].set(self._sequences[1]())
        if self._sticky is not None and self._sticky[1]():
            self._sticky[0].set(1.0)
        self._read_memory()

    def _report_counters(self) -> None:
        padded = self.counters.padded_rows - self._seen_padded
        if padded and self._padded is not None:
            self._padded.increment(padded)
        self._seen_padded += padded
        recompiled = self.counters.recompilations - self._seen_recompilations
        if recompiled:
            self._recompilations.increment(recompiled)
        self._seen_recompilations += recompiled

    def _read_memory(self, force: bool = False) -> None:
        if not self._memory:
            return
        now = perf_counter_ns()
        if not force and now - self._memory_read_ns < _MEMORY_INTERVAL_NS:
            return
        self._memory_read_ns = now
        for device, allocated, reserved in self._memory:
            allocated.set(float(torch.cuda.memory_allocated(device)))
            reserved.set(float(torch.cuda.memory_reserved(device)))

    def close(self) -> None:
        """Drop every series, so that the registry can drop their families after (as the Python
        backend requires); the hook records nothing afterwards."""
        vars(self).clear()
