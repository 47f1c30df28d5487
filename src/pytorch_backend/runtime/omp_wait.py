"""OpenMP workers that sleep at the end of a parallel region: set in-process before torch loads.

torch's CPU kernels run their parallel regions on libgomp's workers. By default a worker spins
for a while after a region ends, waiting for the next one. In a Python-backend stub the worker
threads share the CPUs with tritonserver, its frontends, the clients and other stubs. A worker
that spins takes a CPU from the thread with work, and a region cannot end until every worker has
been scheduled. On a busy machine every region of a multi-threaded forward then stalls.
Measured by ``bench/omp_wait.py`` on the 2-CPU VM beside one CPU hog
(``bench/results/omp_wait.json``): the benchmark's CNN at batch 16 ran 29 forwards/s with 2
threads under libgomp's default, 57 with 1 thread, and 58 with 2 threads under PASSIVE; idle,
PASSIVE costs 2 threads 0.82x (each region wakes its worker through the kernel).

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it. So ``model.py`` calls
:func:`prefer_passive` before it imports torch. A value the environment already gives (the
server's, inherited by its stubs) is kept: that is the user's override. :func:`describe` is the
load log's text. This module imports nothing of torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

ENV = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"

_decided: str | None = None  # what prefer_passive did in this process (its log text)


def prefer_passive(
    environ: MutableMapping[str, str] | None = None,
    modules: Mapping[str, object] | None = None,
) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the environment gives it or torch is loaded already.

    Returns (and records for :func:`describe`) what was done. ``environ`` and ``modules``
    default to the process's own (``os.environ``, ``sys.modules``).
    """
    global _decided
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    given = environ.get(ENV)
    if given is not None:
        _decided = f"{given} (given in the environment)"
    elif "torch" in modules:
        _decided = "libgomp's default (torch was loaded before the backend could set it)"
    else:
        environ[ENV] = PASSIVE
        _decided = f"{PASSIVE} (set by the backend before torch loaded)"
    return _decided


def describe() -> str:
    """The OpenMP wait policy of this process, as the load log says it."""
    if _decided is not None:
        return _decided
    given = os.environ.get(ENV)
    return f"{given} (given in the environment)" if given else "libgomp's default"
