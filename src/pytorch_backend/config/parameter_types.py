"""The types of the parameter registry: the parsed values, one registry entry, the kind sets.

:class:`BackendParameters` holds a model's parsed values (its fields' types and defaults are the
parameters'); :class:`Parameter` is one entry of :data:`.parameters.PARAMETERS`. An entry's
:meth:`Parameter.logged_value` is the one place that writes the "no effect on <kind>s" line of a
parameter whose ``applies_to`` leaves out the model's kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .compile_options import CompileOptions
from .enums import GradPolicy, ModelKind, OutputShapeCheck

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


@dataclass(frozen=True)
class BackendParameters:
    """Effective backend parameters of one model (defaults = parameter absent)."""

    inference_mode: bool = True
    enable_grad: bool = False
    disable_optimized_execution: bool = False
    enable_jit_executor: bool | None = None
    enable_jit_profiling: bool | None = None
    enable_tensor_fuser: bool | None = None
    enable_nvfuser: bool | None = None
    disable_cudnn: bool = False
    enable_cache_cleaning: bool = False
    intra_op_thread_count: int | None = None
    inter_op_thread_count: int | None = None
    enable_weight_sharing: bool = False
    custom_op_libraries: tuple[str, ...] = ()
    model_filename: str | None = None
    torch_compile: CompileOptions = CompileOptions()
    module_filename: str | None = None
    module_class: str | None = None
    method: str = "forward"
    compile_cache: str | None = None
    enable_metrics: bool = True
    warmup: bool = True
    warmup_batch_sizes: tuple[int, ...] | None = None
    cuda_graphs: bool = False
    stop_server_on_sticky_error: bool = False
    enable_cancellation_check: bool | None = None  # None: decided at load from the warm-up
    refuse_writable_model_directory: bool = False
    output_shape_check: OutputShapeCheck = OutputShapeCheck.WARN

    @property
    def grad_policy(self) -> GradPolicy:
        if self.enable_grad:
            return GradPolicy.ENABLE_GRAD
        return GradPolicy.INFERENCE_MODE if self.inference_mode else GradPolicy.NO_GRAD


_FIELDS = BackendParameters.__dataclass_fields__
_DEFAULTS = BackendParameters()


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
    field: str | None = None  # the BackendParameters field it sets (its type and default)
    parse: Callable[[str, str, str], object] | None = None
    applies_to: frozenset[ModelKind] = ALL_KINDS
    aliases: tuple[str, ...] = ()
    reader: str = BACKEND
    describe: Describer | None = None
    explains_kind: bool = False

    def __post_init__(self) -> None:
        read_here = self.reader == BACKEND
        if read_here != (self.field is not None and self.parse is not None):
            need = "needs a field and a parser" if read_here else "takes no field or parser"
            raise ValueError(f"parameter '{self.key}' read by {self.reader} {need}")
        if self.field is not None and self.field not in _FIELDS:
            raise ValueError(f"parameter '{self.key}': BackendParameters has no '{self.field}'")

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.aliases)

    @property
    def logged(self) -> bool:
        """Whether its effective value is logged at load, one line per instance."""
        return self.reader == BACKEND

    @property
    def default(self) -> object:
        """The value when the key is absent: its field's default."""
        return getattr(_DEFAULTS, self.field) if self.field is not None else None

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
