"""Sequence batching end to end: control tensors, both strategies, implicit state, load errors.

One tritonserver serves TorchScript, ``.pt2`` (batching, ordinal and call-spec names) and
nn.Module sequence models, in both install modes; the client sets the sequence with
tritonclient's ``sequence_id`` / ``sequence_start`` / ``sequence_end``.
"""

from __future__ import annotations

import concurrent.futures
import re
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import pytorch_backend
from pytorch_backend.serving import examples
from tests import sequence_models
from tests.client_utils import (
    PROTOCOLS,
    InferenceServerException,
    client,
    make_inputs,
    write_model,
)

# No expiry between the steps of a test on a busy machine, yet a sequence a failed test leaves
# open expires before the server stops (unloading waits for it).
IDLE = "max_sequence_idle_microseconds: 10000000"
START_I32 = "control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ]"
START_F32 = "control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ]"
END_F32 = "control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] } ]"
READY_BOOL = "control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ]"
READY_F32 = "control [ { kind: CONTROL_SEQUENCE_READY fp32_false_true: [ 0, 1 ] } ]"


def corrid(dtype: str) -> str:
    return f"control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {dtype} }} ]"


def controls(**named: str) -> str:
    return ", ".join(f'{{ name: "{name}" {control} }}' for name, control in named.items())


def tensor(name: str, dtype: str = "TYPE_FP32", dims: str = "[ 1 ]") -> str:
    return f'{{ name: "{name}" data_type: {dtype} dims: {dims} }}'


def state(inp: str, out: str, extra: str = "") -> str:
    return (
        f'state [ {{ input_name: "{inp}" output_name: "{out}" data_type: TYPE_FP32 '
        f"dims: [ 1 ] {extra} }} ]"
    )


def config(
    name: str,
    inputs: list[str],
    outputs: list[str],
    sequence: str,
    *,
    max_batch_size: int = 0,
    backend: str = "pytorch_python",
    extra: str = "",
    count: int = 1,
) -> str:
    return f"""
name: "{name}"
backend: "{backend}"
max_batch_size: {max_batch_size}
input [ {", ".join(inputs)} ]
output [ {", ".join(outputs)} ]
sequence_batching {{ {sequence} }}
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
{extra}
"""


CONTROLS = controls(
    START__1=START_I32, END__2=END_F32, READY__3=READY_BOOL, CORRID__4=corrid("TYPE_INT64")
)
CONTROL_OUTPUTS = [tensor("OUTPUT__0", dims="[ 4 ]"), tensor("OUTPUT__1")]
ACC_INPUTS, ACC_OUTPUTS = [tensor("INPUT__0")], [tensor("OUTPUT__0")]
ACC_STATE = f"control_input [ {controls(START__2=START_F32)} ] {state('STATE__1', 'STATE_OUT__1')}"
PT2_ORDINAL = (
    ["INPUT__0"],
    ["OUTPUT__0"],
    {"INPUT__2": START_F32, "INPUT__3": READY_F32, "INPUT__4": corrid("TYPE_INT32")},
    ("INPUT__1", "OUTPUT__1"),
)
PT2_FORWARD = (
    ["ARGS[0]"],
    ["RESULT[0]"],
    {"ARGS[2]": START_F32, "ARGS[3]": READY_F32, "ARGS[4]": corrid("TYPE_INT32")},
    ("ARGS[1]", "RESULT[1]"),
)
OLDEST = "oldest { max_candidate_sequences: 32 max_queue_delay_microseconds: 300000 }"
DIRECT = "direct { max_queue_delay_microseconds: 300000 }"
PLUGIN = Path(pytorch_backend.__file__).with_name("model.py")

# broken model -> what its load error says
BROKEN = {
    # string CORRID: refused for every kind (2.51 refuses the tensor); string state: .pt2 only
    "bad_corrid_string": "CONTROL_SEQUENCE_CORRID) has data_type TYPE_STRING; tritonserver",
    "bad_state_string": "input 'INPUT__1' is TYPE_STRING; AOT-Inductor packages take and",
    "bad_control_no_index": "sequence_batching input 'START' does not follow the <name>__<index>",
    "bad_state_no_index": "sequence_batching output 'STATE_OUT' does not follow",
    "bad_control_no_argument": "input 'CORRID__3' refers to index 3, but forward takes 3",
    "bad_pt2_control_no_argument": "KWARGS[corrid]",
    "bad_initial_file": "initial_state data_file 'missing.bin': cannot read",
}


