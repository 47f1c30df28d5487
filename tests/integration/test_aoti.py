"""AOT-Inductor packages (``platform: "torch_aoti"``) served end to end by a real tritonserver.

One server, one repository: healthy models (forward-based, ordinal and mixed names, output
subsets, padding, ragged dynamic batching, drop-in mode) beside models that must fail to load.
Packages come from the cached builders in ``tests/aoti_models.py``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

import pytorch_backend
from tests import aoti_models, ts_models
from tests.aoti_models import COMPLEX_INPUTS, COMPLEX_OUTPUTS, complex_example, complex_reference
from tests.client_utils import PROTOCOLS, InferenceServerException, client, infer, write_model
from tests.server_procs import server_stubs

# Every name of the complex model (forward-based and ordinal) -> (Triton dtype, per-item dims).
SPECS: dict[str, tuple[str, tuple[int, ...]]] = {}
# Every name -> the forward-based name of the same leaf.
FORWARD: dict[str, str] = {}
for _table in (COMPLEX_INPUTS, COMPLEX_OUTPUTS):
    for _name, (_ordinal, _dtype, _dims) in _table.items():
        SPECS[_name] = SPECS[_ordinal] = (_dtype, _dims)
        FORWARD[_name] = FORWARD[_ordinal] = _name

FWD_IN = list(COMPLEX_INPUTS)
ORD_IN = [ordinal for ordinal, _, _ in COMPLEX_INPUTS.values()]
FWD_OUT = list(COMPLEX_OUTPUTS)
ORD_OUT = [ordinal for ordinal, _, _ in COMPLEX_OUTPUTS.values()]
# One scheme per entry, alternating, listed in reverse leaf order (binding is by name, not order).
MIXED_IN = [(f, o)[i % 2] for i, (f, o) in enumerate(zip(FWD_IN, ORD_IN))][::-1]
MIXED_OUT = [(o, f)[i % 2] for i, (f, o) in enumerate(zip(FWD_OUT, ORD_OUT))][::-1]
SUBSET_OUT = ["RESULT[pair][1]", "OUTPUT__4"]
ACCEPTED_INPUTS = (
    "The model's inputs are: ARGS[0] (= INPUT__0), ARGS[1][0] (= INPUT__1), ARGS[1][1] (= "
    "INPUT__2), ARGS[2][alpha] (= INPUT__3), ARGS[2][beta] (= INPUT__4), KWARGS[scale] (= "
    "INPUT__5)"
)
DYNAMIC = "dynamic_batching { max_queue_delay_microseconds: 50000 }"


def entries(names: list[str], changes: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    """Config entries for complex-model names; ``changes`` overrides a name's dtype and dims."""
    out = []
    for name in names:
        dtype, dims = changes.get(name) or SPECS.get(name, ("FP32", (4,)))
        dims_text = ", ".join(str(d) for d in dims)
        out.append(f'{{ name: "{name}" data_type: TYPE_{dtype} dims: [ {dims_text} ] }}')
    return ",\n  ".join(out)


def complex_config(
    name: str,
    inputs: list[str],
    outputs: list[str],
    *,
    max_batch_size: int = aoti_models.COMPLEX_MAX_BATCH,
    changes: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    extra: str = "",
) -> str:
    return f"""
name: "{name}"
backend: "pytorch_python"
platform: "torch_aoti"
max_batch_size: {max_batch_size}
{extra}
input [
  {entries(inputs, changes or {})}
]
output [
  {entries(outputs, changes or {})}
]
"""


def single_config(name: str, inp: str, out: str, dims: str, *, max_batch_size: int, extra=""):
    """Config of a one-input, one-output FP32 model (the padded and static packages)."""
    return f"""
name: "{name}"
backend: "pytorch_python"
platform: "torch_aoti"
max_batch_size: {max_batch_size}
{extra}
input [ {{ name: "{inp}" data_type: TYPE_FP32 dims: {dims} }} ]
output [ {{ name: "{out}" data_type: TYPE_FP32 dims: {dims} }} ]
"""


