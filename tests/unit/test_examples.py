"""The example model repository: configs, TorchScript artifacts and the examples builder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pytorch_backend
from pytorch_backend.config import ModelConfig, TensorSpec, parse_model_config
from pytorch_backend.config.dtypes import TRITON_TO_TORCH
from pytorch_backend.serving import examples
from tests.oracles import reference_outputs

REPO = Path(__file__).resolve().parents[2] / "model_repository_examples"
TORCHSCRIPT = (*examples.TORCHSCRIPT_MODELS, "dropin_python")

# ---- a minimal protobuf text-format reader (enough for config.pbtxt) ------------------------

_TOKEN = re.compile(
    r'\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|([A-Za-z_][\w.]*|-?\d+(?:\.\d+)?)|([{}\[\]:,])'
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m, f"cannot parse config.pbtxt at {text[pos : pos + 20]!r}"
        pos = m.end()
        if m.group(1) is not None:
            out.append(("str", m.group(1)))
        elif m.group(2) is not None:
            out.append(("word", m.group(2)))
        elif m.group(3) is not None:
            out.append(("punct", m.group(3)))
    return out


def _value(tokens: list[tuple[str, str]], i: int) -> tuple[Any, int]:
    kind, text = tokens[i]
    if text == "{":
        return _message(tokens, i + 1, "}")
    if text == "[":
        items: list[Any] = []
        i += 1
        while tokens[i][1] != "]":
            item, i = _value(tokens, i)
            items.append(item)
            if tokens[i][1] == ",":
                i += 1
        return items, i + 1
    if kind == "word" and re.fullmatch(r"-?\d+", text):
        return int(text), i + 1
    return text, i + 1


def _message(tokens: list[tuple[str, str]], i: int, end: str | None) -> tuple[dict, int]:
    fields: dict[str, Any] = {}
    while i < len(tokens) and tokens[i][1] != end:
        name = tokens[i][1]
        i += 1
        if tokens[i][1] == ":":
            i += 1
        value, i = _value(tokens, i)
        if name in ("input", "output", "instance_group") and not isinstance(value, list):
            value = [value]
        fields[name] = (
            fields[name] + value if name in ("input", "output") and name in fields else value
        )
        if i < len(tokens) and tokens[i][1] == ",":
            i += 1
    return fields, i + 1


def read_config(model: str, repo: Path = REPO) -> dict[str, Any]:
    """config.pbtxt as the dict Triton would hand to the backend (the fields used here)."""
    fields, _ = _message(
        _tokens((repo / model / "config.pbtxt").read_text(encoding="utf-8")), 0, None
    )
    return fields


def test_pbtxt_reader_handles_nested_messages_and_lists():
    text = """name: "m"
    max_batch_size: 8 # comment
    input [ { name: "A[0]" dims: [ 1, 2 ] reshape: { shape: [ ] } } ]"""
    cfg, _ = _message(_tokens(text), 0, None)
    assert cfg == {
        "name": "m",
        "max_batch_size": 8,
        "input": [{"name": "A[0]", "dims": [1, 2], "reshape": {"shape": []}}],
    }


# ---- the committed repository ----------------------------------------------------------------


def test_repository_lists_every_example_with_marker_and_readme():
    assert (REPO / ".pytorch_backend_examples").is_file()
    folders = {p.name for p in REPO.iterdir() if (p / "config.pbtxt").is_file()}
    # packaged: generated; the sequence model needs a sequence id, so it is not in MODELS
    assert folders - {examples.PACKAGED_MODEL, examples.SEQUENCE_MODEL} == set(examples.MODELS)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for model in (*examples.MODELS, examples.PACKAGED_MODEL, examples.SEQUENCE_MODEL):
        assert f"`{model}`" in readme


@pytest.mark.parametrize("model", examples.MODELS)
def test_config_declares_backend_platform_and_batching(model):
    raw = read_config(model)
    cfg = parse_model_config(raw)
    assert cfg.name == model
    assert cfg.backend == ("python" if model == "dropin_python" else "pytorch_python")
    platforms = {examples.EAGER_MODEL: "", examples.EXPORTED_MODEL: ""}
    platforms.update(dict.fromkeys(examples.AOTI_MODELS, "torch_aoti"))
    assert cfg.platform == platforms.get(model, "pytorch_libtorch")
    assert cfg.max_batch_size == examples.BATCH_MAX
    assert cfg.dynamic_batching


def test_aoti_configs_name_the_same_leaves():
    named = parse_model_config(read_config("aoti_nested"))
    ordinal = parse_model_config(read_config("aoti_nested_ordinal"))
    assert [s.name for s in named.inputs] == [
        "ARGS[0]",
        "ARGS[1][0]",
        "ARGS[1][1]",
        "ARGS[2][gain]",
        "ARGS[2][bias]",
        "KWARGS[scale]",
    ]
    assert [s.name for s in named.outputs] == [
        "RESULT[total]",
        "RESULT[parts][0]",
        "RESULT[parts][1]",
    ]
    assert [s.name for s in ordinal.inputs] == [f"INPUT__{i}" for i in range(6)]
    assert [s.name for s in ordinal.outputs] == [f"OUTPUT__{i}" for i in range(3)]
    for a, b in zip(named.inputs + named.outputs, ordinal.inputs + ordinal.outputs):
        assert (a.dtype, a.dims) == (b.dtype, b.dims)


def test_gitignore_covers_built_files():
    patterns = (REPO / ".gitignore").read_text(encoding="utf-8").split()
    for pattern in (
        "*/*/model.pt",
        "*/*/model.pt2",
        "*/*/*.stamp",
        "dropin_python/*/model.py",
        "eager_module/*/model.py",
    ):
        assert pattern in patterns


# ---- building --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[Path], list[str]]:
    repo = tmp_path_factory.mktemp("examples") / "repo"
    # as in a fresh checkout: the version folders hold only built (git-ignored) files
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("1"))
    logs: list[str] = []
    return repo, examples.build_examples(repo, aoti=False, log=logs.append), logs


def test_build_writes_torchscript_artifacts_and_dropin_copy(built):
    repo, paths, logs = built
    expected = {repo / m / "1" / "model.pt" for m in (*TORCHSCRIPT, examples.SEQUENCE_MODEL)}
    expected.add(repo / "dropin_python" / "1" / "model.py")
    expected |= {repo / "eager_module" / "1" / name for name in ("model.py", "model.pt")}
    expected.add(repo / "exported_nested" / "1" / "model.pt2")
    assert set(paths) == expected
    for path in paths:
        assert path.is_file()
    adapter = Path(pytorch_backend.__file__).parent / "model.py"
    assert (repo / "dropin_python" / "1" / "model.py").read_bytes() == adapter.read_bytes()
    assert not any((repo / m / "1" / "model.pt2").exists() for m in examples.AOTI_MODELS)
    assert any("aoti=False" in line for line in logs)


def test_rebuild_skips_up_to_date_artifacts(built):
    repo, paths, _ = built
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    logs: list[str] = []
    assert examples.build_examples(repo, aoti=False, log=logs.append) == []
    assert {p: p.stat().st_mtime_ns for p in paths} == mtimes
    assert sum("up to date" in line for line in logs) == len(TORCHSCRIPT) + 3


def test_rebuild_replaces_artifact_with_stale_stamp(built, tmp_path):
    repo, _, _ = built
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    target = copy / "mlp_batched" / "1" / "model.pt"
    target.with_name("model.pt.stamp").write_text("torch=0.0\n")
    (copy / "dict_input" / "1" / "model.pt").unlink()
    rebuilt = examples.build_examples(copy, aoti=False, log=lambda _: None)
    assert set(rebuilt) == {target, copy / "dict_input" / "1" / "model.pt"}
    torch.jit.load(str(target))


def test_build_refuses_a_folder_that_is_not_the_example_repository(tmp_path):
    with pytest.raises(FileNotFoundError, match="mlp_batched"):
        examples.build_examples(tmp_path, aoti=False, log=lambda _: None)


# ---- the TorchScript artifacts against their configs ----------------------------------------


def _sample(spec: TensorSpec, batch: int, rng: np.random.Generator) -> np.ndarray:
    if spec.is_string:
        words = ["hello wörld", "", "Ab c", "x  y", "ß is not ascii", "ONE", "two three four"]
        return np.array([words[i % len(words)].encode() for i in range(batch)], dtype=np.object_)
    return rng.standard_normal((batch, *spec.shape)).astype(np.float32)


def _to_torch(value: np.ndarray) -> Any:
    if value.dtype == np.object_:
        return [v.decode() for v in value.reshape(-1)]
    return torch.from_numpy(value)


def _call(module: torch.jit.ScriptModule, cfg: ModelConfig, feed: dict[str, np.ndarray]) -> list:
    """Call forward the way the config's input names say (dict keys, forward names, INPUT__n)."""
    args = [a.name for a in module.forward.schema.arguments[1:]]
    values = {name: _to_torch(v) for name, v in feed.items()}
    if len(args) == 1 and str(module.forward.schema.arguments[1].type).startswith("Dict"):
        result = module(values)
    elif set(values) == set(args):
        result = module(**values)
    else:
        result = module(*(values[f"INPUT__{i}"] for i in range(len(args))))
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("model", TORCHSCRIPT)
def test_artifact_signature_matches_config_inputs(built, model):
    repo, _, _ = built
    cfg = parse_model_config(read_config(model, repo))
    module = torch.jit.load(str(repo / model / "1" / "model.pt"))
    arguments = module.forward.schema.arguments[1:]
    names = [s.name for s in cfg.inputs]
    if model == "dict_input":
        assert len(arguments) == 1 and str(arguments[0].type) == "Dict[str, Tensor]"
        assert names == ["x", "y"]
        return
    if model == "named_multi_output":
        assert [a.name for a in arguments] == names == ["image", "scale"]
    else:
        assert names == [f"INPUT__{i}" for i in range(len(arguments))]
    for arg, spec in zip(arguments, cfg.inputs):
        assert str(arg.type) == ("List[str]" if spec.is_string else "Tensor")


