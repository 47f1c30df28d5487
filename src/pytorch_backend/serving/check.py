"""``pytorch-backend check REPO``: load every model of a repository offline, as the server would.

For each model folder and version: parse ``config.pbtxt`` (Triton's protobuf text format), run
auto-completion (the server's default), then build one instance with
:func:`pytorch_backend.instance.build_instance` (config, parameters, device, kind, artifact,
executor load and probes) and release it. Problems carry the same text the load would give.
An output shape that contradicts the config's dims, where the load sees one (an AOT-Inductor
package's test run, the warm-up), is a warning under the model's line: the server serves the
model's shape (``OUTPUT_SHAPE_CHECK`` ``warn``) or fails such requests (``error``). Models whose
backend is neither ``pytorch_python`` nor ``python`` are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..autocomplete import complete_config
from ..config import InstanceKind
from ..errors import PyTorchBackendError
from ..instance import InstanceArgs, build_instance

BACKENDS = ("pytorch_python", "python")


@dataclass(frozen=True)
class Result:
    """The outcome of checking one model version (``problem`` empty: it loads)."""

    model: str
    version: str
    summary: str = ""
    problem: str = ""
    warnings: tuple[str, ...] = ()  # output shapes that contradict the config's dims

    @property
    def ok(self) -> bool:
        return not self.problem

    def line(self) -> str:
        """The model version's line, then one indented line per warning."""
        where = f"{self.model} (version {self.version})" if self.version else self.model
        line = f"{where}: " + (f"OK - {self.summary}" if self.ok else f"ERROR - {self.problem}")
        return "\n".join([line, *(f"    WARNING - {w}" for w in self.warnings)])


class _Lines:
    """A log sink collecting what a load logs (shown with ``--verbose``)."""

    def __init__(self, report: Callable[[str], None] | None) -> None:
        self.report = report

    def _line(self, message: str) -> None:
        if self.report is not None:
            self.report(f"    {message}")

    log_info = log_warn = log_error = log_verbose = _line


def read_config(path: Path) -> dict[str, Any]:
    """``config.pbtxt`` as the JSON dict Triton hands to the backend."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    # Print empty repeated fields too, as Triton does: an empty ``reshape { }`` must stay
    # ``{"shape": []}``. int64 fields (dims) come back as strings; the config parser takes both.
    try:
        text = json_format.MessageToJson(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5
        text = json_format.MessageToJson(
            message, preserving_proto_field_name=True, including_default_value_fields=True
        )
    return json.loads(text)


def _instance_kind(config: dict[str, Any]) -> InstanceKind:
    kinds = [g.get("kind", "KIND_AUTO") for g in config.get("instance_group") or ()]
    if "KIND_GPU" in kinds:
        return InstanceKind.GPU
    if "KIND_MODEL" in kinds:
        return InstanceKind.MODEL
    return InstanceKind.CPU


def _versions(model_dir: Path) -> list[Path]:
    return sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )


def check_model(model_dir: Path, verbose: Callable[[str], None] | None = None) -> Iterator[Result]:
    """Check every version of one model folder."""
    name = model_dir.name
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        yield Result(name, "", problem=f"no config.pbtxt in {model_dir}")
        return
    try:
        config = read_config(config_path)
    except Exception as error:  # noqa: BLE001 - text_format raises ParseError and others
        yield Result(name, "", problem=f"config.pbtxt does not parse: {error}")
        return
    config["name"] = config.get("name") or name  # Triton names it after its folder
    if config.get("backend") not in BACKENDS:
        yield Result(name, "", summary=f"skipped (backend {config.get('backend')!r})")
        return
    versions = _versions(model_dir)
    if not versions:
        yield Result(name, "", problem=f"no version folder (e.g. {model_dir / '1'})")
    for version_dir in versions:
        yield _check_version(config, model_dir, version_dir.name, verbose)


def _check_version(
    config: dict[str, Any], model_dir: Path, version: str, verbose: Callable[[str], None] | None
) -> Result:
    name = config["name"]
    sink = _Lines(verbose)
    try:
        completed = complete_config(config, model_dir / version, sink).apply(config)
        args = InstanceArgs(
            model_config=completed,
            instance_name=f"{name}_0",
            kind=_instance_kind(completed),
            device_id=0,
            model_dir=model_dir,
            version=version,
        )
        instance = build_instance(args, sink)
    except PyTorchBackendError as error:
        return Result(name, version, problem=str(error))
    except Exception as error:  # noqa: BLE001 - anything the load would fail with
        return Result(name, version, problem=f"{type(error).__name__}: {error}")
    try:
        cfg = instance.config
        summary = (
            f"{instance.kind.value}, {len(cfg.inputs)} input(s), {len(cfg.outputs)} output(s), "
            f"max_batch_size {cfg.max_batch_size}"
        )
        warnings = tuple(instance.engine.output_shapes.seen.values())
    finally:
        instance.close()
    return Result(name, version, summary=summary, warnings=warnings)


def check_repository(
    repo: Path,
    report: Callable[[str], None] = print,
    verbose: bool = False,
) -> list[Result]:
    """Check every model folder of ``repo``; report one line per model version."""
    results = []
    for model_dir in sorted(p for p in Path(repo).iterdir() if p.is_dir()):
        if model_dir.name.startswith("."):
            continue
        for result in check_model(model_dir, report if verbose else None):
            report(result.line())
            results.append(result)
    failed = [r for r in results if not r.ok]
    warned = sum(1 for r in results if r.warnings)
    report(
        f"{len(results)} model version(s) checked, {len(failed)} with problems"
        + (f", {warned} with warnings" if warned else "")
    )
    return results