HEALTHY = (
    "complex_forward",
    "complex_ordinal",
    "complex_mixed",
    "complex_subset",
    "padded",
    "padded_ragged",
    "static_dropin",
)
# Broken model -> texts its load error must contain.
BROKEN: dict[str, tuple[str, ...]] = {
    "bad_unknown": ("input 'ARGS[9]' matches no model input", ACCEPTED_INPUTS),
    "bad_dict_key": ("input 'ARGS[2][gamma]' matches no model input", ACCEPTED_INPUTS),
    "bad_missing": (
        "every model input must be declared in the configuration; missing: KWARGS[scale] "
        "(= INPUT__5)",
        ACCEPTED_INPUTS,
    ),
    "bad_twice": (
        "inputs 'ARGS[0]' and 'INPUT__0' both address model input ARGS[0] (= INPUT__0)",
        ACCEPTED_INPUTS,
    ),
    "bad_string": ("input 'KWARGS[scale]' is TYPE_STRING", "packages take and return tensors only"),
    "bad_output": (
        "output 'RESULT[pair][2]' matches no model output",
        "RESULT[out] (= OUTPUT__0), RESULT[pair][0] (= OUTPUT__1)",
        "RESULT[extra][t][1] (= OUTPUT__4)",
    ),
    "bad_input_dtype": (
        "input 'ARGS[1][1]' is declared TYPE_FP32, but the package expects TYPE_INT64",
    ),
    "bad_output_dtype": (
        "configuration expects datatype TYPE_FP32 for output 'OUTPUT__2' (RESULT[pair][1] (= "
        "OUTPUT__2)), model provides TYPE_INT64",
    ),
    "bad_dims": ("input 'ARGS[2][beta]' with dims [4] does not match the package at dim 1",),
    "bad_over_max": (
        "max_batch_size 16 exceeds the package's exported maximum batch size 8",
        'torch.export.Dim("batch", min=1, max=16)',
    ),
    "bad_static_batch": (
        "static batch dimension of 4",
        'torch.export.Dim("batch", min=1, max=4)',
        "or set max_batch_size: 0",
    ),
    "bad_torchscript": ("is a TorchScript archive", "platform 'pytorch_libtorch'"),
    "bad_torch_save": ("is a torch.save checkpoint", "expected an AOTInductor package"),
    "bad_no_file": ("unable to find", "model.pt2"),
}


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    repo = tmp_path_factory.mktemp("aoti-repo")
    scratch = tmp_path_factory.mktemp("aoti-scratch")
    complex_pt2 = aoti_models.build_complex()
    padded_pt2 = aoti_models.build_padded()
    static_pt2 = aoti_models.build_static()
    pkg = {"1/model.pt2": complex_pt2}

    # -- healthy -------------------------------------------------------------------------------
    write_model(
        repo,
        "complex_forward",
        complex_config("complex_forward", FWD_IN, FWD_OUT, extra=DYNAMIC),
        pkg,
    )
    write_model(
        repo,
        "complex_ordinal",
        complex_config(
            "complex_ordinal",
            ORD_IN[::-1],
            ORD_OUT,
            extra='default_model_filename: "complex.pt2"',
        ),
        {"1/complex.pt2": complex_pt2},
    )
    write_model(repo, "complex_mixed", complex_config("complex_mixed", MIXED_IN, MIXED_OUT), pkg)
    write_model(repo, "complex_subset", complex_config("complex_subset", FWD_IN, SUBSET_OUT), pkg)
    write_model(
        repo,
        "padded",
        single_config("padded", "ARGS[0]", "RESULT", "[ -1 ]", max_batch_size=16),
        {"1/model.pt2": padded_pt2},
    )
    # A long queue delay: the 12 requests of the isolation test land in one execution.
    ragged = single_config(
        "padded_ragged",
        "INPUT__0",
        "OUTPUT__0",
        "[ -1 ]",
        max_batch_size=16,
        extra="dynamic_batching { max_queue_delay_microseconds: 1000000 }",
    ).replace("dims: [ -1 ] }", "dims: [ -1 ] allow_ragged_batch: true }", 1)
    write_model(repo, "padded_ragged", ragged, {"1/model.pt2": padded_pt2})
    # Drop-in mode: model.py in the version directory, backend "python".
    write_model(
        repo,
        "static_dropin",
        single_config("static_dropin", "ARGS[0]", "RESULT", "[ 4, 3 ]", max_batch_size=0).replace(
            '"pytorch_python"', '"python"'
        ),
        {
            "1/model.pt2": static_pt2,
            "1/model.py": Path(pytorch_backend.__file__).with_name("model.py"),
        },
    )

    # -- broken --------------------------------------------------------------------------------
    def broken(name, inputs=FWD_IN, outputs=FWD_OUT, files=pkg, **kwargs):
        write_model(repo, name, complex_config(name, inputs, outputs, **kwargs), files)

    broken("bad_unknown", ["ARGS[9]", *FWD_IN[1:]])
    broken("bad_dict_key", [n.replace("[beta]", "[gamma]") for n in FWD_IN])
    broken("bad_missing", FWD_IN[:-1])
    # Six entries for six inputs, but ARGS[0] is named twice and KWARGS[scale] not at all.
    broken("bad_twice", [*FWD_IN[:-1], "INPUT__0"])
    # Non-batching, so that a 1-D string input passes the config checks and reaches the package.
    broken("bad_string", max_batch_size=0, changes={"KWARGS[scale]": ("STRING", (-1,))})
    broken("bad_output", FWD_IN, ["RESULT[out]", "RESULT[pair][2]"])
    broken("bad_input_dtype", FWD_IN, changes={"ARGS[1][1]": ("FP32", (2,))})
    broken("bad_output_dtype", FWD_IN, ORD_OUT, changes={"OUTPUT__2": ("FP32", (2,))})
    broken("bad_dims", changes={"ARGS[2][beta]": ("FP32", (4,))})
    broken("bad_over_max", max_batch_size=16)
    write_model(
        repo,
        "bad_static_batch",
        single_config("bad_static_batch", "ARGS[0]", "RESULT", "[ 3 ]", max_batch_size=4),
        {"1/model.pt2": static_pt2},
    )
    ts_file = ts_models.save(ts_models.Scale(), scratch / "scale.pt")
    broken("bad_torchscript", files={"1/model.pt2": ts_file})
    torch.save({"weight": torch.zeros(2)}, scratch / "state.pt")
    broken("bad_torch_save", files={"1/model.pt2": scratch / "state.pt"})
    broken("bad_no_file", files={})
    (repo / "bad_no_file" / "1").mkdir()
    # No auto-complete: the Python backend would start one more stub (importing torch) per model.
    return triton(repo, extra_args=["--disable-auto-complete-config"])