@pytest.mark.parametrize("batch", [1, 3, examples.BATCH_MAX])
@pytest.mark.parametrize("model", TORCHSCRIPT)
def test_artifact_outputs_have_config_dtypes_and_reference_values(built, model, batch):
    repo, _, _ = built
    cfg = parse_model_config(read_config(model, repo))
    module = torch.jit.load(str(repo / model / "1" / "model.pt"))
    rng = np.random.default_rng(batch)
    feed = {spec.name: _sample(spec, batch, rng) for spec in cfg.inputs}
    outputs = _call(module, cfg, feed)
    assert len(outputs) == len(cfg.outputs)
    expected = reference_outputs(model, feed)
    assert set(expected) == {s.name for s in cfg.outputs}
    for spec in cfg.outputs:
        value = outputs[int(spec.name.rsplit("__", 1)[1])]
        if spec.is_string:
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            assert [v.encode() for v in value] == list(expected[spec.name])
            continue
        assert value.dtype == TRITON_TO_TORCH[spec.dtype], spec.name
        assert tuple(value.shape) == (batch, *spec.shape), spec.name
        np.testing.assert_allclose(value.numpy(), expected[spec.name], rtol=1e-5, atol=1e-5)


def test_reference_values_by_hand():
    x = np.array([[1.0, -2.0, 3.0, -4.0]], dtype=np.float32)
    np.testing.assert_array_equal(
        reference_outputs("mlp_batched", {"INPUT__0": x})["OUTPUT__0"], [[-2.0, 10.0, 6.0]]
    )
    out = reference_outputs(
        "string_io", {"INPUT__0": np.array([b"ab c\xc3\xa9"], dtype=np.object_)}
    )
    assert out["OUTPUT__0"].tolist() == ["AB C\u00e9".encode()]
    assert out["OUTPUT__1"].tolist() == ["c\u00e9 ab".encode()]
    assert out["OUTPUT__2"].tolist() == [[6]]
    with pytest.raises(KeyError, match="unknown example"):
        reference_outputs("nope", {})


