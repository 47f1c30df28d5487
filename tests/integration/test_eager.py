"""nn.Module models (module file, state dict, torch.compile) and torch.export programs, end to end.

One tritonserver serves every model of this module. Real inductor compiles are done for the two
examples (``eager_module``, ``exported_nested``) and a weight-sharing variant; every other model
runs eagerly or through ``{"backend": "eager"}`` to keep the module's runtime modest.
"""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import pytorch_backend
from pytorch_backend.serving import examples
from tests.client_utils import PROTOCOLS, InferenceServerException, infer, write_model
from tests.oracles import reference_outputs

ADAPTER = Path(pytorch_backend.__file__).parent / "model.py"
EXAMPLES = Path(__file__).resolve().parents[2] / "model_repository_examples"
EAGER = '{"disable": true}'
DYNAMO = '{"backend": "eager"}'

# --- module files -------------------------------------------------------------------------------

SCALE = """
import torch
from torch import nn


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.full((4,), 3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight
"""

RAISER = """
import torch


class Raiser(torch.nn.Module):
    \"\"\"y = x + 1; a row with a negative first value makes the whole forward raise.\"\"\"

    def forward(self, x: torch.Tensor):
        if bool((x[:, 0] < 0).any()):
            raise ValueError("negative input")
        return x + 1, torch.full((x.shape[0], 1), x.shape[0], dtype=torch.int64)
"""

PROBE = """
import torch


class Probe(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flags = [torch.get_num_threads(), torch.get_num_interop_threads(),
                 int(torch.is_inference_mode_enabled()), int(torch.is_grad_enabled())]
        return torch.tensor(flags, dtype=torch.int64).expand(x.shape[0], 4)
"""

STRINGS_AND_DICT = """
from typing import Dict, List

import torch


class Words(torch.nn.Module):
    def forward(self, text: List[str], count: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        return [t.upper() for t in text], count * 2


class Pairs(torch.nn.Module):
    def forward(self, inputs: Dict[str, torch.Tensor]):
        return inputs["a"] - inputs["b"]
"""

NO_CLASS = "import torch\nfrom torch.nn import Linear  # imported classes do not count\n"
BROKEN_IMPORT = "import torch\nraise RuntimeError('cannot import me')\n"
BROKEN_INIT = """
import torch


class Broken(torch.nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("no GPU budget")
"""
GRAPH_BREAK = """
import torch


class Breaks(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("a graph break")
        return x * 2
"""


def io(name: str, dtype: str, dims: str) -> str:
    return f'{{ name: "{name}" data_type: {dtype} dims: {dims} }}'


X4 = [io("x", "TYPE_FP32", "[ 4 ]")]
Y4 = [io("y", "TYPE_FP32", "[ 4 ]")]
FLAGS = [io("flags", "TYPE_INT64", "[ 4 ]")]


def config(
    name: str,
    inputs: list[str],
    outputs: list[str],
    parameters: dict[str, str] | None = None,
    extra: str = "",
    backend: str = "pytorch_python",
    max_batch_size: int = 8,
) -> str:
    params = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}\n'
        for k, v in (parameters or {}).items()
    )
    return (
        f'name: "{name}" backend: "{backend}" max_batch_size: {max_batch_size}\n'
        f"input [ {', '.join(inputs)} ]\noutput [ {', '.join(outputs)} ]\n{extra}\n{params}"
    )


