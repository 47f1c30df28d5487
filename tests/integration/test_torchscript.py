"""TorchScript models served end to end by a real tritonserver, over HTTP and gRPC."""

from __future__ import annotations

import concurrent.futures
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

import pytorch_backend
from tests import ts_models
from tests.client_utils import PROTOCOLS, InferenceServerException, client, infer, write_model
from tests.compat import STRINGS_NEED_NUMPY1

FP32_IO = """
name: "{name}"
backend: "pytorch_python"
max_batch_size: 8
dynamic_batching {{ max_queue_delay_microseconds: 50000 }}
input [{inputs}]
output [{outputs}]
"""


def tensors(names, dtype="TYPE_FP32", dims="[ 2 ]"):
    return ", ".join(f'{{ name: "{n}" data_type: {dtype} dims: {dims} }}' for n in names)


def addsub(name, inputs, outputs):
    return FP32_IO.format(name=name, inputs=tensors(inputs), outputs=tensors(outputs))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ts-artifacts")
    models = {
        "addsub": ts_models.AddSub(),
        "scale": ts_models.Scale(),
        "mixed": ts_models.MixedOutputs(),
        "dict": ts_models.DictInput(),
        "strings": ts_models.Strings(),
        "fail": ts_models.FailOnNegative(),
        "scalar": ts_models.ReturnsScalar(),
        "wrong_dtype": ts_models.WrongDtype(),
    }
    return {k: ts_models.save(m, root / f"{k}.pt") for k, m in models.items()}


