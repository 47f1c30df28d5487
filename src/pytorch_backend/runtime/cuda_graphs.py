"""``CUDA_GRAPHS``: one captured CUDA graph per batch bucket, replayed with padding.

A CUDA graph replays a recorded sequence of kernels with one launch, which removes the CPU cost
of launching them one by one (what bounds a small model's latency on a GPU). A graph is recorded
for fixed shapes and fixed memory, so :class:`GraphExecutor` keeps one graph per warm-up batch
bucket, each with static input buffers of the bucket's batch size:

* **Capture** happens during the load-time warm-up (:mod:`.warmup`), which runs every bucket
  through the engine (under the instance's stream and grad policy). The first run of a bucket
  size copies its inputs into new static buffers, runs the model :data:`EAGER_RUNS` times on a
  side stream (lazy initialisation, TorchScript's profiling executor), then records the graph.
  Graphs are recorded into one memory pool shared by all buckets.
* **Replay**: a batch of ``n`` rows uses the graph of the smallest captured bucket >= ``n``: its
  rows are copied into the static buffers, the rest of each buffer repeats the last row (real
  data, so padding cannot produce NaNs the model would not see otherwise), the graph is
  replayed and the first ``n`` rows of each static output are returned, cloned (the next replay
  overwrites them). Padded rows are counted in ``padded_rows``
  (:mod:`pytorch_backend.executors.padding`). A bucket below the executor's minimum batch
  (``Capabilities.batch_range``) is captured at that minimum, so the executor never pads inside
  a graph, where a replay could not count it.
* **Fallback** to the executor's own ``run`` (the reason logged once per kind of reason): a
  batch larger than every bucket, an input whose non-batch dims, dtype or device differ from
  the captured ones (variable dims), and every batch once a capture failed (a model that
  synchronises with the host or allocates on the CPU cannot be captured) or when the model has
  string inputs or non-tensor outputs.

The CUDA calls sit behind :class:`GraphBackend`, so the control flow above runs on a CPU host in
the unit tests with a fake backend; only :class:`CudaGraphBackend` needs a GPU.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..executors.padding import BatchPadding, pad_into, padded
from ..requests import Value

#: Eager runs on a side stream before a bucket's capture.
EAGER_RUNS = 3
PARAMETER = "CUDA_GRAPHS"

Run = Callable[[Mapping[str, Value]], dict[str, Value]]


class Graph(Protocol):
    def replay(self) -> None: ...


class GraphBackend(Protocol):
    """Records ``run`` on static inputs; returns the graph and the static outputs it fills."""

    def capture(
        self, run: Run, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[Graph, dict[str, Value]]: ...


class CudaGraphBackend:
    """``torch.cuda.CUDAGraph`` capture on ``device``, all graphs in one memory pool."""

    def __init__(self, device: torch.device, eager_runs: int = EAGER_RUNS) -> None:
        self.device = device
        self.eager_runs = eager_runs
        self._pool: Any = None

    def capture(
        self, run: Run, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[Graph, dict[str, Value]]:
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(self.eager_runs):
                run(inputs)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (the stub's) do not invalidate the capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            outputs = run(inputs)
        if self._pool is None:
            self._pool = graph.pool()
        return graph, outputs


@dataclass
class Captured:
    """One bucket's graph with its static buffers."""

    graph: Graph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


def pick_bucket(buckets: Sequence[int], n: int) -> int | None:
    """The smallest of the ascending ``buckets`` that holds ``n`` rows (None: none does)."""
    at = bisect.bisect_left(buckets, n)
    return buckets[at] if at < len(buckets) else None


