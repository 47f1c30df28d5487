"""The intra-op thread count of a KIND_CPU instance without a thread parameter, chosen at warm-up.

Two defaults fail one kind of model each on a small machine. torch's (one thread per CPU)
oversubscribes an overhead-bound model: its OpenMP workers take CPU time that tritonserver and
the stub need to move requests, and make every short forward dearer (they spin under libgomp's
default, and wake through the kernel under the PASSIVE policy ``model.py`` sets, see
:mod:`.omp_wait`: 2 threads ran the MLP at batch 8 in 0.18 ms against 0.12 ms on 1). The budget
that leaves a CPU to the server (:func:`~.settings.default_intra_op_threads`, 1 on 2 CPUs) runs
a compute-bound model on one core while its forward is most of the time. So the instance
measures, once warm:

1. the forward of its largest warm-up batch with the budget's threads (best of
   :data:`RUNS`); under :data:`COMPUTE_BOUND_SECONDS` the model is overhead-bound and keeps
   the budget;
2. otherwise the same forward with every CPU this instance's share allows; it takes those
   threads when they run it at least :data:`MIN_SPEEDUP` times faster (a machine busy with other
   work gives little speedup, so the budget stays).

Each measurement is one call of ``run`` (the instance's engine on a warm-up request). The
choice and both times are logged at load.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..errors import PyTorchBackendError
from ..requests import Outcome, RequestInputs
from .settings import RuntimeSettings, whole_cpu_share
from .warmup import warmup_request

#: A forward at the largest warm-up batch this long, with the budget's threads, is compute-bound
#: enough for more threads to pay: the server's own work per execute is well under a millisecond.
COMPUTE_BOUND_SECONDS = 0.005
#: The speedup more threads must bring to be taken (below it, the CPU is better left to the server).
MIN_SPEEDUP = 1.25
#: Timed runs per thread count (the best counts); each count gets one untimed run first.
RUNS = 2


@dataclass(frozen=True)
class ThreadChoice:
    """The chosen intra-op thread count and why (a log line's text)."""

    threads: int
    reason: str


def _best_of(run: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def choose_threads(
    run: Callable[[], object],
    budget: int,
    most: int,
    batch: int | None,
    timer: Callable[[Callable[[], object], int], float] = _best_of,
) -> ThreadChoice:
    """Measure ``run`` at ``budget`` and, if compute-bound, at ``most`` threads; pick one.

    Leaves torch set to the chosen count. ``batch``: the warm-up batch ``run`` uses (for the
    reason's text; None: a model that does not batch).
    """
    what = "the configured request" if batch is None else f"a batch of {batch}"
    torch.set_num_threads(budget)
    if most <= budget:
        return ThreadChoice(budget, "the CPU budget allows no more")
    low = timer(run, RUNS)
    if low < COMPUTE_BOUND_SECONDS:
        return ThreadChoice(
            budget,
            f"overhead-bound: {what} took {low * 1e3:.2f} ms with {budget} thread(s), under "
            f"{COMPUTE_BOUND_SECONDS * 1e3:g} ms",
        )
    torch.set_num_threads(most)
    run()  # the new OpenMP workers start here, untimed
    high = timer(run, RUNS)
    speedup = low / high if high > 0 else 1.0
    measured = (
        f"{what} took {low * 1e3:.1f} ms with {budget} thread(s) and {high * 1e3:.1f} ms with "
        f"{most} ({speedup:.2f}x)"
    )
    if speedup >= MIN_SPEEDUP:
        return ThreadChoice(most, f"compute-bound: {measured}")
    torch.set_num_threads(budget)
    return ThreadChoice(budget, f"more threads do not pay here: {measured}, under {MIN_SPEEDUP}x")


def choose_after_warm_up(
    settings: RuntimeSettings,
    config: ModelConfig,
    buckets: Sequence[int | None],
    shapes: Mapping[str, tuple[int, ...]],
    infer: Callable[[list[RequestInputs]], list[Outcome]],
) -> RuntimeSettings:
    """The settings with the intra-op threads chosen on the largest warm-up bucket.

    Unchanged where no budget applied (a thread parameter given, not KIND_CPU), the warm-up did
    not run, or the budget already has every CPU of this instance's share. ``infer``: the
    instance's engine without metrics; a run that fails (the model may reject zeros) keeps the
    budget.
    """
    budget = settings.thread_budget
    most = whole_cpu_share(settings.cpus, config.cpu_instance_count)
    if budget is None or not buckets or most <= budget:
        return settings
    batch = buckets[-1]
    request = warmup_request(config, batch, shapes)

    def run() -> None:
        outcome = infer([request])[0]
        if isinstance(outcome, PyTorchBackendError):
            raise outcome

    try:
        choice = choose_threads(run, budget, most, batch)
    except PyTorchBackendError as error:
        torch.set_num_threads(budget)
        choice = ThreadChoice(budget, f"kept: the measuring run failed ({error})")
    return dataclasses.replace(
        settings, intra_op_threads=torch.get_num_threads(), thread_choice=choice.reason
    )