def pt2_config(name: str, names: tuple, sequence_extra: str = "", **kwargs) -> str:
    inputs, outputs, named_controls, (state_in, state_out) = names
    sequence = (
        f"{IDLE} {OLDEST} control_input [ {controls(**named_controls)} ] "
        f"{state(state_in, state_out, sequence_extra)}"
    )
    return config(
        name,
        [tensor(n) for n in inputs],
        [tensor(n) for n in outputs],
        sequence,
        max_batch_size=8,
        extra='platform: "torch_aoti"',
        **kwargs,
    )


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory):
    repo = tmp_path_factory.mktemp("seq-repo")
    scratch = tmp_path_factory.mktemp("seq-scratch")
    controls_pt = sequence_models.save_script(sequence_models.Controls(), scratch / "c.pt")
    acc_pt = sequence_models.save_script(sequence_models.Accumulator(), scratch / "a.pt")
    pt2 = sequence_models.build_stateful_pt2()

    for name, strategy in (("controls_direct", DIRECT), ("controls_oldest", OLDEST)):
        sequence = f"{IDLE} {strategy} control_input [ {CONTROLS} ]"
        write_model(
            repo,
            name,
            config(name, ACC_INPUTS, CONTROL_OUTPUTS, sequence, max_batch_size=4),
            {"1/model.pt": controls_pt},
        )
    write_model(
        repo,
        "acc",
        config("acc", ACC_INPUTS, ACC_OUTPUTS, f"{IDLE} {ACC_STATE}", count=2),
        {"1/model.pt": acc_pt},
    )
    # a string state (TorchScript takes it as List[str])
    log_pt = sequence_models.save_script(sequence_models.StringLog(), scratch / "log.pt")
    string_state = (
        f"{IDLE} control_input [ {controls(CORRID__2=corrid('TYPE_INT64'))} ] "
        'state [ { input_name: "STATE__1" output_name: "STATE_OUT__1" data_type: TYPE_STRING '
        "dims: [ 1 ] } ]"
    )
    strings = [tensor("INPUT__0", "TYPE_STRING")], [tensor("OUTPUT__0", "TYPE_STRING")]
    write_model(
        repo, "strlog", config("strlog", *strings, string_state, count=2), {"1/model.pt": log_pt}
    )
    # drop-in: the plugin is the version directory's model.py; the state output is returned too
    write_model(
        repo,
        "acc_dropin",
        config(
            "acc_dropin",
            ACC_INPUTS,
            [*ACC_OUTPUTS, tensor("STATE_OUT__1")],
            f"{IDLE} {ACC_STATE}",
            backend="python",
            max_batch_size=2,
        ),
        {"1/model.pt": acc_pt, "1/model.py": PLUGIN},
    )
    initial = (
        'initial_state [ { data_type: TYPE_FP32 dims: [ 1 ] name: "seed" data_file: "seed.bin" } ]'
    )
    write_model(
        repo,
        "acc_initial",
        config(
            "acc_initial",
            ACC_INPUTS,
            ACC_OUTPUTS,
            f"{IDLE} control_input [ {controls(START__2=START_F32)} ] "
            f"{state('STATE__1', 'STATE_OUT__1', initial)}",
        ),
        {"1/model.pt": acc_pt, "initial_state/seed.bin": struct.pack("<f", 1000.0)},
    )
    write_model(
        repo,
        "acc_idle",
        config(
            "acc_idle",
            ACC_INPUTS,
            ACC_OUTPUTS,
            f"max_sequence_idle_microseconds: 4000000 {OLDEST} {ACC_STATE}",
            max_batch_size=8,
        ),
        {"1/model.pt": acc_pt},
    )
    write_model(repo, "pt2_ordinal", pt2_config("pt2_ordinal", PT2_ORDINAL), {"1/model.pt2": pt2})
    write_model(
        repo,
        "pt2_forward",
        pt2_config(
            "pt2_forward",
            PT2_FORWARD,
            'initial_state [ { data_type: TYPE_FP32 dims: [ 1 ] name: "z" zero_data: true } ]',
        ),
        {"1/model.pt2": pt2},
    )
    write_model(
        repo,
        "eager_acc",
        config(
            "eager_acc",
            [tensor("x")],
            [tensor("OUTPUT__0")],
            f"{IDLE} control_input [ {controls(start=START_F32)} ] "
            f"{state('state', 'STATE_OUT__1')}",
            extra='parameters { key: "TORCH_COMPILE_OPTIONAL_PARAMETERS" '
            'value: { string_value: "{\\"disable\\": true}" } }',
            max_batch_size=2,
        ),
        {"1/model.py": sequence_models.EAGER_SOURCE.encode()},
    )

    # the example and its client script
    example = Path(__file__).resolve().parents[2] / "model_repository_examples"
    write_model(
        repo,
        examples.SEQUENCE_MODEL,
        (example / examples.SEQUENCE_MODEL / "config.pbtxt").read_text(),
        {"1/model.pt": sequence_models.save_script(examples.Accumulator(), scratch / "e.pt")},
    )

    # -- broken --------------------------------------------------------------------------------
    bad_corrid = dict(PT2_ORDINAL[2], **{"INPUT__4": corrid("TYPE_STRING")})
    write_model(
        repo,
        "bad_corrid_string",
        pt2_config("bad_corrid_string", (*PT2_ORDINAL[:2], bad_corrid, PT2_ORDINAL[3])),
        {"1/model.pt2": pt2},
    )
    write_model(
        repo,
        "bad_state_string",
        pt2_config("bad_state_string", PT2_ORDINAL).replace(
            "data_type: TYPE_FP32 dims: [ 1 ]  }", "data_type: TYPE_STRING dims: [ 1 ]  }"
        ),
        {"1/model.pt2": pt2},
    )
    write_model(
        repo,
        "bad_control_no_index",
        config(
            "bad_control_no_index",
            ACC_INPUTS,
            ACC_OUTPUTS,
            f"control_input [ {controls(START=START_F32)} ] {state('STATE__1', 'STATE_OUT__1')}",
        ),
        {"1/model.pt": acc_pt},
    )
    write_model(
        repo,
        "bad_state_no_index",
        config(
            "bad_state_no_index",
            ACC_INPUTS,
            ACC_OUTPUTS,
            f"control_input [ {controls(START__2=START_F32)} ] {state('STATE__1', 'STATE_OUT')}",
        ),
        {"1/model.pt": acc_pt},
    )
    write_model(
        repo,
        "bad_control_no_argument",
        config(
            "bad_control_no_argument",
            ACC_INPUTS,
            ACC_OUTPUTS,
            f"control_input [ {controls(START__2=START_F32, CORRID__3=corrid('TYPE_INT64'))} ] "
            f"{state('STATE__1', 'STATE_OUT__1')}",
        ),
        {"1/model.pt": acc_pt},
    )
    no_argument = dict(PT2_FORWARD[2], **{"KWARGS[corrid]": corrid("TYPE_INT32")})
    del no_argument["ARGS[4]"]
    write_model(
        repo,
        "bad_pt2_control_no_argument",
        pt2_config("bad_pt2_control_no_argument", (*PT2_FORWARD[:2], no_argument, PT2_FORWARD[3])),
        {"1/model.pt2": pt2},
    )
    write_model(
        repo,
        "bad_initial_file",
        config(
            "bad_initial_file",
            ACC_INPUTS,
            ACC_OUTPUTS,
            f"control_input [ {controls(START__2=START_F32)} ] "
            + state(
                "STATE__1",
                "STATE_OUT__1",
                'initial_state [ { data_type: TYPE_FP32 dims: [ 1 ] name: "s" '
                'data_file: "missing.bin" } ]',
            ),
        ),
        {"1/model.pt": acc_pt},
    )
    return triton(repo, extra_args=["--disable-auto-complete-config", "--exit-timeout-secs=30"])


