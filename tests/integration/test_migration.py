"""Migrating from the C++ backend: unchanged repositories, and the mistakes a migration makes.

One server serves a repository written as for the C++ backend (``platform: "pytorch_libtorch"``,
``"torch_aoti"``, ``backend: "pytorch"``) from a backends folder that has this plugin also as
``pytorch``, next to the mistakes: a missing op library, a raising model, a ``.pt2`` with a
dynamic sequence dimension, a ``model.pth`` without ``default_model_filename``. Wrong output dims,
served with the model's shape as the C++ backend does, have their own server in
``test_output_shapes.py``.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from pytorch_backend.serving.install import assemble_backends
from tests import aoti_models, ts_models
from tests.client_utils import PROTOCOLS, InferenceServerException, client, infer, write_model
from tests.custom_op import build_op_library

IO = """
max_batch_size: 8
input [ {{ name: "{i}" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "{o}" data_type: TYPE_FP32 dims: [ {out} ] }} ]
"""


def io(i="x", o="y", dims="2", out=None):
    return IO.format(i=i, o=o, dims=dims, out=out or dims)


class AddOne(torch.nn.Module):
    """Calls ``pbtest::add_one`` (tests/custom_op.py): needs its library to load."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.pbtest.add_one(x)


class Project(torch.nn.Module):
    """``x @ w`` with a [3, 2] weight: 3 input columns, anything else fails inside torch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


@pytest.fixture(scope="module")
def op_library() -> Path:
    return build_op_library()


@pytest.fixture(scope="module")
def server(triton, tritonserver_path, op_library, tmp_path_factory):
    root = tmp_path_factory.mktemp("migration")
    torch.ops.load_library(str(op_library))  # to script AddOne; the stubs do not have it
    files = {
        "add_one": root / "add_one.pt",
        "fail": ts_models.save(ts_models.FailOnNegative(), root / "fail.pt"),
        "scale": ts_models.save(ts_models.Scale(), root / "scale.pt"),
        "project": ts_models.save(Project(), root / "project.pt"),
    }
    torch.jit.save(torch.jit.script(AddOne()), str(files["add_one"]))
    sequence = aoti_models.build_sequence()
    repo = root / "repo"
    # Written for the C++ backend, unchanged: served under the backend name "pytorch".
    write_model(
        repo, "cpp_platform", 'platform: "pytorch_libtorch"' + io(), {"1/model.pt": files["fail"]}
    )
    write_model(repo, "cpp_backend", 'backend: "pytorch"' + io(), {"1/model.pt": files["scale"]})
    write_model(
        repo,
        "aoti_seq",
        # tritonserver 2.51 refuses platform "torch_aoti" with backend "pytorch" (its core
        # predates AOTI); newer servers map it to "pytorch" as they map pytorch_libtorch
        'backend: "pytorch_python" platform: "torch_aoti"\n'
        'parameters { key: "ENABLE_JIT_PROFILING" value: { string_value: "false" } }'
        + io("INPUT__0", "OUTPUT__0", dims="-1"),
        {"1/model.pt2": sequence},
    )
    # The mistakes.
    write_model(
        repo, "needs_op", 'backend: "pytorch_python"' + io(), {"1/model.pt": files["add_one"]}
    )
    write_model(
        repo,
        "with_op",
        'backend: "pytorch_python"'
        f'parameters {{ key: "CUSTOM_OP_LIBRARIES" value: {{ string_value: "{op_library}" }} }}'
        + io(),
        {"1/model.pt": files["add_one"]},
    )
    write_model(repo, "garbage", 'backend: "pytorch_python"' + io(), {"1/model.pt": b"garbage"})
    write_model(
        repo,
        "layout",
        'platform: "pytorch_libtorch"' + io(dims="-1", out="2"),
        {"1/model.pt": files["project"]},
    )
    write_model(repo, "pth", 'platform: "pytorch_libtorch"' + io(), {"1/model.pth": files["scale"]})
    backends = assemble_backends(root / "backends", tritonserver_path, as_pytorch=True)
    return triton(repo, backend_directory=backends, extra_args=("--log-verbose=1",))


X = np.array([[1.0, 2.0]], dtype=np.float32)


def wait_for_log(server, text: str, timeout: float = 30.0) -> None:
    """The server log is written as the stubs send it: wait for ``text`` to arrive."""
    deadline = time.monotonic() + timeout
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"{text!r} is not in the server log"
        time.sleep(0.2)


def reason(server, name: str) -> str:
    status = server.model(name)
    assert status.state == "UNAVAILABLE", status
    return status.reason


def test_unchanged_cpp_configs_are_served_under_the_name_pytorch(server):
    for protocol in PROTOCOLS:
        np.testing.assert_allclose(infer(protocol, server, "cpp_platform", {"x": X})["y"], X + 1)
        np.testing.assert_allclose(infer(protocol, server, "cpp_backend", {"x": X})["y"], X * 2)
    metadata = client("http", server).get_model_metadata("cpp_platform")
    assert metadata["platform"] == "pytorch_libtorch"


def test_missing_op_library_names_the_op_and_the_parameter(server):
    text = reason(server, "needs_op")
    assert "operator 'pbtest::add_one'" in text and "CUSTOM_OP_LIBRARIES" in text
    assert "Unknown builtin op: pbtest::add_one" in text  # torch's own cause, kept whole
    assert "serve it with platform" not in text  # no wrong advice
    # the load error is raised from a clean frame: no trace through the package's modules
    assert "instance.py(" not in text and "executor.py(" not in text
    # with the library loaded the same file serves
    result = infer("http", server, "with_op", {"x": X})
    np.testing.assert_allclose(result["y"], X + 1)
    assert "torch.jit.load(" in server.log_text()  # the full text is in the log


def test_file_kind_diagnosis_without_torchs_corruption_text(server):
    text = reason(server, "garbage")
    assert "not a zip archive" in text
    assert "corrupted" not in text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_raising_model_error_is_short_message_first_no_source_path(server, protocol):
    with pytest.raises(InferenceServerException) as info:
        infer(protocol, server, "cpp_platform", {"x": -X})
    message = info.value.message()
    assert message.startswith(
        "model 'cpp_platform' failed: RuntimeError: negative input is not allowed"
    ), message
    assert "\n" not in message and len(message) < 200, message
    assert "Traceback" not in message
    assert ts_models.__file__ not in message  # the author's source path
    # at most a location inside the archive's serialized code
    assert re.search(r"\(at code/__torch__/[\w/]+\.py:\d+, in forward\)$", message), message
    # the full interpreter traceback, with the author's path, is in the verbose log
    wait_for_log(server, ts_models.__file__)
    np.testing.assert_allclose(infer(protocol, server, "cpp_platform", {"x": X})["y"], X + 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_input_layout_error_is_short(server, protocol):
    with pytest.raises(InferenceServerException) as info:
        infer(protocol, server, "layout", {"x": np.ones((1, 5), np.float32)})
    message = info.value.message()
    assert message.startswith("model 'layout' failed: RuntimeError: "), message
    assert "\n" not in message and "Traceback" not in message, message
    assert __file__ not in message
    result = infer(protocol, server, "layout", {"x": np.ones((2, 3), np.float32)})
    np.testing.assert_allclose(result["y"], np.full((2, 2), 3.0))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pt2_sequence_below_exported_minimum(server, protocol):
    log = server.log_text()
    assert "input 'INPUT__0' dim 0 is -1 in the config, but the package accepts sizes >= 2" in log
    with pytest.raises(InferenceServerException) as info:
        infer(protocol, server, "aoti_seq", {"INPUT__0": np.ones((1, 1), np.float32)})
    text = str(info.value)
    assert "has size 1 in dim 0, below the package's exported minimum of 2" in text
    assert "specialises sizes 0 and 1" in text
    seq = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = infer(protocol, server, "aoti_seq", {"INPUT__0": seq})
    np.testing.assert_allclose(result["OUTPUT__0"], seq * 2)
    two = np.ones((1, 2), np.float32)  # batch of 1 (padded) with the minimum length works
    np.testing.assert_allclose(
        infer(protocol, server, "aoti_seq", {"INPUT__0": two})["OUTPUT__0"], two * 2
    )


def test_pt2_does_not_log_jit_settings_as_applied(server):
    log = server.log_text()
    prefix = "model 'aoti_seq' instance 'aoti_seq_0': "
    assert f"{prefix}ENABLE_JIT_EXECUTOR = no effect on AOT-Inductor packages" in log
    assert f"{prefix}ENABLE_JIT_PROFILING = false given, no effect on AOT-Inductor packages" in log
    assert f"{prefix}DISABLE_OPTIMIZED_EXECUTION = no effect on AOT-Inductor packages" in log
    # TorchScript lines are unchanged
    assert "model 'cpp_backend' instance 'cpp_backend_0': ENABLE_JIT_EXECUTOR = " in log
    assert "cpp_backend_0': ENABLE_JIT_EXECUTOR = no effect" not in log


def test_pth_without_default_model_filename_names_the_file_found(server):
    text = reason(server, "pth")
    assert "unable to find" in text and "model.pt'" in text
    assert "'model.pth'" in text and "default_model_filename" in text


def test_request_errors_count_as_successes_in_tritons_metrics(server):
    with pytest.raises(InferenceServerException):
        infer("http", server, "cpp_platform", {"x": -X})
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        metrics = response.read().decode()

    def value(name: str) -> float:
        """The sum over every label set of ``name`` for this model (0 if it has none)."""
        pattern = rf'^{name}{{[^}}]*model="cpp_platform"[^}}]*}} (\S+)$'
        return sum(float(v) for v in re.findall(pattern, metrics, re.M))

    assert value("nv_inference_request_success") >= 1
    assert value("nv_inference_request_failure") == 0  # as the README says
