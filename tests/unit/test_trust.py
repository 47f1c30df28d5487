"""REFUSE_WRITABLE_MODEL_DIRECTORY: world-writable model files fail the load, before any runs."""

from __future__ import annotations

import pytest

from pytorch_backend.errors import ModelLoadError
from pytorch_backend.runtime.trust import check_model_files
from tests.unit.builders import build, settings_logged, ts_config, ts_repo

REFUSE = {"parameters": {"REFUSE_WRITABLE_MODEL_DIRECTORY": {"string_value": "true"}}}


@pytest.mark.parametrize("target", ["model_dir", "version_dir", "artifact", "other_file"])
def test_a_world_writable_path_fails_the_load_naming_it(tmp_path, target):
    model_dir = ts_repo(tmp_path)
    for path in (model_dir, model_dir / "1"):
        path.chmod(0o755)
    (model_dir / "1" / "model.pt").chmod(0o644)
    (model_dir / "1" / "notes.txt").write_text("x")
    paths = {
        "model_dir": model_dir,
        "version_dir": model_dir / "1",
        "artifact": model_dir / "1" / "model.pt",
        "other_file": model_dir / "1" / "notes.txt",
    }
    build(model_dir, ts_config(**REFUSE))[0].close()  # private modes: loads
    paths[target].chmod(0o777 if paths[target].is_dir() else 0o666)
    with pytest.raises(ModelLoadError) as info:
        build(model_dir, ts_config(**REFUSE))
    text = str(info.value)
    assert text.startswith("model 'm': REFUSE_WRITABLE_MODEL_DIRECTORY is true and ")
    assert f"'{paths[target]}' (mode 7" in text or f"'{paths[target]}' (mode 6" in text
    assert "world-writable; expected model files and directories" in text
    # without the parameter the same files load (the default is off)
    instance, sink = build(model_dir, ts_config())
    assert settings_logged(sink)["REFUSE_WRITABLE_MODEL_DIRECTORY"] == "false"
    instance.close()


def test_every_offending_path_is_listed(tmp_path):
    model_dir = ts_repo(tmp_path)
    (model_dir / "1").chmod(0o777)
    (model_dir / "1" / "model.pt").chmod(0o666)
    with pytest.raises(ModelLoadError, match=r"'.*/1' \(mode 777\), '.*model\.pt' \(mode 666\)"):
        check_model_files("m", model_dir, model_dir / "1")


def test_every_torch_load_in_the_package_reads_weights_only():
    """Weights are never unpickled as arbitrary objects: each torch.load says weights_only=True."""
    import ast
    from pathlib import Path

    import pytorch_backend

    calls = []
    for source in Path(pytorch_backend.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            func = getattr(node, "func", None)
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and isinstance(func.value, ast.Name)
                and func.value.id == "torch"
            ):
                flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
                calls.append((source.name, isinstance(flag, ast.Constant) and flag.value))
    assert calls, "no torch.load found: the scan is broken"
    assert all(ok is True for _, ok in calls), calls
