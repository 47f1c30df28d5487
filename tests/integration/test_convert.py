"""``pytorch-backend convert`` end to end: converted TorchScript models served by tritonserver.

The TorchScript examples (one input; two inputs and three outputs of three dtypes; the drop-in
copy) are converted once to ``.pt2`` model directories and served beside the originals; the same
client code (same tensor names) gets the same answers from both, over HTTP and gRPC.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pytorch_backend import convert
from pytorch_backend.serving import examples
from tests.client_utils import PROTOCOLS, infer

EXAMPLES = Path(__file__).resolve().parents[2] / "model_repository_examples"
CONVERTED = ["mlp_batched", "named_multi_output", "dropin_python"]


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    built = tmp_path_factory.mktemp("convert-examples") / "repo"
    shutil.copytree(EXAMPLES, built, ignore=shutil.ignore_patterns("1"))
    examples.build_examples(built, aoti=False, log=lambda _: None)
    repo = tmp_path_factory.mktemp("convert-repo")
    for name in CONVERTED:
        shutil.copytree(built / name, repo / name)
        convert(built / name, repo / f"{name}_pt2", report=None)
    return triton(repo)


def feeds(model: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if model == "named_multi_output":
        return {
            "image": rng.standard_normal((batch, 2, 3)).astype(np.float32),
            "scale": rng.standard_normal((batch, 1)).astype(np.float32),
        }
    return {"INPUT__0": rng.standard_normal((batch, 4)).astype(np.float32)}


def test_converted_configs_keep_the_names_and_select_aoti(server):
    for name in CONVERTED:
        assert server.model(f"{name}_pt2").state == "READY"
    log = server.log_text()
    assert "model 'named_multi_output_pt2' instance 'named_multi_output_pt2_0': model kind: " in log
    lines = [line for line in log.splitlines() if "'named_multi_output_pt2_0'" in line]
    assert any("model kind: AOT-Inductor package" in line for line in lines)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", CONVERTED)
def test_same_client_code_same_answers(server, protocol, model):
    rng = np.random.default_rng(7)
    for batch in (1, 3, 8):
        feed = feeds(model, batch, rng)
        original = infer(protocol, server, model, feed)
        converted = infer(protocol, server, f"{model}_pt2", feed)
        assert sorted(converted) == sorted(original)
        for name, value in original.items():
            assert converted[name].dtype == value.dtype, name
            if value.dtype.kind == "f":
                np.testing.assert_allclose(converted[name], value, rtol=1e-4, atol=1e-5)
            else:
                np.testing.assert_array_equal(converted[name], value)