def state_dict_file(root: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    path = root / f"{name}.pt"
    torch.save(state, path)
    return path


class _Static(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    root = tmp_path_factory.mktemp("eager-artifacts")
    repo = tmp_path_factory.mktemp("eager-repo")
    built = tmp_path_factory.mktemp("eager-examples") / "repo"
    shutil.copytree(EXAMPLES, built, ignore=shutil.ignore_patterns("1"))
    examples.build_examples(built, aoti=False, log=lambda _: None)
    for model in (examples.EAGER_MODEL, examples.EXPORTED_MODEL):
        shutil.copytree(built / model, repo / model)
    eager_dir = repo / examples.EAGER_MODEL / "1"
    module, weights = eager_dir / "model.py", eager_dir / "model.pt"
    static = root / "static.pt2"
    torch.export.save(torch.export.export(_Static(), (torch.zeros(2, 4),)), static)

    def add(name, cfg, files):
        write_model(repo, name, cfg, {f"1/{k}": v for k, v in files.items()})

    scale = SCALE.encode()
    # with / without weights, compile off / on, both install modes
    add(
        "no_weights",
        config("no_weights", X4, Y4, {"TORCH_COMPILE_OPTIONAL_PARAMETERS": EAGER}),
        {"model.py": scale},
    )
    add(
        "weights_eager",
        config(
            "weights_eager",
            X4,
            ['{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] }'],
            {"TORCH_COMPILE_OPTIONAL_PARAMETERS": EAGER},
        ),
        {"model.py": module, "model.pt": weights},
    )
    add(
        "shared",
        config(
            "shared",
            X4,
            ['{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] }'],
            {"ENABLE_WEIGHT_SHARING": "true", "NUM_THREADS": "1"},
            extra="instance_group [ { kind: KIND_CPU count: 2 } ]",
        ),
        {"model.py": module, "model.pt": weights},
    )
    add(
        "dropin_eager",
        config(
            "dropin_eager",
            X4,
            ['{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] }'],
            {"MODULE_FILENAME": "net.py", "TORCH_COMPILE_OPTIONAL_PARAMETERS": DYNAMO},
            backend="python",
        ),
        {"model.py": ADAPTER, "net.py": module, "net.pt": weights},
    )
    exported_cfg = (repo / examples.EXPORTED_MODEL / "config.pbtxt").read_text()
    dropin_exported = exported_cfg.replace('name: "exported_nested"', 'name: "dropin_exported"')
    dropin_exported = dropin_exported.replace('backend: "pytorch_python"', 'backend: "python"')
    # drop-in: default_model_filename names the Python script; MODEL_FILENAME names the program
    dropin_exported = dropin_exported.replace('default_model_filename: "model.pt2"', "")
    dropin_exported += "".join(
        f"parameters {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(v)} }} }}\n"
        for k, v in {
            "MODEL_FILENAME": "model.pt2",
            "TORCH_COMPILE_OPTIONAL_PARAMETERS": EAGER,
        }.items()
    )
    add(
        "dropin_exported",
        dropin_exported,
        {"model.py": ADAPTER, "model.pt2": repo / examples.EXPORTED_MODEL / "1" / "model.pt2"},
    )
    # failure isolation and dynamic batching
    add(
        "raiser",
        config(
            "raiser",
            X4,
            [*Y4, io("seen", "TYPE_INT64", "[ 1 ]")],
            {"TORCH_COMPILE_OPTIONAL_PARAMETERS": DYNAMO},
            extra="dynamic_batching { max_queue_delay_microseconds: 200000 }",
        ),
        {"model.py": RAISER.encode()},
    )
    # threads and grad policy seen inside the instance
    probe = PROBE.encode()
    disable = {"TORCH_COMPILE_OPTIONAL_PARAMETERS": EAGER}
    add(
        "probe",
        config("probe", X4, FLAGS, {**disable, "NUM_THREADS": "1", "NUM_INTEROP_THREADS": "1"}),
        {"model.py": probe},
    )
    add(
        "probe_grad",
        config("probe_grad", X4, FLAGS, {**disable, "ENABLE_GRAD": "true"}),
        {"model.py": probe},
    )
    # strings, dict input, class selection
    both = STRINGS_AND_DICT.encode()
    add(
        "words",
        config(
            "words",
            [
                '{ name: "text" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } }',
                io("count", "TYPE_INT64", "[ 1 ]"),
            ],
            [
                '{ name: "OUTPUT__0" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } }',
                io("OUTPUT__1", "TYPE_INT64", "[ 1 ]"),
            ],
            {"MODULE_CLASS": "Words"},
        ),
        {"model.py": both},
    )
    add(
        "pairs",
        config(
            "pairs",
            [io("a", "TYPE_FP32", "[ 2 ]"), io("b", "TYPE_FP32", "[ 2 ]")],
            [io("d", "TYPE_FP32", "[ 2 ]")],
            {"MODULE_CLASS": "Pairs", **disable},
        ),
        {"model.py": both},
    )
    # load errors
    bad_compile = {
        "bad_json": "{fullgraph: true}",
        "not_object": "[]",
        "unknown_key": '{"fulgraph": true}',
        "model_key": '{"model": "x"}',
    }
    for name, value in bad_compile.items():
        add(
            name,
            config(name, X4, Y4, {"TORCH_COMPILE_OPTIONAL_PARAMETERS": value}),
            {"model.py": scale},
        )
    add(
        "bad_backend",
        config("bad_backend", X4, Y4, {"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"backend": "nope"}'}),
        {"model.py": scale},
    )
    add(
        "fullgraph_break",
        config(
            "fullgraph_break",
            X4,
            Y4,
            {"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"backend": "eager", "fullgraph": true}'},
        ),
        {"model.py": GRAPH_BREAK.encode()},
    )
    add("no_class", config("no_class", X4, Y4), {"model.py": NO_CLASS.encode()})
    add("two_classes", config("two_classes", X4, Y4), {"model.py": both})
    add(
        "wrong_class",
        config("wrong_class", X4, Y4, {"MODULE_CLASS": "Missing"}),
        {"model.py": both},
    )
    add("broken_import", config("broken_import", X4, Y4), {"model.py": BROKEN_IMPORT.encode()})
    add("broken_init", config("broken_init", X4, Y4), {"model.py": BROKEN_INIT.encode()})
    add(
        "missing_module",
        config("missing_module", X4, Y4, {"MODULE_FILENAME": "absent.py"}),
        {"other.py": scale},
    )
    add(
        "missing_keys",
        config("missing_keys", X4, Y4),
        {"model.py": scale, "model.pt": state_dict_file(root, "missing", {})},
    )
    add(
        "unexpected_keys",
        config("unexpected_keys", X4, Y4),
        {
            "model.py": scale,
            "model.pt": state_dict_file(
                root, "extra", {"weight": torch.ones(4), "bias": torch.ones(4)}
            ),
        },
    )
    whole = root / "whole.pt"
    torch.save(_Static(), whole)
    add("not_state_dict", config("not_state_dict", X4, Y4), {"model.py": scale, "model.pt": whole})
    add(
        "static_batch",
        config(
            "static_batch",
            [io("INPUT__0", "TYPE_FP32", "[ 4 ]")],
            [io("OUTPUT__0", "TYPE_FP32", "[ 4 ]")],
            extra='default_model_filename: "model.pt2"',
        ),
        {"model.pt2": static},
    )
    add(
        "exported_dtype",
        config(
            "exported_dtype",
            [io("INPUT__0", "TYPE_INT32", "[ 2, 4 ]")],
            [io("OUTPUT__0", "TYPE_FP32", "[ 2, 4 ]")],
            extra='default_model_filename: "model.pt2"',
            max_batch_size=0,
        ),
        {"model.pt2": static},
    )
    return triton(repo, timeout=400.0)


READY = (
    examples.EAGER_MODEL,
    examples.EXPORTED_MODEL,
    "no_weights",
    "weights_eager",
    "shared",
    "dropin_eager",
    "dropin_exported",
    "raiser",
    "probe",
    "probe_grad",
    "words",
    "pairs",
)
X = np.array([[1.0, -2.0, 3.0, -4.0], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)


def rows(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 4)).astype(np.float32)


def nested_inputs(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = ["ARGS[0]", "ARGS[1][0]", "ARGS[1][1]", "ARGS[2][gain]", "ARGS[2][bias]"]
    feed = {n: rng.standard_normal((batch, 4)).astype(np.float32) for n in names}
    feed["KWARGS[scale]"] = rng.standard_normal((batch, 1)).astype(np.float32)
    return feed


def instance_lines(log: str, model: str) -> list[str]:
    return [line for line in log.splitlines() if f"model '{model}' instance '{model}_" in line]


def test_models_are_ready(server):
    states = {m.name: m for m in server.models()}
    for name in READY:
        assert states[name].state == "READY", states[name]


def test_kind_and_reason_logged(server):
    log = server.log_text()
    assert "model kind: nn.Module (the version directory holds the module file 'model.py'" in (
        "\n".join(instance_lines(log, "no_weights"))
    )
    assert "model kind: nn.Module (parameter MODULE_FILENAME names 'net.py')" in "\n".join(
        instance_lines(log, "dropin_eager")
    )
    exported = "\n".join(instance_lines(log, examples.EXPORTED_MODEL))
    assert "model kind: torch.export program ('model.pt2' is a torch.export program" in exported
    assert "batch range from range_constraints: (1, 8)" in exported


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", [examples.EAGER_MODEL, "weights_eager", "shared", "dropin_eager"])
def test_module_with_weights_serves_reference_values(server, protocol, model):
    key = "x"
    for batch in (1, 3, 8):
        feed = {key: rows(batch, batch)}
        result = infer(protocol, server, model, feed)
        expected = reference_outputs(examples.EAGER_MODEL, feed)["OUTPUT__0"]
        np.testing.assert_allclose(result["OUTPUT__0"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_module_without_weights_keeps_its_initial_weights(server, protocol):
    result = infer(protocol, server, "no_weights", {"x": X})
    np.testing.assert_allclose(result["y"], X * 3.0)
    lines = "\n".join(instance_lines(server.log_text(), "no_weights"))
    assert "weights: no 'model.pt' beside the module file; keeping its initial weights" in lines
    assert "torch.compile: disabled" in lines and "forward runs eagerly" in lines


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", [examples.EXPORTED_MODEL, "dropin_exported"])
def test_exported_program_serves_call_spec_names(server, protocol, model):
    for batch in (1, 5):
        feed = nested_inputs(batch, batch)
        result = infer(protocol, server, model, feed)
        expected = reference_outputs(examples.EXPORTED_MODEL, feed)
        assert set(result) == set(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(result[name], value, rtol=1e-5, atol=1e-5)


def test_inductor_compile_at_load_and_no_recompilation_across_batch_sizes(server):
    for model, feed in ((examples.EAGER_MODEL, rows), (examples.EXPORTED_MODEL, nested_inputs)):
        for batch in range(1, examples.BATCH_MAX + 1):
            inputs = {"x": feed(batch)} if model == examples.EAGER_MODEL else feed(batch)
            infer("http", server, model, inputs)
        lines = instance_lines(server.log_text(), model)
        text = "\n".join(lines)
        options = [line for line in lines if "torch.compile: options in effect" in line]
        assert len(options) == 1 and "inductor" in options[0], text
        assert "forward runs compiled" in text
        warmup = [
            line for line in lines if "torch.compile warm-up over batch sizes [1, 2, 8]" in line
        ]
        assert len(warmup) == 1, lines
        graphs = int(re.search(r"(\d+) graph\(s\) compiled", warmup[0]).group(1))
        assert 1 <= graphs <= 2  # a dynamic-batch graph and the batch-1 specialisation
        assert not [line for line in lines if "recompiled while serving" in line], text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_raising_request_fails_alone_in_a_dynamic_batch(server, protocol):
    feeds = [rows(1 + i % 3, i) for i in range(8)]
    for feed in feeds:
        feed[:, 0] = np.abs(feed[:, 0]) + 0.1
    feeds[5][0, 0] = -1.0

    def call(feed):
        try:
            return infer(protocol, server, "raiser", {"x": feed})
        except InferenceServerException as error:
            return error

    with ThreadPoolExecutor(len(feeds)) as pool:
        results = list(pool.map(call, feeds))
    assert isinstance(results[5], InferenceServerException)
    assert "model 'raiser' failed: ValueError: negative input" in str(results[5])
    seen = []
    for i, (feed, result) in enumerate(zip(feeds, results)):
        if i == 5:
            continue
        assert not isinstance(result, Exception), result
        np.testing.assert_allclose(result["y"], feed + 1)
        seen.append(int(result["seen"][0, 0]))
    assert max(seen) > 3  # requests were gathered into one forward (each has at most 3 rows)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_threads_and_grad_policy_seen_inside_the_instance(server, protocol):
    flags = infer(protocol, server, "probe", {"x": X})["flags"]
    assert flags.tolist() == [[1, 1, 1, 0]] * 2  # NUM_THREADS, NUM_INTEROP_THREADS, inference
    flags = infer(protocol, server, "probe_grad", {"x": X})["flags"]
    assert flags[0, 2:].tolist() == [0, 1]  # ENABLE_GRAD: no inference mode, grad enabled


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_strings_and_class_selection(server, protocol):
    text = np.array([[b"hello"], ["gr\u00fc\u00df".encode()]], dtype=np.object_)
    count = np.array([[1], [4]], dtype=np.int64)
    result = infer(protocol, server, "words", {"text": text, "count": count})
    assert result["OUTPUT__0"].reshape(-1).tolist() == [b"HELLO", "GR\u00dcSS".encode()]
    assert result["OUTPUT__1"].tolist() == [[2], [8]]
    assert "torch.compile: skipped because forward takes or returns List[str]" in "\n".join(
        instance_lines(server.log_text(), "words")
    )
    a, b = X[:, :2], X[:, 2:]
    np.testing.assert_allclose(infer(protocol, server, "pairs", {"a": a, "b": b})["d"], a - b)


def test_weight_sharing_with_compiled_instances(server):
    lines = "\n".join(instance_lines(server.log_text(), "shared"))
    assert "ENABLE_WEIGHT_SHARING = true" in lines
    assert lines.count("forward runs compiled") == 2


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        ("bad_json", ["'TORCH_COMPILE_OPTIONAL_PARAMETERS'", "invalid JSON"]),
        ("not_object", ["'TORCH_COMPILE_OPTIONAL_PARAMETERS'", "expected a JSON object"]),
        ("unknown_key", ["'TORCH_COMPILE_OPTIONAL_PARAMETERS'", "unknown key 'fulgraph'"]),
        ("model_key", ["'TORCH_COMPILE_OPTIONAL_PARAMETERS'", "'model' is not an optional"]),
        ("bad_backend", ["'TORCH_COMPILE_OPTIONAL_PARAMETERS'", "torch.compile refused it"]),
        ("fullgraph_break", ["torch.compile failed at load", "Unsupported"]),
        ("no_class", ["defines no torch.nn.Module subclass", "imports do not count"]),
        ("two_classes", ["defines 2 nn.Module subclasses: Words, Pairs", "'MODULE_CLASS'"]),
        ("wrong_class", ["'MODULE_CLASS' = 'Missing'", "it defines: Words, Pairs"]),
        ("broken_import", ["importing the module file", "RuntimeError: cannot import me"]),
        ("broken_init", ["instantiating Broken() with no arguments failed", "no GPU budget"]),
        ("missing_module", ["'MODULE_FILENAME'", "unable to find the module file", "absent.py"]),
        ("missing_keys", ["does not match Scale's state dict", "missing keys: weight"]),
        ("unexpected_keys", ["unexpected keys: bias"]),
        ("not_state_dict", ["weights_only=True", "state_dict()"]),
        ("static_batch", ["static batch dimension of 2", 'Dim("batch", min=1, max=8)']),
        ("exported_dtype", ["declared TYPE_INT32", "program expects TYPE_FP32"]),
    ],
)
def test_load_errors(server, model, fragments):
    status = server.model(model)
    assert status.state == "UNAVAILABLE", status
    for fragment in fragments:
        assert fragment in status.reason, (fragment, status.reason)
    assert f"model '{model}'" in status.reason
