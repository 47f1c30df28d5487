"""Drop-in ``TritonPythonModel`` serving TorchScript (``.pt``) and AOT-Inductor (``.pt2``) models.

Use it either way, unchanged:

* copied to ``<model>/<version>/model.py`` with ``backend: "python"`` in config.pbtxt;
* copied to ``<backends>/pytorch_python/model.py``, serving every model whose config says
  ``backend: "pytorch_python"``.

The rest of the model directory is written exactly as for Triton's C++ PyTorch backend. This is
the only module that touches ``triton_python_backend_utils``; the ``pytorch_backend`` package
must be installed where the Python backend stub runs.
"""

from __future__ import annotations

import locale


def _use_utf8_locale() -> None:
    """The stub starts in the C locale, which breaks torch._inductor: switch LC_CTYPE in-process."""
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return
        except locale.Error:
            continue


_use_utf8_locale()

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402

try:
    import torch

    from pytorch_backend.config import parse_model_config
    from pytorch_backend.devices import (
        InstanceStream,
        activate_device,
        module_devices,
        resolve_instance_device,
    )
    from pytorch_backend.engine import InferenceEngine, RequestInputs
    from pytorch_backend.errors import PyTorchBackendError, RequestError
    from pytorch_backend.executors.torchscript import TorchScriptExecutor
    from pytorch_backend.loader import artifact_path, build_executor
    from pytorch_backend.parameters import parse_parameters
    from pytorch_backend.runtime import after_execute, apply_runtime_settings, execution_context
    from pytorch_backend.strings import decode_strings, encode_strings
except ImportError as exc:  # pragma: no cover - only reachable inside a misconfigured stub
    raise ImportError(
        f"pytorch_backend cannot be imported by the Python backend stub ({exc}). Install it in "
        "the environment the stub runs in: pip install pytorch-backend (and torch)."
    ) from exc


class _Log:
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


_LOG = _Log


class TritonPythonModel:
    """One model instance: load at ``initialize``, serve batches at ``execute``."""

    def initialize(self, args: dict[str, str]) -> None:
        config = parse_model_config(args["model_config"])
        instance = args.get("model_instance_name", config.name)
        prefix = f"pytorch_backend: model '{config.name}' instance '{instance}'"
        params = parse_parameters(config.name, config.parameters, warn=_LOG.log_warn)
        device = resolve_instance_device(
            args.get("model_instance_kind", "CPU"),
            int(args.get("model_instance_device_id", 0) or 0),
            config.name,
        )
        version_dir = Path(args["model_repository"]) / args["model_version"]
        # Relative CUSTOM_OP_LIBRARIES entries are relative to the version directory.
        libraries = tuple(str(version_dir / lib) for lib in params.custom_op_libraries)
        params = dataclasses.replace(params, custom_op_libraries=libraries)
        activate_device(device)
        apply_runtime_settings(
            params, config, instance_name=instance, device=device, log=_LOG.log_info
        )
        path = artifact_path(config, version_dir, params.model_filename)
        executor = build_executor(config, path, device)
        self._shared_weights = None
        if params.enable_weight_sharing:
            self._shared_weights = _share_weights(
                executor, config.name, args["model_version"], path, device, prefix
            )
        module = getattr(executor, "module", None)
        # KIND_MODEL: one stream per GPU the model's tensors live on (none on CPU).
        stream = InstanceStream(device if device is not None else module_devices(module))

        @contextlib.contextmanager
        def context():
            with stream, execution_context(params):
                yield

        self._config = config
        self._specs = {spec.name: spec for spec in config.inputs}
        self._engine = InferenceEngine(
            config, executor, context=context, after_execute=lambda: after_execute(params, device)
        )
        kind = "AOT-Inductor package" if config.is_aoti else "TorchScript"
        where = device if device is not None else "the model's own devices (KIND_MODEL)"
        _LOG.log_info(f"{prefix}: loaded {kind} '{path}' on {where}")
        for line in executor.describe_bindings():
            _LOG.log_info(f"{prefix}: {line}")

    def execute(self, requests: list) -> list:
        try:
            outcomes = self._engine.infer([self._request_inputs(r) for r in requests])
            return [self._response(outcome) for outcome in outcomes]
        except Exception as exc:  # never raise out of execute: answer every request
            message = f"model '{self._config.name}': internal error: {type(exc).__name__}: {exc}"
            _LOG.log_error(message)
            return [
                pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests
            ]

    def finalize(self) -> None:
        self._engine = None
        if self._shared_weights is not None:
            self._shared_weights.release()

    # -- conversion between Triton and torch ---------------------------------------------------

    def _request_inputs(self, request) -> RequestInputs | PyTorchBackendError:
        inputs = {}
        try:
            for tensor in request.inputs():
                name = tensor.name()
                spec = self._specs.get(name)
                if spec is not None and spec.is_string:
                    inputs[name] = decode_strings(name, tensor.as_numpy())
                    continue
                inputs[name] = torch.from_dlpack(tensor.to_dlpack())
            requested = request.requested_output_names()
        except PyTorchBackendError as exc:
            return exc
        except Exception as exc:
            return RequestError(f"cannot read the request's inputs: {exc}")
        return RequestInputs(inputs, frozenset(requested) if requested else None)

    def _response(self, outcome):
        if isinstance(outcome, PyTorchBackendError):
            return pb_utils.InferenceResponse(error=_triton_error(self._config.name, outcome))
        tensors = []
        for name, value in outcome.items():
            if isinstance(value, list):
                tensors.append(pb_utils.Tensor(name, encode_strings(value, [len(value)])))
            else:
                tensors.append(pb_utils.Tensor.from_dlpack(name, value))
        return pb_utils.InferenceResponse(output_tensors=tensors)


def _share_weights(executor, model: str, version: str, path: Path, device, prefix: str):
    """ENABLE_WEIGHT_SHARING: map CPU weights from one shared file (see weight_sharing.py)."""
    from pytorch_backend.weight_sharing import share_module_weights, weights_key

    if not isinstance(executor, TorchScriptExecutor) or device is None or device.type != "cpu":
        _LOG.log_info(
            f"{prefix}: ENABLE_WEIGHT_SHARING applies to TorchScript models on "
            "KIND_CPU instances; this instance keeps its own weights"
        )
        return None
    return share_module_weights(
        executor.module,
        weights_key(model, version, path),
        log=lambda m: _LOG.log_info(f"{prefix}: {m}"),
        warn=lambda m: _LOG.log_warn(f"{prefix}: {m}"),
    )


def _triton_error(model: str, error: PyTorchBackendError):
    code = pb_utils.TritonError.INVALID_ARG if isinstance(error, RequestError) else None
    message = str(error)
    if f"model '{model}'" not in message:
        message = f"model '{model}': {message}"
    if code is None:
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)
