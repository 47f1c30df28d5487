"""The serving benchmark's measurements as rows and targets; JSON, a markdown table, a plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from serving_load import SPLIT, forward_at
from serving_models import MAX_BATCH, VARIANTS, BenchModel

OURS = ("ts", "pt2", "eager")
DESCRIPTIONS = {v.key: v.description for v in VARIANTS}
TARGET_CONCURRENCY = 16


def _raw_medians(raw: dict[int, list[float]]) -> dict[int, float]:
    return {size: float(np.median(times)) for size, times in raw.items()}


def _served_row(totals, raw: dict[int, float]) -> dict:
    load, stats = totals.load, totals.stats
    lat = np.asarray(load.latencies) * 1e3 if load.latencies else np.asarray([np.nan])
    success = max(stats.success, 1)
    executions = sum(c for _, c, _ in stats.batches)
    if executions:
        infer_per_exec = sum(n for _, _, n in stats.batches) / executions / 1e6
        raw_per_exec = sum(c * forward_at(raw, b) for b, c, _ in stats.batches) / executions * 1e3
    else:  # no batch statistics: every request of an execution records that execution's time
        infer_per_exec = stats.ns[SPLIT.index("compute_infer")] / success / 1e6
        raw_per_exec = forward_at(raw, stats.inferences / max(stats.executions, 1)) * 1e3
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
        "avg_batch": stats.inferences / max(stats.executions, 1),
        "batch_histogram": {str(b): c for b, c, _ in stats.batches},
        "compute_infer_per_exec_ms": infer_per_exec,
        "raw_forward_per_exec_ms": raw_per_exec,
    }
    for name, ns in zip(SPLIT, stats.ns):
        row[f"{name}_ms"] = ns / success / 1e6  # mean per request
    return row


def _raw_row(raw: dict[int, float], concurrency: int, by_threads: dict) -> dict:
    batch = min(concurrency, MAX_BATCH)
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
            key: float(np.median(times)) * 1e3 for key, times in by_threads.items()
        },
    }


def _block_rows(model: str, concurrency: int, totals: dict) -> list[dict]:
    raw = _raw_medians(totals["raw"].raw)
    rows = {}
    for variant in totals:
        if variant == "raw":
            body = _raw_row(raw, concurrency, totals["raw"].raw_by_threads)
        else:
            body = _served_row(totals[variant], raw)
        rows[variant] = {
            "model": model,
            "concurrency": concurrency,
            "variant": variant,
            "description": DESCRIPTIONS[variant],
            **body,
        }
    empty_infer = rows["empty"]["compute_infer_per_exec_ms"]
    for variant, row in rows.items():
        row["ratios"] = {
            ref: row["throughput"] / rows[ref]["throughput"]
            for ref in ("naive", "lean", "empty", "raw")
            if ref in rows and rows[ref]["throughput"]
        }
        if variant in ("raw", "empty"):
            continue
        over_raw = row["compute_infer_per_exec_ms"] - row["raw_forward_per_exec_ms"]
        row["overhead_vs_raw_ms"] = over_raw
        row["own_overhead_ms"] = over_raw - empty_infer
    return list(rows.values())


def _cold_rows(cold: dict, rows: list[dict]) -> list[dict]:
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


def _targets(rows: list[dict], cold_rows: list[dict]) -> list[dict]:
    """The issue's targets, each with the measured value and met / gap."""
    by = {(r["model"], r["concurrency"], r["variant"]): r for r in rows}
    concurrencies = sorted({r["concurrency"] for r in rows})
    c = TARGET_CONCURRENCY if TARGET_CONCURRENCY in concurrencies else concurrencies[-1]
    targets = []

    def add(what: str, value: float | None, goal: float, higher: bool) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        targets.append({"target": what, "value": value, "goal": goal, "met": met})

    for variant in OURS:
        mlp, cnn = by.get(("mlp", c, variant)), by.get(("cnn", c, variant))
        if mlp:
            add(f"MLP c={c} {variant}: x naive", mlp["ratios"].get("naive"), 1.2, True)
            add(f"MLP c={c} {variant}: x lean", mlp["ratios"].get("lean"), 1.2, True)
            add(f"MLP c={c} {variant}: share of empty", mlp["ratios"].get("empty"), 0.7, True)
            add(
                f"MLP c={c} {variant}: own overhead ms/exec", mlp.get("own_overhead_ms"), 0.3, False
            )
        if cnn:
            add(f"CNN c={c} {variant}: x raw torch", cnn["ratios"].get("raw"), 0.85, True)
            add(
                f"CNN c={c} {variant}: own overhead ms/exec", cnn.get("own_overhead_ms"), 1.0, False
            )
    for row in cold_rows:
        if row["variant"] in OURS:
            name = f"{row['model'].upper()} {row['variant']}: first request ms (budget)"
            add(name, row["first_ms"], row["budget_ms"], False)
    return targets


