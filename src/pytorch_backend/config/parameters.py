"""``config.pbtxt`` ``parameters``: one registry, parsed and validated once at load.

:data:`PARAMETERS` is the single list of keys this backend knows. Each entry gives the key, its
aliases, its parser, its default, the model kinds it has an effect on and a one-line effect; the
registry drives parsing, the unknown-key hints, the order of the effective-value log lines
(``runtime.report``) and the README's parameter table (``parameter_table``, checked by a test).

Keys are case-sensitive, as upstream. Booleans accept exactly ``true/on/1`` and ``false/off/0``
(lower-cased, as ``ParseBoolValue``); thread counts a non-negative decimal ``int`` (``0``: torch's
default; unlike upstream's ``std::stoi``, ``-1``, ``"4abc"`` or an overflow fail the load). Unknown
keys are not an error (Triton passes every key through) but are reported through ``warn`` with the
closest known key, so a typo such as ``INFERENCE_MDOE`` is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .compile_options import CompileOptions, parse_compile_options
from .enums import GradPolicy, ModelKind, OutputShapeCheck
from .values import (
    parse_batch_sizes,
    parse_bool,
    parse_cache_directory,
    parse_class_name,
    parse_file_name,
    parse_library_list,
    parse_method_name,
    parse_module_file_name,
    parse_output_shape_check,
    parse_thread_count,
)

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


@dataclass(frozen=True)
class Parameter:
    """One ``config.pbtxt`` parameter key."""

    key: str
    effect: str  # one line, for the README table
    default: str = "unset"  # as the README shows it
    field: str | None = None  # the BackendParameters field it sets
    parse: Callable[[str, str, str], object] | None = None
    applies_to: frozenset[ModelKind] = ALL_KINDS
    aliases: tuple[str, ...] = ()
    reader: str = BACKEND

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.aliases)

    @property
    def logged(self) -> bool:
        """Whether its effective value is logged at load, one line per instance."""
        return self.reader == BACKEND


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "INFERENCE_MODE",
        "`true`: forward under `torch.inference_mode()`; `false`: under `torch.no_grad()` "
        "(as upstream)",
        "`true`",
        "inference_mode",
        parse_bool,
    ),
    Parameter(
        "ENABLE_GRAD",
        "our grad policy (server #7974): forward with gradients enabled, for models that "
        "differentiate at inference; with an explicit `INFERENCE_MODE: true` it is a load error",
        "`false`",
        "enable_grad",
        parse_bool,
    ),
    Parameter(
        "DISABLE_OPTIMIZED_EXECUTION",
        "`torch._C._set_graph_executor_optimize(False)`, applied on the thread that runs forward",
        "`false`",
        "disable_optimized_execution",
        parse_bool,
        TORCHSCRIPT_ONLY,
    ),
    Parameter(
        "ENABLE_JIT_EXECUTOR",
        "TorchScript profiling executor on/off",
        "unset: torch's default",
        "enable_jit_executor",
        parse_bool,
        TORCHSCRIPT_ONLY,
    ),
    Parameter(
        "ENABLE_JIT_PROFILING",
        "TorchScript profiling mode on/off",
        "unset: torch's default",
        "enable_jit_profiling",
        parse_bool,
        TORCHSCRIPT_ONLY,
    ),
    Parameter(
        "ENABLE_TENSOR_FUSER",
        "TorchScript TensorExpr fuser on/off",
        "unset: torch's default",
        "enable_tensor_fuser",
        parse_bool,
        TORCHSCRIPT_ONLY,
    ),
    Parameter(
        "ENABLE_NVFUSER",
        "accepted; logs that NVFuser was removed from PyTorch",
        "unset",
        "enable_nvfuser",
        parse_bool,
        NO_KIND,
    ),
    Parameter(
        "DISABLE_CUDNN",
        "`torch.backends.cudnn.enabled = False` for this instance",
        "`false`",
        "disable_cudnn",
        parse_bool,
    ),
    Parameter(
        "ENABLE_CACHE_CLEANING",
        "`torch.cuda.empty_cache()` after each execution on a GPU instance (or KIND_MODEL with "
        "GPUs); nothing on CPU",
        "`false`",
        "enable_cache_cleaning",
        parse_bool,
    ),
    Parameter(
        "INTRA_OP_THREAD_COUNT",
        "`torch.set_num_threads(n)`; `0`: torch's default (one per CPU). Unset, a KIND_CPU "
        "instance gets max(1, (allowed CPUs − 1) ÷ CPU instances): one CPU is left to the "
        "server, and instances do not oversubscribe (see Threads)",
        "unset",
        "intra_op_thread_count",
        parse_thread_count,
        aliases=("NUM_THREADS",),
    ),
    Parameter(
        "INTER_OP_THREAD_COUNT",
        "`torch.set_num_interop_threads(n)`",
        "unset",
        "inter_op_thread_count",
        parse_thread_count,
        aliases=("NUM_INTEROP_THREADS",),
    ),
    Parameter(
        "ENABLE_WEIGHT_SHARING",
        "KIND_CPU instances of one model version map their weights from one shared file in "
        "`/dev/shm` instead of each holding a copy (see below)",
        "`false`",
        "enable_weight_sharing",
        parse_bool,
        MODULE_KINDS,
    ),
    Parameter(
        "CUSTOM_OP_LIBRARIES",
        "comma- or colon-separated shared libraries loaded with `torch.ops.load_library` before "
        "the model (relative paths: from the version directory); a missing one fails the load",
        "none",
        "custom_op_libraries",
        parse_library_list,
    ),
    Parameter(
        "MODEL_FILENAME",
        "the artifact's file name inside the version directory (needed in drop-in mode)",
        "unset",
        "model_filename",
        parse_file_name,
        ALL_KINDS - EAGER_ONLY,
    ),
    Parameter(
        "MODULE_FILENAME",
        "the nn.Module's Python file inside the version directory (its weights: the same name "
        "with `.pt`); selects the nn.Module kind, also in drop-in mode",
        "unset: `default_model_filename` if it ends in `.py`, else `model.py`",
        "module_filename",
        parse_module_file_name,
        EAGER_ONLY,
    ),
    Parameter(
        "MODULE_CLASS",
        "which nn.Module subclass of the module file to serve, when it defines several",
        "unset: the only one",
        "module_class",
        parse_class_name,
        EAGER_ONLY,
    ),
    Parameter(
        "METHOD",
        "the method served: a TorchScript `@torch.jit.export` method or an nn.Module method; "
        "names and auto-completion follow its signature; a `.pt2` refuses any other than forward",
        "`forward`",
        "method",
        parse_method_name,
        METHOD_KINDS,
    ),
    Parameter(
        "ENABLE_METRICS",
        "torch-aware Prometheus metrics of this model on Triton's metrics port (see Metrics); "
        "`false`: none are created",
        "`true`",
        "enable_metrics",
        parse_bool,
    ),
    Parameter(
        "WARMUP",
        "run every instance over its batch buckets on zeros at load, before the model is ready "
        "(see Warm-up); `false`: the first requests pay for lazy initialisation",
        "`true`",
        "warmup",
        parse_bool,
    ),
    Parameter(
        "WARMUP_BATCH_SIZES",
        'comma-separated batch sizes the warm-up runs (`"1,4,16"`), each at most `max_batch_size`',
        "powers of two up to `max_batch_size`, `max_batch_size` and the preferred batch sizes",
        "warmup_batch_sizes",
        parse_batch_sizes,
    ),
    Parameter(
        "CUDA_GRAPHS",
        "KIND_GPU instances capture one CUDA graph per warm-up batch size and replay the "
        "smallest that holds a batch, padded (see CUDA graphs); on a CPU instance, without CUDA "
        "or with `WARMUP: false` it logs that it has no effect",
        "`false`",
        "cuda_graphs",
        parse_bool,
        GRAPH_KINDS,
    ),
    Parameter(
        "REFUSE_WRITABLE_MODEL_DIRECTORY",
        "`true`: fail the load when the model or version directory, the artifact or another file "
        "of the version directory is world-writable (see Trust)",
        "`false`",
        "refuse_writable_model_directory",
        parse_bool,
    ),
    Parameter(
        "FORCE_CPU_ONLY_INPUT_TENSORS",
        'read by Triton\'s Python backend itself; `"no"`: inputs already on a GPU reach a GPU '
        "instance where they are (no host round trip)",
        "",
        reader=PYTHON_BACKEND,
    ),
    Parameter(
        "EXECUTION_ENV_PATH",
        "read by Triton's Python backend itself",
        "",
        reader=PYTHON_BACKEND,
    ),
    Parameter(
        "TORCH_COMPILE_OPTIONAL_PARAMETERS",
        "JSON object of `torch.compile` arguments (`fullgraph`, `dynamic`, `backend`, `mode`, "
        "`options`, `disable`); compiled and warmed up at load",
        "`{}`: inductor",
        "torch_compile",
        parse_compile_options,
        COMPILED_KINDS,
    ),
    Parameter(
        "COMPILE_CACHE",
        "writable directory of compiled artifacts saved after the warm-up and restored before "
        "compiling (see Compile cache); the version directory's `compile_cache/` is read first; "
        "`off`: neither",
        "`$PYTORCH_BACKEND_COMPILE_CACHE`, else `~/.cache/pytorch_backend/compile`",
        "compile_cache",
        parse_cache_directory,
        EAGER_ONLY,
    ),
    Parameter(
        "STOP_SERVER_ON_STICKY_ERROR",
        "after a sticky CUDA error (illegal address, device-side assert...; not out of memory) "
        "the instance SIGTERMs its tritonserver so a supervisor restarts it with fresh CUDA "
        "contexts (see Readiness); `false`: it only reports not ready and answers UNAVAILABLE",
        "`false`",
        "stop_server_on_sticky_error",
        parse_bool,
    ),
    Parameter(
        "ENABLE_CANCELLATION_CHECK",
        "ask Triton, per request, whether the client cancelled it before the batch is gathered "
        "(one round trip to the server each, 25–90 µs here); cancelled ones are answered "
        "CANCELLED and not computed. Unset: checked unless the warm-up measured a forward under "
        "10 × a check's ~50 µs (the check would cost more than it saves; see Cancellation); "
        "`true`/`false`: always/never",
        "unset: auto",
        "enable_cancellation_check",
        parse_bool,
    ),
    Parameter(
        "OUTPUT_SHAPE_CHECK",
        "an output whose shape contradicts its config `dims`: `warn` serves the model's shape, as "
        "the C++ backend does, with one warning per output and instance; `error` refuses it (at "
        "load where the shape is known there, else each such request); `off` serves it silently "
        "(see Output shapes)",
        "`warn`",
        "output_shape_check",
        parse_output_shape_check,
    ),
)

BY_KEY: Mapping[str, Parameter] = {key: p for p in PARAMETERS for key in p.keys}
KNOWN_KEYS: tuple[str, ...] = tuple(BY_KEY)
