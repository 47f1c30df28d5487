"""``OUTPUT_SHAPE_CHECK``: what an output whose shape contradicts its config ``dims`` gets.

The C++ backend never compares output shapes with the config: each response carries the shape
of the tensor the model returned. A config migrated from it may therefore declare output dims
that were never true (upstream's own ``qa/L0_libtorch_instance_group_kind_model`` declares
``dims: [ 4 ]`` for a model that returns ``[batch, 16]``). One :class:`OutputShapes` per instance
decides, for every output of the config:

* ``warn`` (the default): the model's own shape is served, as upstream does, and the mismatch is
  logged once per output and instance at warning level, naming the output, the configured dims
  and the shape the model returned: at load where a run there shows it (an AOT-Inductor
  package's test run on zeros, the warm-up), otherwise at the first request that shows it;
* ``error``: refused, as before this parameter existed: the load fails where the shape is known
  at load (a test run whose inputs have no variable dim), otherwise each such request gets an
  error naming both shapes;
* ``off``: served, nothing logged.

Only the comparison with ``dims`` is relaxed (batch dimension aside, ``-1`` matching anything):
a batching model's outputs still need the batch's rows first, since they are split per request,
and dtype and 0-d checks are unchanged. Sequence-state outputs are always refused on a mismatch:
they come back as the next request's state input, which is checked against the same dims.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import ModelConfig, OutputShapeCheck
from ..errors import ExecutionError
from ..executors.base import LoadRunOutputs
from ..logs import InstanceLog

_KEY = "OUTPUT_SHAPE_CHECK"


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class OutputShapes:
    """The output-shape check of one instance, shared by its load, warm-up and serving engines."""

    def __init__(self, config: ModelConfig, log: InstanceLog, mode: OutputShapeCheck) -> None:
        self.config = config
        self.log = log
        self.mode = mode
        batch = (-1,) if config.batching else ()
        #: The shape each tensor output must have in ``error`` mode (batch dimension included).
        self.expected = {s.name: batch + s.shape for s in config.outputs if not s.is_string}
        self._strict = config.sequence.state_outputs if config.sequence else frozenset()
        #: Outputs no longer compared: already warned about, or not checked (``off``).
        self._settled: set[str] = (
            set(self.expected) - self._strict if mode is OutputShapeCheck.OFF else set()
        )
        #: The first mismatch seen per output (what ``pytorch-backend check`` reports).
        self.seen: dict[str, str] = {}

    def matches(self, name: str, shape: Sequence[int]) -> bool:
        expected = self.expected[name]
        return len(shape) == len(expected) and all(e in (-1, s) for e, s in zip(expected, shape))

    def check(self, name: str, shape: Sequence[int]) -> None:
        """One forward's output shape: on a mismatch, raise :class:`ExecutionError` or warn once."""
        if name in self._settled:  # warned already, or not checked
            return
        expected = self.expected[name]  # compared inline: this runs for every output of a forward
        if len(shape) == len(expected) and all(e in (-1, s) for e, s in zip(expected, shape)):
            return
        if self._mode(name) is OutputShapeCheck.ERROR:
            message = (
                f"output '{name}' has shape {_shape_text(shape)}; the configuration declares "
                f"{_shape_text(expected)}"
                + (" (-1: the batch dimension)" if self.config.batching else "")
            )
            self.seen.setdefault(name, message)
            raise ExecutionError(message)
        self._warn(name, f"output '{name}' has shape {_shape_text(shape)}")

    def at_load(self, run: LoadRunOutputs | None) -> None:
        """The output shapes of a run at load; in ``error`` mode a known mismatch fails the load."""
        if run is None:
            return
        for name, shape in run.shapes.items():
            if name in self._settled or name not in self.expected or self.matches(name, shape):
                continue
            slot = run.slots.get(name)
            what = f"output '{name}'" + (f" ({slot})" if slot else "")
            what += f" has shape {list(shape)} in a test run on zeros"
            if self._mode(name) is not OutputShapeCheck.ERROR:
                self._warn(name, what)
                continue
            message = f"{what}; the configuration declares {self._dims(name)}"
            if run.fixed:
                raise self.config.error(
                    f"{message}: correct the output's dims in config.pbtxt (or set {_KEY} to "
                    '"warn" to serve the model\'s shape, as the C++ backend does)'
                )
            self.seen.setdefault(name, message)
            self.log.warn(f"{message}; requests whose outputs differ from the dims will fail")

    def _mode(self, name: str) -> OutputShapeCheck:
        return OutputShapeCheck.ERROR if name in self._strict else self.mode

    def _dims(self, name: str) -> str:
        """``dims [4]`` and, when batching, `` ([-1, 4] with the batch)``."""
        dims = f"dims {_shape_text(self.config.output(name).shape)}"
        if self.config.batching:
            dims += f" ({_shape_text(self.expected[name])} with the batch)"
        return dims

    def _warn(self, name: str, what: str) -> None:
        self._settled.add(name)
        message = f"{what}; the configuration declares {self._dims(name)}"
        self.seen.setdefault(name, message)
        self.log.warn(
            f"{message}: served with the model's shape, as the C++ backend does (it never "
            f'compares output shapes with the config). Correct the dims, or set {_KEY} to "error" '
            'to refuse such outputs or "off" to silence this warning, logged once per output'
        )
