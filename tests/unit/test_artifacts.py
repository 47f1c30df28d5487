"""Model-file recognition used by load errors of both executors."""

from __future__ import annotations

import torch

from pytorch_backend.executors import artifacts
from tests import aoti_models, ts_models


def test_each_kind_of_file_is_recognised(tmp_path):
    ts_models.save(ts_models.Scale(), tmp_path / "ts.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "ckpt.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "junk").write_bytes(b"junk")
    assert artifacts.identify(tmp_path / "ts.pt") == artifacts.TORCHSCRIPT
    assert artifacts.identify(tmp_path / "ckpt.pt") == artifacts.CHECKPOINT
    assert artifacts.identify(tmp_path / "old.pt") == artifacts.LEGACY_PICKLE
    assert artifacts.identify(tmp_path / "junk") == artifacts.NOT_ZIP
    assert "platform 'pytorch_libtorch'" in artifacts.describe(tmp_path / "ts.pt")


def test_aoti_package_is_recognised():
    path = aoti_models.build_static()  # cached once per machine
    assert artifacts.identify(path) == artifacts.AOTI
    assert "platform 'torch_aoti'" in artifacts.describe(path)


def test_a_truncated_archive_is_called_truncated(tmp_path):
    whole = ts_models.save(ts_models.Scale(), tmp_path / "ts.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    assert artifacts.identify(tmp_path / "cut.pt") == artifacts.TRUNCATED_ZIP
    assert "truncated or damaged zip archive" in artifacts.describe(tmp_path / "cut.pt")
