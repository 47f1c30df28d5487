# ruff: noqa: UP006, UP035  (TorchScript signatures spelled with typing generics on purpose)
"""Faulty requests, and models that misbehave on cue, for ``tests/integration/test_bad_inputs.py``.

Three served models share a dynamic batch of 4 rows with the faulty request:

* ``calc`` (nn.Module, :data:`CALC_MODULE`): ``y = x * 2 + 1`` on FP32 ``[-1, 4]``; a trigger
  value (101..110) in column 0 of any row makes the whole batch's forward misbehave.
* ``pair`` (TorchScript :class:`tests.ts_models.AddSub`): two FP32 ``[-1, 4]`` inputs.
* ``text`` (TorchScript :class:`Text`): a TYPE_STRING input; upper-cased strings and lengths out.

A :class:`RawInput` can say anything about itself (shape, datatype, bytes), so requests that
tritonclient would refuse to build reach the server; :func:`send_raw` sends them over raw HTTP
(``http.client``, JSON header + binary data) or through tritonclient's gRPC objects.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, serialize_byte_tensor

MAX_BATCH = 4
FEATURES = 4

CALC_MODULE = '''
import torch


class Calc(torch.nn.Module):
    """y = x * 2 + 1; a trigger value in x[:, 0] of any row makes the whole batch misbehave."""

    def forward(self, x):
        y = x * 2 + 1
        first = x[:, 0]
        if bool((first == 101).any()):
            raise ValueError("Calc refuses the value 101 (a fault on cue)")
        if bool((first == 102).any()):
            return y.double()
        if bool((first == 103).any()):
            return y[:-1]
        if bool((first == 104).any()):
            return y.sum()
        if bool((first == 105).any()):
            return {"y": y}
        if bool((first == 106).any()):
            return (x.t() * 2 + 1).t()  # Fortran order: the right values, not C-contiguous
        if bool((first == 107).any()):
            return torch.stack([y, -y], dim=2)[:, :, 0]  # a strided view
        if bool((first == 108).any()):
            return y.unsqueeze(-1)
        if bool((first == 109).any()):
            return None
        if bool((first == 110).any()):
            return y.numpy()
        return y
'''


class Text(torch.nn.Module):
    """forward(List[str]) -> (upper-cased strings, lengths as INT64 [B, 1])."""

    def forward(self, text: List[str]) -> Tuple[List[str], torch.Tensor]:
        lengths = [len(s) for s in text]
        upper = [s.upper() for s in text]
        return upper, torch.tensor(lengths, dtype=torch.int64).reshape(-1, 1)


def calc_reference(x: np.ndarray) -> np.ndarray:
    return x * np.float32(2) + np.float32(1)


@dataclass(frozen=True)
class RawInput:
    """One input exactly as sent: any shape, any datatype name, any bytes."""

    name: str
    shape: Sequence[int]
    datatype: str
    data: bytes

    @classmethod
    def of(cls, name: str, array: np.ndarray, datatype: str | None = None, shape=None) -> RawInput:
        datatype = datatype or np_to_triton_dtype(array.dtype)
        if datatype == "BYTES":
            data = serialize_byte_tensor(array).item() if array.size else b""
        else:
            data = array.tobytes()
        return cls(name, list(shape if shape is not None else array.shape), datatype, data)


@dataclass(frozen=True)
class Case:
    """One kind of fault: what is sent, which layer answers, and what the answer must say.

    ``layer``: ``core`` (Triton refuses it before the backend sees it: the batch it would have
    joined gets one more good request), ``backend`` (our error for that request only) or
    ``data`` (well-formed and answered: ``answer`` checks the outputs). ``expect``: substrings
    of the error text, every one required.
    """

    kind: str
    model: str
    layer: str
    raw: tuple[RawInput, ...] = ()  # a raw request (core / backend faults)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # a well-formed request
    outputs: tuple[str, ...] = ()
    version: str = ""
    expect: tuple[str, ...] | dict[str, tuple[str, ...]] = ()  # dict: per protocol
    rows: int = 1  # rows of the faulty request, when it joins the batch
    code: str = "internal"  # backend errors: "invalid" (INVALID_ARG) or "internal" (INTERNAL)
    answer: object = None  # Callable[[dict[str, np.ndarray]], None] for data cases
    http_body: bytes | None = None  # HTTP only: this exact body (and no binary data)
    header_length: int | None = None  # HTTP only: a wrong Inference-Header-Content-Length

    def expected(self, protocol: str) -> tuple[str, ...]:
        return self.expect[protocol] if isinstance(self.expect, dict) else self.expect

    @property
    def protocols(self) -> tuple[str, ...]:
        return ("http",) if self.http_body is not None or self.header_length else ("http", "grpc")


def _http_body(case: Case) -> tuple[bytes, dict[str, str]]:
    if case.http_body is not None:
        return case.http_body, {"Content-Type": "application/json"}
    header = {
        "inputs": [
            {
                "name": item.name,
                "shape": list(item.shape),
                "datatype": item.datatype,
                "parameters": {"binary_data_size": len(item.data)},
            }
            for item in case.raw
        ]
    }
    if case.outputs:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in case.outputs]
    head = json.dumps(header).encode()
    length = case.header_length if case.header_length is not None else len(head)
    body = head + b"".join(item.data for item in case.raw)
    return body, {
        "Inference-Header-Content-Length": str(length),
        "Content-Type": "application/octet-stream",
    }


def _send_http(url: str, model: str, case: Case) -> None:
    host, port = url.rsplit(":", 1)
    path = f"/v2/models/{model}" + (f"/versions/{case.version}" if case.version else "") + "/infer"
    body, headers = _http_body(case)
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read()
    finally:
        connection.close()
    if response.status != 200:
        try:
            message = json.loads(text)["error"]
        except (ValueError, KeyError):
            message = text.decode(errors="replace")
        raise InferenceServerException(msg=message, status=str(response.status))


def _send_grpc(url: str, model: str, case: Case) -> None:
    inputs = []
    for item in case.raw:
        tensor = grpcclient.InferInput(item.name, list(item.shape), item.datatype)
        tensor._raw_content = item.data  # set directly: no client-side shape/size check
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(n) for n in case.outputs] or None
    with grpcclient.InferenceServerClient(url) as client:
        client.infer(model, inputs, model_version=case.version, outputs=outputs)


def send_raw(protocol: str, server, model: str, case: Case) -> None:
    """Send ``case``'s raw request; raises InferenceServerException with the server's text."""
    if protocol == "http":
        _send_http(server.http_url, model, case)
    else:
        _send_grpc(server.grpc_url, model, case)


def row(first: float, rest: float = 0.5) -> np.ndarray:
    """One FP32 row for ``calc`` whose column 0 is ``first``."""
    return np.array([[first, rest, rest, rest]], dtype=np.float32)


def strings(*values: bytes) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.object_)
