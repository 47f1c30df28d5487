"""Closed-loop soak: concurrent clients over HTTP and gRPC, faulty and cancelled requests mixed in.

    .venv/bin/python -m tests.soak.soak --seconds 60            # a short run (CI runs one)
    nice .venv/bin/python -m tests.soak.soak --requests 200000 --json soak.json

Starts a tritonserver on a repository of the models in :mod:`tests.soak.models` (TorchScript,
``.pt2``, strings, a slow one), then ``--concurrency`` client threads (half HTTP, half gRPC)
each send one request after another. About ``--fault-rate`` of them are faulty (a row the model
raises for, invalid UTF-8, a width the ``.pt2`` refuses, wrong shape, dtype, batch size or input
name) and must fail with the error their kind expects; about ``--cancel-rate`` are gRPC requests
to the slow model that the client cancels 2 ms after sending, while they wait in its queue (the
bundled tritonserver 2.51 can crash when a cancellation races a completing response, server
#7368, fixed in 24.12, so only queued requests are cancelled). Every answer is checked against a
reference computed in the client. Prints a JSON summary (sent, answered, failed as expected,
failed unexpectedly, mismatched, each stub's RSS after warm-up and at the end) and exits 1 when
anything was mismatched or failed unexpectedly, a stub was restarted, or a stub's RSS grew by
more than ``--rss-growth`` percent after warm-up.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import string
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

if __package__ in (None, ""):  # run as a file: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.server_procs import rss_kib, server_stubs  # noqa: E402
from tests.soak.models import PT2_MAX_FEATURES, WIDTH, build_repository, mlp_reference  # noqa: E402

Check = Callable[[dict], "str | None"]  # None: right; else what is wrong

#: What each kind of faulty request must be answered with.
EXPECTED = {
    "poisoned_row": r"poisoned row",
    "bad_utf8": r"UTF-8",
    "too_wide": r"too large",
    "wrong_shape": r"unexpected shape",
    "wrong_dtype": r"data-?type",
    "over_batch": r"batch.size|max.batch",
    "unknown_input": r"unexpected inference input|unknown input|expected",
}


OUTPUTS = {"ts_mlp": ["y"], "pt2": ["OUTPUT__0"], "sleepy": ["y"], "strings": ["upper", "length"]}


@dataclass
class Call:
    model: str
    inputs: dict[str, np.ndarray]
    check: Check | None = None  # for a good request: is the answer right?
    fault: str | None = None  # for a faulty one: its kind (see EXPECTED)
    datatypes: dict[str, str] = field(default_factory=dict)
    cancel: bool = False


def _mlp_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    x = rng.standard_normal((rows, WIDTH)).astype(np.float32)
    x[:, 0] = np.abs(x[:, 0])  # never the poisoned value
    return x


def _close(expected: np.ndarray, name: str = "y") -> Check:
    def check(out: dict) -> str | None:
        got = out[name]
        if got.shape != expected.shape:
            return f"shape {got.shape}, expected {expected.shape}"
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
            return f"max difference {np.abs(got - expected).max():.3g} (rows {len(got)})"
        return None

    return check


def _words(rng: np.random.Generator, rows: int) -> list[str]:
    letters = string.ascii_lowercase + string.digits + " "
    return ["".join(rng.choice(list(letters), rng.integers(1, 40))) for _ in range(rows)]


def good_call(rng: np.random.Generator) -> Call:
    rows = int(rng.integers(1, 5))
    pick = rng.random()
    if pick < 0.4:
        x = _mlp_rows(rng, rows)
        return Call("ts_mlp", {"x": x}, _close(mlp_reference(x)))
    if pick < 0.7:
        x = rng.standard_normal((rows, int(rng.integers(2, PT2_MAX_FEATURES + 1))))
        x = x.astype(np.float32)
        return Call("pt2", {"INPUT__0": x}, _close(x * 2 + 1, "OUTPUT__0"))
    if pick < 0.95:
        words = _words(rng, rows)
        text = np.array([[w.encode()] for w in words], dtype=np.object_)
        upper = [[w.upper().encode()] for w in words]
        lengths = np.array([[len(w)] for w in words], dtype=np.int64)

        def check(out: dict) -> str | None:
            if out["upper"].tolist() == upper and np.array_equal(out["length"], lengths):
                return None
            return f"got {out['upper'].tolist()} {out['length'].tolist()}, expected {upper}"

        return Call("strings", {"text": text}, check)
    x = _mlp_rows(rng, rows)
    return Call("sleepy", {"x": x}, _close(x))


def faulty_call(rng: np.random.Generator) -> Call:
    kind = list(EXPECTED)[int(rng.integers(len(EXPECTED)))]
    if kind == "poisoned_row":
        x = _mlp_rows(rng, 3)
        x[int(rng.integers(3)), 0] = -7.0
        return Call("ts_mlp", {"x": x}, fault=kind)
    if kind == "bad_utf8":
        return Call("strings", {"text": np.array([[b"ok"], [b"\xff\xfe"]], np.object_)}, fault=kind)
    if kind == "too_wide":
        x = np.ones((2, PT2_MAX_FEATURES + 8), np.float32)
        return Call("pt2", {"INPUT__0": x}, fault=kind)
    if kind == "wrong_shape":
        return Call("ts_mlp", {"x": np.ones((1, WIDTH - 1), np.float32)}, fault=kind)
    if kind == "wrong_dtype":
        return Call("ts_mlp", {"x": np.ones((1, WIDTH), np.float64)}, fault=kind)
    if kind == "over_batch":
        return Call("ts_mlp", {"x": _mlp_rows(rng, 17)}, fault=kind)
    return Call("ts_mlp", {"z": np.ones((1, WIDTH), np.float32)}, fault=kind)


@dataclass
class Tally:
    """One client thread's counts (merged at the end)."""

    sent: int = 0
    answered: int = 0
    expected_failures: Counter = field(default_factory=Counter)
    cancelled: int = 0
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    per_model: Counter = field(default_factory=Counter)


