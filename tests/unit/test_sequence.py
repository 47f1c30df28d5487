"""``sequence_batching`` without Triton: the config parser, naming, and the per-sequence state."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from pytorch_backend.config import InstanceKind, ModelKind, parse_model_config
from pytorch_backend.errors import ModelLoadError, RequestError
from pytorch_backend.instance import InstanceArgs, build_instance
from pytorch_backend.requests import RequestInputs, SequenceId
from pytorch_backend.strings import Strings
from tests import sequence_models

START = {"kind": "CONTROL_SEQUENCE_START", "fp32_false_true": [0, 1]}


def io(name: str, dims=(1,), dtype: str = "TYPE_FP32") -> dict:
    return {"name": name, "data_type": dtype, "dims": [str(d) for d in dims]}


def state(inp="STATE__1", out="STATE_OUT__1", dtype="TYPE_FP32", dims=("1",), **extra) -> dict:
    return {"input_name": inp, "output_name": out, "data_type": dtype, "dims": list(dims), **extra}


def cfg(sequence: dict | None = None, *, outputs=None, max_batch_size=0, **fields) -> dict:
    sequence = (
        {
            "max_sequence_idle_microseconds": "5000000",
            "control_input": [{"name": "START__2", "control": [START]}],
            "state": [state()],
        }
        if sequence is None
        else sequence
    )
    return {
        "name": "m",
        "platform": "pytorch_libtorch",
        "max_batch_size": max_batch_size,
        "input": [io("INPUT__0")],
        "output": outputs if outputs is not None else [io("OUTPUT__0")],
        "sequence_batching": sequence,
        **fields,
    }


# -- config --------------------------------------------------------------------------------------


def test_controls_and_state_become_inputs_and_outputs():
    config = parse_model_config(cfg())
    assert [s.name for s in config.inputs] == ["INPUT__0", "START__2", "STATE__1"]
    assert [(s.name, s.dtype, s.dims) for s in config.outputs] == [
        ("OUTPUT__0", "FP32", (1,)),
        ("STATE_OUT__1", "FP32", (1,)),
    ]
    sequence = config.sequence
    assert sequence.strategy == "direct" and sequence.max_idle_us == 5_000_000
    assert sequence.controls[0].false_true == (0, 1) and sequence.returned == frozenset()


def test_oldest_strategy_default_idle_and_a_state_output_also_declared():
    raw = cfg(
        {"oldest": {}, "state": [state()]},
        outputs=[io("OUTPUT__0"), io("STATE_OUT__1")],
    )
    config = parse_model_config(raw)
    assert config.sequence.strategy == "oldest"
    assert config.sequence.max_idle_us == 1_000_000  # Triton's default
    assert config.sequence.returned == {"STATE_OUT__1"}
    assert [s.name for s in config.outputs] == ["OUTPUT__0", "STATE_OUT__1"]


def test_corrid_types():
    for dtype, expected in (("TYPE_INT32", "INT32"), ("TYPE_UINT64", "UINT64")):
        control = {"kind": "CONTROL_SEQUENCE_CORRID", "data_type": dtype}
        config = parse_model_config(
            cfg({"control_input": [{"name": "C__1", "control": [control]}]})
        )
        assert config.input("C__1").dtype == expected


@pytest.mark.parametrize(
    ("sequence", "message"),
    [
        (
            {
                "control_input": [
                    {
                        "name": "C",
                        "control": [
                            {"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_STRING"}
                        ],
                    }
                ]
            },
            "control_input 'C' (CONTROL_SEQUENCE_CORRID) has data_type TYPE_STRING; tritonserver",
        ),
        (
            {
                "control_input": [
                    {
                        "name": "C",
                        "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_FP32"}],
                    }
                ]
            },
            "has data_type 'TYPE_FP32'; supported: TYPE_INT32, TYPE_INT64, TYPE_UINT64",
        ),
        (
            {"control_input": [{"name": "S", "control": [{"kind": "CONTROL_SEQUENCE_START"}]}]},
            "control_input 'S' (CONTROL_SEQUENCE_START) must give exactly one of",
        ),
        (
            {
                "control_input": [
                    {
                        "name": "S",
                        "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0]}],
                    }
                ]
            },
            "int32_false_true must hold two values",
        ),
        (
            {
                "control_input": [
                    {"name": "A__1", "control": [START]},
                    {"name": "B__2", "control": [START]},
                ]
            },
            "more than one control of kind CONTROL_SEQUENCE_START",
        ),
        (
            {"state": [state(dtype="TYPE_STRING", dims=("2", "2"))]},
            "state 'STATE__1' is TYPE_STRING with dims [2, 2]; a string state must have one",
        ),
        ({"state": [state(dims=("-1",))]}, "state 'STATE__1' has variable dims [-1]"),
        (
            {"state": [state(initial_state=[{"data_type": "TYPE_FP32", "dims": ["1"]}])]},
            "initial_state must set exactly one of zero_data or data_file",
        ),
        (
            {
                "state": [
                    state(
                        initial_state=[
                            {"data_type": "TYPE_INT32", "dims": ["1"], "zero_data": True}
                        ]
                    )
                ]
            },
            "initial_state data_type TYPE_INT32 differs from the state's TYPE_FP32",
        ),
        (
            {"control_input": [{"name": "INPUT__0", "control": [START]}]},
            "input 'INPUT__0' is also a sequence_batching control or state input",
        ),
    ],
)
def test_bad_sequence_batching_fails_the_load_naming_the_field(sequence, message):
    with pytest.raises(ModelLoadError) as info:
        parse_model_config(cfg(sequence))
    assert message in str(info.value) and str(info.value).startswith("model 'm': ")


# -- instances (TorchScript, nn.Module) -----------------------------------------------------------


def ts_dir(tmp_path: Path) -> Path:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    sequence_models.save_script(sequence_models.Accumulator(), model_dir / "1" / "model.pt")
    return model_dir


def build(model_dir: Path, config: dict):
    return build_instance(
        InstanceArgs(json.dumps(config), "m_0", InstanceKind.CPU, 0, model_dir, "1")
    )


def request(
    sequence: int | str, value: float, *, start=False, end=False, batching=False, outputs=None
):
    shape = (1, 1) if batching else (1,)
    inputs = {
        "INPUT__0": torch.full(shape, value),
        "START__2": torch.full(shape, float(start)),
        "STATE__1": torch.full(shape, -12345.0),  # what Triton sends: ignored
    }
    return RequestInputs(inputs, outputs, SequenceId(sequence, start, end))


def values(outcomes) -> list:
    return [
        o if isinstance(o, Exception) else float(o["OUTPUT__0"].reshape(-1)[0]) for o in outcomes
    ]


@pytest.mark.parametrize("batching", [False, True])
def test_interleaved_sequences_in_one_execute(tmp_path, batching):
    instance = build(ts_dir(tmp_path), cfg(max_batch_size=4 if batching else 0))
    r = lambda *a, **k: request(*a, batching=batching, **k)  # noqa: E731
    assert values(instance.infer([r(1, 1.0, start=True), r(2, 10.0, start=True)])) == [1.0, 10.0]
    assert values(instance.infer([r(2, 5.0), r(1, 2.0)])) == [15.0, 3.0]
    assert instance.sequences.live() == 2
    assert values(instance.infer([r(1, 1.0, end=True), r("text id", 7.0, start=True)])) == [
        4.0,
        7.0,
    ]
    assert instance.sequences.live() == 2  # 1 ended, "text id" started
    outcome = instance.infer([r(1, 1.0)])[0]
    assert isinstance(outcome, RequestError) and "sequence 1 must specify the START flag" in str(
        outcome
    )
    restarted = instance.infer([r(2, 3.0, start=True)])
    assert values(restarted) == [3.0] and "STATE_OUT__1" not in restarted[0]


def test_requests_without_a_sequence_and_for_the_state_output(tmp_path):
    instance = build(ts_dir(tmp_path), cfg())
    bare = RequestInputs(request(1, 1.0).inputs)
    asks = request(1, 1.0, start=True, outputs=frozenset({"STATE_OUT__1"}))
    good = request(2, 4.0, start=True)
    outcomes = instance.infer([bare, asks, good])
    assert "non-zero or non-empty correlation ID" in str(outcomes[0])
    assert "unexpected inference output 'STATE_OUT__1'" in str(outcomes[1])
    assert values(outcomes[2:]) == [4.0]
    assert instance.sequences.live() == 1  # only the good one started


def test_state_output_declared_in_output_is_returned_when_asked(tmp_path):
    raw = cfg(outputs=[io("OUTPUT__0"), io("STATE_OUT__1")])
    instance = build(ts_dir(tmp_path), raw)
    (first,) = instance.infer([request(1, 2.0, start=True)])
    assert sorted(first) == ["OUTPUT__0", "STATE_OUT__1"]
    (second,) = instance.infer([request(1, 3.0, outputs=frozenset({"OUTPUT__0"}))])
    assert sorted(second) == ["OUTPUT__0"] and float(second["OUTPUT__0"][0]) == 5.0


class FailsOnNegative(torch.nn.Module):
    def forward(self, INPUT__0: torch.Tensor, STATE__1: torch.Tensor, START__2: torch.Tensor):  # noqa: N803
        if bool((INPUT__0 < 0).any()):
            raise ValueError("negative step")
        total = STATE__1 + INPUT__0
        return total, total


def test_a_failed_step_keeps_the_state_and_the_others_are_served(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    sequence_models.save_script(FailsOnNegative(), model_dir / "1" / "model.pt")
    instance = build(model_dir, cfg(max_batch_size=4))
    r = lambda *a, **k: request(*a, batching=True, **k)  # noqa: E731
    assert values(instance.infer([r(1, 1.0, start=True), r(2, 2.0, start=True)])) == [1.0, 2.0]
    outcomes = instance.infer([r(1, -5.0), r(2, 2.0)])  # one batch: bisected, 1 fails alone
    assert "negative step" in str(outcomes[0]) and values(outcomes[1:]) == [4.0]
    assert values(instance.infer([r(1, 1.0), r(2, 1.0)])) == [2.0, 5.0]
    failed_start = instance.infer([r(3, -1.0, start=True)])[0]
    assert isinstance(failed_start, Exception)
    assert values(instance.infer([r(3, 1.0)])) == [1.0]  # started with its initial state


def test_initial_state_from_a_data_file_and_zero_data(tmp_path):
    model_dir = ts_dir(tmp_path)
    (model_dir / "initial_state").mkdir()
    (model_dir / "initial_state" / "seed.bin").write_bytes(struct.pack("<f", 100.0))
    init = [{"data_type": "TYPE_FP32", "dims": ["1"], "name": "s", "data_file": "seed.bin"}]
    instance = build(
        model_dir,
        cfg(
            {
                "state": [state(initial_state=init)],
                "control_input": [{"name": "START__2", "control": [START]}],
            }
        ),
    )
    assert values(instance.infer([request(1, 1.0, start=True)])) == [101.0]
    (model_dir / "initial_state" / "seed.bin").write_bytes(b"\0" * 3)
    with pytest.raises(ModelLoadError, match=r"holds 3 bytes; dims \[1\] of TYPE_FP32 need 4"):
        build(
            model_dir,
            cfg(
                {
                    "state": [state(initial_state=init)],
                    "control_input": [{"name": "START__2", "control": [START]}],
                }
            ),
        )


def test_idle_sequences_are_dropped_and_the_store_stays_bounded(tmp_path):
    instance = build(ts_dir(tmp_path), cfg(max_batch_size=8))
    store = instance.sequences
    lines: list[str] = []
    store.log = type("L", (), {"verbose": staticmethod(lines.append)})()
    now = [0.0]
    store.clock = lambda: now[0]
    for wave in range(50):  # 50 waves of 8 abandoned sequences, one idle time apart
        ids = [wave * 8 + k + 1 for k in range(8)]
        instance.infer([request(i, 1.0, start=True, batching=True) for i in ids])
        assert store.live() <= 16
        now[0] += 5.5  # idle time is 5 s
    assert store.live() == 8
    instance.infer([request(9999, 1.0, start=True, batching=True)])
    assert store.live() == 1 and len(lines) == 50 * 8
    assert "state dropped after 5.500 s without a request" in lines[0]
    instance.close()
    assert store.live() == 0


@pytest.mark.parametrize(
    ("sequence", "message"),
    [
        (
            {"control_input": [{"name": "START", "control": [START]}], "state": [state()]},
            "sequence_batching input 'START' does not follow the <name>__<index> naming",
        ),
        (
            {
                "control_input": [{"name": "START__2", "control": [START]}],
                "state": [state(out="STATE_OUT")],
            },
            "sequence_batching output 'STATE_OUT' does not follow",
        ),
        (
            {"control_input": [{"name": "START__5", "control": [START]}], "state": [state()]},
            "sequence_batching input 'START__5' refers to index 5, but forward takes 3",
        ),
        (
            {"control_input": [{"name": "START__0", "control": [START]}], "state": [state()]},
            "inputs 'INPUT__0' and 'START__0' both refer to index 0",
        ),
    ],
)
def test_torchscript_controls_and_states_bind_by_index(tmp_path, sequence, message):
    with pytest.raises(ModelLoadError) as info:
        build(ts_dir(tmp_path), cfg(sequence))
    assert message in str(info.value)


class NamedAccumulator(torch.nn.Module):
    def forward(self, x: torch.Tensor, START__1: torch.Tensor, STATE__2: torch.Tensor):  # noqa: N803
        total = STATE__2 + x
        return total, total


def test_torchscript_forward_names_with_indexed_controls(tmp_path):
    """Other inputs may use forward-argument names; controls and states still bind by index."""
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    sequence_models.save_script(NamedAccumulator(), model_dir / "1" / "model.pt")
    raw = cfg(
        {
            "control_input": [{"name": "START__1", "control": [START]}],
            "state": [state(inp="STATE__2")],
        }
    )
    raw["input"] = [io("x")]
    instance = build(model_dir, raw)
    assert dict(instance.executor.inputs.positions) == {"x": 0, "START__1": 1, "STATE__2": 2}
    inputs = {"x": torch.ones(1), "START__1": torch.ones(1), "STATE__2": torch.zeros(1)}
    outcome = instance.infer([RequestInputs(inputs, None, SequenceId(3, start=True))])
    assert float(outcome[0]["OUTPUT__0"][0]) == 1.0


def test_eager_module_binds_controls_by_forward_name(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(sequence_models.EAGER_SOURCE)
    raw = cfg(
        {"control_input": [{"name": "start", "control": [START]}], "state": [state(inp="state")]},
        backend="pytorch_python",
        platform="",
        parameters={"TORCH_COMPILE_OPTIONAL_PARAMETERS": {"string_value": '{"disable": true}'}},
    )
    raw["input"] = [io("x")]
    instance = build(model_dir, raw)
    first = RequestInputs(
        {"x": torch.ones(1), "start": torch.ones(1), "state": torch.zeros(1)},
        None,
        SequenceId(5, start=True),
    )
    second = RequestInputs(
        {"x": torch.ones(1), "start": torch.zeros(1), "state": torch.zeros(1)},
        None,
        SequenceId(5),
    )
    assert [float(o["OUTPUT__0"][0]) for o in instance.infer([first])] == [101.0]
    assert [float(o["OUTPUT__0"][0]) for o in instance.infer([second])] == [2.0]


def test_auto_complete_leaves_sequence_models_as_written(tmp_path):
    """The controls and states are model arguments: completing would add them as inputs."""
    from pytorch_backend.autocomplete import complete_config

    completion = complete_config(cfg(), ts_dir(tmp_path) / "1")
    assert completion.empty


def test_torch_export_program_takes_controls_and_state_by_call_spec_name(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    program = sequence_models._export_stateful()
    torch.export.save(program, str(model_dir / "1" / "model.pt2"))

    def control(name: str, kind: str) -> dict:
        return {"name": name, "control": [{"kind": kind, "fp32_false_true": [0, 1]}]}

    corrid = {"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_INT32"}
    raw = cfg(
        {
            "oldest": {},
            "control_input": [
                control("ARGS[2]", "CONTROL_SEQUENCE_START"),
                control("ARGS[3]", "CONTROL_SEQUENCE_READY"),
                {"name": "ARGS[4]", "control": [corrid]},
            ],
            "state": [state(inp="ARGS[1]", out="RESULT[1]")],
        },
        outputs=[io("RESULT[0]")],
        max_batch_size=8,
        platform="",
        default_model_filename="model.pt2",
        parameters={"TORCH_COMPILE_OPTIONAL_PARAMETERS": {"string_value": '{"disable": true}'}},
    )
    raw["input"] = [io("ARGS[0]")]
    instance = build(model_dir, raw)
    assert instance.kind is ModelKind.EXPORTED_PROGRAM

    def step(sequence: int, value: float, start: bool = False) -> RequestInputs:
        inputs = {
            "ARGS[0]": torch.full((1, 1), value),
            "ARGS[1]": torch.full((1, 1), -1.0),
            "ARGS[2]": torch.full((1, 1), float(start)),
            "ARGS[3]": torch.ones(1, 1),
            "ARGS[4]": torch.full((1, 1), sequence, dtype=torch.int32),
        }
        return RequestInputs(inputs, None, SequenceId(sequence, start))

    first = instance.infer([step(10, 1.0, True), step(20, 2.0, True)])
    second = instance.infer([step(20, 3.0), step(10, 4.0)])
    got = [float(o["RESULT[0]"][0, 0]) for o in first + second]
    assert got == [1.0 + 10, 2.0 + 20, 5.0 + 20, 5.0 + 10]  # running sum + CORRID


def string_cfg(max_batch_size: int, initial: list | None = None) -> dict:
    corrid = {"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_INT64"}
    dims = ("1",)
    extra = {"initial_state": initial} if initial else {}
    sequence = {
        "control_input": [{"name": "CORRID__2", "control": [corrid]}],
        "state": [state(dtype="TYPE_STRING", dims=dims, **extra)],
    }
    reshape = {"reshape": {"shape": []}} if max_batch_size else {}
    outputs = [{**io("OUTPUT__0", dims, "TYPE_STRING"), **reshape}]
    raw = cfg(sequence, outputs=outputs, max_batch_size=max_batch_size)
    raw["input"] = [{**io("INPUT__0", dims, "TYPE_STRING"), **reshape}]
    return raw


def word(sequence: int, text: str, *, start=False, batching=False) -> RequestInputs:
    shape = (1, 1) if batching else (1,)
    inputs = {
        "INPUT__0": Strings([text], (1,)),  # batching: dims [1], reshape [] (one per item)
        "CORRID__2": torch.full(shape, sequence, dtype=torch.int64),
        "STATE__1": Strings(["\x00garbage"], shape),  # what Triton sends: ignored
    }
    return RequestInputs(inputs, None, SequenceId(sequence, start))


@pytest.mark.parametrize("batching", [False, True])
def test_string_state_of_interleaved_sequences(tmp_path, batching):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    sequence_models.save_script(sequence_models.StringLog(), model_dir / "1" / "model.pt")
    instance = build(model_dir, string_cfg(4 if batching else 0))
    w = lambda *a, **k: word(*a, batching=batching, **k)  # noqa: E731
    first = instance.infer([w(1, "x", start=True), w(2, "y", start=True)])
    second = instance.infer([w(2, "z"), w(1, "w")])
    got = [o["OUTPUT__0"] for o in first + second]
    assert got == [["1:x"], ["2:y"], ["2:y,2:z"], ["1:x,1:w"]]
    restarted = instance.infer([w(1, "v", start=True)])
    assert restarted[0]["OUTPUT__0"] == ["1:v"] and "STATE_OUT__1" not in restarted[0]


def test_string_initial_state_from_a_data_file(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "initial_state").mkdir()
    data = b"".join(struct.pack("<I", len(t)) + t for t in [b"seed"])
    (model_dir / "initial_state" / "log.bin").write_bytes(data)
    sequence_models.save_script(sequence_models.StringLog(), model_dir / "1" / "model.pt")
    initial = [{"data_type": "TYPE_STRING", "dims": ["1"], "data_file": "log.bin"}]
    instance = build(model_dir, string_cfg(0, initial))
    (out,) = instance.infer([word(7, "x", start=True)])
    assert out["OUTPUT__0"] == ["seed,7:x"]
    (model_dir / "initial_state" / "log.bin").write_bytes(struct.pack("<I", 9) + b"short")
    with pytest.raises(ModelLoadError, match="is not serialized TYPE_STRING elements"):
        build(model_dir, string_cfg(0, initial))


def test_batched_string_state_needs_one_string_per_item(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    sequence_models.save_script(sequence_models.StringLog(), model_dir / "1" / "model.pt")
    raw = string_cfg(4)
    raw["sequence_batching"]["state"][0]["dims"] = ["2"]
    with pytest.raises(ModelLoadError, match=r"TYPE_STRING input 'STATE__1' must be 1-D"):
        build(model_dir, raw)


def test_string_state_is_refused_by_a_torch_export_program(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    torch.export.save(sequence_models._export_stateful(), str(model_dir / "1" / "model.pt2"))
    raw = cfg(
        {
            "control_input": [
                {"name": "ARGS[2]", "control": [START]},
                {"name": "ARGS[3]", "control": [dict(START, kind="CONTROL_SEQUENCE_READY")]},
            ],
            "state": [state(inp="ARGS[1]", out="RESULT[1]", dtype="TYPE_STRING")],
        },
        outputs=[io("RESULT[0]")],
        max_batch_size=8,
        platform="",
        default_model_filename="model.pt2",
        parameters={"TORCH_COMPILE_OPTIONAL_PARAMETERS": {"string_value": '{"disable": true}'}},
    )
    raw["input"] = [io("ARGS[0]")]
    with pytest.raises(ModelLoadError, match=r"'ARGS\[1\]' is TYPE_STRING"):
        build(model_dir, raw)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_state_stays_on_the_gpu_instances_device(tmp_path):
    model_dir = ts_dir(tmp_path)
    raw = cfg(max_batch_size=4)
    instance = build_instance(
        InstanceArgs(json.dumps(raw), "m_0", InstanceKind.GPU, 0, model_dir, "1")
    )
    r = lambda *a, **k: request(*a, batching=True, **k)  # noqa: E731
    assert values(instance.infer([r(1, 1.0, start=True), r(2, 2.0, start=True)])) == [1.0, 2.0]
    assert values(instance.infer([r(2, 1.0), r(1, 1.0)])) == [3.0, 2.0]
    held = instance.sequences._held
    assert {t.device.type for h in held.values() for t in h.states.values()} == {"cuda"}
