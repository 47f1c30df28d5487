"""bench/gpu_check.py's logic and bench/gpu_engine.py on the CPU (not the GPU run itself)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402

GPU_STEPS = {"unit-cuda", "engine-check", "engine-bench", "integration-cuda"}
GPU_STEPS |= {"integration-numpy2", "serving-bench"}


def context(tmp_path: Path, budget: float = 60.0, cuda: bool = True) -> gpu_check.Context:
    logs = tmp_path / "logs"
    logs.mkdir()
    ctx = gpu_check.Context(tmp_path, logs, tmp_path, time.monotonic() + budget, {"A": "1"})
    ctx.cuda = cuda
    return ctx


def test_steps_record_failures_timeouts_and_skips_and_go_on(tmp_path):
    ctx = context(tmp_path)
    py = sys.executable
    ok = gpu_check.Step("ok", 1, [py, "-c", "import os; print('A is', os.environ['A'])"], 30)
    bad = gpu_check.Step("bad", 1, [py, "-c", "import sys; sys.exit(3)"], 30)
    slow = gpu_check.Step("slow", 1, [py, "-c", "import time; time.sleep(30)"], 1.5)
    server = gpu_check.Step("served", 2, [py, "-c", "pass"], 30, server=True)
    started = time.monotonic()
    results = [gpu_check.run_step(ctx, step) for step in (ok, bad, slow, server)]
    assert time.monotonic() - started < 20  # the slow step was cut at its time box
    assert [r["status"] for r in results] == ["passed", "failed", "timeout", "skipped"]
    assert "A is 1" in results[0]["tail"] and results[1]["returncode"] == 3
    assert results[3]["reason"] == "no unpacked server bundle"
    assert (tmp_path / "logs" / "bad.log").is_file() and ctx.results == results


def test_steps_are_skipped_without_cuda_or_time(tmp_path):
    ctx = context(tmp_path, budget=gpu_check.RESERVE_S + 2, cuda=False)
    cuda = gpu_check.run_step(ctx, gpu_check.Step("c", 1, [sys.executable], 30))
    ctx.cuda = True
    late = gpu_check.run_step(ctx, gpu_check.Step("late", 1, [sys.executable], 30))
    assert (cuda["status"], cuda["reason"]) == ("skipped", "no CUDA device")
    assert (late["status"], late["reason"]) == ("skipped", "out of time")


def test_pytest_counts_from_junit_xml(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="t" name="a"/>'
        '<testcase classname="t" name="b"><failure message="x"/></testcase>'
        '<testcase classname="t" name="c"><skipped/></testcase>'
        '<testcase classname="t" name="d"><error message="y"/></testcase>'
        "</testsuite></testsuites>"
    )
    counts = gpu_check.pytest_counts(xml)
    assert counts == {
        "passed": 1,
        "failed": 1,
        "errors": 1,
        "skipped": 1,
        "failures": ["t::b", "t::d"],
    }


def test_cuda_test_files_are_the_marked_modules():
    files = gpu_check.cuda_test_files(REPO / "tests" / "unit")
    assert "tests/unit/test_cuda.py" in files and "tests/unit/test_cuda_graphs.py" in files
    assert "tests/unit/test_engine.py" not in files


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run without a GPU")
def test_a_run_without_gpu_or_bundle_writes_a_summary_with_gpu_steps_skipped(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out)]
        + ["--work", str(work), "--archive", str(tmp_path / "none.tar.xz"), "--budget", "120"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == gpu_check.SCHEMA and summary["machine"]["cuda"] is False
    assert summary["machine"]["torch"] == torch.__version__
    status = {step["name"]: (step["status"], step.get("reason")) for step in summary["steps"]}
    assert status["unpack-bundle"][0] == "skipped" and status["probe"] == ("passed", None)
    assert {name for name, (state, _) in status.items() if state == "skipped"} >= GPU_STEPS
    assert all(status[name][1] == "no CUDA device" for name in GPU_STEPS)
    assert summary["counts"] == {"skipped": len(GPU_STEPS) + 1, "passed": 1}


def test_engine_check_and_bench_on_the_cpu(tmp_path):
    engine = [sys.executable, str(REPO / "bench" / "gpu_engine.py")]
    check = subprocess.run(
        [*engine, "check", "--device", "cpu", "--kinds", "ts", "--out", str(tmp_path / "c.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["ts"]["ok"] and result["ts"]["output_device"] == "cpu"
    assert result["ts"]["max_abs_diff"] == 0.0
    bench = [*engine, "bench", "--device", "cpu", "--models", "mlp", "--batches", "1,3"]
    bench += ["--seconds", "0.01", "--out", str(tmp_path / "b.json")]
    done = subprocess.run(bench, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    ours = {
        (r["batch"], r["cuda_graphs"], r["pinned_staging"]) for r in rows if r["variant"] == "ours"
    }
    assert ours == {(b, g, s) for b in (1, 3) for g in (False, True) for s in (False, True)}
    assert all(r["max_abs_diff"] < 1e-5 and r["ms"] > 0 for r in rows if r["variant"] == "ours")
    raw = [r for r in rows if r["variant"] == "raw"]
    assert [r["batch"] for r in raw] == [1, 3] and all(r["raw_copy_ms"] > 0 for r in raw)
