"""The cancellation stage: requests their client cancelled are answered CANCELLED, not computed.

Asking is one round trip from the stub to the server per request (``request.is_cancelled()``,
which the adapter puts on each request as :attr:`RequestInputs.cancelled`). For a model whose
forward costs less than a few such round trips, the check costs more than any cancellation could
save, so ``ENABLE_CANCELLATION_CHECK`` left unset is decided at load from the warm-up
(:func:`cancellation_check`, :class:`WarmupForwards`). Nothing here knows Triton.
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
#: request on the development machine (README, Faults); 50 µs is the middle of that range.
CHECK_SECONDS = 50e-6
#: Checking pays when one request's forward costs at least this many checks: every request pays
#: a check, while only the (rare) cancelled ones save their forward.
WORTH_CHECKS = 10


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
    """The fastest forward the warm-up ran: its batch rows (0: no batching) and its seconds."""

    rows: int
    seconds: float


class WarmupForwards(Hook):
    """Added to the warm-up's hooks: keeps the fastest successful forward it ran.

    The smallest bucket runs first and is normally the fastest; where its forward also paid for
    a compilation, a later bucket's is faster, and never faster than the smallest bucket would
    run once warm, so the figure never understates what one request's forward costs.
    """

    def __init__(self) -> None:
        self.fastest: WarmupForward | None = None

    def after_execute(self, stats: ExecuteStats) -> None:
        if stats.forwards != 1 or stats.failed:
            return
        seconds = stats.forward_ns / 1e9
        if self.fastest is None or seconds < self.fastest.seconds:
            self.fastest = WarmupForward(stats.rows, seconds)


def cancellation_check(
    given: bool | None, warmup: bool, fastest: WarmupForward | None
) -> Decision[bool]:
    """``ENABLE_CANCELLATION_CHECK``: whether to check, and the effective value as logged.

    ``given``: the parameter (None: unset, decided here). Without a measured forward the
    instance checks (the safe default).
    """
    if given is not None:
        return Decision(given, "true" if given else "false")
    if not warmup:
        return Decision(True, "auto -> true (WARMUP is false: no forward time was measured)")
    if fastest is None:
        return Decision(True, "auto -> true (the warm-up ran no successful forward to measure)")
    check_ms = CHECK_SECONDS * 1e3
    rows = "" if fastest.rows == 0 else f" of {fastest.rows} row{'s' if fastest.rows > 1 else ''}"
    took = f"a forward{rows} took {fastest.seconds * 1e3:.3f} ms at warm-up"
    if fastest.seconds >= WORTH_CHECKS * CHECK_SECONDS:
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
