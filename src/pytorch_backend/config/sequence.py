"""``sequence_batching``: control tensors and implicit state, parsed once at load.

The sequence batcher adds the control tensors (START, END, READY, CORRID) to every request, and
the state input (``state[].input_name``) too; the model returns the next state as an output
(``state[].output_name``). Here they become ordinary input and output specs
(:meth:`SequenceConfig.input_specs`, :meth:`SequenceConfig.output_specs`) that the executors bind
under each kind's naming rules and the engine validates, gathers and splits like any other. The
state's content is kept by :mod:`pytorch_backend.sequence_state` (the Python backend has no
implicit-state API).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ModelLoadError
from .dtypes import STRING, SUPPORTED
from .tensor_spec import TensorSpec, parse_dims

START = "CONTROL_SEQUENCE_START"
END = "CONTROL_SEQUENCE_END"
READY = "CONTROL_SEQUENCE_READY"
CORRID = "CONTROL_SEQUENCE_CORRID"
BOOLEAN_KINDS = (START, END, READY)
#: Triton's default when ``max_sequence_idle_microseconds`` is not set.
DEFAULT_IDLE_US = 1_000_000
#: What a CORRID control may be (TYPE_STRING correlation ids are refused at load).
CORRID_TYPES = ("INT32", "INT64", "UINT64")
_FALSE_TRUE = {"int32_false_true": "INT32", "fp32_false_true": "FP32", "bool_false_true": "BOOL"}


@dataclass(frozen=True)
class Control:
    """One control tensor: its kind, the input name it arrives under, dtype and values."""

    kind: str  # START / END / READY / CORRID (the CONTROL_SEQUENCE_* names)
    name: str
    dtype: str  # Triton type name without TYPE_
    false_true: tuple[Any, Any] | None = None  # None for CORRID


@dataclass(frozen=True)
class InitialState:
    """``initial_state``: zeros, or the content of ``<model>/initial_state/<data_file>``."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    zero_data: bool
    data_file: str | None


@dataclass(frozen=True)
class StateSpec:
    """One ``state`` entry: fed as ``input_name``, replaced by the model's ``output_name``."""

    input_name: str
    output_name: str
    dtype: str
    dims: tuple[int, ...]
    initial: InitialState | None = None


@dataclass(frozen=True)
class SequenceConfig:
    """The ``sequence_batching`` section, validated."""

    strategy: str  # "direct" or "oldest"
    max_idle_us: int
    controls: tuple[Control, ...] = ()
    states: tuple[StateSpec, ...] = ()
    #: State outputs also declared in ``output``: returned to the client as well.
    returned: frozenset[str] = frozenset()

    @property
    def control_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.controls)

    @property
    def state_inputs(self) -> frozenset[str]:
        return frozenset(s.input_name for s in self.states)

    @property
    def state_outputs(self) -> frozenset[str]:
        return frozenset(s.output_name for s in self.states)

    def indexed_inputs(self) -> frozenset[str]:
        """Inputs TorchScript binds by their own ``<name>__<index>`` whatever the convention."""
        return self.control_names | self.state_inputs

    def input_specs(self) -> tuple[TensorSpec, ...]:
        """The controls (dims ``[1]``) and state inputs, as config input specs."""
        controls = tuple(TensorSpec(c.name, c.dtype, (1,)) for c in self.controls)
        states = tuple(TensorSpec(s.input_name, s.dtype, s.dims) for s in self.states)
        return controls + states

    def output_specs(self) -> tuple[TensorSpec, ...]:
        """State outputs not also declared in ``output``, as config output specs."""
        return tuple(
            TensorSpec(s.output_name, s.dtype, s.dims)
            for s in self.states
            if s.output_name not in self.returned
        )


def _type(raw: Any) -> str:
    text = str(raw or "")
    return text[5:] if text.startswith("TYPE_") else text


def _entries(raw: Any) -> list[Mapping[str, Any]]:
    """A repeated message field: a list, or one message as some text-format readers give it."""
    if not raw:
        return []
    return [raw] if isinstance(raw, Mapping) else list(raw)


