"""Interleaved rounds: what one model x concurrency measured per round, and per-round ratios.

Each round gives every served variant one slot of closed-loop load and times the raw forward
once, so a variant's throughput in round ``r`` is compared with the references' in the same
round: the ratios' spread over rounds is what the machine's noise did to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from serving_load import Load, Stats
from serving_models import MAX_BATCH
from serving_steps import StepTotals

REFERENCES = ("naive", "lean", "empty", "raw")


@dataclass
class Slot:
    """One measured slot of one served variant: the client's load and the server's deltas."""

    load: Load
    stats: Stats

    @property
    def throughput(self) -> float:
        return len(self.load.latencies) / max(self.load.elapsed, 1e-9)


@dataclass
class VariantRounds:
    """A served variant's slots, one per round, and (ours) its step seconds."""

    slots: list[Slot] = field(default_factory=list)
    steps: StepTotals = field(default_factory=StepTotals)

    def load(self) -> Load:
        total = Load()
        for slot in self.slots:
            total.latencies.extend(slot.load.latencies)
            total.errors.extend(slot.load.errors)
            total.elapsed += slot.load.elapsed
        return total

    def stats(self) -> Stats:
        total = Stats()
        for slot in self.slots:
            total = total + slot.stats
        return total


@dataclass
class Block:
    """Everything one model x concurrency measured in one footing."""

    model: str
    concurrency: int
    served: dict[str, VariantRounds] = field(default_factory=dict)
    raw_rounds: list[dict[int, float]] = field(default_factory=list)  # size -> s, per round
    raw_by_threads: dict[str, list[float]] = field(default_factory=dict)  # "threads:size"

    @property
    def raw_batch(self) -> int:
        """The batch the raw row is timed at: the most a closed loop of ``concurrency`` forms."""
        return min(self.concurrency, MAX_BATCH)

    def raw_medians(self) -> dict[int, float]:
        """Median seconds per timed batch size over the rounds."""
        sizes = sorted({size for timed in self.raw_rounds for size in timed})
        return {
            size: float(np.median([t[size] for t in self.raw_rounds if size in t]))
            for size in sizes
        }

    def round_throughputs(self) -> dict[str, list[float]]:
        """Per variant, its throughput in each round (raw: ``batch / forward(batch)``)."""
        result = {name: [slot.throughput for slot in v.slots] for name, v in self.served.items()}
        if self.raw_rounds:
            batch = self.raw_batch
            result["raw"] = [batch / timed[batch] for timed in self.raw_rounds if batch in timed]
        return result


def spread(values: list[float]) -> dict:
    """The values, their median, min, max and (max - min) / median in percent."""
    if not values:
        return {"values": [], "median": None, "min": None, "max": None, "spread_pct": None}
    median = float(np.median(values))
    low, high = float(min(values)), float(max(values))
    return {
        "values": [float(v) for v in values],
        "median": median,
        "min": low,
        "max": high,
        "spread_pct": (high - low) / median * 100 if median else None,
    }


def round_ratios(throughputs: dict[str, list[float]], variant: str) -> dict[str, dict]:
    """``variant``'s throughput over each reference's, round by round, with their spread."""
    mine = throughputs.get(variant, [])
    ratios = {}
    for reference in REFERENCES:
        theirs = throughputs.get(reference)
        if not theirs:
            continue
        values = [a / b for a, b in zip(mine, theirs) if b > 0]
        ratios[reference] = spread(values)
    return ratios
