"""The lean DLPack export of CPU outputs (dlpack.py): same memory, same values, CPU device."""

from __future__ import annotations

import torch

from pytorch_backend.dlpack import CpuDLPack, exportable


def test_cpu_tensors_export_through_the_lean_wrapper_without_a_copy():
    out = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    piece = out.split_with_sizes([2, 4])[1]
    wrapped = exportable(piece)
    assert isinstance(wrapped, CpuDLPack)
    assert wrapped.__dlpack_device__() == piece.__dlpack_device__()
    back = torch.from_dlpack(wrapped)
    assert back.data_ptr() == piece.data_ptr()
    assert torch.equal(back, piece) and back.dtype == piece.dtype


def test_tensors_that_need_torchs_own_protocol_are_passed_as_they_are():
    grad = torch.ones(2, requires_grad=True)
    assert exportable(grad) is grad
    meta = torch.empty(2, device="meta")
    assert exportable(meta) is meta
