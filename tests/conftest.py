"""Marks the tests of a compatibility cell (``compat``): every unit test and the integration
tests listed in :mod:`tests.compat`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat import SELECTED

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    found: set[str] = set()
    for item in items:
        path = Path(str(item.fspath))
        name = f"{path.name}::{getattr(item, 'originalname', item.name)}"
        if path.parent == HERE / "unit":
            item.add_marker(pytest.mark.compat)
        elif path.parent == HERE / "integration" and name in SELECTED:
            item.add_marker(pytest.mark.compat)
            found.add(name)
    # A renamed test must not silently drop out of the cells (checked on a whole-suite run).
    whole = all(Path(arg).resolve() == HERE for arg in config.args)
    if config.getoption("markexpr", "") == "compat" and whole and SELECTED - found:
        raise pytest.UsageError(f"tests/compat.py names missing tests: {sorted(SELECTED - found)}")
