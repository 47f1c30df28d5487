"""Per-request stages: the pipeline around the engine, the cancellation stage and its decision."""

from __future__ import annotations

import time

import pytest
import torch

from pytorch_backend.errors import PyTorchBackendError, RequestCancelled, RequestError
from pytorch_backend.executors.torchscript.executor import TorchScriptExecutor
from pytorch_backend.hooks import ExecuteStats
from pytorch_backend.requests import RequestInputs
from pytorch_backend.stages import RequestStage, Stages
from pytorch_backend.stages.cancellation import (
    CHECK_SECONDS,
    WORTH_CHECKS,
    CancellationStage,
    WarmupForward,
    WarmupForwards,
    cancellation_check,
)
from pytorch_backend.step_times import StepTimes
from tests.unit import test_sequence
from tests.unit.builders import build, settings_logged, ts_config, ts_repo


def req(value: float, cancelled=None) -> RequestInputs:
    return RequestInputs({"x": torch.full((1, 2), value)}, cancelled=cancelled)


def first(request: RequestInputs) -> float:
    return float(request.inputs["x"][0, 0])


class Recorder(RequestStage):
    """Logs what each step sees; answers ``refused`` values with an error; tags outcomes."""

    def __init__(self, name: str, log: list, refused: frozenset[float] = frozenset()) -> None:
        self.name, self.log, self.refused = name, log, refused

    def before(self, requests):
        self.log.append((self.name, "before", [first(r) for r in requests]))
        if not self.refused:
            return requests
        return [RequestError("refused") if first(r) in self.refused else r for r in requests]

    def after(self, outcomes):
        self.log.append((self.name, "after", len(outcomes)))
        return [o if isinstance(o, Exception) else {**o, self.name: True} for o in outcomes]


def doubling_engine(seen: list):
    def engine(items):
        seen.append(list(items))
        return [
            item if isinstance(item, PyTorchBackendError) else {"y": item.inputs["x"] * 2}
            for item in items
        ]

    return engine


def test_a_request_a_stage_answers_goes_no_further():
    log: list = []
    seen: list = []
    stages = Stages([Recorder("outer", log, frozenset({2.0})), Recorder("inner", log)])
    unreadable = RequestCancelled("cancelled before it ran")
    outcomes = stages.run([req(1.0), unreadable, req(2.0), req(3.0)], doubling_engine(seen))
    assert log == [
        ("outer", "before", [1.0, 2.0, 3.0]),  # an error handed in is already an answer
        ("inner", "before", [1.0, 3.0]),  # the request outer answered is not seen
        ("inner", "after", 2),
        ("outer", "after", 2),
    ]
    (items,) = seen  # the engine carries the answers through, in place
    assert items[1] is unreadable and isinstance(items[2], RequestError)
    assert outcomes[1] is unreadable and isinstance(outcomes[2], RequestError)
    assert torch.equal(outcomes[0]["y"], torch.full((1, 2), 2.0))
    assert torch.equal(outcomes[3]["y"], torch.full((1, 2), 6.0))
    assert outcomes[3]["inner"] and outcomes[3]["outer"]  # both after steps, on its own index


def test_stages_that_change_nothing_hand_the_requests_on_as_they_are():
    seen: list = []
    requests = [req(1.0), req(2.0)]
    Stages([RequestStage(), CancellationStage(False)]).run(requests, doubling_engine(seen))
    assert all(a is b for a, b in zip(seen[0], requests))


def test_a_stage_that_loses_a_request_is_a_bug_said_by_name():
    class Loses(RequestStage):
        def before(self, requests):
            return requests[1:]

    with pytest.raises(RuntimeError, match=r"Loses\.before returned 1 entries for 2 requests"):
        Stages([Loses()]).run([req(1.0), req(2.0)], doubling_engine([]))


def test_the_cancellation_stage_asks_only_when_checking_and_times_itself():
    asked: list[float] = []

    def asking(value: float, answer: bool):
        return lambda: asked.append(value) or answer

    requests = [req(1.0, asking(1.0, False)), req(2.0, asking(2.0, True)), req(3.0)]
    assert CancellationStage(False).before(requests) is requests
    assert asked == []
    steps = StepTimes()
    answered = CancellationStage(True, steps).before(requests)
    assert asked == [1.0, 2.0]  # a request that cannot be asked (None) is not cancelled
    assert answered[0] is requests[0] and answered[2] is requests[2]
    assert isinstance(answered[1], RequestCancelled)
    assert steps.cancel_check > 0 and steps.take()["read"] == 0


FAST = WarmupForward(1, 0.04e-3)  # an MLP's forward: cheaper than one check
SLOW = WarmupForward(8, 16e-3)  # 2 ms a row: over 20 checks
SHARED = WarmupForward(64, 64e-3)  # slow as a whole, 1 ms a row: the benchmark's CNN


