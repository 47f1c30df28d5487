"""Instance devices: which device an instance runs on, KIND_MODEL placement, instance CUDA streams.

Nothing here creates a CUDA context for a CPU instance: only ``torch.cuda.is_available()`` and
``torch.cuda.device_count()`` are consulted, which query the driver without initialising CUDA.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Union

import torch

from ..config import InstanceKind
from ..errors import ModelLoadError

DeviceSpec = Union[torch.device, Iterable[torch.device], None]


def resolve_instance_device(
    kind: InstanceKind, device_id: int, model_name: str
) -> torch.device | None:
    """The device of one instance, from its kind and the Python backend's device id.

    ``CPU`` -> ``cpu``; ``GPU`` -> ``cuda:<device_id>`` (a clear ModelLoadError when CUDA is not
    usable or the id does not exist); ``MODEL`` -> None: the backend does not choose, the model's
    saved placement is kept (see :func:`kind_model_placement`).
    """
    if kind is InstanceKind.CPU:
        return torch.device("cpu")
    if kind is InstanceKind.MODEL:
        return None
    if not torch.cuda.is_available():
        reason = (
            "this torch build has no CUDA support"
            if torch.version.cuda is None
            else "no CUDA device is visible to this process"
        )
        raise ModelLoadError(
            f"instance kind GPU (device {device_id}) requested but CUDA is not available "
            f"({reason}, torch {torch.__version__}); use instance_group kind KIND_CPU or install "
            "a CUDA build of torch",
            model=model_name,
        )
    count = torch.cuda.device_count()
    if not 0 <= int(device_id) < count:
        raise ModelLoadError(
            f"instance kind GPU requested device id {device_id}, but this process sees {count} "
            f"CUDA device(s) (valid ids 0..{count - 1})",
            model=model_name,
        )
    return torch.device("cuda", int(device_id))


def module_tensors(module: Any) -> Iterator[torch.Tensor]:
    """Every parameter and buffer of ``module`` (and, for TorchScript, every tensor attribute).

    Objects that are not modules (e.g. an AOTInductor runner) yield nothing.
    """
    if isinstance(module, torch.jit.ScriptModule):
        try:
            attributes = torch._C._jit_debug_module_iterators(module._c)["named_attributes_r"]
        except (AttributeError, KeyError, RuntimeError):
            attributes = None
        if attributes is not None:
            yield from (v for _, v in attributes if isinstance(v, torch.Tensor))
            return
    if isinstance(module, torch.nn.Module):
        yield from module.parameters()
        yield from module.buffers()


def module_devices(module: Any) -> tuple[torch.device, ...]:
    """The distinct devices the module's tensors live on, sorted (``cpu`` first)."""
    found = {t.device for t in module_tensors(module)}
    return tuple(sorted(found, key=lambda d: (d.type != "cpu", d.type, d.index or 0)))


def kind_model_placement(module: Any) -> torch.device | None:
    """Where to move a KIND_MODEL model, following the official docs' KIND_MODEL contract.

    * the model holds CUDA tensors -> None: devices saved in the model are kept, so a model
      spread over several GPUs stays spread;
    * no CUDA tensors and at least one GPU is visible -> ``cuda:0``, the first GPU;
    * otherwise (no GPU, or nothing to inspect) -> None.

    Inputs of KIND_MODEL instances are always prepared on the CPU; the model moves them itself.
    """
    tensors = list(module_tensors(module))
    if any(t.device.type == "cuda" for t in tensors):
        return None
    gpus = isinstance(module, torch.nn.Module) and torch.cuda.is_available()
    if gpus and torch.cuda.device_count() > 0:
        return torch.device("cuda", 0)
    return None


def activate_device(device: torch.device | None) -> None:
    """Make ``device`` the process's current CUDA device (GPU instances only; no-op otherwise).

    Each instance is its own stub process, so this is per instance: code that says ``.cuda()``
    or allocates on ``"cuda"`` then lands on the instance's GPU instead of GPU 0.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)


class InstanceStream:
    """The instance's own CUDA stream(s), current during a forward and synchronised at exit.

    ``InstanceStream(cuda_device)`` creates one stream (like the C++ backend's instance stream);
    ``InstanceStream([cuda:0, cuda:1])`` one per device (KIND_MODEL with a model spread over
    GPUs). CPU devices and None make it a no-op; creating it for a CUDA device initialises CUDA on
    that device, so create it in ``initialize``, not on the first request. Entering makes each
    stream wait for work already queued on that device's current stream (e.g. input copies);
    leaving restores the previous streams and current device and synchronises the instance
    streams, so outputs are complete when handed to Triton. Reusable, not re-entrant.
    """

    def __init__(self, device: DeviceSpec) -> None:
        if device is None:
            devices: list[torch.device] = []
        elif isinstance(device, torch.device):
            devices = [device]
        else:
            devices = list(device)
        cuda = [d for d in devices if d.type == "cuda"]
        self.devices: tuple[torch.device, ...] = tuple(
            torch.device("cuda", d.index if d.index is not None else torch.cuda.current_device())
            for d in cuda
        )
        self.streams: tuple[Any, ...] = tuple(torch.cuda.Stream(device=d) for d in self.devices)
        self._saved: list[Any] = []
        self._saved_device: int | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.streams)

    def __enter__(self) -> InstanceStream:
        if not self.streams:
            return self
        self._saved_device = torch.cuda.current_device()
        self._saved = []
        for stream in self.streams:
            previous = torch.cuda.current_stream(stream.device)
            self._saved.append(previous)
            stream.wait_stream(previous)
            torch.cuda.set_stream(stream)
        torch.cuda.set_device(self._saved_device)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.streams:
            return
        try:
            for stream in self.streams:
                stream.synchronize()
        finally:
            for previous in self._saved:
                torch.cuda.set_stream(previous)
            if self._saved_device is not None:
                torch.cuda.set_device(self._saved_device)
            self._saved = []