class GraphExecutor:
    """Wraps an executor (same interface): replays a bucket's CUDA graph where one fits."""

    def __init__(
        self,
        inner: Any,
        buckets: Sequence[int | None],
        backend: GraphBackend,
        warn: Callable[[str], None],
        unsupported: str | None = None,
    ) -> None:
        self.inner = inner
        self.batching = None not in buckets
        # A bucket below the executor's minimum batch is captured at the minimum: its graph
        # then holds no padding of its own (which a replay could not count).
        self.padding = BatchPadding(inner.capabilities)
        sizes = {max(b, self.padding.minimum) for b in buckets if b is not None}
        self.buckets: list[int | None] = sorted(sizes) or [None]
        self.backend = backend
        self.warn = warn
        self.capturing = True  # the warm-up captures; :meth:`seal` ends it
        self.disabled: str | None = unsupported  # why no graph runs (None: graphs may run)
        self.graphs: dict[int | None, Captured] = {}
        self._said: set[str] = set()

    @property
    def input_device(self) -> torch.device:
        return self.inner.input_device

    @property
    def capabilities(self) -> Any:
        return self.inner.capabilities

    def describe_bindings(self) -> list[str]:
        return self.inner.describe_bindings()

    def seal(self) -> str:
        """End capturing (after the warm-up); the decision as the load logs it."""
        self.capturing = False
        if self.disabled is not None:
            self._graphs_off(self.disabled)
            return f"true, no effect: {self.disabled}"
        sizes = ", ".join("as configured" if b is None else str(b) for b in self.graphs)
        if not self.graphs:
            return "true, no effect: no batch size was captured (the warm-up did not reach one)"
        return f"true (graphs for batch sizes [{sizes}])"

    def run(self, inputs: Mapping[str, Value]) -> dict[str, Value]:
        if self.capturing and self.disabled is None:
            strings = [k for k, v in inputs.items() if not isinstance(v, torch.Tensor)]
            if strings:
                self._graphs_off(
                    f"input '{strings[0]}' is not a tensor (strings cannot be captured)"
                )
        if self.disabled is not None:
            return self.inner.run(inputs)
        n = self._rows(inputs)
        bucket = self._capture_bucket(n) if self.capturing else self._bucket_for(n)
        if bucket is _NONE:
            return self.inner.run(inputs)
        captured = self.graphs.get(bucket)
        if captured is None:
            if not self.capturing:
                return self.inner.run(inputs)
            captured = self._capture(bucket, inputs)
            if captured is None:
                return self.inner.run(inputs)
        return self._replay(captured, inputs, n)

    def _rows(self, inputs: Mapping[str, Value]) -> int | None:
        if not self.batching:
            return None
        for value in inputs.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return value.shape[0]
        return None

    def _capture_bucket(self, n: int | None) -> int | None | object:
        """While capturing: the bucket for ``n`` rows, captured or not (else :data:`_NONE`)."""
        if not self.batching:
            return None
        bucket = pick_bucket(self.buckets, n) if n is not None else None  # type: ignore[arg-type]
        return _NONE if bucket is None else bucket

    def _bucket_for(self, n: int | None) -> int | None | object:
        """The captured bucket for ``n`` rows, else :data:`_NONE` (reason said once)."""
        if not self.batching:
            return None
        if n is None:
            return _NONE
        captured = [b for b in self.buckets if b in self.graphs]
        bucket = pick_bucket(captured, n)  # type: ignore[arg-type]
        if bucket is None:
            largest = captured[-1] if captured else 0
            self._once(
                "too-large",
                f"a batch of {n} exceeds the largest captured batch size {largest}: it runs "
                "the normal forward",
            )
            return _NONE
        return bucket

    def _capture(self, bucket: int | None, inputs: Mapping[str, Value]) -> Captured | None:
        static = {  # the bucket's rows: the batch's, padded (a warm-up batch below the minimum)
            k: v.clone() if bucket is None else padded(v, bucket)  # type: ignore[union-attr,arg-type]
            for k, v in inputs.items()
        }
        try:
            graph, outputs = self.backend.capture(self.inner.run, static)
        except Exception as error:  # noqa: BLE001 - any capture failure means: no graphs
            self._graphs_off(
                f"capturing batch size {bucket} failed ({type(error).__name__}: {error})"
            )
            return None
        bad = [k for k, v in outputs.items() if not isinstance(v, torch.Tensor)]
        if not bad and bucket is not None:
            bad = [k for k, v in outputs.items() if v.dim() == 0 or v.shape[0] != bucket]  # type: ignore[union-attr]
        if bad:
            self._graphs_off(
                f"output '{bad[0]}' is not a tensor with the batch's rows first, which a "
                "graph cannot slice"
            )
            return None
        captured = Captured(graph, static, outputs)  # type: ignore[arg-type]
        self.graphs[bucket] = captured
        return captured

    def _replay(
        self, captured: Captured, inputs: Mapping[str, Value], n: int | None
    ) -> dict[str, Value]:
        mismatch = self._mismatch(captured, inputs, 0 if n is None else 1)
        if mismatch is not None:
            self._once(f"shape:{mismatch[0]}", mismatch[1])
            return self.inner.run(inputs)
        rows = 0
        for name, static in captured.inputs.items():
            value: torch.Tensor = inputs[name]  # type: ignore[assignment]
            if n is None:
                static.copy_(value)
            else:
                rows = pad_into(static, value)
        captured.graph.replay()
        if rows:
            self.padding.count(rows)
        if n is None:
            return {k: v.clone() for k, v in captured.outputs.items()}
        return {k: v[:n].clone() for k, v in captured.outputs.items()}

    @staticmethod
    def _mismatch(
        captured: Captured, inputs: Mapping[str, Value], skip: int
    ) -> tuple[str, str] | None:
        """What keeps the batch from the graph (``skip``: 1 to ignore the batch dim)."""
        if inputs.keys() != captured.inputs.keys():
            return "names", "the batch's inputs differ from the captured ones"
        for name, static in captured.inputs.items():
            value = inputs[name]
            if not isinstance(value, torch.Tensor):
                return name, f"input '{name}' is not a tensor: the batch runs the normal forward"
            if (
                value.shape[skip:] != static.shape[skip:]
                or value.dim() != static.dim()
                or value.dtype != static.dtype
                or value.device != static.device
            ):
                return name, (
                    f"input '{name}' of shape {list(value.shape)} ({value.dtype}, {value.device}) "
                    f"does not match the captured {list(static.shape)} ({static.dtype}, "
                    f"{static.device}): such batches run the normal forward"
                )
        return None

    def _graphs_off(self, reason: str) -> None:
        self.disabled = reason
        self.graphs.clear()
        self._once("off", f"{reason}; every batch runs the normal forward")

    def _once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.warn(f"{PARAMETER}: {message}")


_NONE = object()  # no graph fits


def cuda_graphs_unsupported(
    device: torch.device | None, input_device: torch.device, warmup: bool
) -> str | None:
    """Why ``CUDA_GRAPHS: true`` cannot take effect on this instance (None: it can)."""
    if device is None:
        return "KIND_MODEL instances keep the devices the model chose (use KIND_GPU)"
    if device.type != "cuda":
        return f"the instance runs on {device} (CUDA graphs need a KIND_GPU instance)"
    if input_device.type != "cuda":
        return f"the executor takes its inputs on {input_device}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if not warmup:
        return "WARMUP is false (graphs are captured during the warm-up)"
    return None