def _control(error, name: str, raw: Mapping[str, Any]) -> Control:
    kind = raw.get("kind", "")
    where = f"sequence_batching control_input '{name}'"
    if kind == CORRID:
        dtype = _type(raw.get("data_type"))
        if dtype == STRING:
            # Measured on tritonserver 2.51: the sequence batcher's string CORRID tensor is
            # refused by the server itself for Python-backend models ("unexpected number of
            # string elements 2 for inference input ..., expecting 1"), so no request could run.
            raise error(
                f"{where} (CONTROL_SEQUENCE_CORRID) has data_type TYPE_STRING; tritonserver "
                "refuses string correlation-id tensors for Python-backend models (every request "
                "would fail), so use TYPE_INT32, TYPE_INT64 or TYPE_UINT64 (string sequence ids "
                "still work: the backend keys its state on the request's correlation id)"
            )
        if dtype not in CORRID_TYPES:
            raise error(
                f"{where} (CONTROL_SEQUENCE_CORRID) has data_type {raw.get('data_type')!r}; "
                "supported: TYPE_INT32, TYPE_INT64, TYPE_UINT64"
            )
        return Control(kind, name, dtype)
    if kind not in BOOLEAN_KINDS:
        raise error(f"{where} has an unsupported control kind {kind!r}")
    given = [(key, raw.get(key)) for key in _FALSE_TRUE if raw.get(key)]
    if len(given) != 1:
        raise error(
            f"{where} ({kind}) must give exactly one of int32_false_true, fp32_false_true, "
            f"bool_false_true; got {[key for key, _ in given] or 'none'}"
        )
    key, values = given[0]
    if len(values) != 2:
        raise error(f"{where} ({kind}) {key} must hold two values [false, true]; got {values}")
    return Control(kind, name, _FALSE_TRUE[key], (values[0], values[1]))


def _initial(error, state: str, raw: Sequence[Mapping[str, Any]]) -> InitialState | None:
    if not raw:
        return None
    if len(raw) > 1:
        raise error(f"sequence_batching state '{state}' has {len(raw)} initial_state entries")
    entry = raw[0]
    zero = bool(entry.get("zero_data", False))
    data_file = entry.get("data_file") or None
    if zero == (data_file is not None):
        raise error(
            f"sequence_batching state '{state}' initial_state must set exactly one of "
            "zero_data or data_file"
        )
    dims = parse_dims(entry.get("dims"))
    if any(d < 0 for d in dims):
        raise error(
            f"sequence_batching state '{state}' initial_state dims {list(dims)} must be fixed"
        )
    return InitialState(entry.get("name", ""), _type(entry.get("data_type")), dims, zero, data_file)


def _state(error, raw: Mapping[str, Any]) -> StateSpec:
    input_name, output_name = raw.get("input_name", ""), raw.get("output_name", "")
    if not input_name or not output_name:
        raise error(
            f"sequence_batching state needs input_name and output_name; got "
            f"input_name={input_name!r}, output_name={output_name!r}"
        )
    dtype = _type(raw.get("data_type"))
    dims = parse_dims(raw.get("dims"))
    if dtype == STRING and len(dims) != 1:
        # A string state is one List[str]; .pt2 and torch.export refuse it when binding.
        raise error(
            f"sequence_batching state '{input_name}' is TYPE_STRING with dims {list(dims)}; "
            "a string state must have one dimension (it reaches the model as List[str])"
        )
    if dtype not in SUPPORTED:
        raise error(
            f"sequence_batching state '{input_name}' has unsupported data_type "
            f"{raw.get('data_type')!r}"
        )
    initial = _initial(error, input_name, _entries(raw.get("initial_state")))
    if initial is not None and initial.dtype and initial.dtype != dtype:
        raise error(
            f"sequence_batching state '{input_name}' initial_state data_type "
            f"TYPE_{initial.dtype} differs from the state's TYPE_{dtype}"
        )
    if any(d < 0 for d in dims) and initial is None:
        raise error(
            f"sequence_batching state '{input_name}' has variable dims {list(dims)}; give it "
            "fixed dims or an initial_state with fixed dims"
        )
    return StateSpec(input_name, output_name, dtype, dims, initial)


def parse_sequence_batching(
    model: str, raw: Mapping[str, Any] | None, declared_outputs: Sequence[str] = ()
) -> SequenceConfig | None:
    """The ``sequence_batching`` section of Triton's config JSON (None when absent).

    ``declared_outputs``: the config's ``output`` names (a state output among them is returned
    to the client too).
    """
    if raw is None:
        return None

    def error(message: str) -> ModelLoadError:
        return ModelLoadError(message, model=model)

    strategy = "oldest" if raw.get("oldest") is not None else "direct"
    idle = int(raw.get("max_sequence_idle_microseconds") or 0) or DEFAULT_IDLE_US
    controls: list[Control] = []
    for entry in _entries(raw.get("control_input")):
        name = entry.get("name", "")
        items = _entries(entry.get("control"))
        if len(items) != 1:
            raise error(
                f"sequence_batching control_input '{name}' must have exactly one control; "
                f"got {len(items)}"
            )
        controls.append(_control(error, name, items[0]))
    kinds = [c.kind for c in controls]
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise error(f"sequence_batching has more than one control of kind {repeated[0]}")
    states = tuple(_state(error, s) for s in _entries(raw.get("state")))
    names = [c.name for c in controls] + [s.input_name for s in states]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise error(f"sequence_batching names the input '{twice[0]}' more than once")
    returned = frozenset(s.output_name for s in states) & frozenset(declared_outputs)
    return SequenceConfig(strategy, idle, tuple(controls), states, returned)
