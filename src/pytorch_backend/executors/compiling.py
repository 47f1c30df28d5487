"""``torch.compile`` at load: compile, warm up over the batch sizes served, count recompilations.

The warm-up runs the executor itself on zeros shaped from the config, under the model's grad
policy, for batch sizes 1, 2 and ``max_batch_size``, with the batch dimension (and every ``-1``
config dimension) marked dynamic from 2 up: one graph then serves every batch size >= 2, and a
batch of 1 gets its own (0/1 specialisation). Batch sizes in between hit those graphs without
recompiling; :class:`CompileWatch` counts the graphs torch compiles, so a recompilation while
serving is logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import torch_compat
from ..config import BackendParameters, ModelConfig
from ..config.compile_options import KEY, CompileOptions
from ..config.dtypes import TRITON_TO_TORCH
from ..logs import InstanceLog
from ..requests import Value
from ..runtime.execution import execution_context
from .base import ExecutorCounters

_VARIABLE_DIM = 2  # the size a -1 config dimension gets in the warm-up


def compile_module(
    config: ModelConfig, module: Callable[..., Any], options: CompileOptions
) -> Callable[..., Any]:
    """``torch.compile(module, **options)`` (a module or one of its bound methods); bad
    backend, mode or options fail the load."""
    try:
        return torch.compile(module, **options.kwargs())
    except Exception as exc:  # noqa: BLE001 - torch.compile raises several kinds of errors
        raise config.error(
            f"parameter '{KEY}' = {options.text}: torch.compile refused it: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean torch.compile itself failed (not the model's own code)."""
    return torch_compat.compile_error_types()


class CompileWatch:
    """Counts the graphs torch.compile has compiled in this process (one stub = one instance)."""

    def __init__(self, log: InstanceLog, counters: ExecutorCounters | None = None) -> None:
        self.log = log
        self.counters = counters  # recompilations are added here, for metrics
        self.at_load = self.graphs()
        self.seen = self.at_load

    @staticmethod
    def graphs() -> int:
        return torch_compat.dynamo_unique_graphs()

    def rebase(self) -> None:
        """Count the graphs compiled so far as compiled at load (after the instance warm-up)."""
        self.at_load = self.seen = self.graphs()

    def check(self, inputs: Mapping[str, Value]) -> None:
        """Log a warning when the last forward compiled new graphs (a recompilation)."""
        now = self.graphs()
        if now != self.seen:
            shapes = {
                name: list(value.shape) if isinstance(value, torch.Tensor) else len(value)
                for name, value in inputs.items()
            }
            self.log.warn(
                f"torch.compile recompiled while serving: {now - self.seen} new graph(s) for "
                f"inputs {shapes}; recompilations since load = {now - self.at_load}"
            )
            if self.counters is not None:
                self.counters.recompilations += now - self.seen
            self.seen = now


def warmup_batches(config: ModelConfig) -> list[int | None]:
    """Batch sizes the warm-up runs (None: a non-batching model, run once as configured)."""
    if not config.batching:
        return [None]
    return sorted({1, min(2, config.max_batch_size), config.max_batch_size})


def warmup_inputs(config: ModelConfig, batch: int | None, device: torch.device) -> dict[str, Value]:
    """Zeros shaped from the config; from a batch of 2 up, variable dims are marked dynamic."""
    inputs: dict[str, Value] = {}
    for spec in config.inputs:
        dims = [d if d >= 0 else _VARIABLE_DIM for d in spec.shape]
        shape = [batch, *dims] if batch is not None else dims
        tensor = torch.zeros(shape, dtype=TRITON_TO_TORCH[spec.dtype], device=device)
        if batch is None or batch >= 2:
            variable = [i + (batch is not None) for i, d in enumerate(spec.shape) if d < 0]
            for dim in ([0] if batch is not None else []) + variable:
                torch_compat.mark_dynamic(tensor, dim)
        inputs[spec.name] = tensor
    return inputs


def warm_up(
    config: ModelConfig,
    params: BackendParameters,
    run: Callable[[Mapping[str, Value]], object],
    device: torch.device,
    log: InstanceLog,
) -> float:
    """Run ``run`` over :func:`warmup_batches`, log the graphs compiled and the time taken, and
    return the seconds it took.

    A failure of torch.compile fails the load; the model's own code raising on zeros is logged
    and the warm-up stops (the model may legitimately reject all-zero data).
    """
    before = CompileWatch.graphs()
    started = time.perf_counter()
    batches = warmup_batches(config)
    for batch in batches:
        inputs = warmup_inputs(config, batch, device)
        try:
            with execution_context(params):
                run(inputs)
        except compile_errors() as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise config.error(
                f"torch.compile failed at load (warm-up with a batch of {batch}): "
                f"{type(exc).__name__}: {text}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the model's own code
            log.warn(
                f"warm-up on zeros (batch {batch}) raised {type(exc).__name__}: {exc}; "
                "graphs not compiled now are compiled by the first requests"
            )
            break
    seconds = time.perf_counter() - started
    sizes = ", ".join("as configured" if b is None else str(b) for b in batches)
    log.info(
        f"torch.compile warm-up over batch sizes [{sizes}]: "
        f"{CompileWatch.graphs() - before} graph(s) compiled in {seconds:.1f} s"
    )
    return seconds
