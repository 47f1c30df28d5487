"""Config auto-completion, packaging and ``pytorch-backend check`` against a real tritonserver.

One server with auto-completion on (Triton's default) serves models whose configs hold only
``name``, ``platform`` and ``backend`` (a batching ``.pt2`` with a dynamic feature dim, a ``.pt2``
with nested dict/tuple I/O, a static ``.pt2``, a torch.export program), partial configs, a
contradiction, a TorchScript file without a sidecar, and the models written by
``pytorch_backend.package`` in each format (also with only ``name`` and ``backend``: sidecar).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import aoti_models, package_models, ts_models
from tests.aoti_models import COMPLEX_INPUTS, COMPLEX_OUTPUTS, complex_example, complex_reference
from tests.client_utils import PROTOCOLS, infer, write_model

MINIMAL = 'name: "{name}"\nbackend: "pytorch_python"\nplatform: "torch_aoti"\n'
TS_MINIMAL = 'name: "{name}"\nbackend: "pytorch_python"\n'

# Model -> texts its load error must contain.
BROKEN = {
    "ac_contradiction": (
        "input 'ARGS[1][1]' data_type: the configuration says TYPE_FP32, the model provides "
        "TYPE_INT64",
    ),
    "ac_over_max": ("max_batch_size: the configuration says 16, the model accepts at most 8",),
    "ac_torchscript_bare": (
        "cannot complete the configuration from the TorchScript file model.pt",
        "input 'x' (forward argument 'x' (Tensor)): data_type and dims",
        "pytorch_backend.package",
    ),
}


def _cli() -> list[str]:
    script = shutil.which("pytorch-backend", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "pytorch_backend.serving.cli"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("autocomplete-repo")
    scratch = tmp_path_factory.mktemp("autocomplete-scratch")
    complex_pt2 = {"1/model.pt2": aoti_models.build_complex()}
    padded_pt2 = {"1/model.pt2": aoti_models.build_padded()}
    write_model(repo, "ac_nested", MINIMAL.format(name="ac_nested"), complex_pt2)
    write_model(repo, "ac_batching", MINIMAL.format(name="ac_batching"), padded_pt2)
    write_model(
        repo,
        "ac_static",
        MINIMAL.format(name="ac_static"),
        {"1/model.pt2": aoti_models.build_static()},
    )
    # Partial: two inputs written with ordinal names (one without dims), the rest completed.
    partial = MINIMAL.format(name="ac_partial") + (
        'input [ { name: "INPUT__5" data_type: TYPE_FP32 dims: [ 4 ] },\n'
        '        { name: "INPUT__2" data_type: TYPE_INT64 } ]\n'
    )
    write_model(repo, "ac_partial", partial, complex_pt2)
    contradiction = MINIMAL.format(name="ac_contradiction") + (
        'input [ { name: "ARGS[1][1]" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
    )
    write_model(repo, "ac_contradiction", contradiction, complex_pt2)
    write_model(
        repo,
        "ac_over_max",
        MINIMAL.format(name="ac_over_max") + "max_batch_size: 16\n",
        complex_pt2,
    )
    ts_file = ts_models.save(ts_models.Scale(), scratch / "scale.pt")
    write_model(
        repo,
        "ac_torchscript_bare",
        TS_MINIMAL.format(name="ac_torchscript_bare"),
        {"1/model.pt": ts_file},
    )
    # Packaged models: the configs the packager wrote, and one with only name/backend (sidecar).
    for fmt in ("pt2", "torchscript", "eager"):
        shutil.copytree(package_models.packaged(fmt), repo / f"pkg_{fmt}")
        _rename(repo / f"pkg_{fmt}", f"pkg_{fmt}")
    for fmt, name in (("torchscript", "pkg_sidecar"), ("eager", "pkg_eager_sidecar")):
        shutil.copytree(package_models.packaged(fmt), repo / name)
        (repo / name / "config.pbtxt").write_text(TS_MINIMAL.format(name=name))
    # A torch.export program (torch.export.save) with a batch range and nested I/O.
    program = torch.export.export(
        _Exported(),
        (torch.zeros(2, 4), {"k": torch.zeros(2, 1)}),
        dynamic_shapes=({0: EXPORT_BATCH}, {"k": {0: EXPORT_BATCH}}),
    )
    torch.export.save(program, str(scratch / "program.pt2"))
    write_model(
        repo,
        "ac_exported",
        MINIMAL.format(name="ac_exported"),
        {"1/model.pt2": scratch / "program.pt2"},
    )
    return repo


EXPORT_BATCH = torch.export.Dim("batch", min=1, max=6)


class _Exported(torch.nn.Module):
    def forward(self, x: torch.Tensor, extra: dict[str, torch.Tensor]):
        return {"a": x * 2, "b": (x.sum(1, keepdim=True) + extra["k"]).double()}


def _rename(model_dir: Path, name: str) -> None:
    config = model_dir / "config.pbtxt"
    text = config.read_text()
    config.write_text(text.replace('name: "two_heads"', f'name: "{name}"'))


@pytest.fixture(scope="module")
def server(triton, repo):
    return triton(repo)


def model_config(server, name: str) -> dict:
    url = f"http://{server.http_url}/v2/models/{name}/config"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def io_of(config: dict) -> dict[str, tuple[str, list[int]]]:
    entries = [*config.get("input", []), *config.get("output", [])]
    return {e["name"]: (e["data_type"], [int(d) for d in e["dims"]]) for e in entries}


def test_minimal_nested_config_is_completed_and_serves(server):
    config = model_config(server, "ac_nested")
    assert config["max_batch_size"] == aoti_models.COMPLEX_MAX_BATCH
    assert "dynamic_batching" in config
    expected = {
        name: (f"TYPE_{dtype}", list(dims))
        for table in (COMPLEX_INPUTS, COMPLEX_OUTPUTS)
        for name, (_, dtype, dims) in table.items()
    }
    assert io_of(config) == expected
    example = complex_example(3, seed=5)
    reference = complex_reference(example)
    for protocol in PROTOCOLS:
        result = infer(protocol, server, "ac_nested", {k: v.numpy() for k, v in example.items()})
        assert sorted(result) == sorted(reference)
        for name, value in reference.items():
            np.testing.assert_allclose(result[name], value.numpy(), rtol=1e-6, atol=1e-6)


def test_minimal_batching_config_gets_range_and_variable_dims(server):
    config = model_config(server, "ac_batching")
    assert config["max_batch_size"] == aoti_models.PADDED_MAX_BATCH
    assert io_of(config) == {"ARGS[0]": ("TYPE_FP32", [-1]), "RESULT": ("TYPE_FP32", [-1])}
    x = np.random.default_rng(0).standard_normal((2, 7)).astype(np.float32)
    for protocol in PROTOCOLS:
        out = infer(protocol, server, "ac_batching", {"ARGS[0]": x})["RESULT"]
        np.testing.assert_allclose(out, x * 2 + 1, rtol=1e-6)


def test_static_package_gets_full_shapes_and_no_batching(server):
    config = model_config(server, "ac_static")
    assert config["max_batch_size"] == 0
    assert "dynamic_batching" not in config
    assert io_of(config) == {"ARGS[0]": ("TYPE_FP32", [4, 3]), "RESULT": ("TYPE_FP32", [4, 3])}


def test_partial_config_is_completed_around_what_was_written(server):
    config = model_config(server, "ac_partial")
    names = [e["name"] for e in config["input"]]
    assert names[:2] == ["INPUT__5", "INPUT__2"]  # as written, first
    assert sorted(names) == [f"INPUT__{i}" for i in range(6)]  # ordinal, as the config uses
    io = io_of(config)
    assert io["INPUT__2"] == ("TYPE_INT64", [2])  # dims completed
    assert sorted(e["name"] for e in config["output"]) == [f"OUTPUT__{i}" for i in range(5)]
    example = complex_example(2, seed=1)
    inputs = {ordinal: example[name].numpy() for name, (ordinal, _, _) in COMPLEX_INPUTS.items()}
    result = infer("grpc", server, "ac_partial", inputs)
    reference = complex_reference(example)
    for name, (ordinal, _, _) in COMPLEX_OUTPUTS.items():
        np.testing.assert_allclose(result[ordinal], reference[name].numpy(), rtol=1e-6)


def test_completed_fields_are_logged_one_line_each(server):
    log = server.log_text()
    prefix = "pytorch_backend: model 'ac_nested': auto-complete: "
    assert f"{prefix}max_batch_size = 8 (the package's exported batch range 2..8)" in log
    assert f"{prefix}input 'ARGS[1][1]': data_type TYPE_INT64, dims [ 2 ]" in log
    assert f"{prefix}dynamic_batching {{ }} (the model batches)" in log
    assert (
        "pytorch_backend: model 'ac_partial': auto-complete: input 'INPUT__2' dims = [ 2 ]" in log
    )


@pytest.mark.parametrize("model", sorted(BROKEN))
def test_contradictions_and_unknowable_fields_fail_the_load(server, model):
    status = server.model(model)
    assert status.state == "UNAVAILABLE"
    for text in BROKEN[model]:
        assert text in status.reason, status.reason


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "sidecar", "eager", "eager_sidecar"])
def test_packaged_models_serve_the_eager_outputs(server, fmt):
    model = f"pkg_{fmt}"
    config = model_config(server, model)
    assert config["max_batch_size"] == package_models.MAX_BATCH
    names = [e["name"] for e in config["input"]]
    outputs = [e["name"] for e in config["output"]]
    x, y = package_models.examples(3, seed=7)
    with torch.no_grad():
        expected = package_models.TwoHeads()(x, y)
    for protocol in PROTOCOLS:
        result = infer(protocol, server, model, dict(zip(names, (x.numpy(), y.numpy()))))
        for name, value in zip(outputs, expected):
            assert result[name].dtype == value.numpy().dtype
            np.testing.assert_allclose(result[name], value.numpy(), rtol=1e-5, atol=1e-5)


def test_minimal_torch_export_program_is_completed_and_serves(server):
    config = model_config(server, "ac_exported")
    assert config["max_batch_size"] == 6 and "dynamic_batching" in config
    assert io_of(config) == {
        "ARGS[0]": ("TYPE_FP32", [4]),
        "ARGS[1][k]": ("TYPE_FP32", [1]),
        "RESULT[a]": ("TYPE_FP32", [4]),
        "RESULT[b]": ("TYPE_FP64", [1]),
    }
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    k = np.ones((3, 1), dtype=np.float32)
    for protocol in PROTOCOLS:
        result = infer(protocol, server, "ac_exported", {"ARGS[0]": x, "ARGS[1][k]": k})
        np.testing.assert_allclose(result["RESULT[a]"], x * 2)
        np.testing.assert_allclose(result["RESULT[b]"], x.sum(1, keepdims=True) + 1)
        assert result["RESULT[b]"].dtype == np.float64


def test_check_reports_the_load_errors_and_exits_1(server, repo):
    result = subprocess.run(
        [*_cli(), "check", str(repo)], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 1, result.stderr
    lines = {line.split(" ", 1)[0]: line for line in result.stdout.splitlines()}
    for status in server.models():
        line = lines[status.name]
        if status.state == "READY":
            assert ": OK - " in line, line
        else:
            assert ": ERROR - " in line
            problem = line.split(": ERROR - ", 1)[1]
            assert problem in status.reason  # the same text as the server's load error
    assert f"{len(server.models())} model version(s) checked, {len(BROKEN)} with problems" in (
        result.stdout
    )


def test_check_passes_a_good_repository(repo, tmp_path):
    shutil.copytree(repo / "pkg_torchscript", tmp_path / "pkg_torchscript")
    result = subprocess.run(
        [*_cli(), "check", str(tmp_path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pkg_torchscript (version 1): OK - TorchScript, 2 input(s), 2 output(s)" in result.stdout
