"""Metric families and their buffered series, without Triton and without the hook's logic.

A :class:`Registry` creates one series of a family (the adapter's is built on
``pb_utils.MetricFamily``); :class:`Sum` and :class:`Histogram` add to plain
Python numbers and reach their series only when flushed, since every call on a Python-backend
metric is a round trip to the server.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class MetricKind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family."""

    name: str
    kind: MetricKind
    help: str  # the Prometheus HELP text, and the README's meaning
    labels: tuple[str, ...] = ()  # beyond LABELS
    exists: str = "every model"  # where the series exist (README)


class Counter(Protocol):
    def increment(self, value: float) -> None: ...


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class Registry(Protocol):
    """Creates one series of a family (``pb_utils.MetricFamily(...).Metric(labels=...)``)."""

    def counter(self, spec: MetricSpec, labels: Mapping[str, str]) -> Counter: ...
    def gauge(self, spec: MetricSpec, labels: Mapping[str, str]) -> Gauge: ...


class Sum:
    """A counter's increments since the last flush."""

    __slots__ = ("pending", "series")

    def __init__(self, series: Counter) -> None:
        self.series, self.pending = series, 0.0

    def flush(self) -> None:
        pending, self.pending = self.pending, 0.0
        if pending:
            self.series.increment(pending)


class Histogram:
    """A classic histogram as counters: cumulative ``_bucket{le}``, ``_sum`` and ``_count``."""

    __slots__ = ("bounds", "counts", "parts", "total")

    def __init__(self, registry: Registry, spec: MetricSpec, labels: Mapping[str, str],
                 bounds: Sequence[float]) -> None:  # fmt: skip
        def counter(suffix: str, what: str, **extra: str) -> Sum:
            part = MetricSpec(spec.name + suffix, MetricKind.COUNTER, f"{spec.help} ({what})")
            return Sum(registry.counter(part, {**labels, **extra}))

        self.bounds = tuple(bounds)
        les = [*(f"{b:g}" for b in self.bounds), "+Inf"]
        self.parts = [counter("_bucket", "cumulative count per bucket", le=le) for le in les]
        self.parts += [counter("_sum", "sum"), counter("_count", "count")]
        self.counts = [0] * len(les)  # per bucket, not cumulative, since the last flush
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        counts, self.counts = self.counts, [0] * len(self.counts)
        total, self.total = self.total, 0.0
        running = 0
        for count, part in zip(counts, self.parts):
            running += count
            part.pending += running
        self.parts[-2].pending += total
        self.parts[-1].pending += running
        for part in self.parts:
            part.flush()
