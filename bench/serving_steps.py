"""Where our execute's time goes: the backend's per-step counters, scraped from /metrics.

The backend may expose ``pytorch_backend_execute_step_seconds_total`` (a counter family, label
``step`` one of :data:`STEPS`, beside the usual ``model``, ``version``, ``model_instance`` and
``pid``). The benchmark scrapes tritonserver's Prometheus endpoint around each measured slot of
our variants and divides each step's seconds by Triton's execution count over the same slot.

The backend flushes its counters about once a second between executes, so a scrape counts an
execute only once the model has been idle a little longer than that: :data:`SETTLE_SECONDS`.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass, field

FAMILY = "pytorch_backend_execute_step_seconds_total"
STEPS = ("read", "cancel_check", "prepare", "forward", "split", "respond", "metrics")
SETTLE_SECONDS = 1.6  # the backend's flush interval (1 s) and some slack

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,?)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(value: str) -> str:
    return re.sub(r'\\[\\"n]', lambda m: _ESCAPES[m.group(0)], value)


def parse_sample(line: str) -> tuple[str, dict[str, str], float] | None:
    """One Prometheus text-format sample line as (name, labels, value); None if not a sample."""
    line = line.strip()
    match = _NAME.match(line)
    if not line or line.startswith("#") or match is None:
        return None
    name, position, labels = match.group(0), match.end(), {}
    if line[position : position + 1] == "{":
        position += 1
        while line[position : position + 1] != "}":
            label = _LABEL.match(line, position)
            if label is None:
                return None
            labels[label.group(1)] = _unescape(label.group(2))
            position = label.end()
            if not label.group(3) and line[position : position + 1] != "}":
                return None
        position += 1
    fields = line[position:].split()
    if not fields:
        return None
    try:
        return name, labels, float(fields[0])
    except ValueError:
        return None


def step_seconds(text: str) -> dict[str, dict[str, float]]:
    """``{served model: {step: seconds}}`` of :data:`FAMILY`, summed over instances and pids."""
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if FAMILY not in line:
            continue
        sample = parse_sample(line)
        if sample is None or sample[0] != FAMILY:
            continue
        _, labels, value = sample
        model, step = labels.get("model"), labels.get("step")
        if model is None or step is None:
            continue
        steps = found.setdefault(model, {})
        steps[step] = steps.get(step, 0.0) + value
    return found


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> str:
    """tritonserver's /metrics text ("" when the endpoint does not answer)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as reply:
            return reply.read().decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass
class StepTotals:
    """One variant's step seconds over its measured slots, and the executions they cover."""

    seconds: dict[str, float] = field(default_factory=dict)
    executions: int = 0
    exposed: bool = False

    def add(self, before: dict[str, float] | None, after: dict[str, float] | None, runs: int):
        """Adds one slot: the model's steps scraped before and after it (None: the model has no
        series; before the first execute a series may not exist yet) and Triton's executions."""
        if after is None:
            return
        before = before or {}
        self.exposed = True
        for step in sorted(set(before) | set(after)):
            delta = after.get(step, 0.0) - before.get(step, 0.0)
            self.seconds[step] = self.seconds.get(step, 0.0) + delta
        self.executions += runs

    def per_execution_ms(self) -> dict[str, float] | None:
        """Milliseconds per execution of each step (:data:`STEPS` first), None if not exposed."""
        if not self.exposed or self.executions <= 0:
            return None
        order = [*STEPS, *sorted(set(self.seconds) - set(STEPS))]
        return {
            step: self.seconds.get(step, 0.0) * 1e3 / self.executions
            for step in order
            if step in STEPS or step in self.seconds
        }