class Client:
    """One connection and its request loop."""

    def __init__(self, protocol: str, http_url: str, grpc_url: str) -> None:
        self.protocol = protocol
        self.module = httpclient if protocol == "http" else grpcclient
        if protocol == "http":
            self.conn = httpclient.InferenceServerClient(http_url, network_timeout=300.0)
        else:
            self.conn = grpcclient.InferenceServerClient(grpc_url)

    def inputs(self, call: Call) -> list:
        out = []
        for name, array in call.inputs.items():
            datatype = call.datatypes.get(name) or {
                np.dtype(np.float32): "FP32",
                np.dtype(np.float64): "FP64",
                np.dtype(np.int64): "INT64",
            }.get(array.dtype, "BYTES")
            item = self.module.InferInput(name, list(array.shape), datatype)
            item.set_data_from_numpy(array)
            out.append(item)
        return out

    def send(self, call: Call, tally: Tally) -> None:
        tally.sent += 1
        tally.per_model[call.model] += 1
        try:
            if call.cancel:
                result = self._send_and_cancel(call)
                if result is None:
                    tally.cancelled += 1
                    return
            else:
                result = self.conn.infer(call.model, self.inputs(call), timeout=None)
        except InferenceServerException as exc:
            message = str(exc)
            if call.fault and re.search(EXPECTED[call.fault], message, re.IGNORECASE):
                tally.expected_failures[call.fault] += 1
            else:
                tally.unexpected.append(f"{self.protocol} {call.model} {call.fault}: {message}")
            return
        except Exception as exc:  # noqa: BLE001 - a broken connection is reported, not raised
            tally.unexpected.append(f"{self.protocol} {call.model}: {type(exc).__name__}: {exc}")
            return
        if call.fault:
            tally.unexpected.append(f"{self.protocol} {call.model} {call.fault}: answered")
            return
        outputs = {name: result.as_numpy(name) for name in OUTPUTS[call.model]}
        tally.answered += 1
        wrong = call.check(outputs) if call.check is not None else None
        if wrong is not None:
            tally.mismatched.append(f"{self.protocol} {call.model}: {wrong}")

    def _send_and_cancel(self, call: Call):
        """gRPC only: send, cancel 2 ms later (it waits behind the slow model), wait for it."""
        done = threading.Event()
        box: list = []

        def callback(result, error) -> None:
            box.append((result, error))
            done.set()

        future = self.conn.async_infer(call.model, self.inputs(call), callback)
        time.sleep(0.002)
        future.cancel()
        if not done.wait(300):
            raise TimeoutError("a cancelled request was never answered")
        result, error = box[0]
        if error is not None:
            if "cancel" in str(error).lower():
                return None
            raise error
        return result

    def close(self) -> None:
        self.conn.close()


