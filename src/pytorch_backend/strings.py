"""``TYPE_STRING`` tensors: Triton BYTES elements <-> Python ``List[str]``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ExecutionError, RequestError


@dataclass(frozen=True)
class Strings:
    """The decoded elements of one request's string input, with the shape it arrived in."""

    values: list[str]
    shape: tuple[int, ...]


def decode_strings(name: str, array: np.ndarray) -> Strings:
    """Decode a BYTES array (``np.object_`` of bytes) as UTF-8; bad bytes fail the request."""
    values: list[str] = []
    for index, item in enumerate(array.reshape(-1)):
        if isinstance(item, str):
            values.append(item)
            continue
        try:
            values.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RequestError(
                f"input '{name}': element {index} is not valid UTF-8 ({exc.reason} at byte "
                f"{exc.start}); TYPE_STRING inputs are passed to the model as List[str]"
            ) from None
    return Strings(values, tuple(int(d) for d in array.shape))


def check_string_list(name: str, value: object) -> list[str]:
    """The model's value for a TYPE_STRING output must be a ``List[str]``."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        kind = type(value).__name__
        raise ExecutionError(
            f"output '{name}' is TYPE_STRING, so the model must return List[str]; got {kind}"
        )
    return value


def encode_strings(values: Sequence[str], shape: Iterable[int]) -> np.ndarray:
    """An ``np.object_`` array of UTF-8 ``bytes`` for a BYTES output."""
    array = np.empty(len(values), dtype=np.object_)
    array[:] = [v.encode("utf-8") for v in values]
    return array.reshape(tuple(shape))
