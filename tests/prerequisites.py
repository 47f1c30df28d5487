"""What some tests need from the machine (a tritonserver, kubectl) and cannot make themselves.

Without it such a test is skipped, except where ``PYTORCH_BACKEND_REQUIRE_SERVER=1`` (as CI
sets): there it fails, so that a run in which every integration or deploy test skipped cannot
pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from pytorch_backend.serving.server import TritonServerNotFoundError, find_tritonserver

REQUIRE_ENV = "PYTORCH_BACKEND_REQUIRE_SERVER"


def strict() -> bool:
    """Whether a missing prerequisite fails the test (CI) instead of skipping it."""
    return os.environ.get(REQUIRE_ENV) == "1"


def missing(what: str, detail: str) -> NoReturn:
    """Skip the calling test for lack of ``what``, or fail it where :func:`strict`."""
    if strict():
        pytest.fail(f"{REQUIRE_ENV}=1, but no {what}: {detail}", pytrace=False)
    pytest.skip(f"needs {what}: {detail}")


def tritonserver() -> Path:
    """The ``tritonserver`` binary the tests run (:func:`missing` when none is found)."""
    try:
        return find_tritonserver()
    except TritonServerNotFoundError as error:
        missing("tritonserver", str(error))
