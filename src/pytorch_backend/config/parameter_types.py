"""The types of the parameter registry: the parsed values, one registry entry, the kind sets.

:class:`Parameter` is one entry of :data:`.parameters.PARAMETERS`, which generates
``BackendParameters`` (a model's parsed values) from the entries' fields, types and defaults.
An entry's :meth:`Parameter.logged_value` is the one place that writes the "no effect on
<kind>s" line of a parameter whose ``applies_to`` leaves out the model's kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .compile_options import CompileOptions
from .enums import ModelKind

if TYPE_CHECKING:
    from ..runtime.report import EffectiveSettings

ALL_KINDS = frozenset(ModelKind)
TORCHSCRIPT_ONLY = frozenset({ModelKind.TORCHSCRIPT})
EAGER_ONLY = frozenset({ModelKind.EAGER})
#: Kinds whose methods can be called by name (``METHOD``).
METHOD_KINDS = frozenset({ModelKind.TORCHSCRIPT, ModelKind.EAGER})
#: Kinds whose nn.Module this backend holds (weights in Python tensors, torch.compile).
MODULE_KINDS = frozenset({ModelKind.TORCHSCRIPT, ModelKind.EAGER, ModelKind.EXPORTED_PROGRAM})
COMPILED_KINDS = frozenset({ModelKind.EAGER, ModelKind.EXPORTED_PROGRAM})
GRAPH_KINDS = frozenset({ModelKind.TORCHSCRIPT, ModelKind.AOTI})
NO_KIND: frozenset[ModelKind] = frozenset()

#: Who reads a key: this backend, Triton's Python backend, or nobody here (accepted, warned).
BACKEND, PYTHON_BACKEND, IGNORED = "backend", "python_backend", "ignored"

#: CPUs the default ``INTRA_OP_THREAD_COUNT`` leaves to tritonserver and the stub.
SERVER_CPUS = 1

#: How a logged parameter's effective value reads (``KEY = <this>``), from the load's settings.
Describer = Callable[["EffectiveSettings"], str]

_PLURALS = {ModelKind.TORCHSCRIPT: "TorchScript models", ModelKind.EAGER: "nn.Module models"}


def on_off(value: bool | None) -> str:
    return "unknown" if value is None else ("true" if value else "false")


def shown(value: object) -> str:
    """A parameter's value as the log shows it, where no describer says more."""
    if value is None:
        return "not given"
    if isinstance(value, bool):
        return on_off(value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (str, int)):
        return str(value)
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "none"
    if isinstance(value, CompileOptions):
        return value.text
    return str(value)


@dataclass(frozen=True)
class Parameter:
    """One ``config.pbtxt`` parameter key: everything the backend knows about it.

    ``describe`` None logs the plain value (:func:`shown`). ``explains_kind``: the describer
    itself says why the parameter does nothing on a kind outside ``applies_to`` (else the
    generated "no effect on <kind>s" line replaces it there).
    """

    key: str
    effect: str  # one line, for the README table
    default_text: str = "unset"  # the default as the README shows it
    field: str | None = None  # the BackendParameters field it sets
    parse: Callable[[str, str, str], object] | None = None
    applies_to: frozenset[ModelKind] = ALL_KINDS
    aliases: tuple[str, ...] = ()
    reader: str = BACKEND
    describe: Describer | None = None
    explains_kind: bool = False
    type: str | None = None  # the field's type, as an annotation
    default: object = None  # the field's value when the key is absent

    def __post_init__(self) -> None:
        read_here = self.reader == BACKEND
        given = [x is not None for x in (self.field, self.parse, self.type)]
        if (read_here and not all(given)) or (not read_here and any(given)):
            need = "needs a field, a type and a parser" if read_here else "takes no field or parser"
            raise ValueError(f"parameter '{self.key}' read by {self.reader} {need}")

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.aliases)

    @property
    def logged(self) -> bool:
        """Whether its effective value is logged at load, one line per instance."""
        return self.reader == BACKEND

    def logged_value(self, effective: EffectiveSettings) -> str:
        """``KEY = <this>``: the describer's text, or "no effect" outside ``applies_to``."""
        value = getattr(effective.params, self.field or "", None)
        kind = effective.kind
        if kind is not None and kind not in self.applies_to and not self.explains_kind:
            given = "" if value == self.default else f"{shown(value)} given, "
            return f"{given}no effect on {_PLURALS.get(kind, f'{kind.value}s')}"
        if self.describe is not None:
            return self.describe(effective)
        return shown(value)
