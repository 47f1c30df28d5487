"""Where an execute's time goes, step by step, kept in plain integers (``perf_counter_ns``).

While an execute runs, each part adds its own step's nanoseconds to the instance's
:class:`StepTimes`: the adapter (``read``, ``respond``), the cancellation stage
(``cancel_check``), the engine through ``ExecuteStats`` (``prepare``, ``forward``, ``split``) and
the metrics hook (``metrics``). The metrics flush turns them into the counter family
``pytorch_backend_execute_step_seconds_total{step=...}``; nothing here calls the server.
"""

from __future__ import annotations

#: The steps of one execute, in the order they run (the ``step`` label's values).
STEPS = ("read", "cancel_check", "prepare", "forward", "split", "respond", "metrics")


class StepTimes:
    """Nanoseconds spent per step of :data:`STEPS` since the last :meth:`take`."""

    __slots__ = STEPS

    def __init__(self) -> None:
        self.read = self.cancel_check = self.prepare = self.forward = 0
        self.split = self.respond = self.metrics = 0

    def take(self) -> dict[str, int]:
        """The nanoseconds per step since the last take; every step starts again from 0."""
        taken = {step: getattr(self, step) for step in STEPS}
        for step in STEPS:
            setattr(self, step, 0)
        return taken
