"""The benchmark's two models, their artifacts, the hand-written model.py files and the repository.

Each model's source is one module file (one ``nn.Module`` subclass, constructible without
arguments) written under ``.test-artifacts/bench/``: the bench imports it for raw torch and the
references, scripts it for TorchScript, exports and compiles it for AOT-Inductor (cached), and
copies it as the eager runtime's module file, so every variant runs the same code and weights.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".test-artifacts" / "bench"
MAX_BATCH = 64
SEED = 0
INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"

MLP_SOURCE = '''\
"""Overhead-bound: Linear 256->1024, ReLU, Linear 1024->256."""

import torch


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(256, 1024)
        self.fc2 = torch.nn.Linear(1024, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))
'''

CNN_SOURCE = '''\
"""Compute-bound: a stride-2 stem and three residual 3x3 conv blocks on 3x64x64, pooled to 10."""

import torch


class CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        width = 32
        self.stem = torch.nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.first = torch.nn.ModuleList(
            [torch.nn.Conv2d(width, width, 3, padding=1) for _ in range(3)]
        )
        self.second = torch.nn.ModuleList(
            [torch.nn.Conv2d(width, width, 3, padding=1) for _ in range(3)]
        )
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        for first, second in zip(self.first, self.second):
            y = torch.relu(y + second(torch.relu(first(y))))
        return self.head(y.mean(dim=(2, 3)))
'''


@dataclass(frozen=True)
class BenchModel:
    """One of the two benchmarked networks: its module source and its I/O shapes (no batch)."""

    name: str
    class_name: str
    source: str
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (variant, why it is not run)

    def variants(self, wanted: list[str]) -> list[str]:
        """The variants of ``wanted`` this model runs."""
        skipped = {variant for variant, _ in self.skipped}
        return [v for v in wanted if v not in skipped]

    def digest(self) -> str:
        key = f"{self.source}\n{MAX_BATCH},{SEED},{torch.__version__}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def module_file(self) -> Path:
        """The source written once under the cache (keyed by its content)."""
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        path = CACHE_DIR / f"{self.name}-{self.digest()}.py"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(self.source)
            os.replace(tmp, path)
        return path

    def make(self) -> torch.nn.Module:
        """The module with weights fixed by ``SEED``, in eval mode."""
        path = self.module_file()
        spec = importlib.util.spec_from_file_location(f"_bench_{self.name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.manual_seed(SEED)
        return getattr(module, self.class_name)().eval()

    def example(self, batch: int, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *self.input_dims), generator=generator)


MODELS = {
    "mlp": BenchModel("mlp", "MLP", MLP_SOURCE, (256,), (256,)),
    "cnn": BenchModel(
        "cnn",
        "CNN",
        CNN_SOURCE,
        (3, 64, 64),
        (10,),
        skipped=(
            (
                "pt2",
                "Inductor adds batch-range guards while lowering the convolutions (the fake "
                "conv's backend choice guards `batch < 16`; a package exported with "
                "`Dim(min=1, max=64)` and a batch-4 example accepts only batches 2 to 15), so "
                "no single package serves batch 1 to 64; the backend refuses max_batch_size 64",
            ),
        ),
    ),
}


# --------------------------------------------------------------------------- artifacts


def build_torchscript(model: BenchModel, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model.make()), str(path))
    return path


def build_eager(model: BenchModel, directory: Path) -> None:
    """The eager runtime's files: the module file and its state dict (as the packager writes)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.py").write_text(model.source)
    torch.save(model.make().state_dict(), str(directory / "model.pt"))


