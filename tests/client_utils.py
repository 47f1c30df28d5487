"""Talk to a test tritonserver with tritonclient over HTTP or gRPC, one call for both."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

PROTOCOLS = ("http", "grpc")

__all__ = ["PROTOCOLS", "InferenceServerException", "client", "infer", "write_model"]


def client(protocol: str, server):
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url, concurrency=16)
    return grpcclient.InferenceServerClient(server.grpc_url)


def _module(protocol: str):
    return httpclient if protocol == "http" else grpcclient


def make_inputs(protocol: str, inputs: Mapping[str, np.ndarray], datatypes=None) -> list:
    module = _module(protocol)
    out = []
    for name, array in inputs.items():
        datatype = (datatypes or {}).get(name) or np_to_triton_dtype(array.dtype)
        item = module.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array)
        out.append(item)
    return out


def infer(
    protocol: str,
    server,
    model: str,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    *,
    version: str = "",
    datatypes: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """One request; returns every output in the response. Raises InferenceServerException."""
    module = _module(protocol)
    requested = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
    result = client(protocol, server).infer(
        model, make_inputs(protocol, inputs, datatypes), model_version=version, outputs=requested
    )
    response = result.get_response()
    names = (
        [o["name"] for o in response["outputs"]]
        if protocol == "http"
        else [o.name for o in response.outputs]
    )
    return {n: result.as_numpy(n) for n in names}


def write_model(repo: Path, name: str, config: str, files: Mapping[str, bytes | Path]) -> Path:
    """Write ``<repo>/<name>/config.pbtxt`` and files such as ``{"1/model.pt": path}``."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    for relative, content in files.items():
        target = model_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
    return model_dir
