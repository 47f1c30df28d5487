"""Does a repository load/unload call stall inference? Per protocol of the call, measured.

    .venv/bin/python -m tests.soak.control_stall --json control-stall.json

One tritonserver (explicit model control) serves the lifecycle harness's models. Four closed-loop
clients send batch-2 requests to ``alpha`` (``pytorch_python``) and ``gamma`` (drop-in), each over
HTTP and over gRPC, for ``--seconds`` in three phases: no repository calls; ``beta`` unloaded and
loaded again in a loop over HTTP; the same loop over gRPC. Reported per client and phase: answers
per second and the slowest answer. tritonserver 2.51 runs an HTTP load/unload on the HTTP worker
thread that accepted it until the call ends (server #8958, fix proposed in server #8737), so an
HTTP client whose connection that worker also serves gets no answer meanwhile; gRPC calls and
gRPC clients are not affected, and custom metrics play no part
(``--metrics-off``). This is why the lifecycle harness makes its calls over gRPC.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from tests.soak.lifecycle import WIDTH, _server, build_repository  # noqa: E402

METRICS_OFF = 'parameters { key: "ENABLE_METRICS" value { string_value: "false" } }\n'
CLIENTS = tuple((model, protocol) for model in ("alpha", "gamma") for protocol in ("http", "grpc"))


def _module(protocol: str):
    return httpclient if protocol == "http" else grpcclient


def _infer_loop(url: str, model: str, protocol: str, stop: threading.Event, out: dict) -> None:
    module = _module(protocol)
    timeout = {"network_timeout": 120} if protocol == "http" else {}
    client = module.InferenceServerClient(url, **timeout)
    x = np.ones((2, WIDTH), np.float32)
    answers, slowest = 0, 0.0
    try:
        while not stop.is_set():
            item = module.InferInput("x", list(x.shape), "FP32")
            item.set_data_from_numpy(x)
            start = time.monotonic()
            client.infer(model, [item])
            slowest = max(slowest, time.monotonic() - start)
            answers += 1
    finally:
        client.close()
    out[f"{model}/{protocol}"] = (answers, slowest)


def _reload_loop(url: str, protocol: str, stop: threading.Event, out: dict) -> None:
    calls = 0
    while not stop.is_set():
        client = _module(protocol).InferenceServerClient(url)
        try:
            client.unload_model("beta")
            client.load_model("beta")
        finally:
            client.close()
        calls += 1
    out["reloads"] = calls


def phase(urls: dict[str, str], control: str | None, seconds: float) -> dict:
    """Answers per second and the slowest answer per client, with reloads over ``control``."""
    stop, out = threading.Event(), {}
    threads = [
        threading.Thread(target=_infer_loop, args=(urls[p], m, p, stop, out)) for m, p in CLIENTS
    ]
    if control is not None:
        threads.append(
            threading.Thread(target=_reload_loop, args=(urls[control], control, stop, out))
        )
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=300)
    result = {
        key: {"answers_per_second": round(n / seconds, 1), "slowest_seconds": round(worst, 2)}
        for key, (n, worst) in sorted((k, v) for k, v in out.items() if k != "reloads")
    }
    return {"reloads_of_beta": out.get("reloads", 0), "clients": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--ports", type=int, nargs=3, default=(18620, 18621, 18622))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--metrics-off", action="store_true", help="ENABLE_METRICS false in every model"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="control-stall-") as tmp:
        repo = build_repository(Path(tmp) / "repo")
        if args.metrics_off:
            for config in repo.glob("*/config.pbtxt"):
                config.write_text(config.read_text() + METRICS_OFF)
        server = _server(repo, tuple(args.ports), Path(tmp) / "server.log")
        server.start()
        try:
            server.wait_ready(timeout=600)
            urls = {"http": f"localhost:{args.ports[0]}", "grpc": f"localhost:{args.ports[1]}"}
            phases = {
                f"reloads over {control or 'none'}": phase(urls, control, args.seconds)
                for control in (None, "http", "grpc")
            }
        finally:
            code = server.stop(timeout=120)
    summary = {
        "metrics": not args.metrics_off,
        "seconds_per_phase": args.seconds,
        "phases": phases,
        "server_exit_code": code,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