@pytest.fixture(scope="module")
def server(triton, artifacts, tmp_path_factory):
    repo = tmp_path_factory.mktemp("ts-repo")
    a = artifacts
    write_model(
        repo,
        "names",
        addsub("names", ["INPUT0", "INPUT1"], ["OUTPUT__0", "OUTPUT__1"]),
        {"1/model.pt": a["addsub"]},
    )
    write_model(
        repo,
        "two_instances",
        addsub("two_instances", ["INPUT0", "INPUT1"], ["OUTPUT__0", "OUTPUT__1"])
        + "instance_group [ { kind: KIND_CPU count: 2 } ]",
        {"1/model.pt": a["addsub"]},
    )
    write_model(
        repo,
        "indexed",
        addsub("indexed", ["INPUT__1", "INPUT__0"], ["OUT__1", "OUT__0"]),
        {"1/model.pt": a["addsub"]},
    )
    write_model(
        repo,
        "ordered",
        addsub("ordered", ["INPUTA", "INPUTB"], ["OUTPUTA", "OUTPUTB"]),
        {"1/model.pt": a["addsub"]},
    )
    write_model(
        repo,
        "mixed",
        """
        name: "mixed" backend: "pytorch_python" max_batch_size: 4
        input [ { name: "image" data_type: TYPE_FP32 dims: [ 3 ] },
                { name: "scale" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] },
                 { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [] } },
                 { name: "OUTPUT__2" data_type: TYPE_BOOL dims: [ 3 ] } ]
        """,
        {"1/model.pt": a["mixed"]},
    )
    write_model(
        repo,
        "dict",
        f"""
        name: "dict" backend: "pytorch_python" max_batch_size: 4
        input [ {tensors(["a", "b"])} ] output [ {tensors(["OUTPUT__0"])} ]
        """,
        {"1/model.pt": a["dict"]},
    )
    per_item = "dims: [ 1 ] reshape: { shape: [] }"
    string = f"data_type: TYPE_STRING {per_item}"
    write_model(
        repo,
        "strings",
        f"""
        name: "strings" backend: "pytorch_python" max_batch_size: 8
        dynamic_batching {{ max_queue_delay_microseconds: 50000 }}
        input [ {{ name: "text" {string} }} ]
        output [ {{ name: "OUTPUT__0" {string} }},
                 {{ name: "OUTPUT__1" data_type: TYPE_INT64 {per_item} }} ]
        """,
        {"1/model.pt": a["strings"]},
    )
    write_model(
        repo,
        "strings_nobatch",
        """
        name: "strings_nobatch" backend: "pytorch_python" max_batch_size: 0
        input [ { name: "text" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_STRING dims: [ -1 ] },
                 { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ -1 ] } ]
        """,
        {"1/model.pt": a["strings"]},
    )
    write_model(
        repo,
        "fail",
        FP32_IO.format(name="fail", inputs=tensors(["x"]), outputs=tensors(["y"])),
        {"1/model.pt": a["fail"]},
    )
    write_model(
        repo,
        "nobatch",
        """
        name: "nobatch" backend: "pytorch_python" max_batch_size: 0
        input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]
        """,
        {"1/model.pt": a["scale"]},
    )
    write_model(
        repo,
        "bf16",
        FP32_IO.format(
            name="bf16", inputs=tensors(["x"], "TYPE_BF16"), outputs=tensors(["y"], "TYPE_BF16")
        ),
        {"1/model.pt": a["scale"]},
    )
    for name in ("scalar", "wrong_dtype"):
        write_model(
            repo,
            name,
            FP32_IO.format(name=name, inputs=tensors(["x"]), outputs=tensors(["y"])),
            {"1/model.pt": a[name]},
        )
    # Two versions, different math: v1 doubles (Scale), v2 adds one (FailOnNegative on >= 0).
    write_model(
        repo,
        "versions",
        FP32_IO.format(name="versions", inputs=tensors(["x"]), outputs=tensors(["y"])).replace(
            "max_batch_size", "version_policy: { all { } }\nmax_batch_size"
        ),
        {"1/model.pt": a["scale"], "2/model.pt": a["fail"]},
    )
    # Drop-in mode: model.py copied into the version directory, backend "python".
    model_py = Path(pytorch_backend.__file__).parent / "model.py"
    write_model(
        repo,
        "dropin",
        FP32_IO.format(name="dropin", inputs=tensors(["x"]), outputs=tensors(["y"])).replace(
            '"pytorch_python"', '"python"'
        ),
        {"1/model.py": model_py, "1/model.pt": a["scale"]},
    )
    write_model(
        repo,
        "dropin_named",
        FP32_IO.format(name="dropin_named", inputs=tensors(["x"]), outputs=tensors(["y"])).replace(
            '"pytorch_python"', '"python"'
        )
        + 'parameters { key: "MODEL_FILENAME" '
        'value: { string_value: "doubler.ts" } }',
        {"1/model.py": model_py, "1/doubler.ts": a["scale"]},
    )
    # Models that must fail to load, beside the healthy ones.
    write_model(
        repo,
        "broken",
        FP32_IO.format(name="broken", inputs=tensors(["x"]), outputs=tensors(["y"])),
        {"1/model.pt": b"garbage"},
    )
    write_model(
        repo,
        "escape",
        FP32_IO.format(name="escape", inputs=tensors(["x"]), outputs=tensors(["y"]))
        + 'default_model_filename: "../../scale/1/model.pt"',
        {"1/model.pt": a["scale"]},
    )
    write_model(
        repo,
        "bad_count",
        addsub("bad_count", ["INPUT0"], ["OUTPUT__0"]),
        {"1/model.pt": a["addsub"]},
    )
    write_model(
        repo,
        "bad_dtype",
        FP32_IO.format(
            name="bad_dtype", inputs=tensors(["x"], "TYPE_UINT32"), outputs=tensors(["y"])
        ),
        {"1/model.pt": a["scale"]},
    )
    return triton(repo)


A = np.array([[5.0, 7.0]], dtype=np.float32)
B = np.array([[1.0, 2.0]], dtype=np.float32)


