"""Parsers for ``config.pbtxt`` parameter values: each takes (model, key, value) and fails the load.

Booleans accept exactly ``true/on/1`` and ``false/off/0`` after lower-casing (upstream's
``ParseBoolValue``); thread counts are non-negative decimal integers that fit a C ``int``; file
names are plain names inside the version directory; a choice (``OUTPUT_SHAPE_CHECK``) is one of
its enum's values, in any case.
"""

from __future__ import annotations

import re

from ..errors import ModelLoadError
from .enums import OutputShapeCheck

_TRUE = frozenset({"true", "on", "1"})
_FALSE = frozenset({"false", "off", "0"})
_INT_MAX = 2**31 - 1
_UINT_RE = re.compile(r"[0-9]+")


def _bad(model: str, key: str, value: str, expected: str) -> ModelLoadError:
    return ModelLoadError(
        f"parameter '{key}' has invalid value {value!r}: expected {expected}", model=model
    )


def parse_bool(model: str, key: str, value: str) -> bool:
    """Upstream ``ParseBoolValue``: lower-cased ``true/on/1`` or ``false/off/0``."""
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _bad(model, key, value, "a boolean (true/false, on/off, 1/0)")


def parse_thread_count(model: str, key: str, value: str) -> int:
    """A non-negative decimal integer; ``0`` means "leave torch's default"."""
    text = value.strip()
    if not _UINT_RE.fullmatch(text):
        raise _bad(model, key, value, "a non-negative integer (0 = torch's default)")
    number = int(text)
    if number > _INT_MAX:
        raise _bad(model, key, value, f"an integer no larger than {_INT_MAX}")
    return number


def parse_library_list(model: str, key: str, value: str) -> tuple[str, ...]:
    """Split ``CUSTOM_OP_LIBRARIES`` on commas and colons; blanks are dropped."""
    return tuple(p.strip() for p in re.split(r"[,:]", value) if p.strip())


def parse_file_name(model: str, key: str, value: str) -> str:
    """A plain file name inside the version directory."""
    if not value.strip() or "/" in value or "\\" in value or value in (".", ".."):
        raise _bad(
            model, key, value, "a plain file name inside the version directory (no path separators)"
        )
    return value


def parse_module_file_name(model: str, key: str, value: str) -> str:
    """A plain ``.py`` file name inside the version directory."""
    name = parse_file_name(model, key, value)
    if not name.endswith(".py"):
        raise _bad(model, key, value, "the name of a Python file ending in '.py'")
    return name


def parse_class_name(model: str, key: str, value: str) -> str:
    """A Python identifier (the name of a class defined in the module file)."""
    if not value.isidentifier():
        raise _bad(model, key, value, "a Python class name")
    return value


def parse_method_name(model: str, key: str, value: str) -> str:
    """A Python identifier (the name of the model's method to serve)."""
    if not value.isidentifier():
        raise _bad(model, key, value, "a method name such as 'forward' or 'encode'")
    return value


def parse_cache_directory(model: str, key: str, value: str) -> str:
    """``off`` (also ``false``/``0``), or an absolute directory path."""
    value = value.strip()
    if value.lower() in ("off", "false", "0"):
        return "off"
    if not value.startswith("/"):
        raise _bad(model, key, value, "'off' or an absolute directory path")
    return value


def parse_batch_sizes(model: str, key: str, value: str) -> tuple[int, ...]:
    """Comma-separated positive batch sizes (``"1,4,16"``), sorted and without repeats."""
    parts = [p.strip() for p in value.split(",")]
    if not parts or not all(_UINT_RE.fullmatch(p) and 0 < int(p) <= _INT_MAX for p in parts):
        raise _bad(model, key, value, "comma-separated positive batch sizes, e.g. '1,4,16'")
    return tuple(sorted({int(p) for p in parts}))


def parse_output_shape_check(model: str, key: str, value: str) -> OutputShapeCheck:
    """``warn``, ``error`` or ``off`` (any case, surrounding whitespace allowed)."""
    try:
        return OutputShapeCheck(value.strip().lower())
    except ValueError:
        choices = ", ".join(repr(c.value) for c in OutputShapeCheck)
        raise _bad(model, key, value, f"one of {choices}") from None
