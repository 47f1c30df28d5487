"""One config input or output (:class:`TensorSpec`) and its parsing from Triton's config JSON.

A module of its own so that :mod:`.model_config` and :mod:`.sequence` (whose controls and states
become specs) both import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ModelLoadError
from .dtypes import STRING, SUPPORTED


@dataclass(frozen=True)
class TensorSpec:
    """One config input or output."""

    name: str
    dtype: str  # Triton type name without the TYPE_ prefix, e.g. "FP32", "STRING"
    dims: tuple[int, ...]  # as written in the config, without the batch dimension
    reshape: tuple[int, ...] | None = None
    optional: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-item shape the backend sees (``reshape`` when given, else ``dims``)."""
        return self.reshape if self.reshape is not None else self.dims

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING


def parse_dims(raw: Any) -> tuple[int, ...]:
    """A config ``dims`` list (numbers or numeric strings; absent: ``()``)."""
    return tuple(int(d) for d in (raw or ()))


def parse_tensor_spec(model: str, kind: str, raw: Mapping[str, Any]) -> TensorSpec:
    """One ``input`` or ``output`` entry (``kind``) of ``model``'s config; its type checked."""
    name = raw.get("name", "")
    data_type = raw.get("data_type", "")
    dtype = data_type[5:] if data_type.startswith("TYPE_") else data_type
    if dtype not in SUPPORTED:
        supported = ", ".join(f"TYPE_{t}" for t in sorted(SUPPORTED))
        raise ModelLoadError(
            f"unsupported data_type {data_type!r} for {kind} '{name}' (supported: {supported})",
            model=model,
        )
    reshape_raw = raw.get("reshape")
    reshape = parse_dims(reshape_raw.get("shape")) if reshape_raw else None
    return TensorSpec(
        name=name,
        dtype=dtype,
        dims=parse_dims(raw.get("dims")),
        reshape=reshape,
        optional=bool(raw.get("optional", False)),
    )