def snapshot(server_pid: int) -> dict[int, tuple[str, int | None]]:
    """``{stub pid: (instance, RSS KiB)}`` of the server's stubs."""
    return {pid: (name, rss_kib(pid)) for pid, name in server_stubs(server_pid).items()}


def server_failures(metrics_url: str | None) -> dict[str, float]:
    """The backend's failed-request counters by kind, summed over models (empty if no URL)."""
    if not metrics_url:
        return {}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(metrics_url, timeout=30) as response:
        text = response.read().decode()
    totals: Counter = Counter()
    for match in re.finditer(
        r"^pytorch_backend_requests_failed_total\{([^}]*)\} (\S+)$", text, re.M
    ):
        kind = re.search(r'kind="([^"]+)"', match[1])
        totals[kind[1] if kind else "?"] += float(match[2])
    return dict(totals)


def run(
    http_url: str,
    grpc_url: str,
    server_pid: int,
    *,
    seconds: float | None = None,
    requests: int | None = None,
    concurrency: int = 64,
    fault_rate: float = 0.1,
    cancel_rate: float = 0.01,
    warmup: float = 0.1,
    metrics_url: str | None = None,
    seed: int = 0,
) -> dict:
    """Run the load until ``seconds`` pass or ``requests`` were sent; return the summary."""
    assert seconds or requests, "give seconds or requests"
    numbers = itertools.count()
    stop = threading.Event()
    tallies = [Tally() for _ in range(concurrency)]
    before = server_failures(metrics_url)

    def worker(index: int) -> None:
        protocol = "http" if index % 2 == 0 else "grpc"
        rng = np.random.default_rng(seed * 1000 + index)
        client = Client(protocol, http_url, grpc_url)
        try:
            while not stop.is_set() and (requests is None or next(numbers) < requests):
                r = rng.random()
                if r < fault_rate:
                    call = faulty_call(rng)
                elif protocol == "grpc" and r < fault_rate + 2 * cancel_rate:
                    call = Call("sleepy", {"x": _mlp_rows(rng, 1)}, cancel=True)
                    call.check = _close(call.inputs["x"])
                else:
                    call = good_call(rng)
                client.send(call, tallies[index])
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()

    def sent() -> int:
        return sum(t.sent for t in tallies)

    # warm-up: the first ``warmup`` of the run, then the stubs' memory is the baseline
    while any(t.is_alive() for t in threads):
        elapsed = time.monotonic() - start
        if (seconds and elapsed >= warmup * seconds) or (requests and sent() >= warmup * requests):
            break
        time.sleep(0.2)
    baseline = snapshot(server_pid)
    while any(t.is_alive() for t in threads):
        if seconds and time.monotonic() - start >= seconds:
            stop.set()
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    final = snapshot(server_pid)
    after = server_failures(metrics_url)
    return summarize(tallies, elapsed, concurrency, baseline, final, before, after)