@pytest.mark.parametrize(
    ("given", "warmup", "measured", "check", "logged"),
    [
        (None, True, FAST, False, "auto -> false (a forward of 1 row took 0.040 ms at warm-up: "
         "0.040 ms a row, under 20 x the ~0.09 ms a check costs"),
        (None, True, SLOW, True, "auto -> true (a forward of 8 rows took 16.000 ms at warm-up: "
         "2.000 ms a row, at least 20 x"),
        (None, True, SHARED, False, "auto -> false (a forward of 64 rows took 64.000 ms at "
         "warm-up: 1.000 ms a row, under 20 x"),
        (None, True, WarmupForward(0, WORTH_CHECKS * CHECK_SECONDS), True, "auto -> true (a "
         "forward took 1.800 ms at warm-up, at least 20 x"),
        (None, False, None, True, "auto -> true (WARMUP is false: no forward time was measured)"),
        (None, True, None, True, "auto -> true (the warm-up ran no successful forward"),
        (True, True, FAST, True, "true"),
        (False, True, SLOW, False, "false"),
        (False, False, None, False, "false"),
    ],
)  # fmt: skip
def test_the_cancellation_check_decision(given, warmup, measured, check, logged):
    decision = cancellation_check(given, warmup, measured)
    decided, text = decision.value, decision.reason
    assert decided is check
    assert text == logged or (logged.startswith("auto") and text.startswith(logged))


def test_the_warmup_measure_keeps_the_successful_forward_cheapest_per_row():
    forwards = WarmupForwards()
    assert forwards.cheapest is None
    forwards.after_execute(ExecuteStats(1, 0, 0, 1, 1, forward_ns=300_000))  # compiled here
    forwards.after_execute(ExecuteStats(1, 0, 0, 1, 2, forward_ns=100_000))  # 50 us a row
    forwards.after_execute(ExecuteStats(1, 0, 0, 1, 8, forward_ns=800_000))  # 100 us a row
    forwards.after_execute(ExecuteStats(1, 0, 1, 1, 4, forward_ns=1_000))  # failed
    forwards.after_execute(ExecuteStats(1, 0, 0, 0, 0))  # no forward
    assert forwards.cheapest == WarmupForward(2, 100e-6)
    assert forwards.cheapest.seconds_per_row == pytest.approx(50e-6)


def cancelled_request() -> RequestInputs:
    return req(1.0, cancelled=lambda: True)


def test_a_fast_model_does_not_check_by_default(tmp_path):
    instance, sink = build(ts_repo(tmp_path), ts_config())
    assert settings_logged(sink)["ENABLE_CANCELLATION_CHECK"].startswith("auto -> false (a forward")
    (outcome,) = instance.infer([cancelled_request()])
    assert torch.equal(outcome["y"], torch.full((1, 2), 2.0))  # computed: nobody asked


def test_a_slow_model_checks_by_default(tmp_path, monkeypatch):
    run = TorchScriptExecutor.run

    def slow_run(self, batch):
        time.sleep(0.003 * len(batch["x"]))  # 3 ms a row: the check is a small part of it
        return run(self, batch)

    monkeypatch.setattr(TorchScriptExecutor, "run", slow_run)
    instance, sink = build(ts_repo(tmp_path), ts_config())
    assert settings_logged(sink)["ENABLE_CANCELLATION_CHECK"].startswith("auto -> true (a forward")
    (outcome,) = instance.infer([cancelled_request()])
    assert isinstance(outcome, RequestCancelled)


def test_without_warmup_the_instance_checks(tmp_path):
    config = ts_config(parameters={"WARMUP": {"string_value": "false"}})
    instance, sink = build(ts_repo(tmp_path), config)
    assert settings_logged(sink)["ENABLE_CANCELLATION_CHECK"].startswith("auto -> true (WARMUP")
    (outcome,) = instance.infer([cancelled_request()])
    assert isinstance(outcome, RequestCancelled)


@pytest.mark.parametrize(("given", "cancelled"), [("true", True), ("false", False)])
def test_an_explicit_value_wins(tmp_path, given, cancelled):
    parameters = {"ENABLE_CANCELLATION_CHECK": {"string_value": given}}
    if not cancelled:  # no warm-up: auto would check
        parameters["WARMUP"] = {"string_value": "false"}
    instance, sink = build(ts_repo(tmp_path), ts_config(parameters=parameters))
    assert settings_logged(sink)["ENABLE_CANCELLATION_CHECK"] == given
    (outcome,) = instance.infer([cancelled_request()])
    assert isinstance(outcome, RequestCancelled) is cancelled


def test_the_sequence_stage_supplies_the_state_inputs_the_adapter_must_not_read(tmp_path):
    instance = test_sequence.build(test_sequence.ts_dir(tmp_path), test_sequence.cfg())
    assert instance.stages.provides == {"STATE__1"}
    instance, _ = build(ts_repo(tmp_path / "plain"), ts_config())
    assert instance.stages.provides == frozenset()