# Models whose requests carry a batch dimension.
BATCHING = {"controls_direct", "controls_oldest", "acc_dropin", "eager_acc", "acc_idle"}
BATCHING |= {"pt2_ordinal", "pt2_forward"}


def step(protocol, server, model, sequence, inputs, *, start=False, end=False, outputs=None):
    """One request of a sequence (a minute at most); returns every output of the response."""
    if protocol == "http":
        module = httpclient
        connection = httpclient.InferenceServerClient(server.http_url, network_timeout=60.0)
        timeout = {}
    else:
        module = grpcclient
        connection = grpcclient.InferenceServerClient(server.grpc_url)
        timeout = {"client_timeout": 60.0}
    requested = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
    result = connection.infer(
        model,
        make_inputs(protocol, inputs),
        outputs=requested,
        sequence_id=sequence,
        sequence_start=start,
        sequence_end=end,
        **timeout,
    )
    response = result.get_response()
    names = (
        [o["name"] for o in response["outputs"]]
        if protocol == "http"
        else [o.name for o in response.outputs]
    )
    return {n: result.as_numpy(n) for n in names}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_string_state_of_interleaved_sequences(server, protocol):
    first, second = (41, 42) if protocol == "http" else (43, 44)
    plan = [(first, "a", True), (second, "b", True), (first, "c", False), (second, "d", False)]
    logs: dict[str, str] = {}
    for sequence, word, start in plan:
        words = np.array([word.encode()], dtype=np.object_)
        out = step(protocol, server, "strlog", sequence, {"INPUT__0": words}, start=start)
        entry = f"{sequence}:{word}"
        logs[sequence] = entry if start else f"{logs[sequence]},{entry}"
        assert out["OUTPUT__0"].reshape(-1)[0].decode() == logs[sequence]
        assert "STATE_OUT__1" not in out
    for sequence in (first, second):
        words = np.array([b"end"], dtype=np.object_)
        step(protocol, server, "strlog", sequence, {"INPUT__0": words}, end=True)


