"""Warm-up before READY: run each instance over its batch buckets at load.

TorchScript's profiling executor re-optimises a graph after its first calls for each shape,
``torch.compile`` compiles per graph and AOT-Inductor's runner and torch's kernels initialise
lazily: without a warm-up the first requests after Triton marks the model READY pay for all of
it. :func:`warm_up` runs inside ``initialize`` (a load phase of ``build_instance``), so the
model is ready only once it is warm.

* **Buckets** (:func:`warmup_buckets`): the powers of two up to ``max_batch_size``,
  ``max_batch_size`` itself and the config's ``preferred_batch_size`` values; or the sizes of
  ``WARMUP_BATCH_SIZES``. A model that does not batch runs once, as configured.
* **Inputs** (:func:`warmup_request`): zeros with the config's dtypes and dims; a ``-1`` dim gets
  the size the executor reports it needs (an AOT-Inductor package's exported minimum), else
  :data:`VARIABLE_DIM`; a ``TYPE_STRING`` element is :data:`STRING_VALUE`.
* **Runs**: each bucket goes through the instance's engine (validation, gather, the forward
  under the instance's hooks, output checks, split; no metrics), :data:`TORCHSCRIPT_RUNS` times
  for TorchScript (so the profiling executor settles: it profiles, then optimises), once for
  the other kinds.

A bucket whose run fails (the model may reject all-zero data) is logged as a warning and the
warm-up stops; the load goes on. Triton's own ``model_warmup`` runs after this, unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import torch

from ..config import BackendParameters, ModelConfig, ModelKind
from ..config.dtypes import TRITON_TO_TORCH
from ..errors import PyTorchBackendError
from ..requests import InputValue, Outcome, RequestInputs
from ..strings import Strings

#: The size a ``-1`` config dim gets, when the executor does not need another one.
VARIABLE_DIM = 2
#: Every element of a ``TYPE_STRING`` input in a warm-up request.
STRING_VALUE = "0"
#: Runs per bucket for TorchScript: one profiled run, one that optimises, one optimised.
TORCHSCRIPT_RUNS = 3
PARAMETER = "WARMUP_BATCH_SIZES"


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


def runs_per_bucket(kind: ModelKind) -> int:
    return TORCHSCRIPT_RUNS if kind == ModelKind.TORCHSCRIPT else 1


def warm_up(
    config: ModelConfig,
    kind: ModelKind,
    buckets: Sequence[int | None],
    shapes: Mapping[str, tuple[int, ...]],
    infer: Callable[[list[RequestInputs]], list[Outcome]],
    info: Callable[[str], None],
    warn: Callable[[str], None],
) -> float:
    """Run ``infer`` (an engine without metrics) over ``buckets``; log and return the seconds."""
    started = time.perf_counter()
    runs = runs_per_bucket(kind)
    done = 0
    for batch in buckets:
        request = warmup_request(config, batch, shapes)
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
    sizes = ", ".join("as configured" if b is None else str(b) for b in buckets)
    info(
        f"warm-up over batch sizes [{sizes}]: {done} run(s) ({runs} per batch size) in "
        f"{seconds:.2f} s"
    )
    return seconds
