"""Implicit state of ``sequence_batching`` models, kept in the backend per sequence.

The Python backend has no implicit-state API: Triton still hands the state input to the stub,
but its content is uninitialised memory and the state output is never fed back (measured on
tritonserver 2.51). So :class:`SequenceStates` runs around the engine, as the sequence stage
(:mod:`pytorch_backend.stages.sequence`):

* before: each request's state input is replaced by the state held for its correlation id
  (zeros or ``initial_state`` on START); a request without a correlation id, or for a sequence
  never started, gets an error for itself only;
* the engine validates, gathers and splits the state like any input and output (each request's
  state rows are its own rows of the batch);
* after: a request that succeeded stores its state output (a copy on the instance's device), one
  that failed leaves the state as it was, END drops it; the state output is removed from the
  response unless it is also declared in ``output`` and was asked for.

Sequences idle for longer than ``max_sequence_idle_microseconds`` are dropped at the next
execute, so abandoned sequences cannot grow the store without bound. Nothing here knows Triton.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .config.dtypes import STRING, TRITON_TO_TORCH
from .config.sequence import StateSpec
from .errors import PyTorchBackendError, RequestError
from .logs import InstanceLog
from .requests import InputValue, Outcome, RequestInputs
from .strings import Strings

#: State input name -> this sequence's state rows (a tensor, or strings for TYPE_STRING state).
States = dict[str, InputValue]


@dataclass
class _Held:
    states: States
    last_used: float


@dataclass(frozen=True)
class StepRecord:
    """What :meth:`SequenceStates.finish` needs to know of a request it prepared."""

    key: int | str
    start: bool
    end: bool
    before: States  # what the request ran with (kept if the step fails)
    drop: frozenset[str]  # outputs to remove from the response


def _initial_strings(config: ModelConfig, model_dir: Path, state: StateSpec) -> Strings:
    """A string state's initial value: empty strings, or Triton's serialized BYTES elements
    (a 4-byte little-endian length, then the UTF-8 bytes, per element) from ``data_file``."""
    init = state.initial
    dims = init.dims if init is not None else state.dims
    count = 1
    for dim in dims:
        count *= dim
    if init is None or init.zero_data:
        return Strings([""] * count, tuple(dims))
    where = f"sequence_batching state '{state.input_name}' initial_state data_file"
    path = model_dir / "initial_state" / str(init.data_file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise config.error(
            f"{where} '{init.data_file}': cannot read '{path}' ({exc.strerror or exc})"
        ) from None
    values, offset = [], 0
    try:
        while offset < len(data):
            size = int.from_bytes(data[offset : offset + 4], "little")
            chunk = data[offset + 4 : offset + 4 + size]
            if offset + 4 > len(data) or len(chunk) != size:
                raise ValueError("an element's length runs past the end of the file")
            values.append(chunk.decode("utf-8"))
            offset += 4 + size
    except (ValueError, UnicodeDecodeError) as exc:
        raise config.error(
            f"{where} '{init.data_file}' is not serialized TYPE_STRING elements (a 4-byte "
            f"little-endian length before each UTF-8 element): {exc}"
        ) from None
    if len(values) != count:
        raise config.error(
            f"{where} '{init.data_file}' holds {len(values)} strings; dims {list(dims)} need "
            f"{count}"
        )
    return Strings(values, tuple(dims))


def load_initial_states(config: ModelConfig, model_dir: Path) -> dict[str, InputValue]:
    """Each state's initial value (one item, no batch dimension), read once at load.

    ``data_file`` is read from ``<model_dir>/initial_state/`` as raw row-major values of the
    state's type; a missing file or a size that does not match the dims fails the load.
    """
    initial: dict[str, InputValue] = {}
    for state in config.sequence.states if config.sequence else ():
        if state.dtype == STRING:
            initial[state.input_name] = _initial_strings(config, model_dir, state)
            continue
        dtype = TRITON_TO_TORCH[state.dtype]
        init = state.initial
        if init is None or init.zero_data:
            shape = init.dims if init is not None else state.dims
            initial[state.input_name] = torch.zeros(shape, dtype=dtype)
            continue
        path = model_dir / "initial_state" / str(init.data_file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise config.error(
                f"sequence_batching state '{state.input_name}' initial_state data_file "
                f"'{init.data_file}': cannot read '{path}' ({exc.strerror or exc})"
            ) from None
        count = 1
        for dim in init.dims:
            count *= dim
        expected = count * dtype.itemsize
        if len(data) != expected:
            raise config.error(
                f"sequence_batching state '{state.input_name}' initial_state data_file "
                f"'{init.data_file}' holds {len(data)} bytes; dims {list(init.dims)} of "
                f"TYPE_{state.dtype} need {expected}"
            )
        values = (
            torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.zeros(0, dtype=dtype)
        )
        initial[state.input_name] = values.reshape(init.dims).clone()
    return initial


class SequenceStates:
    """The state of every live sequence of one instance, keyed by correlation id."""

    def __init__(
        self,
        config: ModelConfig,
        initial: Mapping[str, InputValue],
        device: torch.device,
        log: InstanceLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert config.sequence is not None
        self.config = config
        self.states: tuple[StateSpec, ...] = config.sequence.states
        self.device = device
        self.log = log
        self.clock = clock
        self.idle_seconds = config.sequence.max_idle_us / 1e6
        self._initial = {
            name: value.to(device) if isinstance(value, torch.Tensor) else value
            for name, value in initial.items()
        }
        self._held: OrderedDict[int | str, _Held] = OrderedDict()  # least recently used first
        self._outputs = frozenset(s.output_name for s in self.states)
        self._returned = config.sequence.returned

    def clear(self) -> None:
        """Drop every sequence's state (the instance is closing)."""
        self._held.clear()

    def live(self) -> int:
        """How many sequences' states are held (the live-sequences gauge)."""
        return len(self._held)

    def expire(self) -> None:
        """Drop the sequences that had no request for longer than the idle time."""
        now = self.clock()
        while self._held:
            key, held = next(iter(self._held.items()))
            idle = now - held.last_used
            if idle <= self.idle_seconds:
                break
            del self._held[key]
            if self.log is not None:
                self.log.verbose(
                    f"sequence {key!r}: state dropped after {idle:.3f} s without a request "
                    f"(max_sequence_idle_microseconds = {self.config.sequence.max_idle_us})"
                )

    # -- one request ----------------------------------------------------------------------------

    def prepare(self, request: RequestInputs) -> tuple[RequestInputs, StepRecord]:
        """The request with its sequence's state as its state inputs (a RequestError if it
        has none: no correlation id, no START...), and what :meth:`finish` needs."""
        sequence = request.sequence
        if sequence is None or sequence.correlation_id in (0, ""):
            raise RequestError(
                "inference request must specify a non-zero or non-empty correlation ID "
                "(the model keeps sequence state)"
            )
        requested = request.requested_outputs
        for name in sorted((requested or frozenset()) & (self._outputs - self._returned)):
            raise RequestError(
                f"unexpected inference output '{name}' (a sequence_batching state output "
                "that is not declared in output)"
            )
        key = sequence.correlation_id
        if sequence.start:
            before = self._initial_states(request)
        else:
            held = self._held.get(key)
            if held is None:
                raise RequestError(
                    f"inference request for sequence {key} must specify the START flag on the "
                    "first request of the sequence (no state is held for it: it never started, "
                    "ended, or was idle longer than max_sequence_idle_microseconds)"
                )
            before = held.states
        inputs = {**request.inputs, **before}
        drop = self._outputs - self._returned
        if requested is not None:
            drop |= self._returned - requested
            requested = requested | self._outputs
        prepared = dataclasses.replace(request, inputs=inputs, requested_outputs=requested)
        return prepared, StepRecord(key, sequence.start, sequence.end, before, drop)

    def _initial_states(self, request: RequestInputs) -> States:
        rows = self._rows(request)
        states: States = {}
        for state in self.states:
            value = self._initial[state.input_name]
            if isinstance(value, Strings):
                if rows is not None:
                    value = Strings(value.values * rows, (rows, *value.shape))
                states[state.input_name] = value
                continue
            if rows is not None:
                value = value.unsqueeze(0).expand(rows, *value.shape)
            states[state.input_name] = value.contiguous()
        return states

    def _rows(self, request: RequestInputs) -> int | None:
        """The request's batch size (None for a model without batching)."""
        if not self.config.batching:
            return None
        names = {s.input_name for s in self.states}
        for name, value in request.inputs.items():
            if name not in names and isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
            if name not in names and isinstance(value, Strings) and value.shape:
                return int(value.shape[0])
        return 1

    def _kept(self, state: StateSpec, value: object) -> InputValue:
        """A step's state output as the next step's state input (a copy on the device)."""
        if isinstance(value, torch.Tensor):
            return value.detach().to(self.device, copy=True)
        strings = list(value)  # type: ignore[call-overload]  # the engine checked: List[str]
        if self.config.batching:  # one string per item: [rows, 1]
            return Strings(strings, (len(strings), *state.dims))
        return Strings(strings, (len(strings),))

    def finish(self, record: StepRecord, outcome: Outcome, now: float) -> Outcome:
        """Keep (or, on END, drop) the sequence's new state; the outcome without the state
        outputs the request did not ask for."""
        key = record.key
        if isinstance(outcome, PyTorchBackendError):
            # The step failed: the sequence keeps the state it had (a START: its initial state).
            new = record.before if record.start or key in self._held else None
        else:
            new = {s.input_name: self._kept(s, outcome[s.output_name]) for s in self.states}
            if record.drop:
                outcome = {n: v for n, v in outcome.items() if n not in record.drop}
        if record.end or new is None:
            self._held.pop(key, None)
        else:
            self._held[key] = _Held(new, now)
            self._held.move_to_end(key)
        return outcome
