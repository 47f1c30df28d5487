"""Read what ``deploy/`` ships: rendered overlays, the autoscaler's rule, the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu", "kserve")
ADAPTER_RULES = DEPLOY / "components" / "autoscaling" / "prometheus-adapter-values.yaml"
DASHBOARD = DEPLOY / "grafana" / "pytorch-backend-dashboard.json"
_METRIC = re.compile(r"\b(?:nv|pytorch_backend)_[a-z0-9_]+\b")


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(overlay: str) -> list[dict]:
    """``kubectl kustomize deploy/overlays/<overlay>``, parsed."""
    import yaml

    result = subprocess.run(
        [kubectl() or "kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def adapter_rules() -> list[dict]:
    import yaml

    return yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]


def hpa_source_metrics() -> set[str]:
    """The server metrics the prometheus-adapter rules read (what a scrape must contain)."""
    found: set[str] = set()
    for rule in adapter_rules():
        found |= set(_METRIC.findall(rule["seriesQuery"] + " " + rule["metricsQuery"]))
    return found


def dashboard_metrics() -> set[str]:
    """Every server metric a dashboard query uses (histogram suffixes kept)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v.get("query", "") for v in dashboard["templating"]["list"]]
    return {name for expr in exprs for name in _METRIC.findall(expr)}
