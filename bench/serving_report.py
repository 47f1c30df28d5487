"""The serving benchmark's measurements as rows and targets (the JSON report).

Ratios are taken round by round (a variant against a reference measured in the same round) and
reported as their median with the min-max spread; the totals' ratios are kept beside them.
"""

from __future__ import annotations

import numpy as np
from serving_load import SPLIT, forward_at
from serving_models import MAX_BATCH, OURS, VARIANTS, BenchModel
from serving_rounds import REFERENCES, Block, VariantRounds, round_ratios, spread

DESCRIPTIONS = {v.key: v.description for v in VARIANTS}
TARGET_CONCURRENCY = 16
NOT_EXPOSED = "step profile: not exposed by this backend"


def _served_row(record: VariantRounds, raw: dict[int, float]) -> dict:
    load, stats = record.load(), record.stats()
    lat = np.asarray(load.latencies) * 1e3 if load.latencies else np.asarray([np.nan])
    success = max(stats.success, 1)
    executions = sum(c for _, c, _ in stats.batches)
    if executions:
        infer_per_exec = sum(n for _, _, n in stats.batches) / executions / 1e6
        raw_per_exec = sum(c * forward_at(raw, b) for b, c, _ in stats.batches) / executions * 1e3
    else:  # no batch statistics: every request of an execution records that execution's time
        infer_per_exec = stats.ns[SPLIT.index("compute_infer")] / success / 1e6
        raw_per_exec = forward_at(raw, stats.inferences / max(stats.executions, 1)) * 1e3
    avg_batch = stats.inferences / max(stats.executions, 1)
    row = {
        "requests": len(load.latencies) + len(load.errors),
        "successes": len(load.latencies),
        "errors": len(load.errors),
        "first_error": load.errors[0] if load.errors else "",
        "seconds": load.elapsed,
        "throughput": len(load.latencies) / max(load.elapsed, 1e-9),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "executions": stats.executions,
        "avg_batch": avg_batch,
        "batch_histogram": {str(b): c for b, c, _ in stats.batches},
        "compute_infer_per_exec_ms": infer_per_exec,
        "raw_forward_per_exec_ms": raw_per_exec,
        "raw_forward_at_mean_batch_ms": forward_at(raw, avg_batch) * 1e3,
    }
    for name, ns in zip(SPLIT, stats.ns):
        row[f"{name}_ms"] = ns / success / 1e6  # mean per request
    steps = record.steps.per_execution_ms()
    row["steps_ms_per_exec"] = steps
    row["steps_sum_ms"] = sum(steps.values()) if steps else None
    return row


def _raw_row(block: Block, raw: dict[int, float]) -> dict:
    batch = block.raw_batch
    seconds = raw[batch]
    return {
        "requests": None,
        "successes": None,
        "errors": 0,
        "throughput": batch / seconds,
        "p50_ms": seconds * 1e3,
        "p99_ms": None,
        "avg_batch": batch,
        "raw_forward_per_exec_ms": seconds * 1e3,
        "raw_forward_ms_by_batch": {str(b): s * 1e3 for b, s in sorted(raw.items())},
        "raw_forward_ms_by_threads_and_batch": {
            key: float(np.median(times)) * 1e3 for key, times in block.raw_by_threads.items()
        },
    }


def _overheads(rows: dict[str, dict]) -> None:
    """Each non-reference row's overhead figures, against the empty model.py's compute."""
    empty_infer = rows["empty"]["compute_infer_per_exec_ms"]
    for variant, row in rows.items():
        if variant in ("raw", "empty"):
            continue
        over_raw = row["compute_infer_per_exec_ms"] - row["raw_forward_per_exec_ms"]
        row["overhead_vs_raw_ms"] = over_raw
        row["own_overhead_ms"] = over_raw - empty_infer
        row["empty_compute_infer_per_exec_ms"] = empty_infer
        row["our_overhead_per_exec_ms"] = (
            row["compute_infer_per_exec_ms"] - row["raw_forward_at_mean_batch_ms"] - empty_infer
        )


def _block_rows(block: Block, footing: str) -> list[dict]:
    raw = block.raw_medians()
    throughputs = block.round_throughputs()
    rows: dict[str, dict] = {}
    for variant in [*block.served, "raw"]:
        body = _raw_row(block, raw) if variant == "raw" else _served_row(block.served[variant], raw)
        rows[variant] = {
            "footing": footing,
            "model": block.model,
            "concurrency": block.concurrency,
            "variant": variant,
            "description": DESCRIPTIONS[variant],
            **body,
            "rounds": spread(throughputs.get(variant, [])),
        }
    for variant, row in rows.items():
        row["ratio_rounds"] = round_ratios(throughputs, variant)
        row["ratios"] = {ref: r["median"] for ref, r in row["ratio_rounds"].items() if r["values"]}
        row["ratios_of_totals"] = {
            ref: row["throughput"] / rows[ref]["throughput"]
            for ref in REFERENCES
            if ref in rows and rows[ref]["throughput"]
        }
    _overheads(rows)
    return list(rows.values())


