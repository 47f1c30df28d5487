"""Recognise PyTorch model files, so a load error can say what a file is and how to serve it."""

from __future__ import annotations

import zipfile
from pathlib import Path

TORCHSCRIPT = "torchscript"
AOTI = "aoti"
EXPORTED_PROGRAM = "exported_program"
CHECKPOINT = "checkpoint"
LEGACY_PICKLE = "legacy_pickle"
NOT_ZIP = "not_zip"
TRUNCATED_ZIP = "truncated_zip"
UNKNOWN_ZIP = "unknown_zip"

_DESCRIPTIONS = {
    TORCHSCRIPT: (
        "a TorchScript archive (torch.jit.save); serve it with platform 'pytorch_libtorch'"
    ),
    AOTI: "an AOTInductor package (.pt2); serve it with platform 'torch_aoti'",
    EXPORTED_PROGRAM: (
        "a PT2 archive without AOTInductor code (e.g. torch.export.save of an ExportedProgram); "
        "compile it with torch._inductor.aoti_compile_and_package"
    ),
    CHECKPOINT: (
        "a torch.save checkpoint (zip), not a compiled model; export it with "
        "torch.jit.script/trace + torch.jit.save, or torch.export + AOT Inductor"
    ),
    LEGACY_PICKLE: "a legacy (non-zip) torch.save/pickle file",
    NOT_ZIP: "not a zip archive (not a PyTorch model file at all)",
    TRUNCATED_ZIP: (
        "a truncated or damaged zip archive (it starts like one but its central directory is "
        "missing: was the copy cut short?)"
    ),
    UNKNOWN_ZIP: "a zip archive that is not a PyTorch model file",
}


def identify(path: Path) -> str:
    """The kind of model file at ``path`` (one of the constants above)."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":
            return TRUNCATED_ZIP
        return LEGACY_PICKLE if head[:1] == b"\x80" else NOT_ZIP
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any("/data/aotinductor/" in n for n in names):
            return AOTI
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return TORCHSCRIPT
        formats = [n for n in names if n.endswith("archive_format")]
        if formats and archive.read(formats[0]).strip() == b"pt2":
            return EXPORTED_PROGRAM
        if any(n.endswith("data.pkl") for n in names):
            return CHECKPOINT
    return UNKNOWN_ZIP


def describe(path: Path) -> str:
    """What the file at ``path`` is, with how to serve or convert it."""
    return _DESCRIPTIONS[identify(path)]
