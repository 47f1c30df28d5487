"""Lifecycle harness: models reloaded under load, and a server killed under load.

    .venv/bin/python -m tests.soak.lifecycle --cycles 500 --minutes 90 --json lifecycle.json
    .venv/bin/python -m tests.soak.lifecycle --cycles 0 --kill     # only the SIGKILL check

A tritonserver in explicit model-control mode serves four TorchScript models with their
parameters at their defaults (custom metrics on): ``alpha`` and ``beta`` (``pytorch_python``,
one instance each), ``gamma`` (the same MLP served drop-in: ``backend: "python"`` with our
``model.py`` in its version directory) and ``versioned`` (``y = x * k + 1`` where ``k`` is the
version, 1 or 2, the version policy picking one). Two closed-loop clients per model, one over HTTP
and one over gRPC, send requests all the time and check every answer against a reference.

The harness makes its repository (load/unload) calls over gRPC: over HTTP, tritonserver 2.51 runs
each on an HTTP worker thread until the load ends, so the HTTP clients served by that worker stall
for seconds (server #8958; ``--control http`` and ``tests/soak/control_stall.py`` show it).

Each cycle is one of, in turn and with random pauses of 0-50 ms between the steps:

* ``single``: unload one of alpha, beta and gamma, and load it again at once;
* ``several``: unload alpha, beta and gamma together, and load them again together;
* ``version``: switch ``versioned`` to its other version through its config and a load.

After every cycle: the server is alive, every model answers right, no answer was ever wrong, no
request to a model outside the cycle failed, the ``pytorch_backend_requests_answered_total``
counters of the models outside the cycle grew, and the server log has no abort (glibc heap
messages, ``Signal (6)``/``(11)``). At the end the server must stop with exit code 0 and leave no
stub. ``--kill`` then starts a server under load, kills it with SIGKILL and checks that none of
its stubs is alive 5 s later, that none of their shared-memory regions is left in ``/dev/shm``
and that a new server starts on the same ports. Prints a JSON summary; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from tests.client_utils import write_model  # noqa: E402
from tests.server_procs import alive, diagnose, server_stubs, stub_regions, wait_for  # noqa: E402
from tests.soak.models import WIDTH, PoisonedMLP, mlp_reference  # noqa: E402

MLPS = ("alpha", "beta", "gamma")
MODELS = (*MLPS, "versioned")
#: What a server log must never hold: glibc's heap checks and the server's fatal-signal line.
ABORT = re.compile(
    r"malloc|free\(\)|corrupted|double free|tcache|fastbin|Signal \((?:6|11|7|4)\) received|"
    r"Segmentation fault|core dumped"
)
ANSWERED = "pytorch_backend_requests_answered_total"


class Affine(torch.nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + 1.0


def _config(name: str, backend: str, extra: str = "") -> str:
    return (
        f'name: "{name}" backend: "{backend}" max_batch_size: 8\n'
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]\n'
        f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]\n'
        "dynamic_batching { }\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n" + extra
    )


def _policy(version: int) -> str:
    return f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}\n"


def build_repository(repo: Path) -> Path:
    """Write the four models into ``repo``."""
    from pytorch_backend.serving.install import _package_model_file

    artifacts = repo.parent / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    mlp = artifacts / "mlp.pt"
    torch.jit.script(PoisonedMLP()).save(str(mlp))
    for name in ("alpha", "beta"):
        write_model(repo, name, _config(name, "pytorch_python"), {"1/model.pt": mlp})
    adapter = _package_model_file()
    write_model(
        repo, "gamma", _config("gamma", "python"), {"1/model.pt": mlp, "1/model.py": adapter}
    )
    files = {}
    for version in (1, 2):
        path = artifacts / f"affine{version}.pt"
        torch.jit.script(Affine(float(version))).save(str(path))
        files[f"{version}/model.pt"] = path
    write_model(repo, "versioned", _config("versioned", "pytorch_python", _policy(1)), files)
    return repo


def reference(model: str, x: np.ndarray, version: int) -> np.ndarray:
    return x * version + 1.0 if model == "versioned" else mlp_reference(x)


class Load:
    """Closed-loop clients, one HTTP and one gRPC per model, checking every answer."""

    def __init__(self, http_url: str, grpc_url: str) -> None:
        self.urls = {"http": http_url, "grpc": grpc_url}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered: Counter = Counter()
        self.by_protocol: Counter = Counter()  # "model/http" -> answers
        self.errors: dict[str, list[str]] = {m: [] for m in MODELS}
        self.wrong: list[str] = []
        self.versions = {1, 2}  # answers of `versioned` may come from either while it switches
        self.threads = [
            threading.Thread(target=self._loop, args=(m, p), daemon=True, name=f"{m}-{p}")
            for m in MODELS
            for p in ("http", "grpc")
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def take_errors(self) -> dict[str, list[str]]:
        with self.lock:
            taken, self.errors = self.errors, {m: [] for m in MODELS}
        return taken

    def _loop(self, model: str, protocol: str) -> None:
        module = httpclient if protocol == "http" else grpcclient
        if protocol == "http":
            client = module.InferenceServerClient(self.urls[protocol], network_timeout=120)
            call = {}
        else:
            client = module.InferenceServerClient(self.urls[protocol])
            call = {"client_timeout": 120}
        rng = np.random.default_rng(abs(hash((model, protocol))) % 2**32)
        try:
            while not self.stop.is_set():
                x = rng.uniform(-1, 1, (int(rng.integers(1, 5)), WIDTH)).astype(np.float32)
                item = module.InferInput("x", list(x.shape), "FP32")
                item.set_data_from_numpy(x)
                try:
                    y = client.infer(model, [item], **call).as_numpy("y")
                except Exception as exc:  # noqa: BLE001 - every failure is recorded
                    with self.lock:
                        self.errors[model].append(f"{protocol}: {str(exc)[:200]}")
                    time.sleep(0.01)
                    continue
                versions = self.versions if model == "versioned" else {1}
                good = any(
                    np.allclose(y, reference(model, x, v), rtol=1e-4, atol=1e-5) for v in versions
                )
                with self.lock:
                    self.answered[model] += 1
                    self.by_protocol[f"{model}/{protocol}"] += 1
                    if not good:
                        self.wrong.append(f"{model} over {protocol}: {y[0, :3]} for {x[0, :3]}")
        finally:
            client.close()


def scrape_answered(metrics_url: str) -> dict[tuple[str, str], float]:
    """``pytorch_backend_requests_answered_total`` per (model, series labels)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    series = {}
    for line in text.splitlines():
        if line.startswith(ANSWERED + "{"):
            labels, value = line.rsplit(" ", 1)
            model = re.search(r'model="([^"]+)"', labels)
            if model:
                series[(model[1], labels)] = float(value)
    return series


