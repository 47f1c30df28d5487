"""Malformed models for the load half of the bad-input matrix (repository API, explicit mode).

Each :class:`LoadCase` writes a model directory and gives the config that ``load_model`` sends;
the load must fail with a text that names the model (``{name}``) and says what was expected.
All these are refused by this backend (``initialize`` raises), never by Triton's core.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests import aoti_models, ts_models


def _scale_pt() -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(ts_models.Scale()), buffer)
    return buffer.getvalue()


def _state_dict_pt() -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(4, 4).state_dict(), buffer)
    return buffer.getvalue()


def _truncated_pt() -> bytes:
    whole = _scale_pt()
    return whole[: len(whole) // 2]


def _package_for(device: str) -> bytes:
    """A copy of a CPU AOTI package whose metadata says it was compiled for ``device``.

    Building a real CUDA package needs a GPU and nvcc; the backend reads ``AOTI_DEVICE_KEY`` from
    this metadata before handing the package to torch, so an edited copy exercises the same path.
    """
    source = aoti_models.build_static()
    out = io.BytesIO()
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if "/data/aotinductor/" in item.filename and item.filename.endswith("metadata.json"):
                metadata = json.loads(data)
                metadata["AOTI_DEVICE_KEY"] = device
                data = json.dumps(metadata).encode()
            zout.writestr(item, data)
    return out.getvalue()


@dataclass(frozen=True)
class LoadCase:
    kind: str
    files: dict[str, Callable[[], bytes]]
    expect: tuple[str, ...]  # ``{name}``: the model's name
    parameters: dict[str, str] = field(default_factory=dict)
    platform: str = "pytorch_libtorch"
    extra: dict = field(default_factory=dict)  # more config fields
    world_writable: bool = False  # chmod o+w the version directory

    def write(self, model_dir: Path) -> None:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        for relative, content in self.files.items():
            (model_dir / "1" / relative).write_bytes(content())
        model_dir.chmod(0o755)
        (model_dir / "1").chmod(0o777 if self.world_writable else 0o755)

    def config(self, name: str) -> dict:
        io_ = [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}]
        config = {
            "name": name,
            "backend": "pytorch_python",
            "platform": self.platform,
            "max_batch_size": 4,
            "input": io_,
            "output": [{**io_[0], "name": "y"}],
            "parameters": {k: {"string_value": v} for k, v in self.parameters.items()},
            **self.extra,
        }
        return config


PT = {"model.pt": _scale_pt}

LOADS: tuple[LoadCase, ...] = (
    LoadCase(
        "truncated_pt",
        {"model.pt": _truncated_pt},
        ("cannot load", "model.pt' as TorchScript: it is a truncated or damaged zip archive"),
    ),
    LoadCase(
        "state_dict_as_torchscript",
        {"model.pt": _state_dict_pt},
        ("as TorchScript: it is a torch.save checkpoint (zip), not a compiled model",),
    ),
    LoadCase(
        "torchscript_as_pt2",
        {"model.pt2": _scale_pt},
        ("is a TorchScript archive (torch.jit.save)", "expected an AOTInductor package"),
        platform="torch_aoti",
    ),
    LoadCase(
        "garbage_as_pt2",
        {"model.pt2": lambda: b"not a package\n" * 8},
        ("is not a zip archive", "expected an AOTInductor package"),
        platform="torch_aoti",
    ),
    LoadCase(
        "aoti_for_another_device",
        {"model.pt2": lambda: _package_for("cuda")},
        ("was compiled for CUDA, but CUDA is not available",),
        platform="torch_aoti",
    ),
    LoadCase(
        "path_traversal_default_model_filename",
        PT,
        ("model file name '../../calc/1/model.py' leaves the version directory",),
        extra={"default_model_filename": "../../calc/1/model.py"},
    ),
    LoadCase(
        "absolute_default_model_filename",
        PT,
        ("model file name '/etc/passwd' is absolute",),
        extra={"default_model_filename": "/etc/passwd"},
    ),
    LoadCase(
        "bad_bool",
        PT,
        ("parameter 'INFERENCE_MODE' has invalid value 'maybe': expected a boolean",),
        {"INFERENCE_MODE": "maybe"},
    ),
    LoadCase(
        "bad_thread_count",
        PT,
        ("parameter 'INTRA_OP_THREAD_COUNT' has invalid value '4abc': expected a non-negative",),
        {"INTRA_OP_THREAD_COUNT": "4abc"},
    ),
    LoadCase(
        "negative_thread_count",
        PT,
        ("parameter 'INTER_OP_THREAD_COUNT' has invalid value '-2': expected a non-negative",),
        {"INTER_OP_THREAD_COUNT": "-2"},
    ),
    LoadCase(
        "thread_count_overflow",
        PT,
        ("'NUM_THREADS' has invalid value '99999999999': expected an integer no larger than",),
        {"NUM_THREADS": "99999999999"},
    ),
    LoadCase(
        "alias_conflict",
        PT,
        ("two spellings of one setting with different values",),
        {"INTRA_OP_THREAD_COUNT": "2", "NUM_THREADS": "3"},
    ),
    LoadCase(
        "grad_contradiction",
        PT,
        ("'ENABLE_GRAD' = 'true' and 'INFERENCE_MODE' = 'true' contradict each other",),
        {"ENABLE_GRAD": "true", "INFERENCE_MODE": "true"},
    ),
    LoadCase(
        "compile_options_not_json",
        PT,
        ("TORCH_COMPILE_OPTIONAL_PARAMETERS",),
        {"TORCH_COMPILE_OPTIONAL_PARAMETERS": "{not json"},
    ),
    LoadCase(
        "compile_options_wrong_type",
        PT,
        ("TORCH_COMPILE_OPTIONAL_PARAMETERS", "fullgraph"),
        {"TORCH_COMPILE_OPTIONAL_PARAMETERS": '{"fullgraph": "yes"}'},
    ),
    LoadCase(
        "model_filename_with_path",
        PT,
        ("parameter 'MODEL_FILENAME' has invalid value '../model.pt': expected a plain file name",),
        {"MODEL_FILENAME": "../model.pt"},
    ),
    LoadCase(
        "module_filename_not_py",
        PT,
        ("parameter 'MODULE_FILENAME' has invalid value 'net.txt'", "ending in '.py'"),
        {"MODULE_FILENAME": "net.txt"},
    ),
    LoadCase(
        "module_class_not_identifier",
        PT,
        ("parameter 'MODULE_CLASS' has invalid value 'not-a-class': expected a Python class",),
        {"MODULE_CLASS": "not-a-class"},
    ),
    LoadCase(
        "missing_custom_op_library",
        PT,
        ("CUSTOM_OP_LIBRARIES", "libmissing_ops.so"),
        {"CUSTOM_OP_LIBRARIES": "libmissing_ops.so"},
    ),
    LoadCase(
        "world_writable_version_directory",
        PT,
        ("REFUSE_WRITABLE_MODEL_DIRECTORY is true and", "/1' (mode 777)", "world-writable"),
        {"REFUSE_WRITABLE_MODEL_DIRECTORY": "true"},
        world_writable=True,
    ),
)