def summarize(measured: dict, models: list[BenchModel], variants: list[str], args, machine) -> dict:
    rows: list[dict] = []
    for (model, concurrency), totals in measured["blocks"].items():
        rows.extend(_block_rows(model, concurrency, totals))
    cold_rows = _cold_rows(measured["cold"], rows)
    return {
        "machine": machine,
        "settings": {
            "models": [m.name for m in models],
            "variants": variants,
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "max_batch_size": MAX_BATCH,
            "eager_compile": args.eager_compile,
            "threads": args.threads or None,
            "smoke": args.smoke,
        },
        "skipped": {m.name: dict(m.skipped) for m in models if m.skipped},
        "results": rows,
        "cold_start": cold_rows,
        "targets": _targets(rows, cold_rows),
    }


# --------------------------------------------------------------------------- outputs


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpus']} CPUs, {m['platform']}, torch {m['torch']}, Python {m['python']}; "
        f"load average {m['load_average_start'][0]:.2f} at start, "
        f"{m['load_average_end'][0]:.2f} at end; all models READY after "
        f"{m['server_ready_s']:.1f} s; run took {m['total_s']:.0f} s.",
        "",
    ]
    head = (
        "| variant | infer/s | x naive | x lean | x empty | x raw | p50 ms | p99 ms | batch | "
        "queue | c.input | c.infer | c.output | infer/exec | raw fwd/exec | -raw | -raw-empty |"
    )
    for key in sorted({(r["model"], r["concurrency"]) for r in report["results"]}):
        model, concurrency = key
        lines += [f"**{model.upper()}, concurrency {concurrency}** (ms unless noted)", "", head]
        lines.append("|" + " --- |" + " ---: |" * 16)
        for r in report["results"]:
            if (r["model"], r["concurrency"]) != key:
                continue
            ratios = [_fmt(r["ratios"].get(ref)) for ref in ("naive", "lean", "empty", "raw")]
            split = [_fmt(r.get(f"{name}_ms"), 3) for name in SPLIT]
            lines.append(
                f"| {r['variant']} ({r['description']}) | {r['throughput']:.0f} | "
                + " | ".join(ratios)
                + f" | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['avg_batch'])} | "
                + " | ".join(split)
                + f" | {_fmt(r.get('compute_infer_per_exec_ms'), 3)}"
                + f" | {_fmt(r.get('raw_forward_per_exec_ms'), 3)}"
                + f" | {_fmt(r.get('overhead_vs_raw_ms'), 3)}"
                + f" | {_fmt(r.get('own_overhead_ms'), 3)} |"
            )
        lines.append("")
    for model, reasons in report["skipped"].items():
        for variant, why in reasons.items():
            lines += [f"Not run: {model} {variant}: {why}.", ""]
    lines += [
        "**Cold start** (first request after READY; budget = empty model.py's first + 2x the "
        "variant's steady p50 at the lowest concurrency; settled = the next requests' max <= 3x "
        "steady p50)",
        "",
        "| model | variant | first ms | budget ms | within | next median ms | next max ms | "
        "steady p50 ms | settled | outputs |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for c in report["cold_start"]:
        outputs = (
            ("match" if c["output_check"] == "values" else "shape ok")
            if c["outputs_match"]
            else "MISMATCH"
        )
        lines.append(
            f"| {c['model']} | {c['variant']} | {c['first_ms']:.1f} | {c['budget_ms']:.1f} | "
            f"{'yes' if c['first_within_budget'] else 'no'} | {c['next_median_ms']:.2f} | "
            f"{c['next_max_ms']:.2f} | {c['steady_p50_ms']:.2f} | "
            f"{'yes' if c['next_settled'] else 'no'} | {outputs} |"
        )
    lines += [
        "",
        "**Targets**",
        "",
        "| target | measured | goal | met |",
        "| --- | ---: | ---: | --- |",
    ]
    for t in report["targets"]:
        met = "-" if t["met"] is None else ("met" if t["met"] else "gap")
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {_fmt(t['goal'])} | {met} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["settings"]["models"]
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for column, model in enumerate(models):
        rows = [r for r in report["results"] if r["model"] == model]
        for index, variant in enumerate(report["settings"]["variants"]):
            mine = sorted(
                (r for r in rows if r["variant"] == variant), key=lambda r: r["concurrency"]
            )
            xs = [r["concurrency"] for r in mine]
            style = {
                "marker": "o",
                "color": f"C{index}",
                "linestyle": "--" if variant in ("raw", "empty") else "-",
            }
            axes[0][column].plot(xs, [r["throughput"] for r in mine], label=variant, **style)
            if variant != "raw":
                axes[1][column].plot(xs, [r["p99_ms"] for r in mine], label=variant, **style)
        axes[0][column].set_title(f"{model.upper()}: throughput (batch-1 gRPC, closed loop)")
        axes[0][column].set_ylabel("inferences / s")
        axes[1][column].set_title(f"{model.upper()}: p99 latency")
        axes[1][column].set_ylabel("ms")
        concurrencies = report["settings"]["concurrency"]
        for ax in (axes[0][column], axes[1][column]):
            ax.set_yscale("log")
            ax.set_xscale("log", base=2)
            ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
            ax.set_xlabel("concurrency")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(
        f"pytorch_backend serving benchmark: {m['cpus']} CPUs, load average "
        f"{m['load_average_start'][0]:.1f}-{m['load_average_end'][0]:.1f}, torch {m['torch']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "serving.json", out / "serving.md", out / "serving.png"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths
