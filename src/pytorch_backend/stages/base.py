"""Per-request stages: what happens to each request before the engine and after its outcome.

Hooks (:mod:`pytorch_backend.hooks`) run per forward or per execute; a :class:`RequestStage` runs
per request. ``Instance.infer`` hands each execute's requests to its :class:`Stages` in order
(cancellation, sticky error, sequence state), then to the engine, then their outcomes back
through the stages' ``after`` steps in reverse order. A stage may answer a request itself with
an error: later stages never see that request, and the engine only carries the error through
as its answer (counted in the execute's statistics, never validated nor computed). Nothing here
knows Triton.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union

from ..errors import PyTorchBackendError
from ..requests import Outcome, RequestInputs

#: A request on its way to the engine, or the error it is answered with.
Pending = Union[RequestInputs, PyTorchBackendError]
#: The engine's ``infer``: one outcome per request, errors carried through as they are.
Engine = Callable[[list[Pending]], list[Outcome]]


class RequestStage:
    """Base class of request stages; each step passes its requests on unchanged by default.

    An instance serves one execute at a time, so a stage may keep what its ``before`` learned
    for the ``after`` of the same execute.
    """

    #: Inputs the stage supplies itself: the adapter does not read them from the request.
    provides: frozenset[str] = frozenset()

    def before(self, requests: list[RequestInputs]) -> list[Pending]:
        """One entry per request, in order: the request (possibly rewritten) or its answer.

        Return ``requests`` itself when nothing changed (the pipeline then does no work).
        """
        return requests

    def after(self, outcomes: list[Outcome]) -> list[Outcome]:
        """The outcomes of the requests this stage passed on, in order; one back per outcome."""
        return outcomes


class Stages:
    """An ordered set of request stages, run around the engine."""

    def __init__(self, stages: Sequence[RequestStage] = ()) -> None:
        self.stages = tuple(stages)
        self.provides: frozenset[str] = frozenset().union(*(s.provides for s in self.stages))
        self._after = frozenset(id(s) for s in self.stages if _overrides(s, "after"))

    def run(self, requests: Sequence[Pending], engine: Engine) -> list[Outcome]:
        """One outcome per request, in order (errors in ``requests`` are their answers)."""
        items = list(requests)
        where = [i for i, item in enumerate(items) if not isinstance(item, PyTorchBackendError)]
        live: list[RequestInputs] = [items[i] for i in where]  # type: ignore[misc]
        passed: list[tuple[RequestStage, list[int]]] = []
        for stage in self.stages:
            results = stage.before(live)
            if results is not live:
                live, where = _settle(stage, items, where, results)
            if id(stage) in self._after:
                passed.append((stage, where))
        outcomes = engine(items)
        for stage, indices in reversed(passed):
            answers = stage.after([outcomes[i] for i in indices])
            _check_count(stage, "after", answers, indices)
            for index, outcome in zip(indices, answers):
                outcomes[index] = outcome
        return outcomes


def _settle(
    stage: RequestStage, items: list[Pending], where: list[int], results: list[Pending]
) -> tuple[list[RequestInputs], list[int]]:
    """Write a stage's results into ``items``; return the requests still on their way."""
    _check_count(stage, "before", results, where)
    live: list[RequestInputs] = []
    kept: list[int] = []
    for index, result in zip(where, results):
        items[index] = result
        if not isinstance(result, PyTorchBackendError):
            live.append(result)
            kept.append(index)
    return live, kept


def _check_count(stage: RequestStage, step: str, results: list, indices: list[int]) -> None:
    if len(results) != len(indices):
        raise RuntimeError(
            f"request stage {type(stage).__name__}.{step} returned {len(results)} entries for "
            f"{len(indices)} requests"
        )


def _overrides(stage: RequestStage, method: str) -> bool:
    return getattr(type(stage), method) is not getattr(RequestStage, method)
