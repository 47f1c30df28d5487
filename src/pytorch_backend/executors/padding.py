"""Batch padding, in one place: rows repeat the batch's last row, and every padded row is counted.

A batch is padded where what runs it needs more rows than it has:

* an artifact with a minimum batch size (``Capabilities.batch_range``: an AOT-Inductor package
  compiled from ``Dim(min=1)`` takes at least 2 rows, a torch.export program its exported
  minimum) gets a smaller batch padded up to that minimum, and the padding dropped from its
  outputs (:meth:`BatchPadding.to_minimum`, called by those executors' ``run``);
* a captured CUDA graph replays a batch bucket larger than the batch
  (:mod:`pytorch_backend.runtime.cuda_graphs`, which pads into the graph's static buffers).

Padding repeats real data (the last row), so it cannot produce values (NaNs, say) the model would
not see otherwise. Each padded row is added to the executor's ``ExecutorCounters.padded_rows``
(:meth:`BatchPadding.count`), which feeds ``pytorch_backend_padded_rows_total``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Capabilities, ExecutorCounters


def pad_into(static: torch.Tensor, rows: torch.Tensor) -> int:
    """Copy ``rows`` into the head of ``static``; the tail repeats the last row. Padded count."""
    n = rows.shape[0]
    static[:n].copy_(rows)
    padded = static.shape[0] - n
    if padded:
        static[n:].copy_(rows[n - 1 :].expand_as(static[n:]))
    return padded


def padded(rows: torch.Tensor, size: int) -> torch.Tensor:
    """A new tensor of ``size`` rows: ``rows``, then copies of its last row."""
    out = rows.new_empty((size, *rows.shape[1:]))
    pad_into(out, rows)
    return out


class BatchPadding:
    """Pads an executor's batches and counts the rows added, from what it declares.

    ``capabilities.batch_range`` gives the minimum batch (none: 1, nothing to pad up to);
    ``capabilities.counters`` receives the padded rows.
    """

    def __init__(self, capabilities: Capabilities) -> None:
        batch_range = capabilities.batch_range
        self.minimum = batch_range[0] if batch_range is not None else 1
        self.counters: ExecutorCounters = capabilities.counters

    def count(self, rows: int) -> None:
        """Count ``rows`` padded rows (the one place ``padded_rows`` grows)."""
        self.counters.padded_rows += rows

    def to_minimum(self, flat: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
        """The batch (tensors sharing dim 0) padded up to the minimum, and the rows to keep of
        each output: the batch's own size, or 0 when nothing was padded (keep every row)."""
        if self.minimum <= 1 or not flat or flat[0].dim() == 0:
            return list(flat), 0
        batch = flat[0].shape[0]
        if not 0 < batch < self.minimum:
            return list(flat), 0
        self.count(self.minimum - batch)
        return [padded(t, self.minimum) for t in flat], batch

    @staticmethod
    def trim(value: torch.Tensor, keep: int) -> torch.Tensor:
        """An output without the padded rows (``keep``: what :meth:`to_minimum` returned)."""
        return value[:keep] if keep else value