def _cold_rows(cold: dict, rows: list[dict], footing: str) -> list[dict]:
    out = []
    for model, entries in cold.items():
        steady_c = min(r["concurrency"] for r in rows if r["model"] == model)
        steady = {
            r["variant"]: r["p50_ms"]
            for r in rows
            if r["model"] == model and r["concurrency"] == steady_c
        }
        empty_first = entries["empty"]["first_ms"]
        for variant, entry in entries.items():
            following = entry["next_ms"] or [np.nan]
            budget = empty_first + 2 * steady[variant]
            out.append(
                {
                    "footing": footing,
                    "model": model,
                    "variant": variant,
                    "first_ms": entry["first_ms"],
                    "empty_first_ms": empty_first,
                    "steady_p50_ms": steady[variant],
                    "steady_concurrency": steady_c,
                    "budget_ms": budget,
                    "first_within_budget": entry["first_ms"] <= budget,
                    "next_median_ms": float(np.median(following)),
                    "next_max_ms": float(np.max(following)),
                    "next_settled": float(np.max(following)) <= 3 * steady[variant],
                    "outputs_match": entry["outputs_match"],
                    "output_check": entry["output_check"],
                }
            )
    return out


def _targets(rows: list[dict], cold_rows: list[dict], footing: str) -> list[dict]:
    """The issue's targets, each with the measured value (ratios: per-round median, min, max)."""
    by = {(r["model"], r["concurrency"], r["variant"]): r for r in rows}
    concurrencies = sorted({r["concurrency"] for r in rows})
    c = TARGET_CONCURRENCY if TARGET_CONCURRENCY in concurrencies else concurrencies[-1]
    targets = []

    def add(what: str, value, goal: float, higher: bool, rounds: dict | None = None) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        low, high = (rounds["min"], rounds["max"]) if rounds else (None, None)
        targets.append(
            {"footing": footing, "target": what, "value": value, "min": low, "max": high}
            | {"goal": goal, "met": met}
        )

    def ratio(row: dict, ref: str, what: str, goal: float) -> None:
        rounds = row["ratio_rounds"].get(ref)
        add(what, rounds["median"] if rounds else None, goal, True, rounds)

    for variant in OURS:
        mlp, cnn = by.get(("mlp", c, variant)), by.get(("cnn", c, variant))
        if mlp:
            ratio(mlp, "naive", f"MLP c={c} {variant}: x naive", 1.2)
            ratio(mlp, "lean", f"MLP c={c} {variant}: x lean", 1.2)
            ratio(mlp, "empty", f"MLP c={c} {variant}: share of empty", 0.7)
            add(
                f"MLP c={c} {variant}: own overhead ms/exec", mlp.get("own_overhead_ms"), 0.3, False
            )
        if cnn:
            ratio(cnn, "raw", f"CNN c={c} {variant}: x raw torch", 0.85)
            add(
                f"CNN c={c} {variant}: own overhead ms/exec", cnn.get("own_overhead_ms"), 1.0, False
            )
    for row in cold_rows:
        if row["variant"] in OURS:
            name = f"{row['model'].upper()} {row['variant']}: first request ms (budget)"
            add(name, row["first_ms"], row["budget_ms"], False)
    return targets


def summarize_footing(measured: dict, footing: dict) -> dict:
    """One footing's rows, cold-start rows, targets and whether the step profile was exposed."""
    label = footing["footing"]
    rows: list[dict] = []
    for block in measured["blocks"]:
        rows.extend(_block_rows(block, label))
    cold_rows = _cold_rows(measured["cold"], rows, label)
    exposed = any(r.get("steps_ms_per_exec") for r in rows)
    return {
        "footing": {**footing, "step_profile": "exposed" if exposed else NOT_EXPOSED},
        "results": rows,
        "cold_start": cold_rows,
        "targets": _targets(rows, cold_rows, label),
    }


def summarize(parts: list[dict], models: list[BenchModel], variants: list[str], args, machine):
    """The combined report of every footing (rows carry their footing)."""
    return {
        "machine": machine,
        "settings": {
            "models": [m.name for m in models],
            "variants": variants,
            "concurrency": args.concurrency,
            "seconds_per_slot": args.seconds,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "raw_seconds": args.raw_seconds,
            "max_batch_size": MAX_BATCH,
            "eager_compile": args.eager_compile,
            "footings": [p["footing"]["footing"] for p in parts],
            "threads": parts[0]["footing"]["threads"] if len(parts) == 1 else None,
            "omp_threads": args.omp_threads or None,
            "smoke": args.smoke,
        },
        "footings": [p["footing"] for p in parts],
        "skipped": {m.name: dict(m.skipped) for m in models if m.skipped},
        "results": [row for p in parts for row in p["results"]],
        "cold_start": [row for p in parts for row in p["cold_start"]],
        "targets": [row for p in parts for row in p["targets"]],
    }
