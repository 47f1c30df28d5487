"""The warm-up's choice of intra-op threads (runtime.thread_choice), with measured times faked."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pytorch_backend.runtime.thread_choice import (
    COMPUTE_BOUND_SECONDS,
    MIN_SPEEDUP,
    choose_after_warm_up,
    choose_threads,
)


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def timer_by_threads(seconds: dict[int, float], seen: list[int]):
    """A timer answering the time given for torch's current thread count."""

    def timer(run, runs):
        run()
        seen.append(torch.get_num_threads())
        return seconds[torch.get_num_threads()]

    return timer


def test_an_overhead_bound_model_keeps_the_budget_and_is_timed_once():
    seen: list[int] = []
    fast = COMPUTE_BOUND_SECONDS / 10
    choice = choose_threads(lambda: None, 1, 2, 64, timer_by_threads({1: fast, 2: fast}, seen))
    assert choice.threads == 1 and torch.get_num_threads() == 1
    assert seen == [1]  # never measured with more threads
    assert choice.reason.startswith("overhead-bound: a batch of 64 took 0.50 ms with 1 thread")


def test_a_compute_bound_model_that_scales_gets_every_cpu():
    seen: list[int] = []
    slow = COMPUTE_BOUND_SECONDS * 10
    times = {1: slow, 2: slow / (MIN_SPEEDUP + 0.5)}
    choice = choose_threads(lambda: None, 1, 2, 16, timer_by_threads(times, seen))
    assert choice.threads == 2 and torch.get_num_threads() == 2
    assert seen == [1, 2]
    assert "compute-bound: a batch of 16 took 50.0 ms with 1 thread(s) and 28.6 ms" in choice.reason


def test_a_compute_bound_model_that_does_not_scale_keeps_the_budget():
    slow = COMPUTE_BOUND_SECONDS * 10
    times = {1: slow, 2: slow / (MIN_SPEEDUP - 0.1)}
    choice = choose_threads(lambda: None, 1, 2, None, timer_by_threads(times, []))
    assert choice.threads == 1 and torch.get_num_threads() == 1
    assert choice.reason.startswith("more threads do not pay here: the configured request took")


def test_no_room_for_more_threads_measures_nothing():
    def timer(run, runs):
        raise AssertionError("nothing to choose: nothing is timed")

    choice = choose_threads(lambda: None, 1, 1, 8, timer)
    assert choice.threads == 1 and "budget allows no more" in choice.reason


def test_the_default_timer_runs_the_forward():
    calls = []
    choice = choose_threads(lambda: calls.append(1), 1, 2, 4)
    assert choice.threads == 1 and len(calls) == 2  # a no-op is overhead-bound: RUNS calls


def _settings(cpus: int, budget: int | None):
    from pytorch_backend.config import BackendParameters, parse_model_config
    from pytorch_backend.runtime.settings import apply_runtime_settings

    config = parse_model_config(
        {
            "name": "m",
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
            "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        }
    )
    settings = apply_runtime_settings(BackendParameters(), config, torch.device("cpu"))
    return config, dataclasses.replace(settings, cpus=cpus, thread_budget=budget)


def test_after_warm_up_the_largest_bucket_is_measured_and_the_choice_logged():
    config, settings = _settings(cpus=2, budget=1)
    seen = []

    def infer(requests):
        seen.append(requests[0].inputs["x"].shape)
        return [{"y": requests[0].inputs["x"]}]

    chosen = choose_after_warm_up(settings, config, [1, 2, 8], {}, infer)
    assert set(seen) == {(8, 3)}  # the largest bucket only
    assert chosen.intra_op_threads == 1 == torch.get_num_threads()
    assert chosen.thread_choice.startswith("overhead-bound: a batch of 8 took")


def test_after_warm_up_nothing_is_chosen_without_a_budget_a_warm_up_or_room():
    config, settings = _settings(cpus=2, budget=1)

    def infer(requests):
        raise AssertionError("nothing is measured")

    assert choose_after_warm_up(settings, config, [], {}, infer) is settings  # WARMUP false
    given = dataclasses.replace(settings, thread_budget=None)  # a thread parameter was given
    assert choose_after_warm_up(given, config, [8], {}, infer) is given
    one_cpu = dataclasses.replace(settings, cpus=1)
    assert choose_after_warm_up(one_cpu, config, [8], {}, infer) is one_cpu


def test_a_measuring_run_that_fails_keeps_the_budget():
    from pytorch_backend.errors import ModelFailure

    config, settings = _settings(cpus=2, budget=1)
    chosen = choose_after_warm_up(settings, config, [8], {}, lambda r: [ModelFailure("no zeros")])
    assert chosen.intra_op_threads == 1
    assert chosen.thread_choice.startswith("kept: the measuring run failed")