# Model -> (config input names, config output names).
COMPLEX_MODELS = {
    "complex_forward": (FWD_IN, FWD_OUT),
    "complex_ordinal": (ORD_IN, ORD_OUT),
    "complex_mixed": (MIXED_IN, MIXED_OUT),
    "complex_subset": (FWD_IN, SUBSET_OUT),
}


def complex_request(model: str, batch: int, seed: int = 0):
    """Inputs keyed by ``model``'s config names, and the eager reference outputs."""
    example = complex_example(batch, seed)
    inputs = {name: example[FORWARD[name]].numpy() for name in COMPLEX_MODELS[model][0]}
    return inputs, complex_reference(example)


def check_outputs(result: dict[str, np.ndarray], names, reference) -> None:
    """``result`` holds exactly ``names``, each equal (dtype and values) to the reference."""
    assert sorted(result) == sorted(names)
    for name in names:
        expected = reference[FORWARD[name]].numpy()
        assert result[name].dtype == expected.dtype, name
        np.testing.assert_allclose(result[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)


def stats(protocol: str, server, model: str) -> dict[str, int]:
    """The model's execution and inference counts from the statistics endpoint."""
    c = client(protocol, server)
    if protocol == "http":
        entry = c.get_inference_statistics(model)["model_stats"][0]
    else:
        entry = c.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {key: int(entry.get(key, 0)) for key in ("execution_count", "inference_count")}


def test_healthy_models_ready_and_broken_ones_report_why(server):
    """Broken models are UNAVAILABLE with a reason naming what is wrong; the others serve."""
    states = {m.name: m for m in server.models()}
    for name in HEALTHY:
        assert states[name].state == "READY", states[name]
    for name, texts in BROKEN.items():
        status = states[name]
        assert status.state == "UNAVAILABLE", status
        assert f"model '{name}'" in status.reason, status
        for text in texts:
            assert text in status.reason, (name, text, status.reason)


def test_server_and_stubs_ran_without_locale_variables(server):
    """The stubs ran in the C locale, so the AOTI models serving at all proves model.py's
    in-process LC_CTYPE fix (torch._inductor fails to load with UnicodeDecodeError without it).
    Checked, not assumed: no LANG/LANGUAGE/LC_* in the environment of the server or of any
    Python backend stub it started."""
    server_pid = server.server.pid
    stubs = []
    for pid in server_stubs(server_pid):
        with contextlib.suppress(OSError):  # exited meanwhile
            stubs.append((Path("/proc") / str(pid) / "environ").read_bytes())
    assert len(stubs) >= len(HEALTHY)  # one stub per loaded model instance
    own = (Path("/proc") / str(server_pid) / "environ").read_bytes()
    for environ in (own, *stubs):
        names = [entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry]
        assert "PYTHONPATH" in names  # really the environment built for the server
        leaked = [n for n in names if n in ("LANG", "LANGUAGE") or n.startswith("LC_")]
        assert leaked == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", list(COMPLEX_MODELS))
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_complex_model_names_kwargs_and_nested_outputs(server, protocol, model, batch):
    """Forward-based, ordinal and per-entry mixed names; batch 1 is padded to the exported 2."""
    inputs, reference = complex_request(model, batch, seed=batch)
    result = infer(protocol, server, model, inputs)
    check_outputs(result, COMPLEX_MODELS[model][1], reference)
    assert all(value.shape[0] == batch for value in result.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("model", "wanted"),
    [
        ("complex_forward", ["RESULT[extra][t][1]", "RESULT[pair][1]"]),
        ("complex_ordinal", ["OUTPUT__3"]),
        ("complex_mixed", ["OUTPUT__0", "RESULT[pair][0]"]),
    ],
)
def test_request_asks_for_an_output_subset(server, protocol, model, wanted):
    inputs, reference = complex_request(model, 3, seed=7)
    check_outputs(infer(protocol, server, model, inputs, wanted), wanted, reference)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("batch", "features"), [(1, 5), (2, 7), (3, 2), (16, 32)])
