"""Every GPU path in one command, for a lent GPU machine: time-boxed steps, one summary.

Steps run one after the other, each as a child process with its own time box (cut to what is
left of ``--budget``), its output in ``logs/<step>.log``; a failing, timed-out or skipped step is
recorded and the next one runs. Tier 0 unpacks the bundle (``bench/gpu_bundle.py``) and probes
the machine; tier 1 needs no server (the ``cuda`` unit tests, the engine in process for
TorchScript, ``.pt2`` and the eager runtime, the engine benchmark); tier 2 serves from the
bundle's tritonserver (the ``cuda`` integration tests, once more with the machine's NumPy, and the
serving benchmark on the GPU). Steps that need CUDA are skipped without it, tier 2 without a
bundle. ``$OUT`` (``--out``) gets ``summary.json``, ``logs.tar.gz`` and the benchmarks' JSON.

Run on the GPU machine: ``bash bench/gpu_check.sh`` (this, with ``python3``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = REPO_ROOT / ".gpu-carry" / "bundle.tar.xz"
SCHEMA = 1
RESERVE_S = 20.0  # kept for packing the results

PROBE = """
import json, sys
info = {"python": sys.version.split()[0]}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                devices=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if info["cuda"]:
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
except Exception as error:
    info.update(torch=None, cuda=False, torch_error=repr(error))
try:
    import numpy
    info["numpy"] = numpy.__version__
except Exception as error:
    info["numpy_error"] = repr(error)
