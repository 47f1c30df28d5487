"""The README's parameter table, generated from the registry (a unit test checks the README)."""

from __future__ import annotations

from .enums import ModelKind
from .parameters import BACKEND, PARAMETERS, Parameter


def _applies(parameter: Parameter, kind: ModelKind) -> str:
    if parameter.reader != BACKEND:
        return ""
    if not parameter.applies_to:
        return "—"
    return "yes" if kind in parameter.applies_to else "no effect"


def markdown_table() -> str:
    """The README's parameter table, generated from :data:`PARAMETERS`."""
    lines = [
        "| parameter | default | effect | TorchScript | AOTI .pt2 | nn.Module | torch.export |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in PARAMETERS:
        name = f"`{p.key}`" + (
            f" (alias {', '.join(f'`{a}`' for a in p.aliases)})" if p.aliases else ""
        )
        cells = (name, p.default_text, p.effect, *(_applies(p, kind) for kind in ModelKind))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
