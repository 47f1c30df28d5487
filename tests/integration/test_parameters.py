"""Config parameters, runtime settings, devices and weight sharing, end to end (issue 4).

Everything here is observable on a CPU-only host through a real tritonserver: the effective value
of every setting logged at load, thread pools seen from inside a running model (through a custom
op, since TorchScript has no ``torch.get_num_threads()``), the grad policy, custom op libraries,
load-time refusal of bad values (repository index reason), instance kinds, and the private memory
of instance processes with and without ``ENABLE_WEIGHT_SHARING``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from pytorch_backend.config.parameters import PARAMETERS
from pytorch_backend.runtime.report import LEADING_KEYS
from tests.client_utils import PROTOCOLS, InferenceServerException, infer, write_model
from tests.custom_op import LIBRARY_NAME, build_op_library
from tests.server_procs import server_stubs

# --- TorchScript test models --------------------------------------------------------------------


class Conv(torch.nn.Module):
    """forward(x [B, 8]) -> Conv1d(1 -> 2, k=3, pad=1) flattened to [B, 16]; fixed weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv1d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(1)).flatten(1)


class Probe(torch.nn.Module):
    """forward(x [B, 2]) -> (pbtest::add_one(x), [intra-op, inter-op] threads per row, INT64).

    The counts come from ``pbtest::thread_counts``, run on the thread that runs the forward.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = torch.ops.pbtest.thread_counts()
        return torch.ops.pbtest.add_one(x), counts.unsqueeze(0).expand(x.shape[0], 2)


class NeedsGrad(torch.nn.Module):
    """forward(x) -> d/dx sum(x^3) = 3 x^2, computed with autograd at inference time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_()
        total = (x * x * x).sum()
        grad = torch.autograd.grad([total], [x])[0]
        assert grad is not None
        return grad


class Device(torch.nn.Module):
    """forward(x [B, 2]) -> (x * 2, [x.is_cuda] per row as BOOL)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, torch.full([x.shape[0], 1], x.is_cuda, dtype=torch.bool)


class Big(torch.nn.Module):
    """Twelve bias-free 2048x2048 linear layers (192 MiB of FP32 weights), tanh between them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(2048, 2048, bias=False) for _ in range(12)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


# --- model repository helpers -------------------------------------------------------------------


def io(name: str, dtype: str, dims: str) -> str:
    return f'{{ name: "{name}" data_type: {dtype} dims: {dims} }}'


def model_config(
    name: str,
    inputs: list[str],
    outputs: list[str],
    parameters: Mapping[str, str] | None = None,
    extra: str = "",
    max_batch_size: int = 4,
) -> str:
    params = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in (parameters or {}).items()
    )
    return (
        f'name: "{name}" backend: "pytorch_python" max_batch_size: {max_batch_size}\n'
        f"input [ {', '.join(inputs)} ]\noutput [ {', '.join(outputs)} ]\n{extra}\n{params}"
    )


CONV_IO = ([io("x", "TYPE_FP32", "[ 8 ]")], [io("y", "TYPE_FP32", "[ 16 ]")])
PROBE_IO = (
    [io("x", "TYPE_FP32", "[ 2 ]")],
    [io("y", "TYPE_FP32", "[ 2 ]"), io("threads", "TYPE_INT64", "[ 2 ]")],
)
GRAD_IO = ([io("x", "TYPE_FP32", "[ 3 ]")], [io("dx", "TYPE_FP32", "[ 3 ]")])
DEVICE_IO = (
    [io("x", "TYPE_FP32", "[ 2 ]")],
    [io("y", "TYPE_FP32", "[ 2 ]"), io("on_cuda", "TYPE_BOOL", "[ 1 ]")],
)
BIG_IO = ([io("x", "TYPE_FP32", "[ 2048 ]")], [io("y", "TYPE_FP32", "[ 2048 ]")])

# Every setting an instance logs at load, one line each: the device, the OpenMP wait policy and
# the registry's keys.
LOGGED_KEYS = (*LEADING_KEYS, *(p.key for p in PARAMETERS if p.logged))

MANY_THREADS = 3  # INTRA_OP_THREAD_COUNT / INTER_OP_THREAD_COUNT of "many"
ALIAS_THREADS = (5, 4)  # NUM_THREADS / NUM_INTEROP_THREADS of "alias"


def available_cpus() -> int:
    """As runtime.available_cpus (stubs inherit this process's affinity through the server)."""
    return max(1, len(os.sched_getaffinity(0)))