def summarize(tallies, elapsed, concurrency, baseline, final, before, after) -> dict:
    total = Tally()
    for t in tallies:
        total.sent += t.sent
        total.answered += t.answered
        total.cancelled += t.cancelled
        total.expected_failures.update(t.expected_failures)
        total.unexpected += t.unexpected
        total.mismatched += t.mismatched
        total.per_model.update(t.per_model)
    stubs = []
    for pid, (name, rss_end) in sorted(final.items(), key=lambda kv: kv[1][0]):
        rss_start = baseline.get(pid, (name, None))[1]
        growth = 100.0 * (rss_end - rss_start) / rss_start if rss_start and rss_end else None
        stubs.append(
            {"pid": pid, "instance": name, "rss_start_kib": rss_start, "rss_end_kib": rss_end,
             "growth_pct": None if growth is None else round(growth, 2)}
        )  # fmt: skip
    growths = [s["growth_pct"] for s in stubs if s["growth_pct"] is not None]
    return {
        "seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "requests_per_second": round(total.sent / elapsed, 1) if elapsed else None,
        "sent": total.sent,
        "answered": total.answered,
        "failed_as_expected": sum(total.expected_failures.values()),
        "failed_as_expected_by_kind": dict(sorted(total.expected_failures.items())),
        "cancelled_by_client": total.cancelled,
        "server_failures_by_kind": {k: after.get(k, 0) - before.get(k, 0) for k in after},
        "failed_unexpectedly": len(total.unexpected),
        "unexpected_examples": total.unexpected[:10],
        "mismatched": len(total.mismatched),
        "mismatch_examples": total.mismatched[:10],
        "sent_per_model": dict(sorted(total.per_model.items())),
        "stubs": stubs,
        "stub_restarts": len(set(baseline) ^ set(final)),
        "max_stub_rss_growth_pct": max(growths) if growths else None,
    }


def failures(summary: dict, rss_growth: float) -> list[str]:
    """What makes a soak fail (empty: it passed)."""
    out = []
    if summary["mismatched"]:
        out.append(f"{summary['mismatched']} mismatched answers")
    if summary["failed_unexpectedly"]:
        out.append(f"{summary['failed_unexpectedly']} unexpected failures")
    if summary["stub_restarts"]:
        out.append("stubs were restarted or disappeared")
    growth = summary["max_stub_rss_growth_pct"]
    if growth is not None and growth > rss_growth:
        out.append(f"a stub's RSS grew by {growth}% after warm-up (limit {rss_growth}%)")
    return out


def main(argv: list[str] | None = None) -> int:
    from pytorch_backend.serving.server import TritonServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--cancel-rate", type=float, default=0.01)
    parser.add_argument("--rss-growth", type=float, default=5.0, help="limit, percent")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--server-log", type=Path, help="keep the server's log here")
    parser.add_argument("--ports", type=int, nargs=3, default=(18500, 18501, 18502))
    args = parser.parse_args(argv)
    if not args.seconds and not args.requests:
        args.seconds = 60.0
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        repo = build_repository(Path(tmp) / "repo")
        http, grpc, metrics = args.ports
        server = TritonServer(
            repo, http_port=http, grpc_port=grpc, metrics_port=metrics, strip_locale=True,
            log=args.server_log or Path(tmp) / "server.log", extra_args=("--exit-timeout-secs=10",),
        )  # fmt: skip
        with server:
            server.wait_ready(timeout=600)
            summary = run(
                f"localhost:{http}", f"localhost:{grpc}", server.pid,
                seconds=args.seconds, requests=args.requests, concurrency=args.concurrency,
                fault_rate=args.fault_rate, cancel_rate=args.cancel_rate,
                metrics_url=f"http://localhost:{metrics}/metrics",
            )  # fmt: skip
            summary["server_alive_at_end"] = server.returncode is None
        summary["server_exit_code"] = server.returncode
    summary["failures"] = failures(summary, args.rss_growth)
    if not summary["server_alive_at_end"]:
        summary["failures"].append("the server died during the soak")
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