def x1(value: float, batching: bool = False) -> np.ndarray:
    return np.array([[value]] if batching else [value], dtype=np.float32)


def test_healthy_models_ready_and_broken_ones_report_why(server):
    for model in (
        "controls_direct",
        "controls_oldest",
        "acc",
        "acc_dropin",
        "acc_initial",
        "acc_idle",
        "pt2_ordinal",
        "pt2_forward",
        "eager_acc",
        "strlog",
        examples.SEQUENCE_MODEL,
    ):
        assert server.model(model).state == "READY", server.model(model).reason
    for model, text in BROKEN.items():
        status = server.model(model)
        assert status.state == "UNAVAILABLE", model
        assert text in status.reason, (model, status.reason)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["controls_direct", "controls_oldest"])
def test_control_values_seen_by_the_model_over_a_sequence(server, protocol, model):
    sequence = 4242 if protocol == "http" else 4343
    seen, sums = [], []
    for i in range(3):
        out = step(
            protocol,
            server,
            model,
            sequence,
            {"INPUT__0": x1(i, batching=True)},
            start=i == 0,
            end=i == 2,
        )
        seen.append(out["OUTPUT__0"][0].tolist())
        sums.append(float(out["OUTPUT__1"][0, 0]))
    # [start, end, ready, corrid] per step: START on the first, END on the last, always ready
    assert seen == [[1, 0, 1, sequence], [0, 0, 1, sequence], [0, 1, 1, sequence]]
    assert sums == [sequence + 0.0, sequence + 1.0, sequence + 2.0]  # CORRID in the arithmetic


@pytest.mark.parametrize("model", ["controls_direct", "controls_oldest"])
def test_concurrent_sequences_each_see_their_own_correlation_id(server, model):
    """Six sequences at once (gRPC), three steps each: every response carries its own CORRID
    and control values, whichever batch it ran in."""

    def run(sequence: int) -> list[list[float]]:
        return [
            step(
                "grpc",
                server,
                model,
                sequence,
                {"INPUT__0": x1(10 * i, batching=True)},
                start=i == 0,
                end=i == 2,
            )["OUTPUT__1"][0].tolist()
            for i in range(3)
        ]

    ids = [900 + k for k in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, ids))
    for sequence, sums in zip(ids, results):
        assert sums == [[sequence + 0.0], [sequence + 10.0], [sequence + 20.0]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["acc", "acc_dropin", "eager_acc"])
