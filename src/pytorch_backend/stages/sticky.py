"""The sticky-error stage: after a sticky CUDA error, every request is answered UNAVAILABLE.

The forward hook :class:`~pytorch_backend.runtime.execution.StickyErrorWatch` detects the error
(and keeps the rest of the execute that hit it from running more forwards); from the next
execute on, this stage refuses every request before it reaches the engine.
"""

from __future__ import annotations

from ..errors import Unavailable
from ..requests import RequestInputs
from ..runtime.execution import StickyErrorWatch, unavailable_message
from .base import Pending, RequestStage


class StickyStage(RequestStage):
    """Answers UNAVAILABLE once ``watch`` has seen a sticky CUDA error."""

    def __init__(self, watch: StickyErrorWatch) -> None:
        self.watch = watch

    def before(self, requests: list[RequestInputs]) -> list[Pending]:
        error = self.watch.error
        if error is None:
            return requests  # type: ignore[return-value]
        refusal = Unavailable(unavailable_message(error))
        return [refusal] * len(requests)