def test_padded_model_pads_to_the_exported_minimum(server, protocol, batch, features):
    """The package was exported with batch min 3: smaller batches are padded, padding dropped."""
    x = np.random.default_rng(batch).standard_normal((batch, features), dtype=np.float32)
    result = infer(protocol, server, "padded", {"ARGS[0]": x})
    assert list(result) == ["RESULT"] and result["RESULT"].shape == (batch, features)
    np.testing.assert_allclose(result["RESULT"], x * 2 + 1, rtol=1e-6)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_static_package_without_batching_in_drop_in_mode(server, protocol):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(
        infer(protocol, server, "static_dropin", {"ARGS[0]": x})["RESULT"], x + 1
    )
    assert "model 'static_dropin' instance 'static_dropin_0': loaded AOT-Inductor package" in (
        server.log_text()
    )


def test_many_concurrent_requests_are_batched_and_each_gets_its_own_result(server):
    """48 concurrent gRPC requests of 1 or 2 items: gathered into fewer executions, every
    response equal to the eager reference of its own inputs."""
    grpc = client("grpc", server)
    from tritonclient.grpc import InferInput

    def one(i: int):
        inputs, reference = complex_request("complex_forward", 1 + i % 2, seed=100 + i)
        items = []
        for name, array in inputs.items():
            item = InferInput(
                name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32"
            )
            item.set_data_from_numpy(array)
            items.append(item)
        result = grpc.infer("complex_forward", items)
        return {name: result.as_numpy(name) for name in FWD_OUT}, reference

    before = stats("grpc", server, "complex_forward")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for result, reference in pool.map(one, range(48)):
            check_outputs(result, FWD_OUT, reference)
    after = stats("grpc", server, "complex_forward")
    assert after["inference_count"] - before["inference_count"] == sum(1 + i % 2 for i in range(48))
    assert after["execution_count"] - before["execution_count"] < 48


