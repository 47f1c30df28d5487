"""What a forward's signature says about a model's inputs and outputs, for auto-completion.

Names only: an argument's name and ``INPUT__<n>``, ``OUTPUT__<n>`` for a returned value, and
``TYPE_STRING`` for ``List[str]``; tensor dtypes and dims are not in a signature. Shared by the
TorchScript and nn.Module describers.
"""

from __future__ import annotations

from ..description import TensorIO
from .forward import STRING_LIST, Signature


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
