"""Per-request stages around the engine (see :mod:`.base`), one module per stage."""

from __future__ import annotations

from ..config import BackendParameters
from ..config.decision import Decision
from ..runtime.execution import StickyErrorWatch
from ..sequence_state import SequenceStates
from ..step_times import StepTimes
from .base import Pending, RequestStage, Stages
from .cancellation import CancellationStage, WarmupForward, cancellation_check
from .sequence import SequenceStage
from .sticky import StickyStage

__all__ = ["Pending", "RequestStage", "Stages", "request_stages"]


def request_stages(
    params: BackendParameters,
    warmup_forward: WarmupForward | None,
    sticky: StickyErrorWatch,
    sequences: SequenceStates | None,
    steps: StepTimes | None,
) -> tuple[Stages, Decision[bool]]:
    """An instance's stages in order (cancellation, sticky error, sequence state) and its
    ``ENABLE_CANCELLATION_CHECK`` decision (from ``warmup_forward`` when unset)."""
    given = params.enable_cancellation_check
    check = cancellation_check(given, params.warmup, warmup_forward)
    stages: list[RequestStage] = [CancellationStage(check.value, steps), StickyStage(sticky)]
    if sequences is not None:
        stages.append(SequenceStage(sequences))
    return Stages(stages), check