def torch_default_threads() -> tuple[int, int]:
    """torch's default intra/inter-op pool sizes in a fresh process with this environment."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch; print(torch.get_num_threads(), torch.get_num_interop_threads())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    intra, inter = done.stdout.split()
    return int(intra), int(inter)


def settings_logged(log: str, model: str, instance: str) -> dict[str, list[str]]:
    """``{key: [values]}`` from the ``pytorch_backend: model 'm' instance 'i': K = v`` lines."""
    pattern = re.compile(
        rf"\] \"pytorch_backend: model '{re.escape(model)}' instance '{re.escape(instance)}': "
        r"(\w+) = (.*)\"$"
    )
    found: dict[str, list[str]] = {}
    for line in log.splitlines():
        match = pattern.search(line)
        if match:
            found.setdefault(match[1], []).append(match[2])
    return found


def one_per_key(log: str, model: str, instance: str) -> dict[str, str]:
    """The logged settings of one instance, asserting exactly one line per setting."""
    found = settings_logged(log, model, instance)
    assert set(found) == set(LOGGED_KEYS), (model, instance, sorted(found))
    assert all(len(v) == 1 for v in found.values()), found
    return {k: v[0] for k, v in found.items()}


# --- the main server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def op_library() -> Path:
    return build_op_library()


@pytest.fixture(scope="module")
def server(triton, op_library, tmp_path_factory):
    root = tmp_path_factory.mktemp("params-artifacts")
    torch.ops.load_library(str(op_library))  # Probe calls pbtest ops: register them to script it
    files = {name: root / f"{name}.pt" for name in ("conv", "probe", "grad", "device")}
    torch.jit.script(Conv()).save(str(files["conv"]))
    torch.jit.script(Probe()).save(str(files["probe"]))
    torch.jit.script(NeedsGrad()).save(str(files["grad"]))
    torch.jit.script(Device()).save(str(files["device"]))
    repo = tmp_path_factory.mktemp("params-repo")
    lib = str(op_library)

    def add(name, kind_io, artifact, parameters=None, extra="", filename="model.pt", more=None):
        config = model_config(name, *kind_io, parameters=parameters, extra=extra)
        write_model(repo, name, config, {f"1/{filename}": files[artifact], **(more or {})})

    # Logged effective values, cuDNN / cache cleaning (accepted on CPU, no effect on results).
    add("defaults", CONV_IO, "conv")
    add("cudnn_cache", CONV_IO, "conv", {"DISABLE_CUDNN": "true", "ENABLE_CACHE_CLEANING": "on"})
    add(
        "many",
        PROBE_IO,
        "probe",
        {
            "INFERENCE_MODE": "false",
            "DISABLE_OPTIMIZED_EXECUTION": "true",
            "ENABLE_JIT_EXECUTOR": "false",
            "ENABLE_JIT_PROFILING": "false",
            "ENABLE_TENSOR_FUSER": "false",
            "ENABLE_NVFUSER": "false",
            "DISABLE_CUDNN": "1",
            "ENABLE_CACHE_CLEANING": "true",
            "INTRA_OP_THREAD_COUNT": str(MANY_THREADS),
            "INTER_OP_THREAD_COUNT": str(MANY_THREADS),
            "ENABLE_WEIGHT_SHARING": "true",
            "CUSTOM_OP_LIBRARIES": lib,
            "MODEL_FILENAME": "probe.ts",
        },
        filename="probe.ts",
    )
    # Thread pools seen from inside the instance.
    add("probe_default", PROBE_IO, "probe", {"CUSTOM_OP_LIBRARIES": lib})
    add(
        "alias",
        PROBE_IO,
        "probe",
        {
            "NUM_THREADS": str(ALIAS_THREADS[0]),
            "NUM_INTEROP_THREADS": str(ALIAS_THREADS[1]),
            "CUSTOM_OP_LIBRARIES": lib,
        },
    )
    add(
        "budget",
        PROBE_IO,
        "probe",
        {"CUSTOM_OP_LIBRARIES": lib},
        extra="instance_group [ { kind: KIND_CPU count: 2 } ]",
    )
    # Custom op libraries: relative to the version directory (documented), and missing.
    add(
        "op_relative",
        PROBE_IO,
        "probe",
        {"CUSTOM_OP_LIBRARIES": f"lib/{LIBRARY_NAME}"},
        more={f"1/lib/{LIBRARY_NAME}": op_library},
    )
    add("op_missing", PROBE_IO, "probe", {"CUSTOM_OP_LIBRARIES": str(root / "libmissing.so")})
    # Grad policy.
    add("grad_default", GRAD_IO, "grad")
    add("grad_enabled", GRAD_IO, "grad", {"ENABLE_GRAD": "true"})
    add("grad_no_inference_mode", GRAD_IO, "grad", {"INFERENCE_MODE": "false"})
    add("grad_conflict", GRAD_IO, "grad", {"ENABLE_GRAD": "true", "INFERENCE_MODE": "true"})
    # Values refused at load; an unknown key only warns.
    add("bad_bool", CONV_IO, "conv", {"INFERENCE_MODE": "maybe"})
    add("negative_threads", CONV_IO, "conv", {"INTRA_OP_THREAD_COUNT": "-1"})
    add("junk_threads", CONV_IO, "conv", {"INTER_OP_THREAD_COUNT": "4abc"})
    add("alias_conflict", CONV_IO, "conv", {"INTRA_OP_THREAD_COUNT": "2", "NUM_THREADS": "3"})
    add("bad_filename", CONV_IO, "conv", {"MODEL_FILENAME": "sub/model.pt"})
    add("unknown_key", CONV_IO, "conv", {"CACHE_CLEANING_ENABLED": "true"})
    # Instance kinds.
    add("kind_cpu", DEVICE_IO, "device", extra="instance_group [ { kind: KIND_CPU } ]")
    add("kind_model", DEVICE_IO, "device", extra="instance_group [ { kind: KIND_MODEL } ]")
    add("kind_gpu", DEVICE_IO, "device", extra="instance_group [ { kind: KIND_GPU } ]")
    # libgomp prints its settings to the server log as each stub loads torch (GOMP_SPINCOUNT:
    # 300000 under its default wait policy, 0 under PASSIVE); the policy itself is not given.
    env = {"OMP_DISPLAY_ENV": "VERBOSE", "OMP_WAIT_POLICY": None}
    return triton(repo, env_overrides=env)


X8 = np.linspace(-2.0, 2.0, 16, dtype=np.float32).reshape(2, 8)
X2 = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=np.float32)
X3 = np.array([[1.0, -2.0, 0.5]], dtype=np.float32)

READY = (
    "defaults",
    "cudnn_cache",
    "many",
    "probe_default",
    "alias",
    "budget",
    "grad_default",
    "grad_enabled",
    "grad_no_inference_mode",
    "unknown_key",
    "kind_cpu",
    "kind_model",
)


def test_valid_models_are_ready(server):
    states = {m.name: m for m in server.models()}
    for name in READY:
        assert states[name].state == "READY", states[name]


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        ("bad_bool", ["'bad_bool'", "'INFERENCE_MODE'", "'maybe'", "boolean"]),
        ("negative_threads", ["'INTRA_OP_THREAD_COUNT'", "'-1'", "non-negative integer"]),
        ("junk_threads", ["'INTER_OP_THREAD_COUNT'", "'4abc'", "non-negative integer"]),
        ("alias_conflict", ["'INTRA_OP_THREAD_COUNT'", "'NUM_THREADS'", "two spellings"]),
        ("bad_filename", ["'MODEL_FILENAME'", "'sub/model.pt'", "no path separators"]),
        ("grad_conflict", ["'ENABLE_GRAD'", "'INFERENCE_MODE'", "contradict"]),
        ("op_missing", ["'CUSTOM_OP_LIBRARIES'", "libmissing.so", "does not exist"]),
    ],
)
def test_invalid_values_refused_at_load(server, model, fragments):
    status = server.model(model)
    assert status.state == "UNAVAILABLE", status
    for fragment in fragments:
        assert fragment in status.reason, (fragment, status.reason)
    assert f"model '{model}'" in status.reason


# --- logged effective values --------------------------------------------------------------------


def test_defaults_logged_one_line_per_setting(server):
    values = one_per_key(server.log_text(), "defaults", "defaults_0")
    _, inter = torch_default_threads()
    assert values["device"] == "cpu"
    # set in the stub before torch loaded (the test server's environment does not give it)
    assert values["OMP_WAIT_POLICY"] == "PASSIVE (set by the backend before torch loaded)"
    assert values["INFERENCE_MODE"] == "true (grad policy: inference_mode)"
    assert values["ENABLE_GRAD"] == "false"
    assert values["DISABLE_OPTIMIZED_EXECUTION"].startswith("false (graph executor optimization on")
    assert values["ENABLE_JIT_EXECUTOR"].endswith("(not given, torch default)")
    assert values["ENABLE_NVFUSER"].startswith("not given")
    assert values["DISABLE_CUDNN"].startswith("false (cuDNN enabled")
    assert values["ENABLE_CACHE_CLEANING"] == "false"
    default = max(1, available_cpus() - 1)  # one CPU left to the server
    budget = f"({available_cpus()} CPUs - 1 for the server) / 1 CPU instance"
    if available_cpus() > 1:  # room for more threads: the warm-up chose, and this one is cheap
        assert values["INTRA_OP_THREAD_COUNT"].startswith(
            f"{default} (not given: chosen at warm-up between {budget} and "
            f"{available_cpus()} CPUs / 1: overhead-bound: "
        )
    else:
        assert values["INTRA_OP_THREAD_COUNT"] == f"{default} (not given: {budget})"
    assert values["INTER_OP_THREAD_COUNT"] == f"{inter} (not given, torch default)"
    assert values["ENABLE_WEIGHT_SHARING"] == "false"
    assert values["CUSTOM_OP_LIBRARIES"] == "none"
    assert values["MODEL_FILENAME"] == "not given"
    assert values["ENABLE_METRICS"] == "true"


def test_many_parameters_logged_with_their_effective_values(server, op_library):
    values = one_per_key(server.log_text(), "many", "many_0")
    assert values["device"] == "cpu"
    assert values["INFERENCE_MODE"] == "false (grad policy: no_grad)"
    assert values["ENABLE_GRAD"] == "false"
    assert values["DISABLE_OPTIMIZED_EXECUTION"].startswith("true (graph executor optimization off")
    assert values["ENABLE_JIT_EXECUTOR"] == "false (given)"
    assert values["ENABLE_JIT_PROFILING"] == "false (given)"
    assert values["ENABLE_TENSOR_FUSER"] == "false (given)"
    assert values["ENABLE_NVFUSER"].startswith("false ignored: NVFuser was removed")
    assert values["DISABLE_CUDNN"].startswith("true (cuDNN disabled")
    assert values["ENABLE_CACHE_CLEANING"] == "true (no effect on a CPU instance)"
    assert values["INTRA_OP_THREAD_COUNT"] == str(MANY_THREADS)
    assert values["INTER_OP_THREAD_COUNT"] == str(MANY_THREADS)
    assert values["ENABLE_WEIGHT_SHARING"] == "true"
    assert values["CUSTOM_OP_LIBRARIES"] == f"{op_library} (loaded)"
    assert values["MODEL_FILENAME"] == "probe.ts"
    assert "instance 'many_0': loaded TorchScript" in server.log_text()
    assert "/many/1/probe.ts' on cpu" in server.log_text()


# --- threads inside the instance ----------------------------------------------------------------


def test_openmp_workers_sleep_at_the_end_of_a_region(server):
    """Set in each stub before torch loads libgomp, which reads it once (runtime.omp_wait)."""
    spin_counts = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", server.log_text())
    assert len(spin_counts) >= len(READY), spin_counts  # one libgomp per stub that loaded torch
    assert set(spin_counts) == {"0"}, spin_counts  # PASSIVE; libgomp's default spins 300000


def threads_seen(protocol, server, model) -> list[list[int]]:
    result = infer(protocol, server, model, {"x": X2})
    np.testing.assert_array_equal(result["y"], X2 + 1)  # the custom op serves correct results
    return result["threads"].tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_thread_counts_inside_the_instance(server, protocol):
    _, inter = torch_default_threads()
    default = max(1, available_cpus() - 1)  # not given: one CPU left to the server
    assert threads_seen(protocol, server, "probe_default") == [[default, inter]] * 2
    assert threads_seen(protocol, server, "many") == [[MANY_THREADS, MANY_THREADS]] * 2
    assert threads_seen(protocol, server, "alias") == [list(ALIAS_THREADS)] * 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_default_thread_budget_split_between_cpu_instances(server, protocol):
    budget = max(1, (available_cpus() - 1) // 2)
    _, inter = torch_default_threads()
    for _ in range(4):
        assert threads_seen(protocol, server, "budget") == [[budget, inter]] * 2
    log = server.log_text()
    for instance in ("budget_0_0", "budget_0_1"):
        values = one_per_key(log, "budget", instance)
        assert values["INTRA_OP_THREAD_COUNT"] == (
            f"{budget} (not given: ({available_cpus()} CPUs - 1 for the server) / 2 CPU instances)"
        )


# --- custom op libraries ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_custom_op_library_relative_to_the_version_directory(server, protocol):
    status = server.model("op_relative")
    assert status.state == "READY", status.reason
    result = infer(protocol, server, "op_relative", {"x": X2})
    np.testing.assert_array_equal(result["y"], X2 + 1)


# --- grad policy --------------------------------------------------------------------------------

# What torch says when a forward differentiates under inference_mode / no_grad.
GRAD_ERRORS = ("does not require grad", "Inference tensors cannot be saved for backward")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_grad_policy(server, protocol):
    result = infer(protocol, server, "grad_enabled", {"x": X3})
    np.testing.assert_allclose(result["dx"], 3 * X3 * X3)
    with pytest.raises(InferenceServerException) as info:
        infer(protocol, server, "grad_default", {"x": X3})
    message = str(info.value)
    assert "model 'grad_default' failed" in message
    assert any(text in message for text in GRAD_ERRORS), message
    # Upstream semantics: INFERENCE_MODE false still runs under no_grad, so this model fails.
    with pytest.raises(InferenceServerException) as info:
        infer(protocol, server, "grad_no_inference_mode", {"x": X3})
    message = str(info.value)
    assert "model 'grad_no_inference_mode' failed" in message
    assert "does not require grad" in message
    # The failures hit only those requests: the model keeps serving.
    np.testing.assert_allclose(infer(protocol, server, "grad_enabled", {"x": X3})["dx"], 3 * X3**2)


def test_grad_policies_logged(server):
    log = server.log_text()
    expected = {
        "grad_default": "true (grad policy: inference_mode)",
        "grad_enabled": "false (grad policy: enable_grad)",
        "grad_no_inference_mode": "false (grad policy: no_grad)",
    }
    for model, value in expected.items():
        assert one_per_key(log, model, f"{model}_0")["INFERENCE_MODE"] == value


# --- unknown keys, cuDNN and cache cleaning -----------------------------------------------------


def conv_expected() -> np.ndarray:
    with torch.no_grad():
        return Conv()(torch.from_numpy(X8)).numpy()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_key_warns_and_the_model_serves(server, protocol):
    warnings = [
        line
        for line in server.log_text().splitlines()
        if "unknown parameter 'CACHE_CLEANING_ENABLED'" in line
    ]
    assert len(warnings) == 1 and warnings[0].startswith("W"), warnings
    assert "model 'unknown_key'" in warnings[0]
    assert "did you mean 'ENABLE_CACHE_CLEANING'?" in warnings[0]
    result = infer(protocol, server, "unknown_key", {"x": X8})
    np.testing.assert_allclose(result["y"], conv_expected(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cudnn_and_cache_cleaning_accepted_on_cpu_without_effect(server, protocol):
    values = one_per_key(server.log_text(), "cudnn_cache", "cudnn_cache_0")
    assert values["DISABLE_CUDNN"].startswith("true (cuDNN disabled")
    assert values["ENABLE_CACHE_CLEANING"] == "true (no effect on a CPU instance)"
    plain = infer(protocol, server, "defaults", {"x": X8})["y"]
    flagged = infer(protocol, server, "cudnn_cache", {"x": X8})["y"]
    np.testing.assert_array_equal(flagged, plain)
    np.testing.assert_allclose(plain, conv_expected(), rtol=1e-6, atol=1e-6)


# --- instance kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("model", "instance", "device_text", "placement"),
    [
        ("kind_cpu", "kind_cpu_0_0", "cpu", "on cpu"),
        (
            "kind_model",
            "kind_model_0_0",
            "chosen by the model (KIND_MODEL)",
            "on the model's own devices (KIND_MODEL)",
        ),
    ],
)
def test_cpu_and_model_instances_serve_with_inputs_on_cpu(
    server, protocol, model, instance, device_text, placement
):
    log = server.log_text()
    assert one_per_key(log, model, instance)["device"] == device_text
    assert f"instance '{instance}': loaded TorchScript" in log
    assert f"/{model}/1/model.pt' {placement}" in log
    result = infer(protocol, server, model, {"x": X2})
    np.testing.assert_array_equal(result["y"], X2 * 2)
    assert result["on_cuda"].dtype == np.bool_
    assert result["on_cuda"].tolist() == [[False], [False]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="KIND_GPU loads where CUDA is available")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gpu_instance_without_cuda_fails_the_load_alone(server, protocol):
    status = server.model("kind_gpu")
    assert status.state == "UNAVAILABLE", status
    # Triton refuses KIND_GPU itself when it sees no GPU; where it sees one but this torch build
    # cannot use it, the backend refuses it, naming CUDA.
    assert "KIND_GPU but no GPUs are available" in status.reason or (
        "'kind_gpu'" in status.reason and "CUDA is not available" in status.reason
    ), status.reason
    np.testing.assert_array_equal(infer(protocol, server, "kind_cpu", {"x": X2})["y"], X2 * 2)


# --- weight sharing through process memory ------------------------------------------------------


def stub_pids(server, repo: Path, model: str) -> dict[str, int]:
    """``{instance name: pid}`` of the server's Python-backend stubs serving ``model``."""
    stubs = server_stubs(server.server.pid, repo / model / "1" / "model.py")
    return {name: pid for pid, name in stubs.items()}


