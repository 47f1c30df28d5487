"""Artifact discovery as the C++ backend does it, plus the drop-in and safety rules."""

from __future__ import annotations

import pytest

from pytorch_backend.config import parse_model_config
from pytorch_backend.errors import ModelLoadError
from pytorch_backend.executors.registry import artifact_name, artifact_path, resolve_kind


def cfg(**fields):
    base = {
        "name": "m",
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}],
    }
    return parse_model_config({**base, **fields})


@pytest.mark.parametrize(
    ("fields", "param", "expected"),
    [
        ({}, None, "model.pt"),
        ({"platform": "pytorch_libtorch"}, None, "model.pt"),
        ({"platform": "torch_aoti"}, None, "model.pt2"),
        ({"platform": "libtorch"}, None, "model.pt"),  # only the exact string selects AOTI
        ({"default_model_filename": "net.ts"}, None, "net.ts"),
        ({"default_model_filename": "model.py"}, None, "model.pt"),  # drop-in: the script's name
        ({"default_model_filename": "model.py", "platform": "torch_aoti"}, None, "model.pt2"),
        ({"default_model_filename": "model.py"}, "weights.pt", "weights.pt"),
        ({"default_model_filename": "a.pt"}, "b.pt", "b.pt"),
    ],
)
def test_artifact_name(fields, param, expected):
    config = cfg(**fields)
    assert artifact_name(config, resolve_kind(config), param) == expected


def test_artifact_path_found_and_missing(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    assert (
        artifact_path(cfg(), resolve_kind(cfg()), tmp_path, None)
        == (tmp_path / "model.pt").resolve()
    )
    with pytest.raises(ModelLoadError, match="unable to find .*model.pt2"):
        aoti = cfg(platform="torch_aoti")
        artifact_path(aoti, resolve_kind(aoti), tmp_path, None)


def test_missing_file_hints_at_the_platform(tmp_path):
    (tmp_path / "model.pt2").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match='set platform: "torch_aoti"'):
        artifact_path(cfg(), resolve_kind(cfg()), tmp_path, None)


@pytest.mark.parametrize("name", ["/etc/passwd", "../other/model.pt", "sub/../../model.pt"])
def test_names_leaving_the_version_directory_are_refused(tmp_path, name):
    version = tmp_path / "1"
    version.mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="model 'm': model file name"):
        config = cfg(default_model_filename=name)
        artifact_path(config, resolve_kind(config), version, None)
