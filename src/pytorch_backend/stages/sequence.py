"""The sequence-state stage: each request runs with its sequence's state, which it then updates.

The store and its rules are :class:`~pytorch_backend.sequence_state.SequenceStates`; this stage
puts it around the engine. The state inputs Triton hands over hold uninitialised memory, so the
stage supplies them itself (:attr:`provides`) and the adapter does not read them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import RequestError
from ..logs import InstanceLog
from ..requests import Outcome, RequestInputs
from ..sequence_state import SequenceStates, StepRecord, load_initial_states
from .base import Pending, RequestStage


class SequenceStage(RequestStage):
    """Before: each request gets its sequence's state. After: the state is kept, or dropped."""

    def __init__(self, states: SequenceStates) -> None:
        self.states = states
        self.provides = states.config.sequence.state_inputs  # type: ignore[union-attr]
        self._records: list[StepRecord] = []  # of the requests passed on, for after()

    def before(self, requests: list[RequestInputs]) -> list[Pending]:
        self.states.expire()
        prepared: list[Pending] = []
        records: list[StepRecord] = []
        for request in requests:
            try:
                item, record = self.states.prepare(request)
            except RequestError as error:
                prepared.append(error)
                continue
            prepared.append(item)
            records.append(record)
        self._records = records
        return prepared

    def after(self, outcomes: list[Outcome]) -> list[Outcome]:
        records, self._records = self._records, []
        now = self.states.clock()
        return [self.states.finish(r, o, now) for r, o in zip(records, outcomes)]


def sequence_states(
    config: ModelConfig, model_dir: Path, device: torch.device, log: InstanceLog
) -> SequenceStates | None:
    """The per-sequence state store of a model with ``sequence_batching`` state (else None)."""
    sequence = config.sequence
    if sequence is None:
        return None
    log.info(
        f"sequence_batching: {sequence.strategy}, controls "
        f"{[f'{c.kind}={c.name}' for c in sequence.controls]}, states "
        f"{[f'{s.input_name}->{s.output_name}' for s in sequence.states]}, idle "
        f"{sequence.max_idle_us} us"
    )
    if not sequence.states:
        return None
    initial = load_initial_states(config, model_dir)
    return SequenceStates(config, initial, device, log)