print("PROBE " + json.dumps(info))
"""


@dataclass
class Step:
    """One time-boxed child process."""

    name: str
    tier: int
    command: list[str]
    timeout: float
    cuda: bool = True  # skipped without a CUDA device
    server: bool = False  # skipped without the unpacked bundle
    junit: bool = False  # pytest: counts come from logs/<name>.xml
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Context:
    out: Path
    logs: Path
    work: Path
    deadline: float
    env: dict[str, str]
    cuda: bool = False
    bundle: Path | None = None
    results: list[dict] = field(default_factory=list)


def cuda_test_files(folder: Path) -> list[str]:
    """Test modules of ``folder`` that hold ``cuda``-marked tests."""
    return sorted(
        str(p.relative_to(REPO_ROOT))
        for p in folder.glob("test_*.py")
        if "mark.cuda" in p.read_text(encoding="utf-8")
    )


def pytest_counts(xml: Path) -> dict:
    """passed/failed/errors/skipped and the failed test ids of a JUnit XML report."""
    root = ElementTree.parse(xml).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        tags = {child.tag for child in case}
        if "failure" in tags or "error" in tags:
            counts["failed" if "failure" in tags else "errors"] += 1
            counts["failures"].append(test_id)
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def run_step(ctx: Context, step: Step) -> dict:
    """Run ``step`` (or record why not); returns its summary entry (also kept in ``ctx``)."""
    entry: dict = {"name": step.name, "tier": step.tier, "command": " ".join(step.command)}
    left = ctx.deadline - time.monotonic() - RESERVE_S
    reason = None
    if step.cuda and not ctx.cuda:
        reason = "no CUDA device"
    elif step.server and ctx.bundle is None:
        reason = "no unpacked server bundle"
    elif left < 5:
        reason = "out of time"
    if reason is not None:
        entry.update(status="skipped", reason=reason)
        ctx.results.append(entry)
        print(f"[{step.name}] skipped: {reason}", flush=True)
        return entry
    timeout = min(step.timeout, left)
    log = ctx.logs / f"{step.name}.log"
    command = list(step.command)
    if step.junit:
        command.append(f"--junitxml={ctx.logs / (step.name + '.xml')}")
    print(f"[{step.name}] {' '.join(command)[:160]} (at most {timeout:.0f} s)", flush=True)
    started = time.monotonic()
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**ctx.env, **step.env},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
            status = "passed" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and what it started (servers)
            code, status = proc.wait(), "timeout"
    entry.update(status=status, returncode=code, seconds=round(time.monotonic() - started, 1))
    entry["log"] = f"logs/{log.name}"
    xml = ctx.logs / f"{step.name}.xml"
    if step.junit and xml.is_file():
        entry["tests"] = pytest_counts(xml)
    entry["tail"] = log.read_text(encoding="utf-8", errors="replace")[-1500:]
    ctx.results.append(entry)
    print(f"[{step.name}] {status} in {entry['seconds']} s", flush=True)
    return entry


def unpack(ctx: Context, archive: Path) -> None:
    """Tier 0: unpack the bundle and point the environment at it."""
    entry: dict = {"name": "unpack-bundle", "tier": 0}
    if not archive.is_file():
        entry.update(status="skipped", reason=f"no {archive} (run bench/gpu_bundle.py)")
        ctx.results.append(entry)
        return
    started = time.monotonic()
    target = ctx.work / "bundle"
    target.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["tar", "-xJf", str(archive), "-C", str(target)], check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as error:
        entry.update(status="failed", reason=repr(error))
        ctx.results.append(entry)
        return
    manifest = json.loads((target / "MANIFEST.json").read_text())
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if manifest.get("python_version") != running:  # its wheels and stub do not fit this Python
        entry.update(
            status="failed",
            reason=f"bundle built for Python {manifest.get('python_version')}, this is {running}",
        )
        ctx.results.append(entry)
        return
    site, numpy1 = target / "site", target / "site-numpy1"
    numpy1.mkdir(exist_ok=True)
    for path in list(site.glob("numpy*")):  # numpy<2 on its own path: droppable per step
        path.rename(numpy1 / path.name)
    ctx.env["PYTHONPATH"] = os.pathsep.join(
        [str(numpy1), str(site), str(REPO_ROOT / "src"), str(REPO_ROOT)]
    )
    ctx.env["TRITONSERVER"] = str(target / "server/pytriton/tritonserver/bin/tritonserver")
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    has_libpython = bool(libdir and soname and (Path(libdir) / soname).is_file())
    if not has_libpython and (target / "libpython").is_dir():  # the stub needs a libpython
        ctx.env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [str(target / "libpython"), ctx.env.get("LD_LIBRARY_PATH")])
        )
        ctx.env["PYTHONHOME"] = sys.base_prefix
    ctx.bundle = target
    entry.update(
        status="passed",
        seconds=round(time.monotonic() - started, 1),
        nvidia_pytriton=manifest.get("nvidia_pytriton"),
        stubs=manifest.get("stubs"),
        libpython="machine" if has_libpython else "bundled fallback",
    )
    ctx.results.append(entry)


def probe(ctx: Context) -> dict:
    """Tier 0: what this machine has (torch, CUDA, NumPy), as the steps will see it."""
    entry = run_step(ctx, Step("probe", 0, [sys.executable, "-c", PROBE], 60, cuda=False))
    info: dict = {}
    for line in entry.get("tail", "").splitlines():
        if line.startswith("PROBE "):
            info = json.loads(line[len("PROBE ") :])
    try:
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as error:
        info["nvidia_smi"] = repr(error)
    ctx.cuda = bool(info.get("cuda"))
    return info


def steps(ctx: Context) -> list[Step]:
    py, logs = sys.executable, ctx.logs
    pytest = [py, "-m", "pytest", "-m", "cuda", "-rA", "-p", "no:cacheprovider", "-o"]
    pytest.append(f"cache_dir={ctx.work / 'pytest-cache'}")
    integration = "tests/integration/test_gpu.py"
    no_numpy1 = {"PYTHONPATH": ctx.env.get("PYTHONPATH", "").split(os.pathsep, 1)[-1]}
    serving = [py, "bench/serving.py", "--kind", "gpu", "--models", "mlp,cnn"]
    serving += ["--variants", "ts,eager,lean,empty,raw", "--concurrency", "1,16,64"]
    serving += ["--seconds", "1", "--rounds", "2", "--follow", "5", "--out", str(logs / "serving")]
    engine = [py, "bench/gpu_engine.py"]
    unit = [*pytest, *cuda_test_files(REPO_ROOT / "tests/unit")]
    return [
        Step("unit-cuda", 1, unit, 90, junit=True),
        Step("engine-check", 1, [*engine, "check", "--out", str(logs / "engine-check.json")], 120),
        Step(
            "engine-bench",
            1,
            [*engine, "bench", "--seconds", "0.3", "--out", str(logs / "engine-bench.json")],
            100,
        ),
        Step("integration-cuda", 2, [*pytest, integration], 120, server=True, junit=True),
        Step(
            "integration-numpy2",
            2,
            [*pytest, integration, "-k", "outputs"],
            45,
            server=True,
            junit=True,
            env=no_numpy1,
        ),
        Step("serving-bench", 2, serving, 140, server=True),
    ]


def write_outputs(ctx: Context, summary: dict) -> list[Path]:
    """``summary.json``, ``logs.tar.gz`` and the benchmarks' JSON under ``ctx.out``."""
    written = []
    for name in ("engine-check.json", "engine-bench.json", "serving/serving.json"):
        source = ctx.logs / name
        if source.is_file():
            target = ctx.out / name.replace("/", "-")
            target.write_bytes(source.read_bytes())
            written.append(target)
            summary.setdefault("results", {})[target.stem] = json.loads(source.read_text())
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=1))
    with tarfile.open(ctx.out / "logs.tar.gz", "w:gz") as tar:
        tar.add(ctx.logs, arcname="logs")
    return [ctx.out / "summary.json", ctx.out / "logs.tar.gz", *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/pytorch-backend-gpu-check"))
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help="the bundle")
    parser.add_argument("--budget", type=float, default=460.0, help="seconds for everything")
    parser.add_argument("--only", help="comma-separated step names (default: all)")
    args = parser.parse_args(argv)
    started, wall = time.monotonic(), time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    for stale in (logs, args.work / "bundle"):  # what an earlier run of this script left
        shutil.rmtree(stale, ignore_errors=True)
    logs.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}{os.pathsep}{REPO_ROOT}"}
    ctx = Context(args.out, logs, args.work, started + args.budget, env)
    unpack(ctx, args.archive)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), **probe(ctx)}
    wanted = set(args.only.split(",")) if args.only else None
    for step in steps(ctx):
        if wanted is None or step.name in wanted:
            run_step(ctx, step)
    counts: dict[str, int] = {}
    for entry in ctx.results:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    summary = {
        "schema": SCHEMA,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(wall)),
        "wall_s": round(time.monotonic() - started, 1),
        "budget_s": args.budget,
        "machine": machine,
        "counts": counts,
        "steps": ctx.results,
    }
    for path in write_outputs(ctx, summary):
        print(f"wrote {path}")
    return 0 if not counts.get("failed") and not counts.get("timeout") else 1


if __name__ == "__main__":
    sys.exit(main())