def private_bytes(pid: int) -> int:
    """Private_Clean + Private_Dirty of a process, from /proc/<pid>/smaps_rollup."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    kib = sum(int(m[1]) for m in re.finditer(r"^Private_(?:Clean|Dirty):\s+(\d+) kB", text, re.M))
    return kib * 1024


def shared_weight_files(pid: int) -> set[str]:
    """Shared weights files a process maps (an unlinked one is listed without "(deleted)")."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {
        line.split(None, 5)[-1].removesuffix(" (deleted)")
        for line in maps.splitlines()
        if "pytorch_backend_w_" in line
    }


def test_weight_sharing_keeps_one_copy_of_the_weights(triton, tmp_path):
    """3 CPU instances of a 192 MiB model: with sharing no instance keeps a private copy of the
    weights (all map one /dev/shm file, unlinked once the third mapped it), so their private
    memory drops by ~3 copies and is less than half of that of 3 instances without sharing;
    results are identical and correct."""
    big = Big().eval()
    artifact = tmp_path / "big.pt"
    torch.jit.script(big).save(str(artifact))
    weights = sum(p.numel() * p.element_size() for p in big.parameters())
    x = np.random.default_rng(0).standard_normal((2, 2048)).astype(np.float32)
    with torch.no_grad():
        expected = big(torch.from_numpy(x)).numpy()
    del big

    repo = tmp_path / "repo"
    three = "instance_group [ { kind: KIND_CPU count: 3 } ]"
    for name, parameters in (("shared", {"ENABLE_WEIGHT_SHARING": "true"}), ("private", {})):
        config = model_config(name, *BIG_IO, parameters=parameters, extra=three)
        write_model(repo, name, config, {"1/model.pt": artifact})
    running = triton(repo)
    shm_file = None
    try:
        assert {m.name: m.state for m in running.models()} == {
            "shared": "READY",
            "private": "READY",
        }
        results = {}
        for protocol in PROTOCOLS:
            for name in ("shared", "private"):
                for _ in range(3):  # reach the instances in turn
                    y = infer(protocol, running, name, {"x": x})["y"]
                    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
                    results.setdefault(name, []).append(y)
        for y in results["shared"] + results["private"]:
            np.testing.assert_array_equal(y, results["private"][0])

        shared_pids = stub_pids(running, repo, "shared")
        private_pids = stub_pids(running, repo, "private")
        assert sorted(shared_pids) == ["shared_0_0", "shared_0_1", "shared_0_2"]
        assert sorted(private_pids) == ["private_0_0", "private_0_1", "private_0_2"]
        files = [shared_weight_files(pid) for pid in shared_pids.values()]
        assert len(files[0]) == 1 and files[0] == files[1] == files[2], files
        assert not any(shared_weight_files(pid) for pid in private_pids.values())
        shm_file = Path(next(iter(files[0])))
        assert not shm_file.exists()  # all three instances mapped it, so the third unlinked it

        shared = sum(private_bytes(pid) for pid in shared_pids.values())
        private = sum(private_bytes(pid) for pid in private_pids.values())
        print(
            f"private memory of 3 instances: shared {shared / 2**20:.0f} MiB, "
            f"not shared {private / 2**20:.0f} MiB (weights {weights / 2**20:.0f} MiB each)"
        )
        assert shared < private / 2
        assert private - shared > 3 * weights * 0.9  # no instance keeps a private copy
        log = running.log_text()
        assert log.count(f"written to {shm_file}") == 1
        assert log.count(f"mapped from {shm_file}") == 2
        assert log.count(f"mapped from {shm_file} (mapped by all of 3 instances: unlinked)") == 1
    finally:
        running.stop()
    assert shm_file is not None and not shm_file.exists()