def build_aoti(model: BenchModel) -> Path:
    """An AOT-Inductor package with a dynamic batch dim, compiled once and cached (~30 s)."""
    path = CACHE_DIR / f"{model.name}-{model.digest()}.pt2"
    if path.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{model.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        print(f"compiling the {model.name} AOT-Inductor package once (about 30 s)...", flush=True)
        from torch._inductor import aoti_compile_and_package

        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        program = torch.export.export(
            model.make(), (model.example(4),), dynamic_shapes={"x": {0: batch}}
        )
        tmp = CACHE_DIR / f".{model.name}-{model.digest()}.{os.getpid()}.tmp.pt2"
        aoti_compile_and_package(program, package_path=str(tmp))
        os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- hand-written model.py

NAIVE_MODEL_PY = textwrap.dedent(
    '''\
    """What a user writes by hand: one forward per request, through NumPy both ways."""

    import json
    from pathlib import Path

    import torch
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            parameters = json.loads(args["model_config"]).get("parameters", {})
            threads = parameters.get("BENCH_THREADS", {}).get("string_value")
            if threads:  # the benchmark's equal-threads footing; unset: torch's default
                torch.set_num_threads(int(threads))
            path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
            gpu = args.get("model_instance_kind") == "GPU"
            self.device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
            self.model = torch.jit.load(str(path), map_location=self.device)
            self.model.eval()

        def execute(self, requests):
            responses = []
            for request in requests:
                array = pb_utils.get_input_tensor_by_name(request, "INPUT__0").as_numpy()
                x = torch.from_numpy(array).to(self.device)
                with torch.no_grad():
                    out = self.model(x)
                tensor = pb_utils.Tensor("OUTPUT__0", out.cpu().numpy())
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            return responses
    '''
)

LEAN_MODEL_PY = textwrap.dedent(
    '''\
    """A careful hand-written model.py: DLPack in, one cat, one forward, DLPack out, split."""

    import json
    from pathlib import Path

    import torch
    import triton_python_backend_utils as pb_utils
    from torch.utils.dlpack import to_dlpack


    class TritonPythonModel:
        def initialize(self, args):
            parameters = json.loads(args["model_config"]).get("parameters", {})
            threads = parameters.get("BENCH_THREADS", {}).get("string_value")
            if threads:  # the benchmark's equal-threads footing; unset: torch's default
                torch.set_num_threads(int(threads))
            path = Path(args["model_repository"]) / args["model_version"] / "model.pt"
            gpu = args.get("model_instance_kind") == "GPU"
            self.device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
            self.model = torch.jit.load(str(path), map_location=self.device).eval()

        def execute(self, requests):
            inputs = [
                torch.from_dlpack(pb_utils.get_input_tensor_by_name(r, "INPUT__0").to_dlpack())
                for r in requests
            ]
            sizes = [x.shape[0] for x in inputs]
            with torch.inference_mode():
                batch = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
                out = self.model(batch.to(self.device))
            return [
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor.from_dlpack("OUTPUT__0", to_dlpack(piece))]
                )
                for piece in out.split(sizes)
            ]
    '''
)

EMPTY_MODEL_PY = textwrap.dedent(
    '''\
    """The ceiling of the Python-backend path: no torch, no compute, cached zeros per request."""

    import json

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            dims = [int(d) for d in config["output"][0]["dims"]]
            self.zeros = np.zeros([1, *dims], dtype=np.float32)

        def execute(self, requests):
            return [
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT__0", self.zeros)]
                )
                for _ in requests
            ]
    '''
)


# --------------------------------------------------------------------------- repository


@dataclass(frozen=True)
class Variant:
    """One served way of running a model (``raw`` is the in-process reference, not served)."""

    key: str
    description: str
    served: bool = True


VARIANTS = (
    Variant("ts", "ours, TorchScript"),
    Variant("pt2", "ours, .pt2 (AOT-Inductor)"),
    Variant("eager", "ours, eager runtime (nn.Module)"),
    Variant("naive", "naive model.py (as_numpy, loop)"),
    Variant("lean", "lean model.py (DLPack, cat)"),
    Variant("empty", "empty model.py (ceiling)"),
    Variant("raw", "raw torch in-process", served=False),
)
VARIANT_KEYS = tuple(v.key for v in VARIANTS)


def served_name(model: BenchModel, variant: str) -> str:
    return f"{model.name}_{variant}"


OURS = ("ts", "pt2", "eager")
HAND_WRITTEN = ("naive", "lean")  # the model.py files that run torch


def threads_parameter(variant: str, threads: int | None) -> str | None:
    """The ``parameters`` entry that sets ``threads`` intra-op threads (None: defaults)."""
    if threads is None or variant not in (*OURS, *HAND_WRITTEN):
        return None
    key = "INTRA_OP_THREAD_COUNT" if variant in OURS else "BENCH_THREADS"
    return f'parameters {{ key: "{key}" value: {{ string_value: "{threads}" }} }}'


def config_text(
    model: BenchModel,
    variant: str,
    eager_compile: str,
    kind: str = "cpu",
    threads: int | None = None,
) -> str:
    """``config.pbtxt``: batch-1 requests, dynamic batching, one instance of ``kind``.

    ``threads`` (the equal-threads footing): ours get ``INTRA_OP_THREAD_COUNT``, the naive and
    lean model.py files ``BENCH_THREADS`` (they call ``torch.set_num_threads`` with it).
    """
    backend = "pytorch_python" if variant in OURS else "python"
    lines = [f'name: "{served_name(model, variant)}"', f'backend: "{backend}"']
    if variant == "pt2":
        lines.append('platform: "torch_aoti"')
    elif variant == "ts":
        lines.append('platform: "pytorch_libtorch"')
    lines += [
        f"max_batch_size: {MAX_BATCH}",
        f'input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: {list(model.input_dims)} }} ]',
        f'output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: {list(model.output_dims)} }} ]',
        f"instance_group [ {{ kind: KIND_{kind.upper()} count: 1 }} ]",
        "dynamic_batching { }",
    ]
    if variant == "eager":
        lines.append(
            f'parameters {{ key: "TORCH_COMPILE_OPTIONAL_PARAMETERS" value: {{ string_value: '
            f'"{eager_compile.replace(chr(34), chr(92) + chr(34))}" }} }}'
        )
    parameter = threads_parameter(variant, threads)
    if parameter is not None:
        lines.append(parameter)
    return "\n".join(lines) + "\n"


def write_repository(
    root: Path,
    models: list[BenchModel],
    variants: list[str],
    eager_compile: str,
    kind: str = "cpu",
    threads: int | None = None,
) -> list[str]:
    """One model directory per (model, served variant) under ``root``; returns the names."""
    names = []
    for model in models:
        scripted = build_torchscript(model, root.parent / f"{model.name}.pt")
        for variant in model.variants(variants):
            if variant == "raw":
                continue
            name = served_name(model, variant)
            version = root / name / "1"
            version.mkdir(parents=True)
            config = config_text(model, variant, eager_compile, kind, threads)
            (root / name / "config.pbtxt").write_text(config)
            if variant == "pt2":
                (version / "model.pt2").write_bytes(build_aoti(model).read_bytes())
            elif variant == "eager":
                build_eager(model, version)
            elif variant != "empty":
                (version / "model.pt").write_bytes(scripted.read_bytes())
            hand_written = {"naive": NAIVE_MODEL_PY, "lean": LEAN_MODEL_PY, "empty": EMPTY_MODEL_PY}
            if variant in hand_written:
                (version / "model.py").write_text(hand_written[variant])
            names.append(name)
    return names
