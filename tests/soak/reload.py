"""Reload hygiene: load and unload models through the repository API, and watch what stays behind.

    .venv/bin/python -m tests.soak.reload --cycles 50 --csv reload.csv --json reload.json

Starts a tritonserver in explicit model-control mode on a TorchScript model (2 instances), a
``.pt2`` package and a weight-sharing TorchScript model (2 instances sharing one ``/dev/shm``
file). Each cycle loads the three, checks one answer of each, unloads them and waits until their
stubs have exited; then it records the server's RSS and open file descriptors, the stubs left
and this server's files in ``/dev/shm``. Prints a JSON summary with the curve (``--csv`` writes
it too) and exits 1 when a stub or a file was left behind after a cycle, or when the curve did
not settle: over the second half of the run the server's RSS grew by more than
``--rss-slack`` MiB or its descriptors by more than ``--fd-slack``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tritonclient.http as httpclient  # noqa: E402

from tests.server_procs import (  # noqa: E402
    open_fds,
    rss_kib,
    server_shm_files,
    server_stubs,
    wait_for,
)
from tests.soak.models import WIDTH, build_repository, mlp_reference  # noqa: E402

MODELS = ("ts_mlp", "pt2", "shared")


def _check_answers(client: httpclient.InferenceServerClient) -> None:
    x = np.linspace(0.1, 1.0, 2 * WIDTH, dtype=np.float32).reshape(2, WIDTH)
    for model in ("ts_mlp", "shared"):
        item = httpclient.InferInput("x", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        y = client.infer(model, [item]).as_numpy("y")
        assert np.allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5), model
    item = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    assert np.allclose(client.infer("pt2", [item]).as_numpy("OUTPUT__0"), x * 2 + 1)


def _load(http_url: str, model: str) -> None:
    """Load ``model`` on a connection of its own (one per thread)."""
    client = httpclient.InferenceServerClient(
        http_url, connection_timeout=300.0, network_timeout=300.0
    )
    try:
        client.load_model(model)
    finally:
        client.close()


def cycle(http_url: str, client: httpclient.InferenceServerClient, server_pid: int) -> dict:
    """One load / check / unload of every model; what the server holds afterwards."""
    start = time.monotonic()
    with ThreadPoolExecutor(len(MODELS)) as pool:  # the server loads them in parallel
        list(pool.map(lambda model: _load(http_url, model), MODELS))
    _check_answers(client)
    for model in MODELS:
        client.unload_model(model)
    wait_for(lambda: not server_stubs(server_pid), "the stubs exit after unload")
    wait_for(
        lambda: not any(client.is_model_ready(m) for m in MODELS), "the models finish unloading"
    )
    return {
        "seconds": round(time.monotonic() - start, 2),
        "server_rss_kib": rss_kib(server_pid),
        "server_fds": open_fds(server_pid),
        "stubs_left": len(server_stubs(server_pid)),
        "shm_files_left": len(server_shm_files(server_pid)),
    }


def run(
    http_url: str, server_pid: int, cycles: int, log=print, minutes: float | None = None
) -> dict:
    """``cycles`` cycles (fewer if ``minutes`` run out first); the curve and its first, last and
    largest values."""
    deadline = time.monotonic() + 60 * minutes if minutes else None
    client = httpclient.InferenceServerClient(
        http_url, connection_timeout=300.0, network_timeout=300.0
    )
    curve = [
        {"cycle": 0, "seconds": 0.0, "server_rss_kib": rss_kib(server_pid),
         "server_fds": open_fds(server_pid), "stubs_left": len(server_stubs(server_pid)),
         "shm_files_left": len(server_shm_files(server_pid))}
    ]  # fmt: skip
    try:
        for number in range(1, cycles + 1):
            row = {"cycle": number, **cycle(http_url, client, server_pid)}
            curve.append(row)
            log(json.dumps(row))
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        client.close()
    return summarize(curve)


def summarize(curve: list[dict]) -> dict:
    rows = curve[1:]
    half = rows[len(rows) // 2 :] if len(rows) > 1 else rows

    def stats(key: str) -> dict:
        values = [r[key] for r in rows]
        return {"before": curve[0][key], "first": values[0], "last": values[-1],
                "max": max(values), "second_half_growth": half[-1][key] - half[0][key]}  # fmt: skip

    return {
        "cycles": len(rows),
        "models": list(MODELS),
        "server_rss_kib": stats("server_rss_kib"),
        "server_fds": stats("server_fds"),
        "stubs_left_max": max(r["stubs_left"] for r in rows),
        "shm_files_left_max": max(r["shm_files_left"] for r in rows),
        "seconds_per_cycle": round(sum(r["seconds"] for r in rows) / len(rows), 2),
        "curve": curve,
    }


def failures(summary: dict, rss_slack_mib: float, fd_slack: int) -> list[str]:
    out = []
    if summary["stubs_left_max"]:
        out.append("stubs were left behind after an unload")
    if summary["shm_files_left_max"]:
        out.append("files of this server were left in /dev/shm")
    rss_growth = summary["server_rss_kib"]["second_half_growth"] / 1024
    if rss_growth > rss_slack_mib:
        out.append(f"server RSS grew {rss_growth:.1f} MiB over the second half")
    if summary["server_fds"]["second_half_growth"] > fd_slack:
        out.append(f"server fds grew by {summary['server_fds']['second_half_growth']}")
    return out


def main(argv: list[str] | None = None) -> int:
    from pytorch_backend.serving.server import TritonServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--minutes", type=float, help="stop after the cycle that ends past this")
    parser.add_argument("--rss-slack", type=float, default=32.0, help="MiB")
    parser.add_argument("--fd-slack", type=int, default=2)
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ports", type=int, nargs=3, default=(18510, 18511, 18512))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reload-") as tmp:
        repo = build_repository(Path(tmp) / "repo", MODELS)
        http, grpc, metrics = args.ports
        server = TritonServer(
            repo, http_port=http, grpc_port=grpc, metrics_port=metrics, strip_locale=True,
            log=Path(tmp) / "server.log",
            extra_args=("--model-control-mode=explicit", "--exit-timeout-secs=10"),
        )  # fmt: skip
        with server:
            server.wait_ready(timeout=600)
            summary = run(
                f"localhost:{http}", server.pid, args.cycles,
                log=lambda row: print(row, file=sys.stderr, flush=True), minutes=args.minutes,
            )  # fmt: skip
        summary["server_exit_code"] = server.returncode
    summary["failures"] = failures(summary, args.rss_slack, args.fd_slack)
    if summary["server_exit_code"] != 0:
        summary["failures"].append(f"the server exited with {summary['server_exit_code']}")
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(summary["curve"][0]))
            writer.writeheader()
            writer.writerows(summary["curve"])
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
