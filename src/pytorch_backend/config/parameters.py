"""``config.pbtxt`` ``parameters``: the registry, the one source of what each key is and does.

:data:`PARAMETERS` is the single list of keys this backend knows. Each entry gives the key, its
aliases, its field of :class:`BackendParameters` (which types it and gives its default), its
parser, the model kinds it has an effect on, a one-line effect and how its effective value is
logged at load (``describe``). The registry drives parsing (``parameter_parsing``), the
unknown-key hints, the effective-value log lines and their order (``runtime.report``; outside
``applies_to`` a generated "no effect on <kind>s" line), the README's parameter table
(``parameter_table``, checked by a test) and the tests' key lists.

Adding a parameter is two edits:

1. its ``Parameter`` entry here: key, effect, README default, field name, parser, ``applies_to``,
   the field's ``type`` and ``default``; ``describe`` when the plain value is not the whole story
   (a function in ``describers``, or a ``Decision``'s reason). ``BackendParameters``
   (``backend_parameters``) is generated from the entries, so the field exists from then on;
2. its consumer reads ``params.<field>`` (a setting the load decides returns a ``Decision``).

Then regenerate the README table (``parameter_table.markdown_table()``; a unit test fails until
it agrees); the tests' key lists are derived from the registry.

Keys are case-sensitive, as upstream. Booleans accept exactly ``true/on/1`` and ``false/off/0``
(lower-cased, as ``ParseBoolValue``); thread counts a non-negative decimal ``int`` (``0``: torch's
default; unlike upstream's ``std::stoi``, ``-1``, ``"4abc"`` or an overflow fail the load). Unknown
keys are not an error (Triton passes every key through) but are reported through ``warn`` with the
closest known key, so a typo such as ``INFERENCE_MDOE`` is visible.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import describers
from .compile_options import CompileOptions, parse_compile_options
from .enums import OutputShapeCheck
from .parameter_types import (
    ALL_KINDS,
    BACKEND,
    COMPILED_KINDS,
    EAGER_ONLY,
    GRAPH_KINDS,
    IGNORED,
    METHOD_KINDS,
    MODULE_KINDS,
    NO_KIND,
    PYTHON_BACKEND,
    TORCHSCRIPT_ONLY,
    Parameter,
)
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

__all__ = [
    "ALL_KINDS",
    "BACKEND",
    "BY_KEY",
    "IGNORED",
    "KNOWN_KEYS",
    "METHOD_KINDS",
    "PARAMETERS",
    "PYTHON_BACKEND",
    "Parameter",
    "parse_bool",
]

PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "INFERENCE_MODE",
        "`true`: forward under `torch.inference_mode()`; `false`: under `torch.no_grad()` "
        "(as upstream)",
        "`true`",
        "inference_mode",
        parse_bool,
        describe=describers.inference_mode,
        type="bool",
        default=True,
    ),
    Parameter(
        "ENABLE_GRAD",
        "our grad policy (server #7974): forward with gradients enabled, for models that "
        "differentiate at inference; with an explicit `INFERENCE_MODE: true` it is a load error",
        "`false`",
        "enable_grad",
        parse_bool,
        type="bool",
        default=False,
    ),
    Parameter(
        "DISABLE_OPTIMIZED_EXECUTION",
        "`torch._C._set_graph_executor_optimize(False)`, applied on the thread that runs forward",
        "`false`",
        "disable_optimized_execution",
        parse_bool,
        TORCHSCRIPT_ONLY,
        describe=describers.optimized_execution,
        type="bool",
        default=False,
    ),
    Parameter(
        "ENABLE_JIT_EXECUTOR",
        "TorchScript profiling executor on/off",
        "unset: torch's default",
        "enable_jit_executor",
        parse_bool,
        TORCHSCRIPT_ONLY,
        describe=describers.jit_flag(lambda s: s.jit_executor, lambda p: p.enable_jit_executor),
        type="bool | None",
        default=None,
    ),
    Parameter(
        "ENABLE_JIT_PROFILING",
        "TorchScript profiling mode on/off",
        "unset: torch's default",
        "enable_jit_profiling",
        parse_bool,
        TORCHSCRIPT_ONLY,
        describe=describers.jit_flag(lambda s: s.jit_profiling, lambda p: p.enable_jit_profiling),
        type="bool | None",
        default=None,
    ),
    Parameter(
        "ENABLE_TENSOR_FUSER",
        "TorchScript TensorExpr fuser on/off",
        "unset: torch's default",
        "enable_tensor_fuser",
        parse_bool,
        TORCHSCRIPT_ONLY,
        describe=describers.jit_flag(lambda s: s.tensor_fuser, lambda p: p.enable_tensor_fuser),
        type="bool | None",
        default=None,
    ),
    Parameter(
        "ENABLE_NVFUSER",
        "accepted; logs that NVFuser was removed from PyTorch",
        "unset",
        "enable_nvfuser",
        parse_bool,
        NO_KIND,
        describe=describers.nvfuser,
        explains_kind=True,
        type="bool | None",
        default=None,
    ),
    Parameter(
        "DISABLE_CUDNN",
        "`torch.backends.cudnn.enabled = False` for this instance",
        "`false`",
        "disable_cudnn",
        parse_bool,
        describe=describers.cudnn,
        type="bool",
        default=False,
    ),
    Parameter(
        "ENABLE_CACHE_CLEANING",
        "`torch.cuda.empty_cache()` after each execution on a GPU instance (or KIND_MODEL with "
        "GPUs); nothing on CPU",
        "`false`",
        "enable_cache_cleaning",
        parse_bool,
        describe=describers.cache_cleaning,
        type="bool",
        default=False,
    ),
    Parameter(
        "INTRA_OP_THREAD_COUNT",
        "`torch.set_num_threads(n)`; `0`: torch's default (one per CPU). Unset, a KIND_CPU "
        "instance gets max(1, (allowed CPUs − 1) ÷ CPU instances), one CPU left to the server, "
        "or its whole share (CPUs ÷ CPU instances) when the warm-up measures a compute-bound "
        "forward that runs faster with it (see Threads)",
        "unset",
        "intra_op_thread_count",
        parse_thread_count,
        aliases=("NUM_THREADS",),
        describe=describers.intra_op_threads,
        type="int | None",
        default=None,
    ),
    Parameter(
        "INTER_OP_THREAD_COUNT",
        "`torch.set_num_interop_threads(n)`",
        "unset",
        "inter_op_thread_count",
        parse_thread_count,
        aliases=("NUM_INTEROP_THREADS",),
        describe=describers.inter_op_threads,
        type="int | None",
        default=None,
    ),
    Parameter(
        "ENABLE_WEIGHT_SHARING",
        "KIND_CPU instances of one model version map their weights from one shared file in "
        "`/dev/shm` instead of each holding a copy (see below)",
        "`false`",
        "enable_weight_sharing",
        parse_bool,
        MODULE_KINDS,
        describe=lambda e: e.weight_sharing.reason,
        explains_kind=True,
        type="bool",
        default=False,
    ),
    Parameter(
        "CUSTOM_OP_LIBRARIES",
        "comma- or colon-separated shared libraries loaded with `torch.ops.load_library` before "
        "the model (relative paths: from the version directory); a missing one fails the load",
        "none",
        "custom_op_libraries",
        parse_library_list,
        describe=describers.libraries,
        type="tuple[str, ...]",
        default=(),
    ),
    Parameter(
        "MODEL_FILENAME",
        "the artifact's file name inside the version directory (needed in drop-in mode)",
        "unset",
        "model_filename",
        parse_file_name,
        ALL_KINDS - EAGER_ONLY,
        type="str | None",
        default=None,
    ),
    Parameter(
        "MODULE_FILENAME",
        "the nn.Module's Python file inside the version directory (its weights: the same name "
        "with `.pt`); selects the nn.Module kind, also in drop-in mode",
        "unset: `default_model_filename` if it ends in `.py`, else `model.py`",
        "module_filename",
        parse_module_file_name,
        EAGER_ONLY,
        type="str | None",
        default=None,
    ),
    Parameter(
        "MODULE_CLASS",
        "which nn.Module subclass of the module file to serve, when it defines several",
        "unset: the only one",
        "module_class",
        parse_class_name,
        EAGER_ONLY,
        type="str | None",
        default=None,
    ),
    Parameter(
        "METHOD",
        "the method served: a TorchScript `@torch.jit.export` method or an nn.Module method; "
        "names and auto-completion follow its signature; a `.pt2` refuses any other than forward",
        "`forward`",
        "method",
        parse_method_name,
        METHOD_KINDS,
        type="str",
        default="forward",
    ),
    Parameter(
        "ENABLE_METRICS",
        "torch-aware Prometheus metrics of this model on Triton's metrics port (see Metrics); "
        "`false`: none are created",
        "`true`",
        "enable_metrics",
        parse_bool,
        describe=lambda e: e.metrics.reason,
        type="bool",
        default=True,
    ),
    Parameter(
        "WARMUP",
        "run every instance over its batch buckets on zeros at load, before the model is ready "
        "(see Warm-up); `false`: the first requests pay for lazy initialisation",
        "`true`",
        "warmup",
        parse_bool,
        describe=describers.warmup,
        type="bool",
        default=True,
    ),
    Parameter(
        "WARMUP_BATCH_SIZES",
        'comma-separated batch sizes the warm-up runs (`"1,4,16"`), each at most `max_batch_size`',
        "powers of two up to `max_batch_size`, `max_batch_size` and the preferred batch sizes",
        "warmup_batch_sizes",
        parse_batch_sizes,
        describe=describers.warmup_sizes,
        type="tuple[int, ...] | None",
        default=None,
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
        describe=lambda e: e.cuda_graphs.reason,
        type="bool",
        default=False,
    ),
    Parameter(
        "REFUSE_WRITABLE_MODEL_DIRECTORY",
        "`true`: fail the load when the model or version directory, the artifact or another file "
        "of the version directory is world-writable (see Trust)",
        "`false`",
        "refuse_writable_model_directory",
        parse_bool,
        type="bool",
        default=False,
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
        describe=lambda e: e.params.torch_compile.describe(),
        type="CompileOptions",
        default=CompileOptions(),
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
        describe=lambda e: e.params.compile_cache or "default",
        type="str | None",
        default=None,
    ),
    Parameter(
        "STOP_SERVER_ON_STICKY_ERROR",
        "after a sticky CUDA error (illegal address, device-side assert...; not out of memory) "
        "the instance SIGTERMs its tritonserver so a supervisor restarts it with fresh CUDA "
        "contexts (see Readiness); `false`: it only reports not ready and answers UNAVAILABLE",
        "`false`",
        "stop_server_on_sticky_error",
        parse_bool,
        type="bool",
        default=False,
    ),
    Parameter(
        "ENABLE_CANCELLATION_CHECK",
        "ask Triton, per request, whether the client cancelled it before the batch is gathered "
        "(one round trip to the server each, 25–90 µs here); cancelled ones are answered "
        "CANCELLED and not computed. Unset: checked only when a request's share of a forward "
        "(the warm-up's cheapest per row) costs at least 20 × a check's ~90 µs, so the check adds "
        "at most 5 % (see Cancellation); `true`/`false`: always/never",
        "unset: auto",
        "enable_cancellation_check",
        parse_bool,
        describe=describers.cancellation_check,
        type="bool | None",
        default=None,
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
        describe=describers.output_shapes,
        type="OutputShapeCheck",
        default=OutputShapeCheck.WARN,
    ),
)

BY_KEY: Mapping[str, Parameter] = {key: p for p in PARAMETERS for key in p.keys}
KNOWN_KEYS: tuple[str, ...] = tuple(BY_KEY)
