"""bench/gpu_bundle.py: the trimmed server bundle holds what it loads, fits, and serves here.

The bundle is built without the site packages (no download) for the GPU machine's stub (3.12)
and this Python's, with this Python's libpython as the fallback, and cached under
``.test-artifacts/gpu-bundle/`` (about 2 minutes the first time). A tritonserver started from the
unpacked copy, with an ``LD_LIBRARY_PATH`` that points only into it, serves a TorchScript model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pytorch_backend.serving.server import TritonServer, assemble_backends
from tests import prerequisites
from tests.client_utils import client, make_inputs
from tests.integration.conftest import _free_ports

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import gpu_bundle  # noqa: E402

RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"
SYSTEM = re.compile(
    r"(ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libresolv|libgcc_s|libstdc\+\+|libz)"
    r"\.so\.\d+|libpython3\.\d+\.so\.1\.0"
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[dict, Path]:
    try:
        root = gpu_bundle.wheel_server_root()
    except gpu_bundle.BundleError as error:
        prerequisites.missing("tritonserver wheel", str(error))
    import importlib.metadata

    key = hashlib.sha256(
        Path(gpu_bundle.__file__).read_bytes()
        + f"{importlib.metadata.version('nvidia-pytriton')} {RUNNING} {root}".encode()
    ).hexdigest()[:16]
    cache = REPO / ".test-artifacts" / "gpu-bundle" / key
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / "MANIFEST.json").is_file():
            shutil.rmtree(cache, ignore_errors=True)
            gpu_bundle.build(cache, sorted({"3.12", RUNNING}), site=False, python_version=RUNNING)
    manifest = json.loads((cache / "MANIFEST.json").read_text())
    unpacked = tmp_path_factory.mktemp("bundle")
    subprocess.run(
        ["tar", "-xJf", str(cache / gpu_bundle.ARCHIVE), "-C", str(unpacked)], check=True
    )
    return manifest, unpacked


def test_bundle_holds_the_server_the_python_backend_the_stubs_and_what_they_load(bundle):
    manifest, unpacked = bundle
    server = unpacked / "server" / "pytriton" / "tritonserver"
    for name in ("bin/tritonserver", "backends/python/libtriton_python.so"):
        assert (server / name).is_file(), name
    assert (server / "backends/python/triton_python_backend_utils.py").is_file()
    stubs = sorted(p.parent.name for p in server.glob("python_backend_stubs/*/" + gpu_bundle.STUB))
    assert stubs == sorted({"3.12", RUNNING})
    libs = unpacked / "server" / "nvidia_pytriton.libs"
    bundled = sorted(p.name for p in libs.iterdir())
    assert bundled == manifest["server"]["libraries"]
    wheel_libs = gpu_bundle.wheel_server_root().parent.parent / "nvidia_pytriton.libs"
    assert len(bundled) < len(list(wheel_libs.iterdir()))  # trimmed: the 3.13 libpython stays
    elves = [server / "bin/tritonserver", server / "backends/python/libtriton_python.so"]
    elves += [*server.glob("python_backend_stubs/*/" + gpu_bundle.STUB), *libs.iterdir()]
    for elf in elves:
        for soname in gpu_bundle.needed(elf):
            assert soname in bundled or SYSTEM.fullmatch(soname), (elf.name, soname)
    assert (unpacked / "libpython" / f"libpython{RUNNING}.so.1.0").is_file()


def test_bundle_with_the_site_packages_fits_the_carry_limit(bundle):
    manifest, _ = bundle
    carried = manifest["archive_bytes"] + gpu_bundle.working_tree_bytes()
    assert carried + gpu_bundle.SITE_ALLOWANCE <= gpu_bundle.CARRY_LIMIT, carried


class Triple(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3


def test_a_server_from_the_unpacked_bundle_serves_a_model(bundle, tmp_path):
    _, unpacked = bundle
    binary = unpacked / "server" / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    repo = tmp_path / "repo"
    (repo / "triple" / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(Triple()), str(repo / "triple" / "1" / "model.pt"))
    (repo / "triple" / "config.pbtxt").write_text(
        'name: "triple" backend: "pytorch_python" max_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )
    only_bundle = f"{unpacked / 'server' / 'nvidia_pytriton.libs'}:{unpacked / 'libpython'}"
    http, grpc, metrics = _free_ports(3)
    server = TritonServer(
        repo,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log=tmp_path / "server.log",
        server=binary,
        backend_directory=assemble_backends(tmp_path / "backends", binary),
        extra_args=["--exit-timeout-secs=5"],
        env_overrides={"LD_LIBRARY_PATH": only_bundle},
        strip_locale=True,
    )
    assert server.environment()["LD_LIBRARY_PATH"] == only_bundle
    with server:
        statuses = server.wait_ready(timeout=180)
        assert [(m.name, m.state) for m in statuses] == [("triple", "READY")], statuses

        class Running:
            http_url = f"localhost:{http}"

        x = np.array([[1.0, -2.0], [0.5, 4.0]], dtype=np.float32)
        result = client("http", Running).infer("triple", make_inputs("http", {"x": x}))
        np.testing.assert_array_equal(result.as_numpy("y"), x * 3)
        maps = Path(f"/proc/{server.pid}/maps").read_text()
    loaded = {line.split()[-1] for line in maps.splitlines() if "libtritonserver" in line}
    assert loaded and all(path.startswith(str(unpacked)) for path in loaded), loaded