def test_interleaved_sequences_keep_their_own_state(server, protocol, model):
    name = "x" if model == "eager_acc" else "INPUT__0"
    batching = model in BATCHING
    first, second = (11, 12) if protocol == "http" else (21, 22)
    bonus = 100.0 if model == "eager_acc" else 0.0  # the nn.Module adds 100 * START
    plan = [(first, 1.0, True), (second, 10.0, True), (first, 2.0, False), (second, 20.0, False)]
    plan += [(first, 3.0, False), (second, 30.0, False)]
    totals: dict[int, float] = {}
    for sequence, value, start in plan:
        out = step(protocol, server, model, sequence, {name: x1(value, batching)}, start=start)
        totals[sequence] = totals.get(sequence, 0.0) + value
        expected = totals[sequence] + (bonus if start else 0.0)
        assert float(out["OUTPUT__0"].reshape(-1)[0]) == expected, (sequence, value)
        assert "STATE_OUT__1" not in out or model == "acc_dropin"
    # restart with START: the state begins again from zero
    out = step(protocol, server, model, first, {name: x1(5.0, batching)}, start=True, end=True)
    assert float(out["OUTPUT__0"].reshape(-1)[0]) == 5.0 + bonus
    step(protocol, server, model, second, {name: x1(0.0, batching)}, end=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_state_output_declared_in_output_is_returned_too(server, protocol):
    sequence = 31 if protocol == "http" else 32
    step(protocol, server, "acc_dropin", sequence, {"INPUT__0": x1(4.0, True)}, start=True)
    out = step(protocol, server, "acc_dropin", sequence, {"INPUT__0": x1(1.0, True)}, end=True)
    assert out["STATE_OUT__1"].tolist() == [[5.0]] and out["OUTPUT__0"].tolist() == [[5.0]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_state_output_not_in_output_cannot_be_requested(server, protocol):
    with pytest.raises(
        InferenceServerException, match="unexpected inference output 'STATE_OUT__1'"
    ):
        step(
            protocol,
            server,
            "acc",
            41,
            {"INPUT__0": x1(1.0)},
            start=True,
            end=True,
            outputs=["OUTPUT__0", "STATE_OUT__1"],
        )
    out = step(protocol, server, "acc", 41, {"INPUT__0": x1(2.0)}, start=True, end=True)
    assert float(out["OUTPUT__0"][0]) == 2.0  # the server keeps serving


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_for_a_sequence_that_never_started_or_ended(server, protocol):
    with pytest.raises(InferenceServerException, match="START"):
        step(protocol, server, "acc", 51, {"INPUT__0": x1(1.0)})
    step(protocol, server, "acc", 51, {"INPUT__0": x1(1.0)}, start=True, end=True)
    with pytest.raises(InferenceServerException, match="START"):
        step(protocol, server, "acc", 51, {"INPUT__0": x1(1.0)})
    with pytest.raises(InferenceServerException, match="correlation ID"):
        client(protocol, server).infer("acc", make_inputs(protocol, {"INPUT__0": x1(1.0)}))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_initial_state_from_a_data_file(server, protocol):
    sequence = 61 if protocol == "http" else 62
    out = step(protocol, server, "acc_initial", sequence, {"INPUT__0": x1(1.0)}, start=True)
    assert float(out["OUTPUT__0"][0]) == 1001.0
    out = step(protocol, server, "acc_initial", sequence, {"INPUT__0": x1(2.0)}, end=True)
    assert float(out["OUTPUT__0"][0]) == 1003.0


def _pt2_step(protocol, server, model, sequence, value, **flags):
    name = "INPUT__0" if model == "pt2_ordinal" else "ARGS[0]"
    out_name = "OUTPUT__0" if model == "pt2_ordinal" else "RESULT[0]"
    return float(
        step(protocol, server, model, sequence, {name: x1(value, True)}, **flags)[out_name][0, 0]
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["pt2_ordinal", "pt2_forward"])
def test_pt2_interleaved_sequences(server, protocol, model):
    a, b = (71, 72) if protocol == "http" else (73, 74)
    # out = running sum + CORRID (READY is 1 for real requests)
    assert _pt2_step(protocol, server, model, a, 1.0, start=True) == 1.0 + a
    assert _pt2_step(protocol, server, model, b, 5.0, start=True) == 5.0 + b
    assert _pt2_step(protocol, server, model, a, 2.0) == 3.0 + a
    assert _pt2_step(protocol, server, model, b, 5.0, end=True) == 10.0 + b
    assert _pt2_step(protocol, server, model, a, 3.0, end=True) == 6.0 + a


def _stats(server, model: str) -> dict[str, int]:
    entry = client("http", server).get_inference_statistics(model)["model_stats"][0]
    return {key: int(entry.get(key, 0)) for key in ("execution_count", "inference_count")}


@pytest.mark.parametrize("model", ["pt2_ordinal", "acc"])
def test_concurrent_sequences_with_state(server, model):
    """Eight sequences at once, four steps each: each keeps its own running sum. With the
    batching ``.pt2`` (oldest strategy), several sequences share executions."""
    batching = model.startswith("pt2")

    def run(sequence: int) -> list[float]:
        sums = []
        for i in range(4):
            value = float(sequence % 100 + i)
            inputs = {"INPUT__0": x1(value, batching)}
            out = step("grpc", server, model, sequence, inputs, start=i == 0, end=i == 3)
            sums.append(float(np.asarray(out["OUTPUT__0"]).reshape(-1)[0]))
        return sums

    ids = [1000 + k for k in range(8)]
    before = _stats(server, model)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, ids))
    after = _stats(server, model)
    for sequence, sums in zip(ids, results):
        base = sequence % 100
        running = np.cumsum([base + i for i in range(4)]).tolist()
        offset = sequence if batching else 0  # the .pt2 adds CORRID
        assert sums == [r + offset for r in running], sequence
    done = after["inference_count"] - before["inference_count"]
    assert done == 32
    if batching:
        assert after["execution_count"] - before["execution_count"] < done


