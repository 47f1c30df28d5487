"""The warm-up's choice of intra-op threads (runtime.thread_choice), with measured times faked."""

from __future__ import annotations

import pytest
import torch

from pytorch_backend.runtime.thread_choice import (
    COMPUTE_BOUND_SECONDS,
    MIN_SPEEDUP,
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
