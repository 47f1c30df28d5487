"""Triton data types and their torch counterparts."""

from __future__ import annotations

import torch

STRING = "STRING"

#: Triton type name (without ``TYPE_``) -> torch dtype. ``STRING`` maps to ``List[str]``.
TRITON_TO_TORCH: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
    "UINT64": torch.uint64,  # only for a CORRID control (not in SUPPORTED)
}

TORCH_TO_TRITON: dict[torch.dtype, str] = {v: k for k, v in TRITON_TO_TORCH.items()}

SUPPORTED = (frozenset(TRITON_TO_TORCH) - {"UINT64"}) | {STRING}


def triton_name(dtype: torch.dtype) -> str:
    """``TYPE_*`` spelling of a torch dtype, for error messages."""
    name = TORCH_TO_TRITON.get(dtype)
    return f"TYPE_{name}" if name else str(dtype)