def grown(before: dict, after: dict, model: str) -> bool:
    """Whether a series of ``model`` present in both scrapes grew (the series of an instance
    replaced in an earlier cycle may vanish meanwhile, when its stub finally exits)."""
    return any(after[key] > before[key] for key in before.keys() & after.keys() if key[0] == model)


class Harness:
    """Runs the cycles against one server and collects what went wrong."""

    def __init__(
        self, server, repo: Path, log_path: Path, seed: int, control: str = "grpc"
    ) -> None:
        self.server, self.repo, self.log_path = server, repo, log_path
        self.control = control  # the protocol of the repository (load/unload) calls
        self.http = httpclient.InferenceServerClient(
            f"localhost:{server.http_port}", connection_timeout=300, network_timeout=300
        )
        self.metrics_url = f"http://localhost:{server.metrics_port}/metrics"
        self.rng = random.Random(seed)
        self.version = 1
        self.log_offset = 0
        self.failures: list[str] = []
        self.kinds: Counter = Counter()
        self.tolerated: Counter = Counter()

    def pause(self) -> None:
        time.sleep(self.rng.uniform(0, 0.05))

    def _reload(self, models: tuple[str, ...]) -> None:
        with ThreadPoolExecutor(len(models)) as pool:
            list(pool.map(self._unload, models))
        self.pause()
        with ThreadPoolExecutor(len(models)) as pool:
            list(pool.map(self._load, models))

    def _load(self, model: str) -> None:
        self._repository_call(model, "load_model")

    def _unload(self, model: str) -> None:
        self._repository_call(model, "unload_model")

    def _repository_call(self, model: str, method: str) -> None:
        """One repository call on a connection of its own (HTTP clients are not thread-safe).

        Over gRPC by default: tritonserver runs an HTTP load/unload on an HTTP worker thread until
        it ends, stalling every HTTP inference connection that worker serves (server #8958,
        ``tests/soak/control_stall.py``); ``--control http`` reproduces that.
        """
        if self.control == "http":
            client = httpclient.InferenceServerClient(
                f"localhost:{self.server.http_port}", connection_timeout=300, network_timeout=300
            )
            call = {}
        else:
            client = grpcclient.InferenceServerClient(f"localhost:{self.server.grpc_port}")
            call = {"client_timeout": 300}
        try:
            getattr(client, method)(model, **call)
        finally:
            client.close()

    def _switch_version(self, load: Load) -> None:
        self.version = 3 - self.version
        config = self.repo / "versioned" / "config.pbtxt"
        text = re.sub(r"version_policy: .*\n", _policy(self.version), config.read_text())
        config.write_text(text)
        self._load("versioned")

    def new_log(self) -> str:
        with self.log_path.open("rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return data.decode("utf-8", errors="replace")

    def check_answers(self) -> None:
        x = np.linspace(-1, 1, 2 * WIDTH, dtype=np.float32).reshape(2, WIDTH)
        for model in MODELS:
            item = httpclient.InferInput("x", list(x.shape), "FP32")
            item.set_data_from_numpy(x)
            y = self.http.infer(model, [item]).as_numpy("y")
            version = self.version if model == "versioned" else 1
            if not np.allclose(y, reference(model, x, version), rtol=1e-4, atol=1e-5):
                self.failures.append(f"{model} answered wrong after the cycle")

    def cycle(self, number: int, load: Load) -> dict:
        kind = ("single", "several", "version")[number % 3]
        before = scrape_answered(self.metrics_url)
        start = time.monotonic()
        if kind == "single":
            touched: tuple[str, ...] = (MLPS[(number // 3) % len(MLPS)],)
            self._reload(touched)
        elif kind == "several":
            touched = MLPS
            self._reload(touched)
        else:
            touched = ("versioned",)
            self._switch_version(load)
        seconds = time.monotonic() - start
        self.kinds[kind] += 1
        if self.server.returncode is not None:
            self.failures.append(f"cycle {number}: the server died ({self.server.returncode})")
            return {"cycle": number, "kind": kind, "dead": True}
        self.check_answers()
        for model, errors in load.take_errors().items():
            if model in touched:
                self.tolerated[model] += len(errors)
            elif errors:
                self.failures.append(f"cycle {number} ({kind}): {model} failed: {errors[:3]}")
        survivors = [m for m in MODELS if m not in touched]

        def grew() -> bool:
            after = scrape_answered(self.metrics_url)
            return all(grown(before, after, m) for m in survivors)

        try:
            wait_for(grew, "the survivors' answered counters grow", deadline=30)
        except AssertionError as exc:
            after = scrape_answered(self.metrics_url)
            self.failures.append(
                f"cycle {number} ({kind}): {exc}: {str(before)[:600]} -> {str(after)[:600]}"
            )
        aborts = [line for line in self.new_log().splitlines() if ABORT.search(line)]
        if aborts:
            self.failures.append(f"cycle {number} ({kind}): server log: {aborts[:5]}")
        with load.lock:
            wrong = list(load.wrong)
        if wrong:
            self.failures.append(f"cycle {number}: wrong answers: {wrong[:3]}")
            load.wrong.clear()
        return {"cycle": number, "kind": kind, "seconds": round(seconds, 2)}


def _server(repo: Path, ports: tuple[int, int, int], log: Path, explicit: bool = True):
    from pytorch_backend.serving.server import TritonServer

    http, grpc, metrics = ports
    extra = ["--exit-timeout-secs=30"]
    if explicit:
        extra += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in MODELS)]
    return TritonServer(
        repo, http_port=http, grpc_port=grpc, metrics_port=metrics, strip_locale=True,
        log=log, extra_args=extra,
    )  # fmt: skip


def run_cycles(
    repo: Path,
    ports,
    log: Path,
    cycles: int,
    seed: int,
    echo=print,
    minutes: float | None = None,
    control: str = "grpc",
) -> dict:
    """``cycles`` reload cycles under load (fewer if ``minutes`` run out first); the summary."""
    server = _server(repo, ports, log)
    server.start()
    started = time.monotonic()
    harness = Harness(server, repo, log, seed, control)
    rows: list[dict] = []
    try:
        server.wait_ready(timeout=600)
        with Load(f"localhost:{ports[0]}", f"localhost:{ports[1]}") as load:
            for number in range(1, cycles + 1):
                known = len(harness.failures)
                rows.append({**harness.cycle(number, load), "failures": len(harness.failures)})
                echo(json.dumps(rows[-1]))
                for failure in harness.failures[known:]:
                    echo(f"FAILURE: {failure}")
                out_of_time = minutes is not None and time.monotonic() - started > 60 * minutes
                if rows[-1].get("dead") or out_of_time:
                    break
            answered = dict(load.answered)
            by_protocol = dict(load.by_protocol)
            wrong_total = len(load.wrong)
        # An HTTP connection still open at SIGTERM holds tritonserver for --exit-timeout-secs,
        # after which it gives up with exit code 1 ("Exit timeout expired"): close ours first.
        harness.http.close()
        pid = server.pid
        code = server.stop(timeout=120)
    finally:
        if server.returncode is None:
            server.stop(timeout=120)
    if code != 0:
        harness.failures.append(f"the server exited with {code}")
    tail = [line for line in harness.new_log().splitlines() if ABORT.search(line)]
    if tail:
        harness.failures.append(f"at shutdown, server log: {tail[:5]}")
    left = server_stubs(pid) if pid else {}
    if left:
        harness.failures.append(f"stubs left after the server stopped: {left}")
    return {
        "repository_calls_over": control,
        "cycles": len(rows),
        "kinds": dict(harness.kinds),
        "seconds": round(time.monotonic() - started, 1),
        "seconds_per_cycle": round(sum(r.get("seconds", 0) for r in rows) / max(len(rows), 1), 2),
        "answered": answered,
        "answered_per_second": {
            k: round(v / max(time.monotonic() - started, 1e-9), 1)
            for k, v in sorted(by_protocol.items())
        },  # fmt: skip
        "wrong_answers": wrong_total,
        "tolerated_errors_of_reloading_models": dict(harness.tolerated),
        "server_exit_code": code,
        "failures": harness.failures,
    }


def kill_check(repo: Path, ports, log: Path, grace: float = 5.0) -> dict:
    """SIGKILL a server under load: its stubs must be gone ``grace`` s later, their shared memory
    unlinked, and a new server must start on the same ports."""
    failures = []
    server = _server(repo, ports, log)
    server.start()
    try:
        server.wait_ready(timeout=600)
        stubs = server_stubs(server.pid)
        regions = stub_regions(stubs)
        with Load(f"localhost:{ports[0]}", f"localhost:{ports[1]}") as load:
            wait_for(lambda: sum(load.answered.values()) > 200, "the load is running", deadline=120)
            os.kill(server.pid, signal.SIGKILL)
            killed = time.monotonic()
            while any(alive(p) for p in stubs) and time.monotonic() - killed < grace:
                time.sleep(0.05)
            exited_within = round(time.monotonic() - killed, 2)
            lingering = [pid for pid in stubs if alive(pid)]
            load.stop.set()
        if lingering:
            count = f"{len(lingering)} of {len(stubs)}"
            failures.append(f"{count} stubs alive {grace:g} s after SIGKILL")
            failures.append(diagnose(lingering[:1]))
            deadline = time.monotonic() + 60
            while any(alive(p) for p in lingering) and time.monotonic() < deadline:
                time.sleep(0.5)
            for pid in lingering:  # never leave them behind
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        left = sorted(r for r in regions.values() if Path("/dev/shm", r).exists())
        if left:
            failures.append(f"shared-memory regions left in /dev/shm: {left}")
            for region in left:
                Path("/dev/shm", region).unlink(missing_ok=True)
    finally:
        server.stop(timeout=30)
    restarted = _server(repo, ports, log.with_suffix(".restart.log"))
    restarted.start()
    try:
        restarted.wait_ready(timeout=600)
        client = httpclient.InferenceServerClient(f"localhost:{ports[0]}")
        x = np.ones((1, WIDTH), np.float32)
        item = httpclient.InferInput("x", [1, WIDTH], "FP32")
        item.set_data_from_numpy(x)
        if not np.allclose(client.infer("alpha", [item]).as_numpy("y"), mlp_reference(x), 1e-4):
            failures.append("the new server answered wrong")
        client.close()
    except Exception as exc:  # noqa: BLE001
        failures.append(f"a new server on the same ports failed: {exc}")
    finally:
        code = restarted.stop(timeout=120)
    if code != 0:
        failures.append(f"the new server exited with {code}")
    return {"stubs": len(stubs), "stubs_alive_after_grace": len(lingering),
            "checked_after_seconds": grace, "all_gone_within": exited_within,
            "failures": failures}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=60)
    parser.add_argument("--minutes", type=float, help="stop after the cycle that ends past this")
    parser.add_argument("--kill", action="store_true", help="also run the SIGKILL check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--server-log", type=Path, help="keep the server log here")
    parser.add_argument("--ports", type=int, nargs=3, default=(18610, 18611, 18612))
    parser.add_argument(
        "--control",
        choices=("grpc", "http"),
        default="grpc",
        help="protocol of the load/unload calls (http stalls HTTP clients: server #8958)",
    )
    args = parser.parse_args(argv)
    summary: dict = {"failures": []}
    with tempfile.TemporaryDirectory(prefix="lifecycle-") as tmp:
        repo = build_repository(Path(tmp) / "repo")
        log = args.server_log or Path(tmp) / "server.log"
        if args.cycles:
            echo = lambda row: print(row, file=sys.stderr, flush=True)  # noqa: E731
            cycles = run_cycles(
                repo, tuple(args.ports), log, args.cycles, args.seed, echo, args.minutes,
                args.control,
            )  # fmt: skip
            summary["reload"] = cycles
            summary["failures"] += cycles["failures"]
        if args.kill:
            killed = kill_check(repo, tuple(args.ports), log.with_suffix(".kill.log"))
            summary["kill"] = killed
            summary["failures"] += killed["failures"]
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
