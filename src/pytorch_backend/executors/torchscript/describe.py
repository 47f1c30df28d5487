"""Describe a TorchScript model's inputs and outputs without a configuration.

A TorchScript file stores its forward's argument names and types, not tensor dtypes or shapes.
Names come from the forward schema (``INPUT__<n>`` as the alternative name), ``List[str]``
arguments and results are ``TYPE_STRING``, and outputs are ``OUTPUT__<n>``. Tensor dtypes and
dims, and whether the model batches, come only from the sidecar the packager writes
(``model.pt.io.json``); without it they stay unknown (None).
"""

from __future__ import annotations

import torch

from ..binding.describe import signature_io
from ..description import DescribeContext, ModelIO, read_sidecar
from .executor import load_torchscript, script_method, signature_of


def describe(context: DescribeContext) -> ModelIO:
    """The registry's describer for TorchScript files (the sidecar describes forward only)."""
    method = context.config.parameters.get("METHOD", "forward")
    try:
        sidecar = read_sidecar(context.path) if method == "forward" else None
    except ValueError as error:
        raise context.config.error(str(error)) from None
    if sidecar is not None:
        return sidecar
    if not context.need_tensors:  # without a sidecar a TorchScript file cannot tell batching
        return ModelIO((), (), source=f"the TorchScript file {context.path.name}")
    module = load_torchscript(context.config, context.path, map_location=torch.device("cpu"))
    script_method(context.config, module, method)
    batching = context.config.max_batch_size > 0
    inputs, outputs, unknown = signature_io(signature_of(module, method), batching, method)
    return ModelIO(
        inputs,
        outputs,
        max_batch_size=None,
        source=f"the TorchScript file {context.path.name}",
        unknown_inputs=unknown,
    )
