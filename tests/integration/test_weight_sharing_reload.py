"""ENABLE_WEIGHT_SHARING across repeated unload / reload under request load (explicit mode).

A TorchScript model with two KIND_CPU instances and weight sharing is loaded and unloaded many
times through the repository API while two client threads keep sending requests. After every
load the shared weights file must already be gone from ``/dev/shm`` (both instances mapped it, so
the second one unlinked it) while both stubs still map it; after every unload the model's stubs
must exit; at the end the server must stop cleanly (exit code 0) and leave no file of the model
behind. The only waits are generous deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from pytorch_backend.runtime.weight_sharing import Owner, file_stem, weights_key
from tests import server_procs as procs
from tests.client_utils import InferenceServerException, client, make_inputs, write_model
from tests.server_procs import diagnose, mapped_weight_files, server_stubs

pytestmark = pytest.mark.slow
MODEL = "ws_reload"
CYCLES = 8
DEADLINE = 120.0  # seconds for anything to happen (load, unload, stubs to exit)
SHM = Path("/dev/shm")
WIDTH = 512

# What a request may legitimately be answered while its model is unloaded or not loaded yet.
TOLERATED = re.compile(
    r"unknown model|is not found|no available versions|unavailable|not ready|unloading",
    re.IGNORECASE,
)


class Tanh4(torch.nn.Module):
    """Four bias-free 512x512 linear layers (4 MiB of FP32 weights), tanh between them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


CONFIG = f"""
name: "{MODEL}" backend: "pytorch_python" max_batch_size: 4
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
instance_group [ {{ kind: KIND_CPU count: 2 }} ]
parameters {{ key: "ENABLE_WEIGHT_SHARING" value: {{ string_value: "true" }} }}
"""


def model_stubs(server_pid: int, repo: Path) -> dict[int, str]:
    """``{pid: instance name}`` of the server's Python-backend stubs serving MODEL."""
    return server_stubs(server_pid, repo / MODEL / "1" / "model.py")


def model_state(running) -> str | None:
    """The model's state in the repository index (None if the index did not answer in time)."""
    try:
        return running.model(MODEL).state
    except OSError:
        return None


def wait_for(condition, what: str, details=lambda: "") -> None:
    try:
        procs.wait_for(condition, what, details, DEADLINE)
    except procs.WaitTimeout as timeout:
        pytest.fail(str(timeout), pytrace=False)


class Load:
    """Client threads sending requests in a loop; counts successes, keeps unexpected errors."""

    def __init__(self, running, x: np.ndarray, expected: np.ndarray) -> None:
        self.running, self.x, self.expected = running, x, expected
        self.ok = 0
        self.tolerated = 0
        self.unexpected: list[str] = []
        self.kinds: set[str] = set()  # tolerated error messages seen (digits masked)
        self.wrong = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, args=(p,), name=f"load-{p}", daemon=True)
            for p in ("http", "grpc")
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=DEADLINE)

    def _loop(self, protocol: str) -> None:
        conn = client(protocol, self.running)  # one connection per thread, closed at the end
        try:
            inputs = make_inputs(protocol, {"x": self.x})
            while not self._stop.is_set():
                try:
                    y = conn.infer(MODEL, inputs).as_numpy("y")
                except InferenceServerException as exc:
                    self._error(protocol, str(exc), TOLERATED.search(str(exc)) is not None)
                    continue
                except Exception as exc:  # noqa: BLE001 - reported by the test, not raised here
                    self._error(protocol, f"{type(exc).__name__}: {exc}", False)
                    continue
                with self._lock:
                    self.ok += 1
                    if y is None or not np.allclose(y, self.expected, rtol=1e-4, atol=1e-5):
                        self.wrong += 1
        finally:
            conn.close()

    def _error(self, protocol: str, message: str, tolerated: bool) -> None:
        with self._lock:
            if tolerated:
                self.tolerated += 1
                self.kinds.add(re.sub(r"\d+", "N", message)[:160])
            else:
                self.unexpected.append(f"{protocol}: {message}")
        self._stop.wait(0.02)


def test_unload_and_reload_under_load_leaves_nothing_behind(triton, tmp_path):
    module = Tanh4().eval()
    x = np.random.default_rng(3).standard_normal((2, WIDTH)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    artifact = tmp_path / "model.pt"
    torch.jit.script(module).save(str(artifact))
    repo = tmp_path / "repo"
    write_model(repo, MODEL, CONFIG, {"1/model.pt": artifact})
    running = triton(repo, extra_args=("--model-control-mode=explicit",))
    server_pid = running.server.pid
    # The instances name their file after this key (model, version, artifact path and stat)
    # and their server.
    key = weights_key(MODEL, "1", repo / MODEL / "1" / "model.pt")
    stem = file_stem(key, Owner.of(server_pid))

    def model_files() -> list[str]:
        return sorted(p.name for p in SHM.glob(f"{stem}*"))

    control = httpclient.InferenceServerClient(
        running.http_url, connection_timeout=DEADLINE, network_timeout=DEADLINE
    )
    try:
        with Load(running, x, expected) as load:
            for cycle in range(CYCLES):
                control.load_model(MODEL)
                assert control.is_model_ready(MODEL), f"cycle {cycle}: not ready after load"
                stubs = model_stubs(server_pid, repo)
                assert sorted(stubs.values()) == [f"{MODEL}_0_0", f"{MODEL}_0_1"], stubs
                # Both instances map one weights file, which the second to map it unlinked.
                maps = [mapped_weight_files(pid) for pid in stubs]
                assert len(maps[0]) == 1 and maps[0] == maps[1], maps
                (mapping,) = maps[0]
                assert Path(mapping.removesuffix(" (deleted)")).name.startswith(stem), mapping
                assert mapping.endswith(" (deleted)"), mapping
                assert model_files() == [], f"cycle {cycle}: left in /dev/shm while loaded"

                # Unload while requests are being served: wait for one answered in this cycle.
                answered = load.ok
                wait_for(lambda n=answered: load.ok > n, f"cycle {cycle}: no request answered")
                control.unload_model(MODEL)
                wait_for(
                    lambda: not model_stubs(server_pid, repo),
                    f"cycle {cycle}: the model's stubs did not exit after unload",
                    lambda: diagnose(model_stubs(server_pid, repo)),
                )
                wait_for(
                    lambda: model_state(running) not in (None, "READY", "UNLOADING"),
                    f"cycle {cycle}: the model did not finish unloading",
                    lambda: f"state: {model_state(running)}",
                )
                assert model_files() == [], f"cycle {cycle}: left in /dev/shm after unload"
        print(f"requests: {load.ok} answered, {load.tolerated} refused while unloaded:")
        print("\n".join(sorted(load.kinds)))
        assert load.unexpected == [], load.unexpected[:5]
        assert load.wrong == 0
        assert load.ok >= CYCLES
        log = running.log_text()
        assert log.count("(mapped by all of 2 instances: unlinked)") == CYCLES
    finally:
        control.close()  # an open HTTP connection would hold up the server's shutdown
        code = running.stop()
        leftovers = model_files()
        for name in leftovers:  # never litter /dev/shm, even when failing
            (SHM / name).unlink(missing_ok=True)
    assert code == 0, f"tritonserver exited with {code}\n{running.server.log_tail()}"
    assert leftovers == []