# ---- the nn.Module and torch.export examples, through the composition root -----------------


@pytest.mark.parametrize("model", [examples.EAGER_MODEL, examples.EXPORTED_MODEL])
def test_module_examples_serve_reference_values(built, model):
    from pytorch_backend.config import InstanceKind
    from pytorch_backend.instance import InstanceArgs, build_instance
    from pytorch_backend.requests import RequestInputs

    repo, _, _ = built
    raw = read_config(model, repo)
    # compiling is covered by the integration tests; here the module runs eagerly
    raw["parameters"] = {"TORCH_COMPILE_OPTIONAL_PARAMETERS": {"string_value": '{"disable": true}'}}
    instance = build_instance(
        InstanceArgs(raw, f"{model}_0", InstanceKind.CPU, 0, repo / model, "1")
    )
    rng = np.random.default_rng(5)
    feed = {spec.name: _sample(spec, 3, rng) for spec in instance.config.inputs}
    (outcome,) = instance.infer([RequestInputs({k: torch.from_numpy(v) for k, v in feed.items()})])
    expected = reference_outputs(model, feed)
    assert set(outcome) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(outcome[name].numpy(), value, rtol=1e-5, atol=1e-5)


def test_sequence_example_keeps_a_running_sum_per_sequence(built):
    """The ``accumulator`` example, two interleaved sequences through the composition root."""
    from pytorch_backend.config import InstanceKind
    from pytorch_backend.instance import InstanceArgs, build_instance
    from pytorch_backend.requests import RequestInputs, SequenceId

    repo, _, _ = built
    model = examples.SEQUENCE_MODEL
    raw = read_config(model, repo)
    instance = build_instance(
        InstanceArgs(raw, f"{model}_0", InstanceKind.CPU, 0, repo / model, "1")
    )
    rng = np.random.default_rng(7)
    sums = {1: np.zeros((1, 4), np.float32), 2: np.zeros((1, 4), np.float32)}
    for step in range(3):
        requests, fed = [], {}
        for sequence in sums:
            x = rng.standard_normal((1, 4)).astype(np.float32)
            fed[sequence] = x
            inputs = {
                "INPUT__0": torch.from_numpy(x),
                "START__2": torch.tensor([[int(step == 0)]], dtype=torch.int32),
                "STATE__1": torch.full((1, 4), 1e9),  # what Triton sends is ignored
            }
            requests.append(RequestInputs(inputs, None, SequenceId(sequence, step == 0)))
        outcomes = instance.infer(requests)
        for sequence, outcome in zip(sums, outcomes):
            sums[sequence] += fed[sequence]
            assert sorted(outcome) == ["OUTPUT__0"]
            np.testing.assert_allclose(outcome["OUTPUT__0"].numpy(), sums[sequence], rtol=1e-6)
