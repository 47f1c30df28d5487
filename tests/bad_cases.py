"""The bad-input matrix: every kind of faulty request, the layer that answers it, and the text.

``core``: Triton's core refuses the request before the Python backend (and so this backend) sees
it; the texts are Triton's, asserted so a change of layer or wording is noticed. ``backend``: the
request reaches ``model.py`` and gets this backend's error, naming the model. ``data``: valid
data (NaN, Inf, zero rows, odd strings, an output the model returns in an odd memory layout) is
served, and the answer is checked against a reference.
"""

from __future__ import annotations

import numpy as np

from tests.bad_requests import FEATURES, Case, RawInput, calc_reference, row, strings

F32 = np.float32
SHAPE = "unexpected shape for input 'x' for model 'calc'. Expected [-1,4], got "
TENSOR = "model 'calc': output 'y' must be a Tensor (or List[str] for TYPE_STRING), got "
GOOD_ROW = np.full((1, FEATURES), 0.25, dtype=F32)


def _calc_answer(x: np.ndarray):
    def check(out: dict[str, np.ndarray]) -> None:
        assert out["y"].dtype == np.float32 and out["y"].shape == x.shape
        np.testing.assert_array_equal(out["y"], calc_reference(x))  # NaN equals NaN here

    return check


def _text_answer(values: list[bytes]):
    """The Text model's answer: TorchScript's str.upper() changes ASCII letters only; len counts
    UTF-8 bytes."""

    def check(out: dict[str, np.ndarray]) -> None:
        texts = [v.decode() for v in values]
        upper = ["".join(c.upper() if c.isascii() else c for c in t) for t in texts]
        assert [bytes(v) for v in out["OUTPUT__0"].reshape(-1)] == [u.encode() for u in upper]
        assert out["OUTPUT__1"].reshape(-1).tolist() == [len(t.encode()) for t in texts]

    return check


def _x(array: np.ndarray, **kw) -> RawInput:
    return RawInput.of("x", array, **kw)


def _nan_inf() -> np.ndarray:
    return np.array([[np.nan, np.inf, -np.inf, 1.5]], dtype=F32)


