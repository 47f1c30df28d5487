"""The cancellation stage: requests their client cancelled are answered CANCELLED, not computed.

Asking is one round trip from the stub to the server per request (``request.is_cancelled()``,
which the adapter puts on each request as :attr:`RequestInputs.cancelled`). Every request pays
for its check; a cancelled one saves only its own share of a batched forward. So
``ENABLE_CANCELLATION_CHECK`` left unset is decided at load from the warm-up
(:func:`cancellation_check`, :class:`WarmupForwards`): check only when a request's share of a
forward costs enough that the check is a small part of it. Nothing here knows Triton.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter_ns

from ..config.decision import Decision
from ..errors import RequestCancelled
from ..hooks import ExecuteStats, Hook
from ..requests import RequestInputs
from ..step_times import StepTimes
from .base import Pending, RequestStage

#: What one check costs: a round trip from the stub to the server, measured at 25-90 µs per
#: request on the development machine (README, Faults), 90 µs through tritonserver at
#: concurrency 16 (0.74 ms for 8.3 requests, ``bench/results/cancel_rule_before/``). The rule
#: takes the dear end: the warm-up's forwards run while other instances load, so they err dear.
CHECK_SECONDS = 90e-6
#: Checking is on when one request's share of a forward (the cheapest per row the warm-up ran)
#: costs at least this many checks: the check then adds at most 5 % to every request, and pays
#: for itself once more than 1 request in 20 is cancelled. The rule before (10 checks of 50 µs
#: against the fastest forward, normally one row) turned the check on for the benchmark's CNN,
#: whose requests share a batch at about 0.6 ms a row: its checks took 0.74 ms of a 6.3 ms
#: execution.
WORTH_CHECKS = 20


class CancellationStage(RequestStage):
    """Answers CANCELLED, before anything runs, the requests whose client cancelled them."""

    def __init__(self, check: bool, steps: StepTimes | None = None) -> None:
        self.check = check
        self.steps = steps if steps is not None else StepTimes()

    def before(self, requests: list[RequestInputs]) -> list[Pending]:
        if not self.check:
            return requests  # type: ignore[return-value]
        start = perf_counter_ns()
        answered: list[Pending] | None = None
        for index, request in enumerate(requests):
            cancelled = request.cancelled
            if cancelled is not None and cancelled():
                if answered is None:
                    answered = list(requests)
                answered[index] = RequestCancelled("the client cancelled the request before it ran")
        self.steps.cancel_check += perf_counter_ns() - start
        return requests if answered is None else answered  # type: ignore[return-value]


@dataclass(frozen=True)
class WarmupForward:
    """A forward the warm-up ran: its batch rows (0: no batching) and its seconds."""

    rows: int
    seconds: float

    @property
    def seconds_per_row(self) -> float:
        """One request's share of the forward (a model that does not batch: all of it)."""
        return self.seconds / max(1, self.rows)


class WarmupForwards(Hook):
    """Added to the warm-up's hooks: keeps the successful forward cheapest per row.

    That is normally a large bucket's: a batched request shares its forward with the others of
    its batch. A bucket whose forward also paid for a compilation only looks dearer, and the
    cheapest is kept, so one compiling bucket does not skew the figure.
    """

    def __init__(self) -> None:
        self.cheapest: WarmupForward | None = None

    def after_execute(self, stats: ExecuteStats) -> None:
        if stats.forwards != 1 or stats.failed:
            return
        forward = WarmupForward(stats.rows, stats.forward_ns / 1e9)
        if self.cheapest is None or forward.seconds_per_row < self.cheapest.seconds_per_row:
            self.cheapest = forward


def cancellation_check(
    given: bool | None, warmup: bool, cheapest: WarmupForward | None
) -> Decision[bool]:
    """``ENABLE_CANCELLATION_CHECK``: whether to check, and the effective value as logged.

    ``given``: the parameter (None: unset, decided here from ``cheapest``, the warm-up's forward
    cheapest per row). Without a measured forward the instance checks (the safe default).
    """
    if given is not None:
        return Decision(given, "true" if given else "false")
    if not warmup:
        return Decision(True, "auto -> true (WARMUP is false: no forward time was measured)")
    if cheapest is None:
        return Decision(True, "auto -> true (the warm-up ran no successful forward to measure)")
    check_ms = CHECK_SECONDS * 1e3
    took = f"took {cheapest.seconds * 1e3:.3f} ms at warm-up"
    if cheapest.rows == 0:
        took = f"a forward {took}"
    else:
        plural = "s" if cheapest.rows > 1 else ""
        took = (
            f"a forward of {cheapest.rows} row{plural} {took}: "
            f"{cheapest.seconds_per_row * 1e3:.3f} ms a row"
        )
    if cheapest.seconds_per_row >= WORTH_CHECKS * CHECK_SECONDS:
        return Decision(
            True,
            f"auto -> true ({took}, at least {WORTH_CHECKS} x the ~{check_ms:.2f} ms a check "
            "costs)",
        )
    return Decision(
        False,
        f"auto -> false ({took}, under {WORTH_CHECKS} x the ~{check_ms:.2f} ms a check costs; "
        "set true to answer cancelled requests CANCELLED)",
    )