def _live_sequences(server, model: str) -> float | None:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    pattern = rf'pytorch_backend_live_sequences{{[^}}]*model="{model}"[^}}]*}} (\S+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


def _wait_live(server, model: str, expected: float, timeout: float = 60.0) -> float | None:
    """The live-sequences gauge once it reads ``expected`` (its last value after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        live = _live_sequences(server, model)
        if live == expected or time.monotonic() > deadline:
            return live
        time.sleep(0.3)


def test_idle_sequences_are_dropped_and_the_store_stays_bounded(server):
    """Twenty sequences started at once and abandoned; once they have been idle for the idle
    time (4 s), an execute drops them all: the live-sequences gauge goes from 20 to the one
    sequence still in use. The test steps that sequence until the gauge says so (not a sleep)."""

    def begin(sequence: int) -> None:
        step("grpc", server, "acc_idle", sequence, {"INPUT__0": x1(1.0, True)}, start=True)

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(begin, range(2000, 2020)))
    assert _wait_live(server, "acc_idle", 20.0) == 20.0  # nothing expires without an execute
    begin(2100)
    deadline = time.monotonic() + 60
    while _wait_live(server, "acc_idle", 1.0, timeout=1.5) != 1.0:
        assert time.monotonic() < deadline, "the idle sequences were not dropped within 60 s"
        step("grpc", server, "acc_idle", 2100, {"INPUT__0": x1(1.0, True)})  # keeps 2100 in use
    step("grpc", server, "acc_idle", 2100, {"INPUT__0": x1(1.0, True)}, end=True)
    assert _wait_live(server, "acc_idle", 0.0) == 0.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_example_client_runs_two_interleaved_sequences(server, protocol):
    script = (
        Path(__file__).resolve().parents[2] / "model_repository_examples" / "sequence_client.py"
    )
    url = server.http_url if protocol == "http" else server.grpc_url
    flags = ["--grpc"] if protocol == "grpc" else []
    done = subprocess.run(
        [sys.executable, str(script), "--url", url, *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" step ")[0] for line in lines] == ["sequence 101", "sequence 202"] * 4
