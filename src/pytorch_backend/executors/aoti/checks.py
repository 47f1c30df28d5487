"""The input checks an AOT-Inductor package compiled in, read from its generated C++ source.

A package stores no input shapes or dtypes as data, but it ships the wrapper source that
AOT-Inductor generated, and that source holds one ``check_input_<n>`` function per input leaf
(the checks ``AOTI_RUNTIME_CHECK_INPUTS`` turns on): its expected dtype, every static dim
(``if (4 != argN_size[1])``), every dynamic dim's bounds (``argN_size[0] < 2``,
``argN_size[0] > 8``) and its strides. This module parses those functions; it is pure text
processing. The executor's probe (:mod:`.probe`) checks the same facts at run time.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...torch_compat import AotiCheck

_FUNCTION_RE = re.compile(r"static void check_input_(\d+)\(")
_DTYPE_RE = re.compile(r"_expected_dtype = aoti_torch_dtype_(\w+)\(\)")
_STATIC_RE = re.compile(r"if \((-?\d+) != \w+_size\[(\d+)\]\)")
_LOW_RE = re.compile(r"if \(\w+_size\[(\d+)\] < (-?\d+)\)")
_HIGH_RE = re.compile(r"if \(\w+_size\[(\d+)\] > (-?\d+)\)")
_INDEX_RE = re.compile(r"\w+_(?:size|stride)\[(\d+)\]")
_AOTI_DTYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "BF16",
}


@dataclass(frozen=True)
class DimCheck:
    """One dimension of an input: static (``low == high``) or a range (``high`` None: open)."""

    low: int
    high: int | None

    @property
    def static(self) -> bool:
        return self.high is not None and self.low == self.high


@dataclass(frozen=True)
class InputCheck:
    """What the package checks of one input leaf."""

    dtype: str  # Triton name without TYPE_, or the AOTI name when it has no Triton type
    dims: tuple[DimCheck, ...]


def package_source(path: Path) -> str | None:
    """The generated wrapper source inside the package (None when it was not packaged)."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/data/aotinductor/" in name and name.endswith(".cpp"):
                text = archive.read(name).decode("utf-8", errors="replace")
                if "check_input_0(" in text or "inputs_info_" in text:
                    return text
    return None


def parse_input_checks(source: str) -> list[InputCheck]:
    """One :class:`InputCheck` per ``check_input_<n>`` function, in leaf order."""
    starts = [(int(m.group(1)), m.end()) for m in _FUNCTION_RE.finditer(source)]
    checks: dict[int, InputCheck] = {}
    for i, (leaf, start) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else len(source)
        body = source[start:end]
        # The function ends at the next top-level definition.
        stop = body.find("\n}\n")
        body = body[: stop if stop >= 0 else len(body)]
        checks[leaf] = _parse_function(body)
    return [checks[i] for i in sorted(checks)]


def _parse_function(body: str) -> InputCheck:
    dtype_match = _DTYPE_RE.search(body)
    aoti_dtype = dtype_match.group(1) if dtype_match else "unknown"
    indices = [int(m.group(1)) for m in _INDEX_RE.finditer(body)]
    rank = max(indices) + 1 if indices else 0
    low = dict.fromkeys(range(rank), 0)
    high: dict[int, int | None] = dict.fromkeys(range(rank))
    for m in _STATIC_RE.finditer(body):
        low[int(m.group(2))] = high[int(m.group(2))] = int(m.group(1))
    for m in _LOW_RE.finditer(body):
        low[int(m.group(1))] = int(m.group(2))
    for m in _HIGH_RE.finditer(body):
        high[int(m.group(1))] = int(m.group(2))
    dims = tuple(DimCheck(low[d], high[d]) for d in range(rank))
    return InputCheck(_AOTI_DTYPES.get(aoti_dtype, aoti_dtype), dims)


def describe_dim(dim: DimCheck) -> str:
    """What the package accepts in one dim: ``4``, ``2..32`` or ``>= 2``."""
    if dim.static:
        return str(dim.low)
    if dim.high is None:
        return f">= {dim.low}"
    return f"{dim.low}..{dim.high}"


def violation(leaf: int, check: InputCheck, tensor: Any) -> AotiCheck | None:
    """The first of ``check``'s conditions ``tensor`` breaks, in the words of AOTI's own input
    check (so a refused request reads the same on every torch); None when it passes."""
    where = f"input_handles[{leaf}]"
    if tensor.dim() != len(check.dims):
        text = f"{where}: unmatched number of dims, expected: {len(check.dims)}, but got: "
        return AotiCheck(leaf, "rank", text + str(tensor.dim()))
    for d, (size, dim) in enumerate(zip(tensor.shape, check.dims)):
        if dim.static and size != dim.low:
            text = f"unmatched dim value at {d}, expected: {dim.low}, but got: {size}"
            return AotiCheck(leaf, "static", f"{where}: {text}", d, dim.low)
        if size < dim.low:
            text = f"dim value is too small at {d}, expected it to be >= {dim.low}, but got: {size}"
            return AotiCheck(leaf, "small", f"{where}: {text}", d, dim.low)
        if dim.high is not None and size > dim.high:
            text = f"dim value is too large at {d}, expected to be <= {dim.high}, but got: {size}"
            return AotiCheck(leaf, "large", f"{where}: {text}", d, dim.high)
    return None