# fmt: off
CASES: tuple[Case, ...] = (
    # -- dtype, rank, dims: Triton's core checks them against the config ------------------------
    Case("wrong_dtype_fp64", "calc", "core", (_x(GOOD_ROW.astype(np.float64)),),
         expect=("inference input 'x' data-type is 'FP64', but model 'calc' expects 'FP32'",)),
    Case("wrong_dtype_int32", "calc", "core", (_x(GOOD_ROW.astype(np.int32)),),
         expect=("inference input 'x' data-type is 'INT32', but model 'calc' expects 'FP32'",)),
    Case("wrong_dtype_fp16", "calc", "core", (_x(GOOD_ROW.astype(np.float16)),),
         expect=("inference input 'x' data-type is 'FP16', but model 'calc' expects 'FP32'",)),
    Case("rank_too_high", "calc", "core", (_x(GOOD_ROW.reshape(1, 4, 1)),),
         expect=(SHAPE + "[1,4,1]",)),
    Case("rank_without_batch_dim", "calc", "core", (_x(GOOD_ROW.reshape(4)),),
         expect=(SHAPE + "[4]",)),
    Case("wrong_dims", "calc", "core", (_x(np.zeros((1, 5), F32)),),
         expect=(SHAPE + "[1,5]",)),
    # HTTP's JSON parser refuses a negative dim before the core's shape check sees it
    Case("negative_dim", "calc", "core", (_x(GOOD_ROW, shape=[1, -4]),),
         expect={"http": ("Unable to parse 'shape': attempt to access JSON non-unsigned-integer "
                          "as unsigned-integer",),
                 "grpc": (SHAPE + "[1,-4]",)}),
    Case("huge_dim", "calc", "core", (_x(GOOD_ROW, shape=[1, 2**40]),),
         expect=(SHAPE + "[1,1099511627776]",)),
    Case("batch_over_max", "calc", "core", (_x(np.zeros((5, 4), F32)),),
         expect=("inference request batch-size must be <= 4 for 'calc'",)),
    Case("string_for_numeric", "calc", "core", (_x(strings(b"1", b"2", b"3", b"4").reshape(1, 4)),),
         expect=("inference input 'x' data-type is 'BYTES', but model 'calc' expects 'FP32'",)),
    # -- names, versions, outputs -----------------------------------------------------------------
    Case("unknown_input", "calc", "core", (_x(GOOD_ROW), RawInput.of("x2", GOOD_ROW)),
         expect=("expected 1 inputs but got 2 inputs for model 'calc'", "'x2'")),
    Case("unknown_output", "calc", "core", (_x(GOOD_ROW),), outputs=("z",),
         expect=("unexpected inference output 'z' for model 'calc'",)),
    Case("missing_version", "calc", "core", (_x(GOOD_ROW),), version="7",
         expect=("Request for unknown model: 'calc' version 7 is not found",)),
    Case("missing_input", "pair", "core", (RawInput.of("INPUT0", GOOD_ROW),),
         expect=("expected 2 inputs but got 1 inputs for model 'pair'", "INPUT1")),
    Case("duplicated_input", "pair", "core",
         (RawInput.of("INPUT0", GOOD_ROW), RawInput.of("INPUT0", GOOD_ROW),
          RawInput.of("INPUT1", GOOD_ROW)),
         expect=("input 'INPUT0' already exists in request",)),  # the core names no model
    Case("unknown_and_missing_input", "pair", "core",
         (RawInput.of("INPUT0", GOOD_ROW), RawInput.of("INPUT9", GOOD_ROW)),
         expect=("'INPUT9'", "'pair'")),
    Case("inputs_disagree_on_batch", "pair", "core",
         (RawInput.of("INPUT0", GOOD_ROW), RawInput.of("INPUT1", np.zeros((2, 4), F32))),
         expect=("pair", "batch")),
    Case("wrong_dtype_second_input", "pair", "core",
         (RawInput.of("INPUT0", GOOD_ROW), RawInput.of("INPUT1", GOOD_ROW.astype(np.int64))),
         expect=("inference input 'INPUT1' data-type is 'INT64', but model 'pair' expects "
                 "'FP32'",)),
    # -- payloads whose size disagrees with their shape ------------------------------------------
    Case("binary_too_short", "calc", "core", (RawInput("x", [1, 4], "FP32", b"\0" * 12),),
         expect=("input byte size mismatch for input 'x' for model 'calc'. Expected 16, got 12",)),
    Case("binary_too_long", "calc", "core", (RawInput("x", [1, 4], "FP32", b"\0" * 20),),
         expect=("input byte size mismatch for input 'x' for model 'calc'. Expected 16, got 20",)),
    Case("binary_empty", "calc", "core", (RawInput("x", [1, 4], "FP32", b""),),
         expect=("input byte size mismatch for input 'x' for model 'calc'. Expected 16, got 0",)),
    Case("string_count_mismatch", "text", "core",
         (RawInput.of("text", strings(b"a", b"b"), shape=[1, 1]),),
         expect=("unexpected number of string elements 2 for inference input 'text' for model "
                 "'text', expecting 1",)),
    # -- strings --------------------------------------------------------------------------------
    Case("numeric_for_string", "text", "core", (RawInput.of("text", np.ones((1, 1), F32)),),
         expect=("inference input 'text' data-type is 'FP32', but model 'text' expects 'BYTES'",)),
    Case("string_rank_too_high", "text", "core",
         (RawInput.of("text", strings(b"a").reshape(1, 1, 1)),),
         expect=("unexpected shape for input 'text' for model 'text'",)),
    Case("non_utf8", "text", "backend", (RawInput.of("text", strings(b"\xff\xfeok")),),
         code="invalid",
         expect=("model 'text': input 'text': element 0 is not valid UTF-8 (invalid start byte at "
                 "byte 0); TYPE_STRING inputs are passed to the model as List[str]",)),
    Case("non_utf8_second_element", "text", "backend", code="invalid", rows=2,
         raw=(RawInput.of("text", strings(b"fine", b"caf\xe9")),),
         expect=("model 'text': input 'text': element 1 is not valid UTF-8",)),
    Case("long_string", "text", "data", inputs={"text": strings(b"a" * (1 << 20))},
         answer=_text_answer([b"a" * (1 << 20)])),
    Case("empty_string", "text", "data", inputs={"text": strings(b"")}, answer=_text_answer([b""])),
    Case("nul_in_string", "text", "data", inputs={"text": strings(b"a\0b")},
         answer=_text_answer([b"a\0b"])),
    Case("multibyte_utf8", "text", "data", inputs={"text": strings("żółw".encode())},
         answer=_text_answer(["żółw".encode()])),
    # -- values are data: passed through ----------------------------------------------------------
    Case("nan_inf", "calc", "data", inputs={"x": _nan_inf()}, answer=_calc_answer(_nan_inf())),
    Case("all_nan", "calc", "data", inputs={"x": np.full((1, 4), np.nan, F32)},
         answer=_calc_answer(np.full((1, 4), np.nan, F32))),
    Case("float_max", "calc", "data", inputs={"x": np.full((1, 4), np.finfo(F32).max, F32)},
         answer=_calc_answer(np.full((1, 4), np.finfo(F32).max, F32))),
    # Triton 2.51's core refuses a numeric batch of zero rows, with a misleading size
    Case("zero_rows", "calc", "core", (_x(np.zeros((0, 4), F32)),),
         expect=("input byte size mismatch for input 'x' for model 'calc'. Expected 16, got 0",)),
    # -- the model misbehaves for one request's data ----------------------------------------------
    Case("model_raises", "calc", "backend", (_x(row(101)),),
         expect=("model 'calc' failed: ValueError: Calc refuses the value 101 (a fault on cue)",)),
    Case("returns_wrong_dtype", "calc", "backend", (_x(row(102)),),
         expect=("model 'calc': configuration expects datatype TYPE_FP32 for output 'y', model "
                 "provides TYPE_FP64",)),
    Case("returns_wrong_batch", "calc", "backend", (_x(row(103)),),
         expect=("model 'calc': output 'y' has 0 rows in dimension 0; the batch has 1 items",)),
    Case("returns_scalar", "calc", "backend", (_x(row(104)),),
         expect=("model 'calc': output 'y' is a scalar (0-d tensor), which is not supported",)),
    Case("returns_dict", "calc", "backend", (_x(row(105)),), expect=(TENSOR + "dict",)),
    Case("returns_wrong_rank", "calc", "backend", (_x(row(108)),),
         expect=("model 'calc': output 'y' has shape [1, 4, 1]; the configuration declares "
                 "[-1, 4]",)),
    Case("returns_none", "calc", "backend", (_x(row(109)),), expect=(TENSOR + "NoneType",)),
    Case("returns_numpy", "calc", "backend", (_x(row(110)),),
         expect=(TENSOR + "ndarray",)),
    Case("returns_fortran_order", "calc", "data", inputs={"x": row(106)},
         answer=_calc_answer(row(106))),
    Case("returns_strided_view", "calc", "data", inputs={"x": row(107)},
         answer=_calc_answer(row(107))),
    # -- malformed HTTP bodies (HTTP only): the HTTP frontend answers, naming no model ----------
    Case("json_truncated", "calc", "core", http_body=b'{"inputs": [{"name": "x", "sha',
         expect=("failed to parse the request JSON buffer",)),
    Case("json_not_an_object", "calc", "core", http_body=b"[1, 2, 3]",
         expect=("Unable to parse 'inputs': attempt to access non-existing object member",)),
    Case("json_inputs_not_a_list", "calc", "core", http_body=b'{"inputs": 5}',
         expect=("Unable to parse 'inputs': attempt to access JSON non-array as array",)),
    Case("json_data_count_mismatch", "calc", "core",
         http_body=b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", '
         b'"data": [1, 2, 3]}]}',
         expect=("Unable to parse 'data': Shape does not match true shape of 'data' field",)),
    Case("json_data_wrong_type", "calc", "core",
         http_body=b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", '
         b'"data": ["a", "b", "c", "d"]}]}',
         expect=("Unable to parse 'data': attempt to access JSON non-number as double",)),
    Case("json_unknown_datatype", "calc", "core",
         http_body=b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FLOAT99", '
         b'"data": [1, 2, 3, 4]}]}',
         expect=("invalid datatype for input x",)),
    Case("header_length_past_body", "calc", "core", (_x(GOOD_ROW),), header_length=10_000,
         expect=("inference header size should be in range (0, 120), got: 10000",)),
)
# fmt: on
