"""OUTPUT_SHAPE_CHECK end to end: output dims that contradict the model, in a real tritonserver.

Upstream's own ``qa/L0_libtorch_instance_group_kind_model`` declares ``dims: [ 4 ]`` for a model
that returns ``[batch, 16]``, and the C++ backend serves it: it never compares output shapes with
the config. The same mistake is served here, unchanged C++-backend configs included (this plugin
also installed as ``pytorch``), for TorchScript and ``.pt2``:

* by default (``warn``) with the model's shape and exactly one warning per output and instance in
  the server log: at load when the warm-up (TorchScript) or the test run on zeros (``.pt2``)
  shows it, at the first request that shows it when nothing at load does (``WARMUP: false``);
* under ``OUTPUT_SHAPE_CHECK: "error"`` refused: a ``.pt2`` fails its load, a TorchScript
  model's requests each get an error naming both shapes.

Auto-completion leaves written output dims that contradict the package to the load (which warns),
and ``pytorch-backend check`` lists each mismatch the load sees as a ``WARNING``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pytorch_backend.serving.install import assemble_backends
from tests import aoti_models
from tests.client_utils import PROTOCOLS, InferenceServerException, client, infer, write_model

ONE_INSTANCE = "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
SERVED = "served with the model's shape, as the C++ backend does"
TORCHSCRIPT = """platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


class Wide(torch.nn.Module):
    """``[B, 4] -> [B, 16]``, as the model of upstream's L0_libtorch_instance_group_kind_model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x + 1, x + 2, x + 3], dim=1)


def parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


def pt2_config() -> str:
    """The complex package's config with ``dims: [ 16 ]`` for OUTPUT__0, which is ``[B, 4]``."""

    def entries(table: dict, wrong: str = "") -> str:
        return ", ".join(
            f'{{ name: "{o}" data_type: TYPE_{t} dims: [ '
            + ("16" if o == wrong else ", ".join(map(str, d)))
            + " ] }"
            for o, t, d in table.values()
        )

    return (
        'backend: "pytorch_python" platform: "torch_aoti" max_batch_size: 8\n'
        f"input [ {entries(aoti_models.COMPLEX_INPUTS)} ]\n"
        f"output [ {entries(aoti_models.COMPLEX_OUTPUTS, wrong='OUTPUT__0')} ]\n"
    )


