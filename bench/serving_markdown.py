"""The serving report as markdown tables and a plot; ``write_outputs`` writes all three files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from serving_load import SPLIT
from serving_models import OURS
from serving_report import NOT_EXPOSED
from serving_rounds import REFERENCES
from serving_steps import STEPS


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ranged(rounds: dict | None, digits: int = 2) -> str:
    """``median (min–max)`` of a spread entry."""
    if not rounds or not rounds["values"]:
        return "-"
    median, low, high = (_fmt(rounds[k], digits) for k in ("median", "min", "max"))
    return f"{median} ({low}–{high})"


def _crashes(crashes: list[str]) -> str:
    if not crashes:
        return ""
    return (
        f" Measured on a fresh server after {len(crashes)} tritonserver crash(es): "
        + "; ".join(f"`{c}`" for c in crashes)
        + "."
    )


def _header(report: dict) -> list[str]:
    m = report["machine"]
    commit = m.get("git_commit") or "unknown"
    lines = [
        f"Machine: {m['cpus']} CPUs, {m['platform']}, torch {m['torch']}, Python {m['python']}; "
        f"git commit {commit}; load average {m['load_average_start'][0]:.2f} at start, "
        f"{m['load_average_end'][0]:.2f} at end; run took {m['total_s']:.0f} s. "
        f"{report['settings']['rounds']} interleaved rounds of "
        f"{report['settings']['seconds_per_slot']:g} s per variant.",
        "",
    ]
    for f in report["footings"]:
        lines.append(
            f"* Footing **{f['footing']}**: {f['description']}; all models READY after "
            f"{f['server_ready_s']:.1f} s; load average {f['load_average_start'][0]:.2f} at "
            f"start, {f['load_average_end'][0]:.2f} at end; {f['step_profile']}."
            + _crashes(f.get("server_crashes") or [])
        )
    return [*lines, ""]


def _throughput_table(rows: list[dict]) -> list[str]:
    lines = [
        "| variant | infer/s | per round: median (min–max) | spread % | "
        + " | ".join(f"x {ref}: median (min–max)" for ref in REFERENCES)
        + " |",
        "| --- |" + " ---: |" * (3 + len(REFERENCES)),
    ]
    for r in rows:
        ratios = [_ranged(r["ratio_rounds"].get(ref)) for ref in REFERENCES]
        lines.append(
            f"| {r['variant']} ({r['description']}) | {r['throughput']:.0f} | "
            f"{_ranged(r['rounds'], 0)} | {_fmt(r['rounds']['spread_pct'], 0)} | "
            + " | ".join(ratios)
            + " |"
        )
    return lines


def _split_table(rows: list[dict]) -> list[str]:
    lines = [
        "| variant | p50 ms | p99 ms | batch | queue | c.input | c.infer | c.output | infer/exec | "
        "raw fwd/exec | -raw | -raw-empty |",
        "| --- |" + " ---: |" * 11,
    ]
    for r in rows:
        split = [_fmt(r.get(f"{name}_ms"), 3) for name in SPLIT]
        lines.append(
            f"| {r['variant']} | {_fmt(r['p50_ms'])} | {_fmt(r['p99_ms'])} | "
            f"{_fmt(r['avg_batch'])} | "
            + " | ".join(split)
            + f" | {_fmt(r.get('compute_infer_per_exec_ms'), 3)}"
            + f" | {_fmt(r.get('raw_forward_per_exec_ms'), 3)}"
            + f" | {_fmt(r.get('overhead_vs_raw_ms'), 3)}"
            + f" | {_fmt(r.get('own_overhead_ms'), 3)} |"
        )
    return lines


def _rounds_table(rows: list[dict]) -> list[str]:
    """Every round's throughput and ratios, inside a collapsed block."""
    count = max(len(r["rounds"]["values"]) for r in rows)
    lines = [
        "<details><summary>per round</summary>",
        "",
        "| variant | figure | " + " | ".join(f"r{i + 1}" for i in range(count)) + " |",
        "| --- | --- |" + " ---: |" * count,
    ]
    for r in rows:
        figures = [("infer/s", r["rounds"]["values"], 0)]
        figures += [(f"x {ref}", s["values"], 2) for ref, s in r["ratio_rounds"].items()]
        for name, values, digits in figures:
            cells = [_fmt(v, digits) for v in values] + ["-"] * (count - len(values))
            lines.append(f"| {r['variant']} | {name} | " + " | ".join(cells) + " |")
    return [*lines, "", "</details>"]


def _steps_table(rows: list[dict]) -> list[str]:
    """Ours: the step profile per execution, next to compute infer, raw forward and empty."""
    ours = [r for r in rows if r["variant"] in OURS]
    if not ours:
        return []
    exposed = any(r.get("steps_ms_per_exec") for r in ours)
    steps = list(STEPS) if exposed else []
    head = [*steps, "steps sum"] if exposed else []
    lines = [
        "Where the time goes (ms per execution): "
        + ("our steps, " if exposed else f"{NOT_EXPOSED}; ")
        + "compute infer, the raw forward at the mean formed batch, the empty model.py's "
        "compute infer, and our overhead = compute infer − raw − empty.",
        "",
        "| variant | "
        + " | ".join([*head, "c.infer", "raw @ mean batch", "empty c.infer", "our overhead"])
        + " |",
        "| --- |" + " ---: |" * (len(head) + 4),
    ]
    for r in ours:
        measured = r.get("steps_ms_per_exec") or {}
        cells = [_fmt(measured.get(step), 3) for step in steps]
        if exposed:
            cells.append(_fmt(r.get("steps_sum_ms"), 3))
        cells += [
            _fmt(r.get(key), 3)
            for key in (
                "compute_infer_per_exec_ms",
                "raw_forward_at_mean_batch_ms",
                "empty_compute_infer_per_exec_ms",
                "our_overhead_per_exec_ms",
            )
        ]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return lines


