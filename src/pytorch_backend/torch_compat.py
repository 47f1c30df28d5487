"""Every private or version-dependent torch API and behaviour the backend relies on, in one place.

Tested in CI on torch 2.9 (Python 3.12), 2.13 (Python 3.11) and 2.15 (Python 3.13); see the
README's "Compatibility". Each function states what differs between versions and its fallback:

* the AOT-Inductor package loader (``torch._C._aoti.AOTIModelPackageLoader``, five arguments:
  path, model name, single-threaded, runners, device index), absent from builds without it;
* what an AOTI package states about its inputs: the input checks in its generated source
  (:mod:`.executors.aoti.checks`), preferred to the runtime's input-check messages: 2.13 and
  2.15 put the failed check in the exception, 2.9 raises only ``run_func_(...) API call failed
  at ...`` and prints the detail on stderr;
* dynamo's graph counter (``torch._dynamo.utils.counters``), ``maybe_mark_dynamic`` and the
  exception types of a failed ``torch.compile``;
* export internals: a program's call spec, the symbol of a symbolic size, pytree child specs;
* TorchScript's deprecation: a ``DeprecationWarning`` (2.13) or ``FutureWarning`` (2.14+) on
  every ``torch.jit.script`` / ``torch.jit.load``.

A torch older than :data:`MINIMUM` fails the load with an error naming the version and what is
missing (:func:`unsupported_reason`).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

#: The oldest torch CI tests (the Dockerfile's default); older ones are refused at load.
MINIMUM = (2, 9)
#: The torch releases CI runs the backend on.
TESTED = ("2.9.0", "2.13.0", "2.15.0")


def version(text: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``text`` (default: the running torch), e.g. ``"2.9.0+cu128"`` -> (2, 9)."""
    m = re.match(r"(\d+)\.(\d+)", text or torch.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def unsupported_reason(text: str | None = None) -> str | None:
    """Why the running torch (or ``text``) cannot serve, or None when it can."""
    text = text or torch.__version__
    if version(text) >= MINIMUM:
        return None
    return (
        f"torch {text} is not supported: the oldest supported torch is "
        f"{MINIMUM[0]}.{MINIMUM[1]} (CI tests {', '.join(TESTED)}); older releases lack the "
        "AOT-Inductor package loader with a device index and the export APIs the backend uses"
    )


# -- AOT-Inductor --------------------------------------------------------------------------------


class UnsupportedTorch(RuntimeError):
    """The running torch lacks an API the backend needs; the message names both."""


def aoti_package_loader(path: str, model_name: str, device_index: int) -> Any:
    """A package's runner, built directly (no ``torch._inductor`` import, no compiler probe).

    Arguments as ``torch._inductor.package.load_package`` (the same in 2.9, 2.13 and 2.15): not
    single-threaded (any thread may call it), one runner, the device index.
    """
    loader_type = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_type is None:
        raise UnsupportedTorch(
            f"torch {torch.__version__} has no torch._C._aoti.AOTIModelPackageLoader (the "
            "AOT-Inductor runtime bindings); install a torch built with them (2.9 or later)"
        )
    return loader_type(path, model_name, False, 1, device_index)


@dataclass(frozen=True)
class AotiCheck:
    """One input-check failure reported by an AOTI runner, parsed from its message."""

    leaf: int
    kind: str  # "small" | "large" | "static" | "dtype" | "layout" (sizes passed)
    text: str
    dim: int = -1
    value: int = 0
    expected: str = ""  # the expected dtype, for "dtype"


# The generated code's messages (``input_handles[3]: dim value is too small at 1, ...``); the
# same words in 2.9, 2.13 and 2.15, but 2.9 prints them on stderr instead of raising them.
AOTI_CHECK_RE = re.compile(r"input_handles\[(\d+)\]: ([^\n]*)")
_SMALL_RE = re.compile(r"too small at (\d+), expected it to be >= (-?\d+)")
_LARGE_RE = re.compile(r"too large at (\d+), expected to be <= (-?\d+)")
_STATIC_RE = re.compile(r"unmatched dim value at (\d+), expected: (-?\d+)")
_DTYPE_RE = re.compile(r"unmatched dtype, expected: -?\d+\(([^)]*)\)")
AOTI_COUNT_RE = re.compile(r"expected inputs vector size to be (\d+), but got (\d+)")
#: The runner's generic failure (torch 2.9), whose detail went to stderr.
AOTI_OPAQUE_RE = re.compile(r"API call failed at \S*model_container_runner\.cpp")
AT_DTYPES = {
    "at::kBool": "BOOL",
    "at::kByte": "UINT8",
    "at::kChar": "INT8",
    "at::kShort": "INT16",
    "at::kInt": "INT32",
    "at::kLong": "INT64",
    "at::kHalf": "FP16",
    "at::kFloat": "FP32",
    "at::kDouble": "FP64",
    "at::kBFloat16": "BF16",
}


def parse_aoti_check(message: str) -> AotiCheck | None:
    """The input check a runner's error message reports, or None (another error, or torch 2.9)."""
    m = AOTI_CHECK_RE.search(message)
    if m is None:
        return None
    leaf, text = int(m.group(1)), m.group(2).strip()
    for kind, regex in (("small", _SMALL_RE), ("large", _LARGE_RE), ("static", _STATIC_RE)):
        d = regex.search(text)
        if d:
            return AotiCheck(leaf, kind, text, int(d.group(1)), int(d.group(2)))
    d = _DTYPE_RE.search(text)
    if d:
        return AotiCheck(leaf, "dtype", text, value=-1, expected=d.group(1))
    if "stride" in text or "device" in text:
        return AotiCheck(leaf, "layout", text)
    return None


def aoti_error_is_opaque(message: str) -> bool:
    """True for a runner error without its detail (torch 2.9 prints that on stderr)."""
    return bool(AOTI_OPAQUE_RE.search(message)) and AOTI_CHECK_RE.search(message) is None


# -- dynamo --------------------------------------------------------------------------------------


def dynamo_unique_graphs() -> int:
    """Graphs torch.compile compiled in this process (``counters["stats"]["unique_graphs"]``)."""
    from torch._dynamo.utils import counters

    return int(counters.get("stats", {}).get("unique_graphs", 0))


def mark_dynamic(tensor: torch.Tensor, dim: int) -> None:
    """``torch._dynamo.maybe_mark_dynamic`` (a hint; no error when the dim specialises)."""
    torch._dynamo.maybe_mark_dynamic(tensor, dim)


def compile_error_types() -> tuple[type[BaseException], ...]:
    """The exception types that mean torch.compile itself failed (not the model's own code)."""
    from torch._dynamo.exc import TorchDynamoException

    types: list[type[BaseException]] = [TorchDynamoException]
    with contextlib.suppress(ImportError):
        from torch._inductor.exc import InductorError

        types.append(InductorError)
    return tuple(types)


# -- export and pytree ---------------------------------------------------------------------------


def program_call_spec(program: Any) -> tuple[Any, Any]:
    """(in_spec, out_spec) of a ``torch.export`` program (``call_spec``, else the module call
    graph's signature)."""
    spec = getattr(program, "call_spec", None)
    if spec is not None and getattr(spec, "in_spec", None) is not None:
        return spec.in_spec, spec.out_spec
    signature = program.module_call_graph[0].signature
    return signature.in_spec, signature.out_spec


def size_symbol(size: Any) -> Any:
    """The sympy expression behind a symbolic size (``SymInt.node.expr``); None for an int."""
    node = getattr(size, "node", None)
    return getattr(node, "expr", None)


def treespec_children(spec: Any) -> list[Any]:
    """Child specs of a pytree ``TreeSpec`` (``children()`` in recent torch, ``children_specs``
    before)."""
    children = getattr(spec, "children", None)
    return list(children() if callable(children) else spec.children_specs)


# -- TorchScript ---------------------------------------------------------------------------------

#: What torch raises on ``torch.jit.script`` / ``torch.jit.load`` once TorchScript is deprecated.
JIT_DEPRECATION_CATEGORIES = (DeprecationWarning, FutureWarning)
_JIT_DEPRECATION_RE = re.compile(r"deprecated", re.IGNORECASE)


@contextlib.contextmanager
def quiet_torchscript(caught: list[str] | None = None) -> Iterator[None]:
    """Keep torch's TorchScript deprecation warnings out of the log; their texts go to
    ``caught`` (other warnings are shown as usual)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
    for item in seen:
        message = str(item.message)
        if issubclass(item.category, JIT_DEPRECATION_CATEGORIES) and _JIT_DEPRECATION_RE.search(
            message
        ):
            if caught is not None:
                caught.append(message)
            continue
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def torchscript_deprecation(caught: list[str]) -> str | None:
    """The one log line for a TorchScript model when the running torch deprecates TorchScript
    (it warned while loading), else None."""
    if not caught:
        return None
    return (
        f"TorchScript is deprecated in torch {torch.__version__} (torch.jit.load warns that it "
        "will be removed); move this model to an AOT-Inductor package (model.pt2, platform: "
        '"torch_aoti"): `pytorch-backend convert` turns this model.pt into one, and '
        "`pytorch-backend package` builds one from the model's nn.Module"
    )
