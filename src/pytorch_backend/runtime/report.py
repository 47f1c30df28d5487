"""The effective value of every setting, one log line each, in the parameter registry's order.

``pytorch_backend: model 'm' instance 'm_0': INFERENCE_MODE = true (grad policy: ...)``. How each
line reads is its registry entry's (``Parameter.logged_value``: the entry's describer, or the
generated "no effect on <kind>s" outside the kinds it applies to); this module only gathers what
the describers read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import BackendParameters, ModelKind
from ..config.decision import Decision
from ..config.parameters import PARAMETERS
from . import omp_wait
from .settings import RuntimeSettings

_OFF: Decision[Any] = Decision.off()

#: The lines before the registry's: not parameters, but what the instance runs with.
LEADING_KEYS = ("device", omp_wait.ENV)


@dataclass(frozen=True)
class EffectiveSettings:
    """What the log lines describe: the parameters, what torch took, and the load's decisions."""

    params: BackendParameters
    settings: RuntimeSettings
    device: torch.device | None  # None: KIND_MODEL
    cpu_instances: int
    weight_sharing: Decision[Any]  # ENABLE_WEIGHT_SHARING: the shared weights, or why none
    kind: ModelKind | None = None  # the model kind served, when known
    metrics: Decision[Any] = _OFF  # ENABLE_METRICS: the metrics hook, or why none
    warmup: Sequence[int | None] = ()  # the batch sizes warmed up at load (empty: none)
    cuda_graphs: Decision[Any] = _OFF  # CUDA_GRAPHS: the graph executor, or why none
    cancellation_check: Decision[bool] | None = None  # ENABLE_CANCELLATION_CHECK, once decided


def effective_lines(effective: EffectiveSettings) -> list[str]:
    """``KEY = value`` for :data:`LEADING_KEYS`, then every logged parameter in registry order."""
    device = (
        str(effective.device)
        if effective.device is not None
        else "chosen by the model (KIND_MODEL)"
    )
    lines = [f"device = {device}", f"{omp_wait.ENV} = {omp_wait.describe()}"]
    for parameter in PARAMETERS:
        if parameter.logged:
            lines.append(f"{parameter.key} = {parameter.logged_value(effective)}")
    return lines
