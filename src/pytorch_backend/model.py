"""Drop-in ``TritonPythonModel`` serving TorchScript, AOT-Inductor, ``torch.export`` and eager
``nn.Module`` models (``forward`` or the method named by ``METHOD``).

Use it either way, unchanged:

* copied to ``<model>/<version>/model.py`` with ``backend: "python"`` in config.pbtxt;
* copied to ``<backends>/pytorch_python/model.py``, serving every model whose config says
  ``backend: "pytorch_python"``.

This file only adapts Triton: requests to plain torch values and back, responses, errors and
the logger. Everything else is built by ``pytorch_backend.instance`` (the composition root), which
must be installed where the Python backend stub runs.
"""

from __future__ import annotations

import locale
import time
from pathlib import Path


def _use_utf8_locale() -> None:
    """The stub starts in the C locale, which breaks torch._inductor: switch LC_CTYPE in-process."""
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return
        except locale.Error:
            continue


def _watch_for_orphaning(only_in_a_stub: bool = False) -> None:
    """End this stub promptly if its tritonserver dies (``runtime.orphan``; idempotent).

    ``only_in_a_stub``: do nothing unless this process is a Python-backend stub (at import).
    """
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = [part.decode(errors="replace") for part in f.read().split(b"\0")]
    except OSError:
        argv = []
    region = orphan.stub_shm_region(argv)
    if region is not None or not only_in_a_stub:
        orphan.watch(region)


_use_utf8_locale()

import triton_python_backend_utils as pb_utils  # noqa: E402

try:
    from pytorch_backend.runtime import omp_wait, orphan

    # From import on, before torch: on a busy machine a stub can spend minutes importing it,
    # and a stub whose server dies meanwhile must not linger either.
    _watch_for_orphaning(only_in_a_stub=True)
    omp_wait.prefer_passive()  # libgomp reads it once, when torch loads it

    import torch

    from pytorch_backend import logs
    from pytorch_backend.autocomplete import complete_config
    from pytorch_backend.dlpack import exportable
    from pytorch_backend.errors import (
        PyTorchBackendError,
        RequestCancelled,
        RequestError,
        Unavailable,
    )
    from pytorch_backend.instance import Instance, InstanceArgs, build_instance
    from pytorch_backend.requests import RequestInputs, SequenceId
    from pytorch_backend.strings import decode_strings, encode_strings
except ImportError as exc:  # pragma: no cover - only reachable inside a misconfigured stub
    raise ImportError(
        f"pytorch_backend cannot be imported by the Python backend stub ({exc}). Install it in "
        "the environment the stub runs in (pip install . from a checkout, with torch)."
    ) from exc


class _TritonSink:
    """``pb_utils.Logger``, looked up at call time (the stub adds it after importing model.py)."""

    @staticmethod
    def log_info(message: str) -> None:
        pb_utils.Logger.log_info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        pb_utils.Logger.log_warn(message)

    @staticmethod
    def log_error(message: str) -> None:
        pb_utils.Logger.log_error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        pb_utils.Logger.log_verbose(message)


logs.set_sink(_TritonSink())


def _version_dir() -> Path:
    """The version directory of the model being auto-completed.

    ``pb_utils.get_model_dir()`` (Python backend 24.x) returns it; older stubs only have it as the
    directory of their first argument, the model's ``<version>/model.py`` path.
    """
    get_model_dir = getattr(pb_utils, "get_model_dir", None)
    if get_model_dir is not None:
        return Path(get_model_dir())
    with open("/proc/self/cmdline", "rb") as f:
        return Path(f.read().split(b"\0")[1].decode()).parent


class _TritonMetrics:
    """``pytorch_backend.metrics.Registry`` on ``pb_utils.MetricFamily`` (one family per name)."""

    def __init__(self, family_type) -> None:
        self._type = family_type
        self._families: dict = {}

    @classmethod
    def create(cls):
        """The registry, or None on a server without the custom metrics API (before 22.12)."""
        family_type = getattr(pb_utils, "MetricFamily", None)
        return cls(family_type) if family_type is not None else None

    def _metric(self, spec, kind, labels):
        family = self._families.get(spec.name)
        if family is None:
            family = self._type(name=spec.name, description=spec.help, kind=kind)
            self._families[spec.name] = family
        return family.Metric(labels=dict(labels))

    def counter(self, spec, labels):
        return self._metric(spec, self._type.COUNTER, labels)

    def gauge(self, spec, labels):
        return self._metric(spec, self._type.GAUGE, labels)

    def close(self) -> None:
        self._families.clear()  # after the instance dropped its series, as the API requires


