"""``config.pbtxt`` ``parameters``: parsed and validated once at load.

Keys are case-sensitive, as upstream. Values follow the C++ backend's parsing where it is sane and
are stricter where it is not:

* booleans accept exactly ``true/on/1`` and ``false/off/0`` after lower-casing (as
  ``ParseBoolValue``); anything else fails the load;
* thread counts must be a non-negative decimal integer (surrounding whitespace allowed). ``0``
  leaves torch's default, like upstream, which ignores values <= 0; unlike upstream's ``std::stoi``
  a negative value, trailing junk (``"4abc"``) or a value that does not fit a C ``int`` fails the
  load instead of being silently truncated or aborting the process;
* unknown keys are not an error (Triton passes every key through) but are reported through
  ``warn`` with the closest known key, so a typo such as ``INFERENCE_MDOE`` is visible.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import ModelLoadError

GRAD_POLICIES = ("inference_mode", "no_grad", "enable_grad")

_TRUE = frozenset({"true", "on", "1"})
_FALSE = frozenset({"false", "off", "0"})
_INT_MAX = 2**31 - 1
_UINT_RE = re.compile(r"[0-9]+")

# Keys this backend reads (the alias spellings come from upstream's Python runtime).
BOOL_KEYS = {
    "INFERENCE_MODE": "inference_mode",
    "ENABLE_GRAD": "enable_grad",
    "DISABLE_OPTIMIZED_EXECUTION": "disable_optimized_execution",
    "DISABLE_CUDNN": "disable_cudnn",
    "ENABLE_CACHE_CLEANING": "enable_cache_cleaning",
    "ENABLE_WEIGHT_SHARING": "enable_weight_sharing",
}
OPTIONAL_BOOL_KEYS = {
    "ENABLE_JIT_EXECUTOR": "enable_jit_executor",
    "ENABLE_JIT_PROFILING": "enable_jit_profiling",
    "ENABLE_TENSOR_FUSER": "enable_tensor_fuser",
    "ENABLE_NVFUSER": "enable_nvfuser",
}
THREAD_KEYS = {
    # field: (primary key, alias)
    "intra_op_thread_count": ("INTRA_OP_THREAD_COUNT", "NUM_THREADS"),
    "inter_op_thread_count": ("INTER_OP_THREAD_COUNT", "NUM_INTEROP_THREADS"),
}
OTHER_KEYS = ("CUSTOM_OP_LIBRARIES", "MODEL_FILENAME")
# Read by Triton's Python backend itself (libtriton_python.so), not by this package.
PYTHON_BACKEND_KEYS = ("FORCE_CPU_ONLY_INPUT_TENSORS", "EXECUTION_ENV_PATH")
# Read by upstream's Python runtime only (torch.compile of nn.Module models): accepted, no effect.
IGNORED_KEYS = {
    "TORCH_COMPILE_OPTIONAL_PARAMETERS": (
        "it only configures torch.compile of nn.Module models in upstream's Python runtime; "
        "this backend serves TorchScript and AOTInductor artifacts, which it does not recompile"
    ),
}

KNOWN_KEYS: tuple[str, ...] = (
    *BOOL_KEYS,
    *OPTIONAL_BOOL_KEYS,
    *(key for pair in THREAD_KEYS.values() for key in pair),
    *OTHER_KEYS,
    *PYTHON_BACKEND_KEYS,
    *IGNORED_KEYS,
)


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

    @property
    def grad_policy(self) -> str:
        """``"enable_grad"``, ``"inference_mode"`` or ``"no_grad"`` (one of GRAD_POLICIES)."""
        if self.enable_grad:
            return "enable_grad"
        return "inference_mode" if self.inference_mode else "no_grad"


def _bad(model: str, key: str, value: str, expected: str) -> ModelLoadError:
    return ModelLoadError(
        f"model '{model}': parameter '{key}' has invalid value {value!r}: expected {expected}"
    )


def parse_bool(model: str, key: str, value: str) -> bool:
    """Upstream ``ParseBoolValue``: lower-cased ``true/on/1`` or ``false/off/0``."""
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _bad(model, key, value, "a boolean (true/false, on/off, 1/0)")


def parse_thread_count(model: str, key: str, value: str) -> int | None:
    """A non-negative decimal integer; ``0`` means "leave torch's default" (returns None)."""
    text = value.strip()
    if not _UINT_RE.fullmatch(text):
        raise _bad(model, key, value, "a non-negative integer (0 = torch's default)")
    number = int(text)
    if number > _INT_MAX:
        raise _bad(model, key, value, f"an integer no larger than {_INT_MAX}")
    return number or None


def parse_library_list(value: str) -> tuple[str, ...]:
    """Split ``CUSTOM_OP_LIBRARIES`` on commas and colons; blanks are dropped."""
    return tuple(p.strip() for p in re.split(r"[,:]", value) if p.strip())


def closest_key(key: str) -> str | None:
    """The known key most similar to ``key`` (case-insensitive comparison), if any is close."""
    by_upper = {k.upper(): k for k in KNOWN_KEYS}
    match = difflib.get_close_matches(key.upper(), list(by_upper), n=1, cutoff=0.6)
    return by_upper[match[0]] if match else None


def parse_parameters(
    model_name: str, raw: Mapping[str, str], warn: Callable[[str], None]
) -> BackendParameters:
    """Parse the config's string-valued ``parameters``; bad values raise ModelLoadError."""
    values: dict[str, object] = {}
    for key, field_name in {**BOOL_KEYS, **OPTIONAL_BOOL_KEYS}.items():
        if key in raw:
            values[field_name] = parse_bool(model_name, key, raw[key])

    if values.get("enable_grad") and values.get("inference_mode") is True:
        raise ModelLoadError(
            f"model '{model_name}': parameters 'ENABLE_GRAD' = {raw['ENABLE_GRAD']!r} and "
            f"'INFERENCE_MODE' = {raw['INFERENCE_MODE']!r} contradict each other: gradients "
            "cannot be enabled under inference mode (drop INFERENCE_MODE or set it to false)"
        )
    if values.get("enable_grad"):
        values["inference_mode"] = False

    for field_name, (key, alias) in THREAD_KEYS.items():
        given = {k: raw[k] for k in (key, alias) if k in raw}
        parsed = {k: parse_thread_count(model_name, k, v) for k, v in given.items()}
        if len(set(parsed.values())) > 1:
            raise ModelLoadError(
                f"model '{model_name}': parameters '{key}' = {raw[key]!r} and '{alias}' = "
                f"{raw[alias]!r} are two spellings of one setting with different values; "
                "give only one"
            )
        if parsed:
            values[field_name] = next(iter(parsed.values()))

    if "CUSTOM_OP_LIBRARIES" in raw:
        values["custom_op_libraries"] = parse_library_list(raw["CUSTOM_OP_LIBRARIES"])

    if "MODEL_FILENAME" in raw:
        filename = raw["MODEL_FILENAME"]
        if not filename.strip() or "/" in filename or "\\" in filename or filename in (".", ".."):
            raise _bad(
                model_name,
                "MODEL_FILENAME",
                filename,
                "a plain file name inside the version directory (no path separators)",
            )
        values["model_filename"] = filename

    for key in raw:
        if key in IGNORED_KEYS:
            warn(f"model '{model_name}': parameter '{key}' has no effect here: {IGNORED_KEYS[key]}")
        elif key not in KNOWN_KEYS:
            suggestion = closest_key(key)
            hint = (
                f"did you mean '{suggestion}'?"
                if suggestion
                else "known keys: " + ", ".join(sorted(KNOWN_KEYS))
            )
            warn(f"model '{model_name}': unknown parameter '{key}' is ignored ({hint})")

    return BackendParameters(**values)  # type: ignore[arg-type]