def test_healthy_models_ready_and_broken_ones_report_why(server):
    states = {(m.name, m.version): m for m in server.models()}
    for name in (
        "names",
        "two_instances",
        "indexed",
        "ordered",
        "mixed",
        "dict",
        "strings",
        "fail",
        "nobatch",
        "bf16",
        "dropin",
        "dropin_named",
    ):
        assert states[(name, "1")].state == "READY", states[(name, "1")]
    assert states[("versions", "2")].state == "READY"
    reasons = {
        "broken": "not a zip archive",
        "escape": "leaves the version directory",
        "bad_count": "declares 1 inputs but forward takes 2",
        "bad_dtype": "TYPE_UINT32",
    }
    for name, text in reasons.items():
        status = states[(name, "1")]
        assert status.state == "UNAVAILABLE" and text in status.reason, status


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("model", "inputs", "outputs", "expected"),
    [
        ("names", {"INPUT0": A, "INPUT1": B}, ("OUTPUT__0", "OUTPUT__1"), (A - B, A + B)),
        # indices win over config order: INPUT__1 is listed first
        ("indexed", {"INPUT__0": A, "INPUT__1": B}, ("OUT__0", "OUT__1"), (A - B, A + B)),
        ("ordered", {"INPUTA": A, "INPUTB": B}, ("OUTPUTA", "OUTPUTB"), (A - B, A + B)),
        ("dict", {"a": A, "b": B}, ("OUTPUT__0",), (A * B,)),
        ("dropin", {"x": A}, ("y",), (A * 2,)),
        ("dropin_named", {"x": A}, ("y",), (A * 2,)),
    ],
)
def test_naming_conventions(server, protocol, model, inputs, outputs, expected):
    result = infer(protocol, server, model, inputs)
    assert set(result) == set(outputs)
    for name, value in zip(outputs, expected):
        np.testing.assert_allclose(result[name], value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mixed_dtypes_and_output_subset(server, protocol):
    image = np.array([[1.0, -2.0, 3.0], [-1.0, 5.0, 0.5]], dtype=np.float32)
    scale = np.array([[2.0], [3.0]], dtype=np.float32)
    result = infer(protocol, server, "mixed", {"image": image, "scale": scale})
    np.testing.assert_allclose(result["OUTPUT__0"], image * scale)
    assert result["OUTPUT__1"].dtype == np.int64 and result["OUTPUT__1"].tolist() == [[2], [1]]
    assert (
        result["OUTPUT__2"].dtype == np.bool_
        and result["OUTPUT__2"].tolist() == (image > 0).tolist()
    )
    only = infer(protocol, server, "mixed", {"image": image, "scale": scale}, ["OUTPUT__1"])
    assert set(only) == {"OUTPUT__1"}


@STRINGS_NEED_NUMPY1
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_strings_batched_and_unbatched(server, protocol):
    text = np.array([["héllo".encode()], [b"ab"]], dtype=np.object_)
    result = infer(protocol, server, "strings", {"text": text})
    # TorchScript's str.upper() is ASCII-only and len() counts UTF-8 bytes: ask the model itself.
    upper, lengths = torch.jit.script(ts_models.Strings())(["héllo", "ab"])
    assert [v.decode() for v in result["OUTPUT__0"].reshape(-1)] == upper == ["HéLLO", "AB"]
    assert result["OUTPUT__1"].reshape(-1).tolist() == lengths.tolist()
    flat = np.array([b"x", b"yz", b"abc"], dtype=np.object_)
    result = infer(protocol, server, "strings_nobatch", {"text": flat})
    assert [v.decode() for v in result["OUTPUT__0"]] == ["X", "YZ", "ABC"]
    assert result["OUTPUT__1"].tolist() == [1, 2, 3]


def test_concurrent_string_requests_each_get_their_own_strings(server):
    """Upstream gives every request of a batch the first strings; each must get its own."""
    http = client("http", server)
    from tritonclient.http import InferInput

    def send(i):
        words = np.array([[f"req{i}-{j}".encode()] for j in range(1 + i % 3)], dtype=np.object_)
        item = InferInput("text", list(words.shape), "BYTES")
        item.set_data_from_numpy(words)
        return i, http.async_infer("strings", [item])

    pending = [send(i) for i in range(24)]
    for i, request in pending:
        got = [v.decode() for v in request.get_result().as_numpy("OUTPUT__0").reshape(-1)]
        assert got == [f"REQ{i}-{j}" for j in range(1 + i % 3)]
    stats = http.get_inference_statistics("strings")["model_stats"][0]
    assert stats["execution_count"] < stats["inference_count"]  # requests really were batched


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bf16_round_trip(server, protocol):
    x = np.array([[1.5, -2.25]], dtype=ml_dtypes.bfloat16)
    result = infer(protocol, server, "bf16", {"x": x}, datatypes={"x": "BF16"})
    assert result["y"].dtype == ml_dtypes.bfloat16
    assert result["y"].astype(np.float32).tolist() == [[3.0, -4.5]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_non_batching_model_runs_each_request_as_given(server, protocol):
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(infer(protocol, server, "nobatch", {"x": x})["y"], x * 2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_versions(server, protocol):
    np.testing.assert_allclose(
        infer(protocol, server, "versions", {"x": A}, version="1")["y"], A * 2
    )
    np.testing.assert_allclose(
        infer(protocol, server, "versions", {"x": A}, version="2")["y"], A + 1
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("model", "inputs", "datatypes", "message"),
    [
        ("fail", {"x": A.astype(np.float64)}, None, "FP64"),
        ("fail", {"x": np.ones((1, 3), np.float32)}, None, "[1,3]"),
        ("fail", {}, None, "x"),
        ("fail", {"x": A, "z": A}, None, "z"),
        ("fail", {"x": np.ones((9, 2), np.float32)}, None, "batch"),
        ("fail", {"x": -A}, None, "negative input is not allowed"),
        ("strings", {"text": np.array([[b"\xff\xfe"]], dtype=np.object_)}, None, "UTF-8"),
        ("scalar", {"x": A}, None, "scalar"),
        ("wrong_dtype", {"x": A}, None, "model provides TYPE_FP64"),
    ],
)
def test_bad_requests_get_clear_errors_and_server_keeps_serving(
    server, protocol, model, inputs, datatypes, message
):
    with pytest.raises(InferenceServerException) as info:
        infer(protocol, server, model, inputs, datatypes=datatypes)
    assert message in str(info.value).replace(" ", "") or message in str(info.value)
    np.testing.assert_allclose(infer(protocol, server, "fail", {"x": A})["y"], A + 1)


def test_one_bad_request_in_a_dynamic_batch_fails_alone(server):
    """Requests gathered into executions (fewer than the requests, each counted once): only the
    one the model rejects gets an error."""
    http = client("http", server)
    from tritonclient.http import InferInput

    def item(x):
        i = InferInput("x", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        return [i]

    before = http.get_inference_statistics("fail")["model_stats"][0]
    xs = [np.full((1, 2), i, np.float32) * (-1 if i == 5 else 1) for i in range(1, 13)]
    pending = [http.async_infer("fail", item(x)) for x in xs]
    for i, (x, request) in enumerate(zip(xs, pending), start=1):
        if i == 5:
            with pytest.raises(InferenceServerException, match="negative input is not allowed"):
                request.get_result()
        else:
            np.testing.assert_allclose(request.get_result().as_numpy("y"), x + 1)
    after = http.get_inference_statistics("fail")["model_stats"][0]
    assert int(after["inference_count"]) - int(before["inference_count"]) == 12
    assert int(after["execution_count"]) - int(before["execution_count"]) < 12


def test_many_concurrent_grpc_requests_are_batched(server):
    grpc = client("grpc", server)
    from tritonclient.grpc import InferInput

    def one(i):
        x = np.full((1 + i % 3, 2), i, np.float32)
        item = InferInput("x", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        return x, grpc.infer("fail", [item]).as_numpy("y")

    before = grpc.get_inference_statistics("fail", as_json=True)["model_stats"][0]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for x, y in pool.map(one, range(48)):
            np.testing.assert_allclose(y, x + 1)
    after = grpc.get_inference_statistics("fail", as_json=True)["model_stats"][0]
    executions = int(after["execution_count"]) - int(before["execution_count"])
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    assert inferences == sum(1 + i % 3 for i in range(48))
    assert executions < 48


def test_log_names_bindings(server):
    log = server.log_text()
    assert "model 'names' instance 'names_0': inputs bound by forward-argument names" in log
    assert "model 'indexed' instance 'indexed_0': inputs bound by <name>__<index> names" in log
    assert "model 'ordered' instance 'ordered_0': inputs bound by config order" in log


def _torch_deprecates_torchscript(path: Path) -> bool:
    """Whether this torch (the server's) warns on ``torch.jit.load``."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.jit.load(str(path))
    return any("deprecated" in str(w.message) for w in seen)


def test_torchscript_deprecation_logged_once_per_model(server, artifacts):
    log = server.log_text()
    deprecated = _torch_deprecates_torchscript(artifacts["addsub"])
    for model in ("names", "two_instances", "mixed", "dict"):
        lines = [
            line
            for line in log.splitlines()
            if f"model '{model}' instance" in line and "TorchScript is deprecated" in line
        ]
        assert len(lines) == (1 if deprecated else 0), (model, lines)
        if deprecated:
            assert f"torch {torch.__version__}" in lines[0]
            assert "pytorch-backend convert" in lines[0] and "model.pt2" in lines[0]
    assert "two_instances_0_1" in log  # the second instance loaded, and logged no line
    # torch's own warning ("`torch.jit.load` is deprecated. Please switch to ...") never
    # reaches the server log
    assert "Please switch to" not in log and "is deprecated. Please" not in log