PARTIAL = """backend: "pytorch_python" platform: "torch_aoti"
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""


@pytest.fixture(scope="module")
def server(triton, tritonserver_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("output-shapes")
    wide = root / "wide.pt"
    torch.jit.script(Wide()).save(str(wide))
    package = aoti_models.build_complex()
    repo = root / "repo"
    # Written for the C++ backend, unchanged but for the parameter under test.
    for name, extra in (
        ("wide", ""),
        ("wide_first_request", parameter("WARMUP", "false")),
        ("wide_error", parameter("OUTPUT_SHAPE_CHECK", "error")),
    ):
        write_model(repo, name, TORCHSCRIPT + ONE_INSTANCE + extra, {"1/model.pt": wide})
    for name, extra in (("pt2", ""), ("pt2_error", parameter("OUTPUT_SHAPE_CHECK", "error"))):
        write_model(repo, name, pt2_config() + ONE_INSTANCE + extra, {"1/model.pt2": package})
    # A partial config: auto-completion adds the inputs and max_batch_size around the output.
    write_model(repo, "pt2_completed", PARTIAL + ONE_INSTANCE, {"1/model.pt2": package})
    backends = assemble_backends(root / "backends", tritonserver_path, as_pytorch=True)
    return triton(repo, backend_directory=backends)


def shape_warnings(server, model: str) -> list[str]:
    """The server log's output-shape lines of ``model``'s instances."""
    pattern = re.compile(rf"model '{model}' instance '{model}_[\d_]+': output '\w+' (\(.*\) )?has ")
    return [line for line in server.log_text().splitlines() if pattern.search(line)]


X = np.arange(8, dtype=np.float32).reshape(2, 4)
WIDE = np.concatenate([X, X + 1, X + 2, X + 3], axis=1)


def test_torchscript_is_served_with_the_models_shape_and_one_warning_at_load(server):
    (warning,) = shape_warnings(server, "wide")  # the warm-up showed it, before any request
    for _ in range(2):
        for protocol in PROTOCOLS:
            result = infer(protocol, server, "wide", {"x": X})
            assert result["y"].shape == (2, 16)  # the model's shape, as the C++ backend
            np.testing.assert_allclose(result["y"], WIDE)
    assert shape_warnings(server, "wide") == [warning]  # once per output and instance
    assert warning.startswith("W"), warning  # warning level
    assert (
        "pytorch_backend: model 'wide' instance 'wide_0_0': output 'y' has shape [1, 16]; the "
        f"configuration declares dims [4] ([-1, 4] with the batch): {SERVED}"
    ) in warning
    assert 'set OUTPUT_SHAPE_CHECK to \\"error\\"' in warning  # Triton escapes the quotes
    # the metadata keeps the config's dims, as the C++ backend's does
    assert client("http", server).get_model_metadata("wide")["outputs"][0]["shape"] == [-1, 4]


def test_torchscript_without_warmup_warns_at_the_first_request(server):
    assert shape_warnings(server, "wide_first_request") == []  # nothing at load showed it
    for protocol in PROTOCOLS:
        for rows in (1, 3):
            x = np.ones((rows, 4), np.float32)
            result = infer(protocol, server, "wide_first_request", {"x": x})
            assert result["y"].shape == (rows, 16)
    (warning,) = shape_warnings(server, "wide_first_request")
    assert "output 'y' has shape [1, 16]; the configuration declares dims [4]" in warning
    assert SERVED in warning


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_torchscript_under_error_refuses_each_request_naming_both_shapes(server, protocol):
    for _ in range(2):
        with pytest.raises(InferenceServerException) as info:
            infer(protocol, server, "wide_error", {"x": X})
        assert (
            "model 'wide_error': output 'y' has shape [2, 16]; the configuration declares "
            "[-1, 4] (-1: the batch dimension)"
        ) in str(info.value)
    assert shape_warnings(server, "wide_error") == []  # the refusals are the requests' errors


def test_pt2_is_served_with_the_packages_shape_and_one_warning_at_load(server):
    (warning,) = shape_warnings(server, "pt2")  # the test run on zeros showed it
    example = aoti_models.complex_example(3)
    expected = aoti_models.complex_reference(example)["RESULT[out]"].numpy()
    inputs = {aoti_models.COMPLEX_INPUTS[k][0]: v.numpy() for k, v in example.items()}
    for protocol in PROTOCOLS:
        result = infer(protocol, server, "pt2", inputs, ["OUTPUT__0"])
        assert result["OUTPUT__0"].shape == (3, 4)
        np.testing.assert_allclose(result["OUTPUT__0"], expected, rtol=1e-5, atol=1e-5)
    assert shape_warnings(server, "pt2") == [warning]
    assert warning.startswith("W"), warning
    assert (
        "pytorch_backend: model 'pt2' instance 'pt2_0_0': output 'OUTPUT__0' (RESULT[out] "
        "(= OUTPUT__0)) has shape [2, 4] in a test run on zeros; the configuration declares dims "
        f"[16] ([-1, 16] with the batch): {SERVED}"
    ) in warning


def test_pt2_under_error_fails_the_load(server):
    status = server.model("pt2_error")
    assert status.state == "UNAVAILABLE", status
    assert (
        "output 'OUTPUT__0' (RESULT[out] (= OUTPUT__0)) has shape [2, 4] in a test run on zeros; "
        "the configuration declares dims [16] ([-1, 16] with the batch): correct the output's "
        "dims in config.pbtxt"
    ) in status.reason
    assert shape_warnings(server, "pt2_error") == []


def test_written_output_dims_are_left_to_the_load_by_auto_completion(server):
    config = client("http", server).get_model_config("pt2_completed")
    assert config["max_batch_size"] == aoti_models.COMPLEX_MAX_BATCH  # completed
    assert sorted(e["name"] for e in config["input"]) == [f"INPUT__{i}" for i in range(6)]
    assert [(e["name"], e["dims"]) for e in config["output"]] == [("OUTPUT__0", [16])]
    (warning,) = shape_warnings(server, "pt2_completed")
    assert "has shape [2, 4] in a test run on zeros; the configuration declares dims [16]" in (
        warning
    )
    example = aoti_models.complex_example(2, seed=3)
    inputs = {aoti_models.COMPLEX_INPUTS[k][0]: v.numpy() for k, v in example.items()}
    for protocol in PROTOCOLS:
        assert infer(protocol, server, "pt2_completed", inputs)["OUTPUT__0"].shape == (2, 4)


def _cli() -> list[str]:
    script = shutil.which("pytorch-backend", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "pytorch_backend.serving.cli"]


def test_check_lists_each_mismatch_as_a_warning(server, tmp_path):
    """``pytorch-backend check`` on the same models, named ``pytorch_python`` (it checks those)."""
    repo = server.server.repository
    for model in ("wide", "wide_error", "pt2", "pt2_error", "pt2_completed"):
        shutil.copytree(repo / model, tmp_path / model)
        config = tmp_path / model / "config.pbtxt"
        text = config.read_text()
        if "backend:" not in text:
            config.write_text('backend: "pytorch_python"\n' + text)
    result = subprocess.run(
        [*_cli(), "check", str(tmp_path)], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr  # pt2_error fails its load
    out = result.stdout
    blocks = {
        block.split(" ", 1)[0]: block.splitlines() for block in re.split(r"\n(?=\S)", out.strip())
    }
    for model in ("wide", "wide_error", "pt2", "pt2_completed"):
        first, *warnings = blocks[model]
        assert first.startswith(f"{model} (version 1): OK - "), out
        assert len(warnings) == 1 and warnings[0].startswith("    WARNING - output '"), out
    assert "has shape [1, 16]; the configuration declares dims [4]" in blocks["wide"][1]
    assert "has shape [2, 4] in a test run on zeros" in blocks["pt2"][1]
    assert blocks["pt2_error"][0].startswith("pt2_error (version 1): ERROR - model 'pt2_error': ")
    assert out.strip().endswith("5 model version(s) checked, 1 with problems, 4 with warnings")
