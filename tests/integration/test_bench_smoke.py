"""``bench/serving.py --smoke`` keeps working: every variant served, answered and checked.

Not a timed test: it asserts what the benchmark produced (every variant of both models with
successful requests, outputs equal to the module's, per-round throughputs and ratios, the step
profile or the statement that the backend does not expose it, the cold-start entries, the three
output files), never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from serving_models import MODELS, OURS, VARIANT_KEYS  # noqa: E402
from serving_report import NOT_EXPOSED  # noqa: E402
from serving_steps import STEPS  # noqa: E402


def test_smoke_run_reports_every_variant(tritonserver_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, str(BENCH / "serving.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((out / "serving.json").read_text())

    runs = {(name, v) for name, model in MODELS.items() for v in model.variants(list(VARIANT_KEYS))}
    assert ("mlp", "pt2") in runs and len(runs) >= 2 * len(VARIANT_KEYS) - 1
    rows = {(r["model"], r["variant"]): r for r in report["results"]}
    assert set(rows) == runs
    for (model, variant), row in rows.items():
        assert row["throughput"] > 0, (model, variant)
        if variant == "raw":
            assert row["raw_forward_ms_by_batch"], model
            continue
        assert row["successes"] > 0 and row["errors"] == 0, (model, variant, row["first_error"])
        assert row["executions"] > 0 and row["avg_batch"] >= 1, (model, variant)
        assert row["compute_infer_per_exec_ms"] > 0, (model, variant)
        if variant != "empty":
            assert "own_overhead_ms" in row, (model, variant)

    cold = {(c["model"], c["variant"]): c for c in report["cold_start"]}
    served = {(m, v) for m, v in runs if v != "raw"}
    assert set(cold) == served
    for key, entry in cold.items():
        assert entry["outputs_match"], key
        assert entry["output_check"] == ("shape" if key[1] == "empty" else "values"), key
        assert entry["first_ms"] > 0 and len(report["cold_start"]) == len(served)

    rounds = report["settings"]["rounds"]
    assert rounds >= 2, "the smoke run covers more than one round"
    for (model, variant), row in rows.items():
        assert len(row["rounds"]["values"]) == rounds, (model, variant)
        for reference in ("naive", "lean", "empty", "raw"):
            ratios = row["ratio_rounds"][reference]
            assert len(ratios["values"]) == rounds, (model, variant, reference)
            assert ratios["min"] <= ratios["median"] <= ratios["max"], (model, variant)
    (footing,) = report["footings"]
    assert footing["footing"] == "defaults" and "defaults vs defaults" in footing["description"]
    ours = [row for (_, variant), row in rows.items() if variant in OURS]
    if footing["step_profile"] == "exposed":  # the backend's step counters, per execution
        for row in ours:
            assert set(STEPS) <= set(row["steps_ms_per_exec"]), row["variant"]
            assert row["steps_ms_per_exec"]["forward"] > 0, row["variant"]
    else:
        assert footing["step_profile"] == NOT_EXPOSED
        assert all(row["steps_ms_per_exec"] is None for row in ours)
    assert all("our_overhead_per_exec_ms" in row for row in ours)

    assert report["targets"], "the issue's targets are evaluated"
    table = (out / "serving.md").read_text()
    for model in MODELS:
        assert f"**{model.upper()}, concurrency 4**" in table
    assert "**Cold start**" in table and "**Targets**" in table
    assert footing["step_profile"] in table and "defaults vs defaults" in table
    assert (out / "serving.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