class TritonPythonModel:
    """One model instance: load at ``initialize``, serve batches at ``execute``."""

    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        """Fill what config.pbtxt leaves out from the model file (see ``autocomplete``)."""
        completion = complete_config(auto_complete_model_config.as_dict(), _version_dir())
        for entry in completion.inputs:
            auto_complete_model_config.add_input(entry)
        for entry in completion.outputs:
            auto_complete_model_config.add_output(entry)
        if completion.reshapes:  # add_input/add_output cannot say reshape: set it in the dict
            config = auto_complete_model_config.as_dict()
            for item in [*config.get("input", ()), *config.get("output", ())]:
                if item.get("name") in completion.reshapes:
                    item["reshape"] = {"shape": completion.reshapes[item["name"]]}
        if completion.max_batch_size is not None:
            auto_complete_model_config.set_max_batch_size(completion.max_batch_size)
        if completion.dynamic_batching:
            auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        _watch_for_orphaning()
        self._metrics = _TritonMetrics.create()
        try:
            self._instance: Instance = build_instance(
                InstanceArgs.from_triton(args), metrics=self._metrics
            )
        except PyTorchBackendError as error:
            failure = error
        else:
            self._strings = {s.name for s in self._instance.config.inputs if s.is_string}
            self._sequences = self._instance.sequences is not None
            self._skipped = self._instance.stages.provides  # inputs a stage supplies itself
            if self._instance.metrics is not None:
                self._instance.metrics.start()  # flushes between executes (see metrics.py)
            return
        # Raised here, without the frames it came through: the Python backend appends every
        # frame of the traceback ("At: file(line)") to the load error a user reads.
        raise failure.with_traceback(None) from None

    def execute(self, requests: list) -> list:
        with self._instance.executing():  # metrics reach the server between executes only
            try:
                start = time.perf_counter_ns()
                inputs = [self._request_inputs(r) for r in requests]
                self._instance.requests_read(time.perf_counter_ns() - start)
                outcomes = self._instance.infer(inputs)
                start = time.perf_counter_ns()
                responses = [self._response(outcome) for outcome in outcomes]
                self._instance.responded(time.perf_counter_ns() - start)
                return responses
            except Exception as exc:  # never raise out of execute: answer every request
                message = f"internal error: {type(exc).__name__}: {exc}"
                self._instance.log.error(message)
                error = self._error(PyTorchBackendError(message))
                return [pb_utils.InferenceResponse(error=error) for _ in requests]

    def is_ready(self) -> bool:
        """Readiness (Python backends with user readiness checks, 26.x; older ones never call
        it): False once a sticky CUDA error made this instance unusable."""
        instance = getattr(self, "_instance", None)
        return instance is not None and instance.ready

    is_model_ready = is_ready  # the name some Python backend releases look up

    def finalize(self) -> None:
        if orphan.orphaned():  # the server is gone: nothing below could reach it, and would hang
            orphan.exit_now()
        instance = getattr(self, "_instance", None)
        if instance is not None:
            instance.close()
        if getattr(self, "_metrics", None) is not None:
            self._metrics.close()

    def _request_inputs(self, request) -> RequestInputs | PyTorchBackendError:
        inputs = {}
        try:
            for tensor in request.inputs():
                name = tensor.name()
                if name in self._skipped:
                    continue
                if name in self._strings:
                    inputs[name] = decode_strings(name, tensor.as_numpy())
                else:
                    inputs[name] = torch.from_dlpack(tensor.to_dlpack())
            requested = request.requested_output_names()
        except PyTorchBackendError as exc:
            return exc
        except Exception as exc:
            return RequestError(f"cannot read the request's inputs: {exc}")
        sequence = self._sequence_id(request) if self._sequences else None
        # Python backend 23.10+ can ask whether the client cancelled (the cancellation stage does)
        cancelled = getattr(request, "is_cancelled", None)
        requested_outputs = frozenset(requested) if requested else None
        return RequestInputs(inputs, requested_outputs, sequence, cancelled)

    @staticmethod
    def _sequence_id(request) -> SequenceId:
        """The request's correlation id and START (1) / END (2) flags (sequence state models)."""
        flags = request.flags()
        start = bool(flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START)
        end = bool(flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
        return SequenceId(request.correlation_id(), start, end)

    def _response(self, outcome):
        if isinstance(outcome, PyTorchBackendError):
            return pb_utils.InferenceResponse(error=self._error(outcome))
        tensors = []
        for name, value in outcome.items():
            if isinstance(value, list):
                tensors.append(pb_utils.Tensor(name, encode_strings(value, [len(value)])))
            else:
                tensors.append(pb_utils.Tensor.from_dlpack(name, exportable(value)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, error: PyTorchBackendError):
        """A Triton error whose text names the model once (INVALID_ARG for a bad request)."""
        message = str(error.for_model(self._instance.config.name))
        code = None
        if isinstance(error, RequestError):
            code = pb_utils.TritonError.INVALID_ARG
        elif isinstance(error, RequestCancelled):
            code = getattr(pb_utils.TritonError, "CANCELLED", None)
        elif isinstance(error, Unavailable):
            code = getattr(pb_utils.TritonError, "UNAVAILABLE", None)
        return (
            pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
        )
