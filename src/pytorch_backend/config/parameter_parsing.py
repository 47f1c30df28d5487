"""Parsing a config's ``parameters`` against the registry in :mod:`.parameters`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping

from ..errors import ModelLoadError
from .backend_parameters import BackendParameters
from .parameters import BY_KEY, IGNORED, KNOWN_KEYS, PARAMETERS


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
    for parameter in PARAMETERS:
        if parameter.field is None or parameter.parse is None:
            continue
        given = {k: raw[k] for k in parameter.keys if k in raw}
        parsed = {k: parameter.parse(model_name, k, v) for k, v in given.items()}
        if len(set(parsed.values())) > 1:
            first, second = list(given)[:2]
            raise ModelLoadError(
                f"parameters '{first}' = {given[first]!r} and '{second}' = {given[second]!r} are "
                "two spellings of one setting with different values; give only one",
                model=model_name,
            )
        if parsed:
            values[parameter.field] = next(iter(parsed.values()))

    if values.get("enable_grad") and values.get("inference_mode") is True:
        raise ModelLoadError(
            f"parameters 'ENABLE_GRAD' = {raw['ENABLE_GRAD']!r} and 'INFERENCE_MODE' = "
            f"{raw['INFERENCE_MODE']!r} contradict each other: gradients cannot be enabled under "
            "inference mode (drop INFERENCE_MODE or set it to false)",
            model=model_name,
        )
    if values.get("enable_grad"):
        values["inference_mode"] = False

    for key in raw:
        parameter = BY_KEY.get(key)
        if parameter is not None and parameter.reader == IGNORED:
            warn(f"parameter '{key}' has no effect here: {parameter.effect.split(': ', 1)[-1]}")
        elif parameter is None:
            suggestion = closest_key(key)
            hint = (
                f"did you mean '{suggestion}'?"
                if suggestion
                else "known keys: " + ", ".join(sorted(KNOWN_KEYS))
            )
            warn(f"unknown parameter '{key}' is ignored ({hint})")

    return BackendParameters(**values)  # type: ignore[arg-type]
