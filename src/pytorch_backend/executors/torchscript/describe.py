"""Describe a TorchScript model's inputs and outputs without a configuration.

A TorchScript file stores its forward's argument names and types, not tensor dtypes or shapes.
Names come from the forward schema (``INPUT__<n>`` as the alternative name), ``List[str]``
arguments and results are ``TYPE_STRING``, and outputs are ``OUTPUT__<n>``. Tensor dtypes and
dims, and whether the model batches, come only from the sidecar the packager writes
(``model.pt.io.json``); without it they stay unknown (None).
"""

from __future__ import annotations

import torch

from ..description import DescribeContext, ModelIO, TensorIO, read_sidecar
from .executor import load_torchscript, script_method, signature_of
from .naming import STRING_LIST, Signature


def _string(names: tuple[str, ...], batching: bool | None, where: str) -> TensorIO:
    if batching is None:
        return TensorIO(names, "STRING", None, where=where)
    if batching:
        return TensorIO(names, "STRING", (1,), reshape=(), where=where)
    return TensorIO(names, "STRING", (-1,), where=where)


def signature_io(
    signature: Signature, batching: bool, method: str = "forward"
) -> tuple[tuple[TensorIO, ...], tuple[TensorIO, ...], str]:
    """Inputs, outputs and the unknown-inputs note a method's signature gives (names, strings)."""
    if len(signature.arg_types) == 1 and signature.arg_types[0].startswith("Dict["):
        inputs: tuple[TensorIO, ...] = ()
        unknown = (
            f"{method} takes a single {signature.arg_types[0]} '{signature.arg_names[0]}': "
            "declare one input per dictionary key"
        )
    else:
        unknown = ""
        inputs = tuple(
            _string((name, f"INPUT__{i}"), batching, f"{method} argument '{name}'")
            if kind == STRING_LIST
            else TensorIO((name, f"INPUT__{i}"), where=f"{method} argument '{name}' ({kind})")
            for i, (name, kind) in enumerate(zip(signature.arg_names, signature.arg_types))
        )
    outputs = tuple(
        _string((f"OUTPUT__{i}",), batching, f"returned value {i}")
        if kind == STRING_LIST
        else TensorIO((f"OUTPUT__{i}",), where=f"returned value {i} ({kind})")
        for i, kind in enumerate(signature.output_types or ())
    )
    return inputs, outputs, unknown


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