def _cold_table(cold: list[dict]) -> list[str]:
    lines = [
        "**Cold start** (first request after READY; budget = empty model.py's first + 2x the "
        "variant's steady p50 at the lowest concurrency; settled = the next requests' max <= 3x "
        "steady p50)",
        "",
        "| model | variant | first ms | budget ms | within | next median ms | next max ms | "
        "steady p50 ms | settled | outputs |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for c in cold:
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
    return lines


def _targets_table(targets: list[dict]) -> list[str]:
    lines = [
        "**Targets** (ratios: median of the per-round ratios, min–max in brackets)",
        "",
        "| target | measured | goal | met |",
        "| --- | ---: | ---: | --- |",
    ]
    for t in targets:
        met = "-" if t["met"] is None else ("met" if t["met"] else "gap")
        value = _fmt(t["value"])
        if t.get("min") is not None:
            value += f" ({_fmt(t['min'])}–{_fmt(t['max'])})"
        lines.append(f"| {t['target']} | {value} | {_fmt(t['goal'])} | {met} |")
    return lines


def _footing_section(report: dict, footing: dict, multiple: bool) -> list[str]:
    label = footing["footing"]
    rows = [r for r in report["results"] if r["footing"] == label]
    lines = [f"## Footing: {label} ({footing['description']})", ""] if multiple else []
    for key in dict.fromkeys((r["model"], r["concurrency"]) for r in rows):  # run order
        block = [r for r in rows if (r["model"], r["concurrency"]) == key]
        lines += [f"**{key[0].upper()}, concurrency {key[1]}** (ms unless noted)", ""]
        lines += [*_throughput_table(block), "", *_split_table(block), ""]
        lines += [*_rounds_table(block), ""]
        steps = _steps_table(block)
        lines += [*steps, ""] if steps else []
    lines += [*_cold_table([c for c in report["cold_start"] if c["footing"] == label]), ""]
    lines += [*_targets_table([t for t in report["targets"] if t["footing"] == label]), ""]
    return lines


def _footings_table(report: dict) -> list[str]:
    """Per model x concurrency x variant: infer/s and x lean / x naive in every footing."""
    labels = [f["footing"] for f in report["footings"]]
    by = {(r["footing"], r["model"], r["concurrency"], r["variant"]): r for r in report["results"]}
    keys = list(
        dict.fromkeys((r["model"], r["concurrency"], r["variant"]) for r in report["results"])
    )
    lines = [
        "**Footings compared** (infer/s per-round median; x naive, x lean per-round medians)",
        "",
        "| model | c | variant | " + " | ".join(labels) + " |",
        "| --- | ---: | --- |" + " ---: |" * len(labels),
    ]
    for model, c, variant in keys:
        cells = []
        for label in labels:
            r = by.get((label, model, c, variant))
            if r is None:
                cells.append("-")
                continue
            ratios = r["ratios"]
            cells.append(
                f"{_fmt(r['rounds']['median'], 0)} ({_fmt(ratios.get('naive'))}, "
                f"{_fmt(ratios.get('lean'))})"
            )
        lines.append(f"| {model} | {c} | {variant} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def markdown(report: dict) -> str:
    lines = _header(report)
    multiple = len(report["footings"]) > 1
    if multiple:
        lines += _footings_table(report)
    for footing in report["footings"]:
        lines += _footing_section(report, footing, multiple)
    for model, reasons in report["skipped"].items():
        for variant, why in reasons.items():
            lines += [f"Not run: {model} {variant}: {why}.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Throughput (per-round min–max as error bars) and p99 against concurrency, per footing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, footings = report["settings"]["models"], report["footings"]
    fig, axes = plt.subplots(
        2 * len(footings), len(models), figsize=(6 * len(models), 4 * 2 * len(footings)),
        squeeze=False,
    )  # fmt: skip
    concurrencies = report["settings"]["concurrency"]
    for f_index, footing in enumerate(footings):
        top, bottom = axes[2 * f_index], axes[2 * f_index + 1]
        for column, model in enumerate(models):
            rows = [
                r
                for r in report["results"]
                if r["model"] == model and r["footing"] == footing["footing"]
            ]
            for index, variant in enumerate(report["settings"]["variants"]):
                mine = sorted(
                    (r for r in rows if r["variant"] == variant), key=lambda r: r["concurrency"]
                )
                if not mine:
                    continue
                xs = [r["concurrency"] for r in mine]
                style = {"marker": "o", "color": f"C{index}", "label": variant}
                style["linestyle"] = "--" if variant in ("raw", "empty") else "-"
                ys = [r["throughput"] for r in mine]
                low = [y - (r["rounds"]["min"] or y) for y, r in zip(ys, mine)]
                high = [(r["rounds"]["max"] or y) - y for y, r in zip(ys, mine)]
                top[column].errorbar(xs, ys, yerr=[low, high], capsize=3, **style)
                if variant != "raw":
                    bottom[column].plot(xs, [r["p99_ms"] for r in mine], **style)
            name = f"{model.upper()} [{footing['footing']}]"
            top[column].set_title(f"{name}: throughput (bars: per-round min–max)")
            top[column].set_ylabel("inferences / s")
            bottom[column].set_title(f"{name}: p99 latency")
            bottom[column].set_ylabel("ms")
            for ax in (top[column], bottom[column]):
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
