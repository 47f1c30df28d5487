"""A test missing its tritonserver (or kubectl) skips, but fails where CI requires everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import prerequisites

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TRITONSERVER", str(tmp_path / "nope"))  # an explicit, missing choice


def test_without_a_server_the_test_skips(no_server, monkeypatch):
    monkeypatch.delenv(prerequisites.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs tritonserver: TRITONSERVER is set to"):
        prerequisites.tritonserver()


def test_without_a_server_the_test_fails_where_ci_requires_one(no_server, monkeypatch):
    monkeypatch.setenv(prerequisites.REQUIRE_ENV, "1")
    with pytest.raises(
        pytest.fail.Exception, match="PYTORCH_BACKEND_REQUIRE_SERVER=1, but no tritonserver"
    ):
        prerequisites.tritonserver()


def test_ci_requires_every_prerequisite_and_runs_the_slow_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"export {prerequisites.REQUIRE_ENV}=1" in ci
    for path in (".ci/run", "dev", "pyproject.toml"):
        assert "not slow" not in (ROOT / path).read_text(), path
