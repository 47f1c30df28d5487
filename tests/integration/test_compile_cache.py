"""``COMPILE_CACHE`` through a real tritonserver (one server at a time).

Every server gets ``PYTORCH_BACKEND_COMPILE_CACHE`` and ``TORCHINDUCTOR_CACHE_DIR`` under the
test's tmp folder, so nothing is written into the checkout or ``$HOME``.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from tests.client_utils import PROTOCOLS, infer, write_model
from tests.server_procs import server_stubs, wait_for
from tests.unit.test_compile_cache import MODULE, package_affine

CONFIG = """
name: "affine"
backend: "pytorch_python"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [4] }]
instance_group [{ kind: KIND_CPU count: 1 }]
parameters { key: "COMPILE_CACHE" value { string_value: "%s" } }
"""

EXIT_TIMEOUT = "--exit-timeout-secs=120"  # a stub finalizing on a loaded machine takes > 5 s


def environment(tmp: Path, writable: Path) -> dict[str, str]:
    return {
        "PYTORCH_BACKEND_COMPILE_CACHE": str(writable),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor"),
    }


def check_answers(server, model: str, input_name: str = "x") -> None:
    x = np.array([[1, -2, 3, -4], [0.5, 0, -1, 2]], dtype=np.float32)
    for protocol in PROTOCOLS:
        (y,) = infer(protocol, server, model, {input_name: x}).values()
        np.testing.assert_allclose(y, np.maximum(x * 3, 0) + 1)


def test_reload_restores_from_the_writable_cache_and_a_corrupt_entry_is_not_fatal(triton, tmp_path):
    writable = tmp_path / "writable"
    repo = tmp_path / "repo"
    write_model(repo, "affine", CONFIG % writable, {"1/model.py": MODULE.encode()})
    server = triton(
        repo,
        extra_args=("--model-control-mode=explicit", EXIT_TIMEOUT),
        env_overrides=environment(tmp_path, tmp_path / "unused"),
    )
    client = httpclient.InferenceServerClient(
        server.http_url, connection_timeout=900.0, network_timeout=900.0
    )

    def load_and_check() -> None:
        client.load_model("affine")
        check_answers(server, "affine")
        client.unload_model("affine")
        # the unload call returns before the stub has finished: wait for it to exit
        pid = server.server.pid
        wait_for(lambda: not server_stubs(pid), "the model's stub exits", deadline=300)

    try:
        load_and_check()
        log = server.log_text()
        assert "compiling afresh" in log and "compile cache: saved" in log
        (entry,) = writable.glob("*.bin")
        load_and_check()
        assert f"compile cache: restored '{entry}'" in server.log_text()
        entry.write_bytes(b"not an artifact")
        before = server.log_text().count("compile cache: no entry")
        load_and_check()  # loads, compiles afresh, answers right
        log = server.log_text()
        assert "cannot restore" in log or "holds no artifacts" in log
        assert log.count("compile cache: no entry") == before + 1
    finally:
        client.close()
    assert server.stop() == 0, server.log_text()[-4000:]


def test_packaged_model_loads_warm_in_a_fresh_server(triton, tmp_path):
    repo, writable = tmp_path / "repo", tmp_path / "writable"
    package_affine(tmp_path, repo, "packaged")
    packaged = repo / "packaged" / "1" / "compile_cache"
    (entry,) = packaged.glob("*.bin")
    kernels = {p.name for p in packaged.rglob("*.so")}
    tree = [repo, *repo.rglob("*")]
    for path in tree:  # a read-only model repository
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        env = environment(tmp_path, writable)
        server = triton(repo, env_overrides=env, extra_args=(EXIT_TIMEOUT,), timeout=900.0)
        assert f"compile cache: restored '{entry}'" in server.log_text()
        assert "packaged inductor file(s) copied" in server.log_text()
        check_answers(server, "packaged")
        assert server.stop() == 0
    finally:
        for path in tree:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    # every C++ kernel came from the package: none was compiled again
    assert {p.name for p in (tmp_path / "inductor").rglob("*.so")} == kernels
    assert not list(writable.glob("*.bin"))  # restored entries are not saved again