def test_one_bad_request_in_a_gathered_batch_fails_alone(server):
    """``allow_ragged_batch`` lets Triton gather requests of different feature sizes into one
    execution; the request whose size the package rejects (40 > exported max 32) fails, the
    others (padded or not) get their own results."""
    http = client("http", server)
    from tritonclient.http import InferInput

    def request(x: np.ndarray):
        item = InferInput("INPUT__0", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        return http.async_infer("padded_ragged", [item])

    bad = 5
    rng = np.random.default_rng(0)
    xs = [
        rng.standard_normal((1, 40 if i == bad else 5 + i % 2), dtype=np.float32) for i in range(12)
    ]
    before = stats("http", server, "padded_ragged")
    pending = [request(x) for x in xs]
    for i, (x, call) in enumerate(zip(xs, pending)):
        if i == bad:
            with pytest.raises(InferenceServerException) as info:
                call.get_result()
            message = str(info.value)
            assert "model 'padded_ragged'" in message and "too large" in message, message
            assert "input 'INPUT__0'" in message, message
        else:
            np.testing.assert_allclose(
                call.get_result().as_numpy("OUTPUT__0"), x * 2 + 1, rtol=1e-6
            )
    after = stats("http", server, "padded_ragged")
    assert after["inference_count"] - before["inference_count"] == 12
    assert after["execution_count"] - before["execution_count"] < 12
    # No execution ran a single request, so the failing one shared its execution with others.
    batches = http.get_inference_statistics("padded_ragged")["model_stats"][0]["batch_stats"]
    assert batches and min(int(b["batch_size"]) for b in batches) > 1, batches


BAD_REQUESTS = {
    # Refused by Triton against the config, before the backend sees them.
    "wrong dtype": (
        "complex_forward",
        {"ARGS[1][1]": np.ones((2, 2), np.float32)},
        "input 'ARGS[1][1]' data-type is 'FP32', but model 'complex_forward' expects 'INT64'",
    ),
    "wrong shape": (
        "complex_forward",
        {"ARGS[2][beta]": np.ones((2, 4), np.float32)},
        "unexpected shape for input 'ARGS[2][beta]' for model 'complex_forward'",
    ),
    "batch sizes disagree": (
        "complex_forward",
        {"KWARGS[scale]": np.ones((3, 4), np.float32)},
        "batch size does not match other inputs for 'complex_forward'",
    ),
    "missing input": (
        "complex_forward",
        {"KWARGS[scale]": None},
        "missing required input(s) ['KWARGS[scale]']",
    ),
    "batch over max": (
        "padded",
        {"ARGS[0]": np.ones((17, 2), np.float32)},
        "batch-size must be <= 16 for 'padded'",
    ),
    # Within the config (dims: [-1]) but outside the package's exported feature range 2..32.
    "feature dim over exported max": (
        "padded",
        {"ARGS[0]": np.ones((2, 40), np.float32)},
        "model 'padded': AOT-Inductor execution failed: input_handles[0]: dim value is too large "
        "at 1, expected to be <= 32, but got: 40 (input_handles[0] is input 'ARGS[0]')",
    ),
    "feature dim under exported min": (
        "padded",
        {"ARGS[0]": np.ones((2, 1), np.float32)},
        "dim value is too small at 1, expected it to be >= 2, but got: 1 (input_handles[0] is "
        "input 'ARGS[0]')",
    ),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_clear_errors_and_server_keeps_serving(server, protocol, case):
    model, change, message = BAD_REQUESTS[case]
    inputs = complex_request(model, 2)[0] if model.startswith("complex") else {}
    inputs.update(change)
    with pytest.raises(InferenceServerException) as info:
        infer(protocol, server, model, {k: v for k, v in inputs.items() if v is not None})
    assert message in str(info.value)
    good, reference = complex_request("complex_forward", 2, seed=3)
    check_outputs(infer(protocol, server, "complex_forward", good), FWD_OUT, reference)
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(infer(protocol, server, "padded", {"ARGS[0]": x})["RESULT"], x * 3)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_input_outside_the_exported_range_is_the_clients_error(server, protocol):
    """The package's own input check rejecting a request maps to INVALID_ARG, not INTERNAL."""
    with pytest.raises(InferenceServerException) as info:
        infer(protocol, server, "padded", {"ARGS[0]": np.ones((2, 40), np.float32)})
    assert str(info.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT"), info.value.status()


def test_log_names_call_spec_bindings(server):
    log = server.log_text().replace('\\"', '"')  # the server log escapes quotes
    assert "model 'complex_ordinal' instance 'complex_ordinal_0': inputs bound to call-spec " in log
    assert '"INPUT__5": "KWARGS[scale] (= INPUT__5)"' in log
    assert '"OUTPUT__4": "RESULT[extra][t][1] (= OUTPUT__4)"' in log
