"""libgomp's wait policy against thread counts: the serving benchmark's modules in process.

Each case is a fresh process (libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it)
that scripts the benchmark's module and runs its forward at one batch size for ``--seconds``
under ``torch.inference_mode``. The cases are every combination of policy (libgomp's default,
i.e. the variable unset, and ``PASSIVE``, what ``model.py`` sets) and intra-op threads (1 and 2),
(``--threads``, ``--policies``; ``spin:N`` sets libgomp's ``GOMP_SPINCOUNT`` instead), in
``--rounds`` interleaved rounds, in two phases: idle, then beside ``--hogs`` processes
spinning on the CPU (what tritonserver, its clients and other stubs are to a stub). Reports per
phase, model and batch each case's forwards/s (median of rounds, min-max) and median forward
time, and writes ``--out``/``omp_wait.json`` and ``.md``.

Run: ``python bench/omp_wait.py`` (about 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import provenance  # noqa: E402
from serving_models import MODELS, REPO_ROOT  # noqa: E402

POLICIES = "default,PASSIVE"
THREADS = "1,2"

CASE = """
import json, statistics, sys, time
sys.path.insert(0, {bench!r})
import torch
from serving_models import MODELS
model = MODELS[{model!r}]
module = torch.jit.script(model.make())
torch.set_num_threads({threads})
x = model.example({batch})
with torch.inference_mode():
    for _ in range(3):
        module(x)
    times = []
    end = time.perf_counter() + {seconds}
    while time.perf_counter() < end:
        start = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - start)
print(json.dumps({{"forwards_per_s": len(times) / sum(times),
                  "median_ms": statistics.median(times) * 1e3}}))
"""


def run_case(model: str, batch: int, threads: int, policy: str, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    if policy.startswith("spin:"):  # libgomp's spin count itself (PASSIVE is 0)
        env["GOMP_SPINCOUNT"] = policy.removeprefix("spin:")
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    script = CASE.format(
        bench=str(Path(__file__).resolve().parent),
        model=model,
        batch=batch,
        threads=threads,
        seconds=seconds,
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spin(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    while not stop.is_set():
        pass


def run_phase(
    cases: list[tuple[str, int]],
    threads_list: list[int],
    policies: list[str],
    rounds: int,
    seconds: float,
) -> list[dict]:
    results: dict[tuple, list[dict]] = {}
    for _ in range(rounds):
        for model, batch in cases:
            for threads in threads_list:
                for policy in policies:
                    key = (model, batch, threads, policy)
                    results.setdefault(key, []).append(
                        run_case(model, batch, threads, policy, seconds)
                    )
    rows = []
    for (model, batch, threads, policy), runs in results.items():
        rates = [r["forwards_per_s"] for r in runs]
        rows.append(
            {
                "model": model,
                "batch": batch,
                "threads": threads,
                "policy": policy,
                "forwards_per_s": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "median_ms": statistics.median(r["median_ms"] for r in runs),
                "rounds": runs,
            }
        )
    return rows


def markdown(report: dict) -> str:
    lines = [
        "| phase | model | batch | threads | policy | forwards/s: median (min-max) | "
        "median ms per forward |",
        "|---|---|---:|---:|---|---|---:|",
    ]
    for phase in report["phases"]:
        for row in phase["rows"]:
            lines.append(
                f"| {phase['name']} | {row['model']} | {row['batch']} | {row['threads']} | "
                f"{row['policy']} | {row['forwards_per_s']:,.0f} ({row['min']:,.0f}-"
                f"{row['max']:,.0f}) | {row['median_ms']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="cnn:16,mlp:8,mlp:64", help="model:batch, ...")
    parser.add_argument("--threads", default=THREADS, help="intra-op thread counts")
    parser.add_argument(
        "--policies", default=POLICIES, help="default, PASSIVE, ACTIVE or spin:N (GOMP_SPINCOUNT)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--hogs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    cases = [(m, int(b)) for m, b in (c.split(":") for c in args.cases.split(","))]
    plan = ([int(t) for t in args.threads.split(",")], args.policies.split(","))
    for model, _ in cases:
        MODELS[model].module_file()  # written once, before the cases import it
    started = time.time()
    report = {"provenance": provenance(), "settings": {**vars(args), "out": str(args.out)}}
    phases = [{"name": "idle", "rows": run_phase(cases, *plan, args.rounds, args.seconds)}]
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    try:
        name = f"{args.hogs} CPU hog(s)"
        phases.append({"name": name, "rows": run_phase(cases, *plan, args.rounds, args.seconds)})
    finally:
        stop.set()
        for hog in hogs:
            hog.join()
    report["phases"] = phases
    report["seconds"] = round(time.time() - started, 1)
    report["provenance_end"] = provenance()
    out = args.out if args.out.is_absolute() else REPO_ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "omp_wait.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "omp_wait.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
