"""Describe an nn.Module file without a configuration.

A module file stores names only (forward's signature, ``List[str]`` as ``TYPE_STRING``); dtypes,
dims and batching come from the sidecar the packager writes beside the weights
(``model.pt.io.json``), else stay unknown and the completion names what must be written.
"""

from __future__ import annotations

from ..binding.describe import signature_io
from ..description import DescribeContext, ModelIO, read_sidecar
from . import module as module_file
from .signature import forward_signature


def describe_module(context: DescribeContext) -> ModelIO:
    """The registry's describer for nn.Module files: the sidecar, else forward's names."""
    weights = module_file.weights_path(context.path)
    source = f"the module file {context.path.name}"
    method = context.config.parameters.get("METHOD", "forward")
    try:  # the packager's sidecar describes forward only
        forward = method == "forward"
        sidecar = (read_sidecar(weights) or read_sidecar(context.path)) if forward else None
    except ValueError as error:
        raise context.config.error(str(error)) from None
    if sidecar is not None:
        return sidecar
    if not context.need_tensors:  # without a sidecar a module file cannot tell batching
        return ModelIO((), (), source=source)
    imported = module_file.import_module_file(context.config, context.path)
    params = context.config.parameters.get("MODULE_CLASS")
    cls = module_file.select_class(context.config, imported, context.path, params)
    module = module_file.instantiate(context.config, cls)
    batching = context.config.max_batch_size > 0
    signature = forward_signature(context.config, module, method)
    inputs, outputs, unknown = signature_io(signature, batching, method)
    return ModelIO(inputs, outputs, source=source, unknown_inputs=unknown)
