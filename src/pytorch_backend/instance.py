"""The composition root: from Triton's instance arguments to a ready-to-serve :class:`Instance`.

:func:`build_instance` reads as the list of load phases, in order: parse the config and its
parameters, pick the device, apply the torch settings, resolve the model kind and its artifact,
load the executor through the registry (its output shapes at load go to the instance's
output-shape check), share weights, assemble the hooks (metrics among them) and the engine, warm
up, choose the intra-op threads, assemble the request stages (:mod:`.stages`), log what was done.
Nothing here touches Triton, so every phase is unit-tested with plain torch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import torch_compat
from .config import (
    BackendParameters,
    InstanceKind,
    ModelConfig,
    ModelKind,
    parse_model_config,
    parse_parameters,
)
from .config.decision import Decision
from .config.parameters import BY_KEY
from .engine import InferenceEngine
from .errors import PyTorchBackendError
from .executors.base import Executor, LoadContext
from .executors.registry import REGISTRY, resolve_model
from .hooks import Hook, Hooks
from .logs import InstanceLog, Sink
from .metrics import MetricsHook, Registry, series_labels
from .requests import Outcome, RequestInputs
from .runtime.cuda_graphs import CudaGraphBackend, GraphExecutor, cuda_graphs_unsupported
from .runtime.devices import InstanceStream, activate_device, resolve_instance_device
from .runtime.execution import (
    CacheCleaningHook,
    GradPolicyHook,
    StickyErrorWatch,
    StreamHook,
    stop_server,
)
from .runtime.output_shapes import OutputShapes
from .runtime.report import EffectiveSettings, effective_lines
from .runtime.settings import RuntimeSettings, apply_runtime_settings
from .runtime.staging import PinnedStaging
from .runtime.thread_choice import choose_after_warm_up
from .runtime.trust import check_model_files
from .runtime.warmup import warm_up, warmup_buckets
from .sequence_state import SequenceStates
from .stages import Stages, request_stages
from .stages.cancellation import WarmupForwards
from .stages.sequence import sequence_states
from .stages.sticky import StickyStage


@dataclass(frozen=True)
class InstanceArgs:
    """What Triton tells one instance at ``initialize``, as plain values."""

    model_config: str | Mapping[str, Any]  # Triton's model config (JSON text or parsed)
    instance_name: str
    kind: InstanceKind
    device_id: int
    model_dir: Path  # <repository>/<model>
    version: str

    @property
    def version_dir(self) -> Path:
        return self.model_dir / self.version

    @classmethod
    def from_triton(cls, args: Mapping[str, str]) -> InstanceArgs:
        """From the ``args`` dict the Python backend passes to ``initialize``."""
        return cls(
            model_config=args["model_config"],
            instance_name=args.get("model_instance_name", ""),
            kind=InstanceKind.parse(args.get("model_instance_kind", "CPU") or "CPU"),
            device_id=int(args.get("model_instance_device_id", 0) or 0),
            model_dir=Path(args["model_repository"]),
            version=str(args["model_version"]),
        )


@dataclass
class Instance:
    """One loaded model instance: serves requests until :meth:`close`."""

    config: ModelConfig
    params: BackendParameters
    kind: ModelKind
    device: torch.device | None  # None: KIND_MODEL
    executor: Executor
    engine: InferenceEngine
    log: InstanceLog
    stages: Stages  # per request, before the engine: cancellation, sticky error, sequence state
    shared_weights: Any | None = None  # runtime.weight_sharing.SharedWeightsInfo
    metrics: MetricsHook | None = None  # None: ENABLE_METRICS false or no metrics API
    sequences: SequenceStates | None = None  # models with sequence_batching state

    def __post_init__(self) -> None:
        self._sticky = next(s for s in self.stages.stages if isinstance(s, StickyStage))

    @property
    def sticky(self) -> StickyErrorWatch:
        """The forward hook that detects sticky CUDA errors (its stage refuses requests)."""
        return self._sticky.watch

    @sticky.setter
    def sticky(self, watch: StickyErrorWatch) -> None:
        self._sticky.watch = watch

    @property
    def ready(self) -> bool:
        """False once a sticky CUDA error made the instance unusable (``is_ready``)."""
        return self.sticky.error is None

    def infer(self, requests: Sequence[RequestInputs | PyTorchBackendError]) -> list[Outcome]:
        """One outcome per request, in order: through the stages, the engine, and back."""
        return self.stages.run(requests, self.engine.infer)

    def executing(self) -> AbstractContextManager[None]:
        """Around one execute (the adapter's): metrics flush between executes, never during."""
        return self.metrics.executing() if self.metrics is not None else nullcontext()

    def requests_read(self, nanoseconds: int) -> None:
        """The adapter reports how long reading the last execute's requests took."""
        if self.metrics is not None:
            self.metrics.steps.read += nanoseconds

    def responded(self, nanoseconds: int) -> None:
        """The adapter reports how long building the last execute's responses took."""
        if self.metrics is not None:
            self.metrics.responded(nanoseconds)

    def close(self) -> None:
        """Release what the instance holds (shared weights, metric series); idempotent."""
        shared, self.shared_weights = self.shared_weights, None
        if shared is not None:
            shared.release()
        metrics, self.metrics = self.metrics, None
        if metrics is not None:
            metrics.close()
        if self.sequences is not None:
            self.sequences.clear()


def build_instance(
    args: InstanceArgs, sink: Sink | None = None, metrics: Registry | None = None
) -> Instance:
    """Load one instance; a load failure raises a PyTorchBackendError naming the model.

    ``metrics``: where the instance's metrics go (None: the server has no metrics API).
    """
    start = time.perf_counter()
    config = parse_model_config(args.model_config)
    log = InstanceLog(config.name, args.instance_name or f"{config.name}_0", sink)
    try:
        instance = _build(args, config, log, metrics)
    except PyTorchBackendError as error:
        raise error.for_model(config.name, log.instance) from None
    if instance.metrics is not None:
        instance.metrics.loaded(time.perf_counter() - start)
    return instance


def _build(
    args: InstanceArgs, config: ModelConfig, log: InstanceLog, registry: Registry | None
) -> Instance:
    unsupported = torch_compat.unsupported_reason()
    if unsupported is not None:
        raise config.error(unsupported)
    params = _parameters(config, args, log)
    buckets = warmup_buckets(config, params) if params.warmup else []
    if params.refuse_writable_model_directory:
        check_model_files(config.name, args.model_dir, args.version_dir)
    device = resolve_instance_device(args.kind, args.device_id, config.name)
    activate_device(device)
    settings = apply_runtime_settings(params, config, device)
    resolved = resolve_model(config, args.version_dir, params)
    kind, path = resolved.kind, resolved.path
    log.info(f"model kind: {kind.value} ({resolved.reason})")
    executor = REGISTRY[kind].load(LoadContext(config, path, device, log, params))
    output_shapes = OutputShapes(config, log, params.output_shape_check)
    output_shapes.at_load(executor.capabilities.load_run)
    sharing = _share_weights(config, params, args, kind, path, device, executor, log)
    sticky = StickyErrorWatch(_on_sticky_error(params, log), _cuda_devices(device, executor))
    metrics = _metrics(registry, config, params, args, log, device, executor)
    hook = metrics.value
    base_hooks = _hooks(params, settings, device, executor, sticky)
    hooks = _metered(base_hooks, sticky, hook)
    graphs = _cuda_graphs(params, kind, device, executor, buckets, log)
    executor = graphs.value or executor
    staging = _staging(executor)
    engine = InferenceEngine(config, executor, hooks, log, staging, output_shapes)
    forwards = WarmupForwards()  # what the warm-up measured, for ENABLE_CANCELLATION_CHECK
    warmup_hooks = Hooks([*base_hooks.hooks, forwards])
    _warm_up(config, executor, warmup_hooks, buckets, log, staging, output_shapes)
    warm = InferenceEngine(config, executor, base_hooks, log, staging, output_shapes).infer
    settings = choose_after_warm_up(
        settings, config, buckets, executor.capabilities.warmup_shapes, warm
    )
    graphs = Decision(graphs.value, graphs.value.seal()) if graphs.value else graphs
    sequences = sequence_states(config, args.model_dir, executor.input_device, log)
    if sequences is not None and hook is not None:
        hook.watch_sequences(sequences.live)
    steps = hook.steps if hook is not None else None
    stages, cancellation = request_stages(params, forwards.cheapest, sticky, sequences, steps)
    effective = EffectiveSettings(
        params,
        settings,
        device,
        config.cpu_instance_count,
        sharing,
        kind,
        metrics=metrics,
        warmup=buckets,
        cuda_graphs=graphs,
        cancellation_check=cancellation,
    )
    for line in effective_lines(effective):
        log.info(line)
    where = device if device is not None else "the model's own devices (KIND_MODEL)"
    log.info(f"loaded {kind.value} '{path}' on {where}")
    for line in executor.describe_bindings():
        log.info(line)
    return Instance(
        config, params, kind, device, executor, engine, log, stages, sharing.value, hook, sequences
    )


def _cuda_graphs(
    params: BackendParameters,
    kind: ModelKind,
    device: torch.device | None,
    executor: Executor,
    buckets: list[int | None],
    log: InstanceLog,
) -> Decision[GraphExecutor | None]:
    """``CUDA_GRAPHS``: the executor wrapped to capture during the warm-up, or why not."""
    if not params.cuda_graphs or kind not in BY_KEY["CUDA_GRAPHS"].applies_to:
        return Decision.off()
    reason = cuda_graphs_unsupported(device, executor.input_device, params.warmup)
    if reason is not None or device is None:
        return Decision.no_effect(str(reason))
    graphs = GraphExecutor(executor, buckets, CudaGraphBackend(device), log.warn)
    return Decision.on(graphs, "capturing during the warm-up")


def _staging(executor: Executor) -> PinnedStaging | None:
    """Pinned staging of CPU inputs where the executor takes them on a GPU."""
    device = executor.input_device
    return PinnedStaging(device) if device.type == "cuda" else None


def _warm_up(
    config: ModelConfig,
    executor: Executor,
    hooks: Hooks,
    buckets: list[int | None],
    log: InstanceLog,
    staging: PinnedStaging | None = None,
    output_shapes: OutputShapes | None = None,
) -> None:
    """The load-time warm-up (:mod:`.runtime.warmup`): compile what the executor compiles, then
    the buckets (``WARMUP``), through engines with ``hooks`` (the instance's, without metrics)."""

    def engine(runs: Executor) -> Callable[[list[RequestInputs]], list[Outcome]]:
        return InferenceEngine(config, runs, hooks, log, staging, output_shapes).infer

    seconds = warm_up(config, executor, engine, buckets, log)
    if seconds is not None:
        executor.capabilities.counters.warmup_seconds = seconds


def _parameters(config: ModelConfig, args: InstanceArgs, log: InstanceLog) -> BackendParameters:
    params = parse_parameters(config.name, config.parameters, warn=log.warn)
    # Relative CUSTOM_OP_LIBRARIES entries are relative to the version directory.
    libraries = tuple(str(args.version_dir / lib) for lib in params.custom_op_libraries)
    return dataclasses.replace(params, custom_op_libraries=libraries)


def _share_weights(
    config: ModelConfig,
    params: BackendParameters,
    args: InstanceArgs,
    kind: ModelKind,
    path: Path,
    device: torch.device | None,
    executor: Executor,
    log: InstanceLog,
) -> Decision[Any | None]:
    """``ENABLE_WEIGHT_SHARING``, decided here only: the shared weights, or why none.

    The instance that brings the count of mappers to the model's CPU instance count unlinks the
    file, so it cannot outlive the server however the instances stop.
    """
    if not params.enable_weight_sharing:
        return Decision.off()
    module = executor.capabilities.shareable_module
    if device is None:
        reason = "KIND_MODEL instances keep the devices the model chose"
    elif device.type != "cpu":
        reason = (
            "CUDA instances cannot share weights across processes (each process has its own "
            "CUDA context)"
        )
    elif module is None:
        reason = f"an {kind.value} keeps its weights inside its compiled code"
    else:
        from .runtime.weight_sharing import share_module_weights, weights_key

        key = weights_key(log.model, args.version, path)
        shared = share_module_weights(
            module, key, log=log.info, warn=log.warn, instances=config.cpu_instance_count or None
        )
        return Decision.on(shared)
    return Decision.no_effect(reason)


def _on_sticky_error(params: BackendParameters, log: InstanceLog) -> Callable[[str], None]:
    """What the instance does, once, when a forward hits a sticky CUDA error."""

    def react(error: str) -> None:
        log.error(
            f"sticky CUDA error: {error}. This process's CUDA context is unusable: the instance "
            "reports not ready and answers UNAVAILABLE from now on"
        )
        if params.stop_server_on_sticky_error:
            stop_server(log.error)

    return react


def _cuda_devices(device: torch.device | None, executor: Executor) -> tuple[torch.device, ...]:
    devices = (device,) if device is not None else executor.capabilities.devices
    return tuple(d for d in devices if d.type == "cuda")


def _metrics(
    registry: Registry | None,
    config: ModelConfig,
    params: BackendParameters,
    args: InstanceArgs,
    log: InstanceLog,
    device: torch.device | None,
    executor: Executor,
) -> Decision[MetricsHook | None]:
    """``ENABLE_METRICS``, decided here only: the metrics hook, or why none."""
    if not params.enable_metrics:
        return Decision.off()
    if registry is None:
        return Decision.no_effect("this server has no custom metrics API (MetricFamily)")
    labels = series_labels(log.model, args.version, log.instance or "")
    hook = MetricsHook(
        registry,
        labels,
        max_batch_size=config.max_batch_size,
        counters=executor.capabilities.counters,
        cuda_devices=_cuda_devices(device, executor),
    )
    return Decision.on(hook)


def _hooks(
    params: BackendParameters,
    settings: RuntimeSettings,
    device: torch.device | None,
    executor: Executor,
    sticky: StickyErrorWatch,
) -> Hooks:
    """The hooks around every forward, the warm-up's included (metrics: :func:`_metered`)."""
    # The sticky-error watch is outermost: errors surface at the stream's synchronisation too.
    hooks: list[Hook] = [sticky]
    # KIND_MODEL: one stream per GPU the model's tensors live on (none on CPU).
    stream = InstanceStream(device if device is not None else executor.capabilities.devices)
    if stream.enabled:
        hooks.append(StreamHook(stream))
    hooks.append(GradPolicyHook(params))
    if settings.cache_cleaning:
        hooks.append(CacheCleaningHook())
    return Hooks(hooks)


def _metered(hooks: Hooks, sticky: StickyErrorWatch, metrics: MetricsHook | None) -> Hooks:
    """The serving hooks: ``hooks`` and the metrics hook, last (it reads CUDA memory after the
    cache was cleaned). The warm-up runs without it: it records no metrics."""
    if metrics is None:
        return hooks
    if sticky.devices:  # the series exists for GPU instances
        metrics.watch_sticky_error(lambda: sticky.error is not None)
    return Hooks([*hooks.hooks, metrics])
