"""``TORCH_COMPILE_OPTIONAL_PARAMETERS``: ``torch.compile``'s keyword arguments, checked at load.

The value is a JSON object with the keys upstream's Python runtime passes on to ``torch.compile``:
``fullgraph`` (bool), ``dynamic`` (bool or null), ``backend`` (string), ``mode`` (string or null),
``options`` (object) and ``disable`` (bool). Invalid JSON, a non-object, an unknown key, ``model``
or a value of the wrong type fails the load with an error naming the parameter and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import ModelLoadError

KEY = "TORCH_COMPILE_OPTIONAL_PARAMETERS"

#: Accepted keys -> (JSON types accepted, what the error says is expected).
_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "fullgraph": ((bool,), "a boolean"),
    "dynamic": ((bool, type(None)), "a boolean or null"),
    "backend": ((str,), "a string (a torch.compile backend name)"),
    "mode": ((str, type(None)), "a string or null"),
    "options": ((dict,), "an object (inductor options)"),
    "disable": ((bool,), "a boolean"),
}


@dataclass(frozen=True)
class CompileOptions:
    """The parsed JSON object, kept as canonical text so that the dataclass stays hashable."""

    text: str = "{}"

    @property
    def given(self) -> dict[str, Any]:
        """The keys given, as parsed."""
        return json.loads(self.text)

    @property
    def disabled(self) -> bool:
        return bool(self.given.get("disable", False))

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``torch.compile`` (``disable`` is handled by not compiling)."""
        return {k: v for k, v in self.given.items() if k != "disable"}

    def describe(self) -> str:
        """What is in effect, for the log: the given keys over torch.compile's defaults."""
        if self.disabled:
            return f"{self.text} (torch.compile disabled: the module runs eagerly)"
        effective = {"backend": "inductor", "fullgraph": False, "dynamic": None, "mode": None}
        effective.update(self.kwargs())
        return json.dumps(effective, sort_keys=True)


def parse_compile_options(model: str, key: str, value: str) -> CompileOptions:
    """Parse and validate the JSON object; every error names the parameter and the key."""

    def bad(detail: str) -> ModelLoadError:
        return ModelLoadError(f"parameter '{key}' = {value!r}: {detail}", model=model)

    try:
        data = json.loads(value) if value.strip() else {}
    except json.JSONDecodeError as exc:
        raise bad(f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    for name, item in data.items():
        if name == "model":
            raise bad("'model' is not an optional parameter of torch.compile (the module is)")
        if name not in _KEYS:
            raise bad(f"unknown key '{name}'; accepted keys: {', '.join(_KEYS)}")
        types, expected = _KEYS[name]
        if not isinstance(item, types):
            raise bad(f"key '{name}' must be {expected}, got {json.dumps(item)}")
    if data.get("mode") is not None and data.get("options"):
        raise bad("keys 'mode' and 'options' cannot both be given (torch.compile takes one)")
    return CompileOptions(json.dumps(data, sort_keys=True))
