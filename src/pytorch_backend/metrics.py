"""Torch-aware Prometheus metrics: what the backend did inside each execution.

:data:`METRICS` defines every metric (name, kind, help text, labels); :class:`MetricsHook` records
them after each execute from :class:`~pytorch_backend.hooks.ExecuteStats` and the executor's
:class:`~pytorch_backend.executors.base.ExecutorCounters`, into a :class:`Registry`. Nothing here
knows Triton: the adapter (model.py) supplies a registry built on ``pb_utils.MetricFamily``, so
the series appear on Triton's metrics port beside its own; tests use a fake one.

Every series carries the labels ``model``, ``version``, ``model_instance`` and ``pid`` (the stub
process). tritonserver shares one series between every stub that creates the same family and
labels, and frees it when the first of them lets go (server #8663, core #471); a reloaded
instance has the same names as the finalizing one it replaces, so ``pid`` keeps their series
apart (else the old stub's teardown frees the new one's series, and its next flush corrupts the
server's heap).

Cost: each call on a Python-backend metric is a round trip to the server process (about 50 µs).
So the hook only adds to plain Python numbers, and what changed reaches the server at most once
every :data:`FLUSH_SECONDS`, between executes only (:meth:`MetricsHook.executing` and an idle
flusher). Histograms are classic Prometheus histograms written as counters (``<name>_bucket``
with ``le``, ``_sum``, ``_count``): the server's native HISTOGRAM costs one call per observation.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from .errors import error_kinds
from .executors.base import ExecutorCounters
from .hooks import ExecuteStats, Hook
from .metric_series import Gauge, Histogram, MetricKind, MetricSpec, Registry, Sum
from .step_times import STEPS, StepTimes

#: The labels of every series (not ``instance``: Prometheus sets that to the scraped target and
#: would rename ours to ``exported_instance``). ``pid`` keeps a reloaded instance's series apart
#: from those of the process it replaces (see the module's docstring).
LABELS = ("model", "version", "model_instance", "pid")
#: The ``kind`` label of failed requests (``PyTorchBackendError.kind``).
ERROR_KINDS = error_kinds()
#: Seconds, from 100 µs (a tiny CPU forward) to 5 s (a big batch). Few buckets on purpose: each
#: is a series, created by a message to the server at load.
TIME_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
#: How often buffered values reach the server (scrapes are usually 15 s or more apart).
FLUSH_SECONDS = 1.0


def series_labels(model: str, version: str, instance: str) -> dict[str, str]:
    """:data:`LABELS` for an instance served by this process."""
    return {"model": model, "version": version, "model_instance": instance,
            "pid": str(os.getpid())}  # fmt: skip


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
    exists="models that warm up at load (`WARMUP`, on by default)",
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
STEP_SECONDS = MetricSpec(
    "pytorch_backend_execute_step_seconds_total",
    MetricKind.COUNTER,
    "Time spent per step of the executions: read (Triton tensors to torch), cancel_check, "
    "prepare (validate, gather), forward, split (check and split the outputs), respond (build "
    "the responses), metrics (this backend's metrics work at the end of an execution)",
    ("step",),
)
STICKY = MetricSpec(
    "pytorch_backend_cuda_sticky_error",
    MetricKind.GAUGE,
    "1 once a sticky CUDA error (illegal address, device-side assert...) made the instance "
    "unusable; it then answers UNAVAILABLE until restarted",
    exists="GPU instances",
)

METRICS: tuple[MetricSpec, ...] = (ANSWERED, FAILED, FORWARDS, ROWS, PADDED, PREPARE, FORWARD,
                                   RESPOND, STEP_SECONDS, LOAD, WARMUP, RECOMPILATIONS, SEQUENCES,
                                   CUDA_ALLOCATED, CUDA_RESERVED, STICKY)  # fmt: skip


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
    """Records :data:`METRICS` for one instance; built by the composition root.

    The adapter runs each execute inside :meth:`executing`, which flushes at its end once
    :data:`FLUSH_SECONDS` have passed since the last flush, and calls :meth:`start` for the idle
    flusher (what an execute left buffered reaches the server within about
    :data:`FLUSH_SECONDS` even if no execute follows). Registry calls are never made while an
    execute runs. :meth:`flush` pushes what is buffered at once; :meth:`close` stops and flushes.
    """

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
        self._lock = threading.Lock()
        self._answered = Sum(registry.counter(ANSWERED, labels))
        self._failed = {
            kind: Sum(registry.counter(FAILED, {**labels, "kind": kind})) for kind in ERROR_KINDS
        }
        self._forwards = Sum(registry.counter(FORWARDS, labels))
        batching = max_batch_size > 0
        rows = Histogram(registry, ROWS, labels, row_buckets(max_batch_size)) if batching else None
        self._rows = rows
        self._padded = Sum(registry.counter(PADDED, labels)) if batching else None
        self._prepare = Histogram(registry, PREPARE, labels, TIME_BUCKETS)
        self._forward = Histogram(registry, FORWARD, labels, TIME_BUCKETS)
        self._respond = Histogram(registry, RESPOND, labels, TIME_BUCKETS)
        self._recompilations = Sum(registry.counter(RECOMPILATIONS, labels))
        #: Nanoseconds per execute step, added to by the adapter and the stages too.
        self.steps = StepTimes()
        self._step_sums = {
            step: Sum(registry.counter(STEP_SECONDS, {**labels, "step": step})) for step in STEPS
        }
        self._seen_padded = counters.padded_rows
        self._seen_recompilations = counters.recompilations
        self._pending_split_ns: int | None = None
        self._gauges: list[tuple[Gauge, Callable[[], float]]] = [
            (registry.gauge(spec, {**labels, "device": str(device.index)}), read)
            for device in cuda_devices
            for spec, read in (
                (CUDA_ALLOCATED, lambda d=device: torch.cuda.memory_allocated(d)),
                (CUDA_RESERVED, lambda d=device: torch.cuda.memory_reserved(d)),
            )
        ]
        self._sums = [self._answered, *self._failed.values(), self._forwards, self._recompilations]
        self._sums += [self._padded] if self._padded is not None else []
        self._sums += self._step_sums.values()
        self._histograms = [h for h in (rows, self._prepare, self._forward, self._respond) if h]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serving = threading.Lock()  # held by an execute, and by the idle flusher
        self._interval = FLUSH_SECONDS
        self._flushed_at = time.monotonic()

    # -- seams: what other parts of the backend report ------------------------------------------

    def loaded(self, load_seconds: float) -> None:
        """The instance is loaded: set the load (and warm-up) time gauges."""
        self.registry.gauge(LOAD, self.labels).set(load_seconds)
        if self.counters.warmup_seconds is not None:
            self.registry.gauge(WARMUP, self.labels).set(self.counters.warmup_seconds)

    def responded(self, nanoseconds: int) -> None:
        """The adapter built the responses of the last execute in ``nanoseconds``."""
        with self._lock:
            split, self._pending_split_ns = self._pending_split_ns, None
            self._respond.observe(((split or 0) + nanoseconds) / 1e9)
            self.steps.respond += nanoseconds

    def watch_sequences(self, live: Callable[[], int]) -> None:
        """Report ``live()`` (sequences held) as a gauge at every flush."""
        self._gauges.append((self.registry.gauge(SEQUENCES, self.labels), live))

    def watch_sticky_error(self, failed: Callable[[], bool]) -> None:
        """Report ``failed()`` (a sticky CUDA error happened) as a 0/1 gauge at every flush."""
        self._gauges.append((self.registry.gauge(STICKY, self.labels), lambda: float(failed())))

    # -- the hook -----------------------------------------------------------------------------

    def after_execute(self, stats: ExecuteStats) -> None:
        start = time.perf_counter_ns()
        if self._pending_split_ns is not None:  # the adapter did not report the last respond
            self.responded(0)
        with self._lock:
            self._answered.pending += stats.requests - stats.failed
            for kind, count in stats.failures.items():
                self._failed.get(kind, self._failed["model_error"]).pending += count
            if stats.forwards:
                self._forwards.pending += stats.forwards
                self._forward.observe(stats.forward_ns / 1e9)
                if self._rows is not None and stats.rows:
                    self._rows.observe(stats.rows)
            self._prepare.observe(stats.prepare_ns / 1e9)
            self._pending_split_ns = stats.split_ns
            steps = self.steps
            steps.prepare += stats.prepare_ns
            steps.forward += stats.forward_ns
            steps.split += stats.split_ns
            steps.metrics += time.perf_counter_ns() - start

    # -- flushing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def executing(self) -> Iterator[None]:
        """Around one execute: keeps the idle flusher out, and flushes at the end when due."""
        with self._serving:
            yield
            if time.monotonic() - self._flushed_at >= self._interval:
                start = time.perf_counter_ns()
                self.flush()
                self.steps.metrics += time.perf_counter_ns() - start

    def flush(self) -> None:
        """Send what changed since the last flush to the registry (one call per changed series)."""
        self._flushed_at = time.monotonic()
        with self._lock:
            padded = self.counters.padded_rows - self._seen_padded
            recompiled = self.counters.recompilations - self._seen_recompilations
            self._seen_padded += padded
            self._seen_recompilations += recompiled
            if self._padded is not None:
                self._padded.pending += padded
            self._recompilations.pending += recompiled
            for step, nanoseconds in self.steps.take().items():
                self._step_sums[step].pending += nanoseconds / 1e9
            for sums in self._sums:
                sums.flush()
            for histogram in self._histograms:
                histogram.flush()
        for gauge, read in self._gauges:
            gauge.set(float(read()))

    def start(self, interval: float = FLUSH_SECONDS) -> None:
        """Flush now, then start the idle flusher: a daemon thread that, between executes,
        flushes what is left once ``interval`` seconds passed since the last flush (gauges are
        refreshed too, at most every ``interval`` seconds)."""
        self._interval = interval
        self.flush()

        def loop() -> None:
            while not self._stop.wait(interval / 2):
                with self._serving:
                    due = time.monotonic() - self._flushed_at >= interval
                    if due and not self._stop.is_set():
                        self.flush()

        self._thread = threading.Thread(target=loop, name="pytorch_backend-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop flushing, flush once more, and drop every series (so that the registry can drop
        their families after, as the Python backend requires); records nothing afterwards."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
        vars(self).clear()
