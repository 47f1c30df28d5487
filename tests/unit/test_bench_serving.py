"""bench/serving.py's pieces without a server: the step-counter parser, per-round ratios, the
thread footings and the report built from synthetic measurements."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import serving  # noqa: E402
from serving_load import Load, Stats  # noqa: E402
from serving_markdown import markdown  # noqa: E402
from serving_models import MODELS, config_text  # noqa: E402
from serving_report import NOT_EXPOSED, summarize, summarize_footing  # noqa: E402
from serving_rounds import Block, Slot, VariantRounds, round_ratios, spread  # noqa: E402
from serving_steps import FAMILY, STEPS, StepTotals, parse_sample, step_seconds  # noqa: E402

SAMPLE = f"""\
# HELP {FAMILY} Seconds spent in each step of execute
# TYPE {FAMILY} counter
{FAMILY}{{model="mlp_ts",version="1",model_instance="mlp_ts_0",pid="11",step="read"}} 0.25
{FAMILY}{{model="mlp_ts",version="1",model_instance="mlp_ts_0",pid="11",step="forward"}} 1.5
{FAMILY}{{model="mlp_ts",version="1",model_instance="mlp_ts_1",pid="12",step="forward"}} 0.5e0
{FAMILY}{{step="respond",model="mlp_ts",version="1",model_instance="mlp_ts_0",pid="11"}} 0.125
{FAMILY}{{model="cnn_ts",version="1",model_instance="cnn_ts_0",pid="13",step="read"}} 3 1700000
{FAMILY}_created{{model="mlp_ts",version="1",model_instance="mlp_ts_0",pid="11",step="read"}} 9
pytorch_backend_forwards_total{{model="mlp_ts",version="1",model_instance="mlp_ts_0",pid="11"}} 42
nv_inference_count{{model="mlp_ts",version="1"}} 100
"""


def test_parser_sums_the_family_over_instances_and_pids_per_model_and_step():
    found = step_seconds(SAMPLE)
    assert found == {
        "mlp_ts": {"read": 0.25, "forward": 2.0, "respond": 0.125},
        "cnn_ts": {"read": 3.0},
    }


def test_parser_reads_escaped_label_values_and_rejects_broken_lines():
    line = r'm{model="a\"b\\c",step="read"} +Inf'
    name, labels, value = parse_sample(line)
    assert (name, labels["model"], value) == ("m", 'a"b\\c', float("inf"))
    for broken in ('m{model="a" step="x"} 1', 'm{model="a"', "m{} nan-ish", "# HELP m x", ""):
        assert parse_sample(broken) is None, broken
    assert parse_sample("m 2") == ("m", {}, 2.0)


def test_current_backend_without_the_family_gives_no_steps():
    text = SAMPLE.replace(FAMILY, "pytorch_backend_other_total")
    assert step_seconds(text) == {}
    totals = StepTotals()
    totals.add(None, None, 10)
    assert totals.per_execution_ms() is None


def test_step_totals_are_deltas_per_execution_in_ms():
    totals = StepTotals()
    totals.add(None, {"read": 0.01, "forward": 0.1}, 10)  # series created by the first execute
    totals.add({"read": 0.01, "forward": 0.1}, {"read": 0.03, "forward": 0.2, "metrics": 0.01}, 10)
    per = totals.per_execution_ms()
    assert list(per)[: len(STEPS)] == list(STEPS)
    assert per["read"] == pytest.approx(1.5) and per["forward"] == pytest.approx(10.0)
    assert per["metrics"] == pytest.approx(0.5) and per["split"] == 0.0


def test_round_ratios_pair_each_round_with_the_same_round_of_the_reference():
    throughputs = {"ts": [100.0, 50.0, 90.0], "naive": [50.0, 50.0, 100.0]}
    ratios = round_ratios(throughputs, "ts")
    assert ratios["naive"]["values"] == [2.0, 1.0, 0.9]
    assert (ratios["naive"]["median"], ratios["naive"]["min"], ratios["naive"]["max"]) == (
        1.0,
        0.9,
        2.0,
    )
    assert spread([90.0, 100.0, 110.0])["spread_pct"] == pytest.approx(20.0)
    assert spread([])["median"] is None


def test_footings_parse_and_threads_reach_every_side():
    assert serving.parse_footings("defaults,1,2") == [None, 1, 2]
    for bad in ("0", "two", "1,1"):
        with pytest.raises(ValueError):
            serving.parse_footings(bad)
    args = serving.parse_args(["--footings", "defaults,2"])
    assert args.footings == [None, 2] and args.rounds >= 5 and args.seconds >= 3
    assert serving.parse_args(["--threads", "3"]).footings == [3]
    for bad in (["--threads", "0"], ["--threads", "1", "--footings", "2"], ["--footings", "x"]):
        with pytest.raises(SystemExit):
            serving.parse_args(bad)
    mlp = MODELS["mlp"]
    assert 'key: "INTRA_OP_THREAD_COUNT" value: { string_value: "2" }' in config_text(
        mlp, "ts", "{}", threads=2
    )
    assert 'key: "BENCH_THREADS" value: { string_value: "2" }' in config_text(
        mlp, "lean", "{}", threads=2
    )
    assert "parameters" not in config_text(mlp, "empty", "{}", threads=2)
    assert "THREAD" not in config_text(mlp, "ts", "{}")


def _slot(throughput: float, executions: int) -> Slot:
    load = Load(latencies=[0.001] * int(throughput), elapsed=1.0)
    stats = Stats(
        inferences=int(throughput),
        executions=executions,
        success=int(throughput),
        ns=(1000, 1000, 2_000_000 * executions, 1000),
        batches=((int(throughput) // executions, executions, 2_000_000 * executions),),
    )
    return Slot(load, stats)


def _block(with_steps: bool) -> Block:
    block = Block("mlp", 16)
    for variant, rates in {"ts": (300, 200), "naive": (150, 200), "lean": (100, 100)}.items():
        block.served[variant] = VariantRounds([_slot(r, 10) for r in rates])
    block.served["empty"] = VariantRounds([_slot(600, 40), _slot(400, 40)])
    if with_steps:
        block.served["ts"].steps.add({}, {"read": 0.005, "forward": 0.01}, 20)
    block.raw_rounds = [{1: 0.001, 16: 0.004}, {1: 0.001, 16: 0.008}]
    return block


@pytest.mark.parametrize("with_steps", [False, True])
def test_report_gives_round_ratios_spread_overhead_and_step_profile(with_steps):
    footing = {"footing": "defaults", "threads": None, "description": "defaults vs defaults"}
    footing |= {"server_ready_s": 1.0, "load_average_start": [1.0], "load_average_end": [2.0]}
    footing["server_crashes"] = ["what():  boost::interprocess::lock_exception"]
    measured = {"cold": {}, "blocks": [_block(with_steps)]}
    part = summarize_footing(measured, footing)
    rows = {r["variant"]: r for r in part["results"]}
    ts = rows["ts"]
    assert ts["ratio_rounds"]["naive"]["values"] == [2.0, 1.0]
    assert ts["ratios"]["naive"] == 1.5 and ts["ratios_of_totals"]["naive"] == pytest.approx(
        250 / 175
    )
    assert ts["ratio_rounds"]["raw"]["values"] == [300 / 4000, 200 / 2000]
    assert ts["rounds"]["spread_pct"] == pytest.approx(40.0)
    # compute infer 2 ms/exec, raw at the mean batch (25) extrapolated from 16 (6 ms), empty 2 ms
    assert ts["raw_forward_at_mean_batch_ms"] == pytest.approx(6.0 * 25 / 16)
    assert ts["our_overhead_per_exec_ms"] == pytest.approx(2.0 - 6.0 * 25 / 16 - 2.0)
    args = serving.parse_args([])
    machine = {"cpus": 2, "platform": "p", "torch": "t", "python": "3", "git_commit": "abc"}
    machine |= {"load_average_start": [1.0], "load_average_end": [2.0], "total_s": 5.0}
    report = summarize(
        [part], [MODELS["mlp"]], ["ts", "naive", "lean", "empty", "raw"], args, machine
    )
    text = markdown(report)
    assert "**MLP, concurrency 16**" in text and "1.50 (1.00–2.00)" in text
    assert "defaults vs defaults" in text and "git commit abc" in text
    assert "after 1 tritonserver crash(es): `what():  boost::interprocess::lock_exception`" in text
    if with_steps:
        assert ts["steps_ms_per_exec"]["read"] == pytest.approx(0.25)
        assert NOT_EXPOSED not in text and "| cancel_check |" in text
    else:
        assert ts["steps_ms_per_exec"] is None
        assert NOT_EXPOSED in text and "| cancel_check |" not in text
