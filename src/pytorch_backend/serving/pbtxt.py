"""Write a ``config.pbtxt`` through Triton's protobuf model config, never by string templates.

Needs ``tritonclient`` (``model_config_pb2``) and ``protobuf``: ``pip install
'pytorch-backend[package]'``.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..executors.description import ModelIO, TensorIO


def _modules():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"writing config.pbtxt needs tritonclient[grpc] ({error}); "
            "install it with: pip install 'pytorch-backend[package]'"
        ) from None
    return model_config_pb2, text_format


def config_text(
    name: str,
    io: ModelIO,
    *,
    platform: str = "",
    backend: str = "pytorch_python",
    instance_kind: str = "KIND_CPU",
    comments: Iterable[str] = (),
) -> str:
    """The ``config.pbtxt`` text of a model described by ``io`` (dtypes and dims known)."""
    pb, text_format = _modules()
    config = pb.ModelConfig(name=name, backend=backend, max_batch_size=io.max_batch_size or 0)
    if platform:
        config.platform = platform

    def fill(entry, tensor: TensorIO) -> None:
        entry.name = tensor.name
        entry.data_type = pb.DataType.Value(f"TYPE_{tensor.dtype}")
        entry.dims.extend(tensor.dims or ())
        if tensor.reshape is not None:
            entry.reshape.SetInParent()  # an empty reshape (a batched string) must be written
            entry.reshape.shape.extend(tensor.reshape)

    for tensor in io.inputs:
        fill(config.input.add(), tensor)
    for tensor in io.outputs:
        fill(config.output.add(), tensor)
    if io.max_batch_size:
        config.dynamic_batching.SetInParent()
    group = config.instance_group.add()
    group.kind = pb.ModelInstanceGroup.Kind.Value(instance_kind)
    group.count = 1
    header = "".join(f"# {line}\n" for line in comments)
    return header + text_format.MessageToString(config)
