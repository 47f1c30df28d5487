"""One-line forms of torch's error texts: the model's own message first, then a short location.

A TorchScript exception carries the interpreter's traceback (serialized code, then the author's
original source with its file paths) and the actual message last; a ``torch.jit.load`` failure
starts with a newline and ends with a code excerpt; a C++ error may carry a C++ stack. The full
text belongs in the server log; a client or a load error gets :func:`short_text`: the message on
one line and at most a location inside the model archive (``code/...``), never the author's paths.
"""

from __future__ import annotations

import re

_HERE = "<--- HERE"
_ORIGINAL = "Traceback of TorchScript, original code"
_FILE_RE = re.compile(r'^\s*File "([^"]+)", line (\d+)(?:, in (\S+))?')
_CPP_STACK_RE = re.compile(r"\n(?:Exception raised from |frame #0:).*", re.S)
_TYPED_RE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Warning|Interrupt)): ?(.*)$", re.S)


def _one_line(lines: list[str]) -> str:
    return " ".join(" ".join(line.split()) for line in lines if line.strip())


def _archive_location(lines: list[str]) -> str | None:
    """The innermost ``File "code/..."`` frame (inside the archive), as ``code/x.py:9, in f``."""
    found = None
    for line in lines:
        match = _FILE_RE.match(line)
        if match and match.group(1).startswith("code/"):
            found = f"{match.group(1)}:{match.group(2)}"
            if match.group(3):
                found += f", in {match.group(3)}"
    return found


def _unqualified(message: str) -> str:
    """``builtins.RuntimeError: m`` -> ``RuntimeError: m`` (the exception's own class name)."""
    match = _TYPED_RE.match(message)
    if match is None:
        return message
    return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}".rstrip(": ")


def split_message(text: str) -> tuple[str, str | None]:
    """The message of a torch error text on one line, and a location inside the archive."""
    text = _CPP_STACK_RE.sub("", text).strip("\n")
    lines = text.splitlines()
    if any(_ORIGINAL in line or "Traceback of TorchScript" in line for line in lines):
        # Interpreter traceback: the message follows the last "<--- HERE" and its code lines.
        here = max((i for i, line in enumerate(lines) if _HERE in line), default=-1)
        tail = lines[here + 1 :]
        while tail and (not tail[0].strip() or tail[0][:1].isspace()):
            tail.pop(0)
        serialized = lines[: next((i for i, x in enumerate(lines) if _ORIGINAL in x), len(lines))]
        message = _one_line(tail) or _one_line(lines[:1])
        return _unqualified(message), _archive_location(serialized)
    # A compile-time error (torch.jit.load): the message, then ":" and a code excerpt.
    cut = next(
        (i for i, line in enumerate(lines) if line.strip() == ":" or _FILE_RE.match(line)),
        len(lines),
    )
    return _one_line(lines[:cut]) or _one_line(lines), _archive_location(lines[cut:])


def short_text(exc: BaseException) -> str:
    """``Type: message (at code/__torch__.py:9, in forward)`` on one line."""
    message, location = split_message(str(exc))
    if not _TYPED_RE.match(message):  # torch.jit.Error's text names the model's own type
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"{message} (at {location})" if location else message
