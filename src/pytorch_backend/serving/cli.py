"""The ``pytorch-backend`` command: serve a model repository, build examples, write backends.

Every user error (a :class:`~pytorch_backend.serving.errors.ToolError`) ends with one line on
stderr (``pytorch-backend: error: ...``) and exit code 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from .errors import ToolError
from .serve_args import CliError, check_address, check_ports, check_server_args
from .server import (
    ModelStatus,
    ServerError,
    TritonServer,
    assemble_backends,
    check_pytorch_alias,
    client_host,
    find_tritonserver,
)

EXAMPLES_MARKER = ".pytorch_backend_examples"
LOCALHOST = "127.0.0.1"
_ALL_ADDRESSES = ("0.0.0.0", "::")
_LOCAL_DISPLAY = (LOCALHOST, *_ALL_ADDRESSES)
DEFAULT_EXAMPLES_REPO = "model_repository_examples"


def _build_examples(repo: Path) -> object:
    try:
        from .examples import build_examples
    except ImportError as error:
        raise CliError(f"cannot build examples: {error}") from None
    try:
        return build_examples(repo)
    except Exception as error:  # one line for the user; the cause is in the message
        raise CliError(f"building examples in {repo} failed: {error}") from None


def _describe_built(repo: Path, built: object) -> str:
    if isinstance(built, Mapping):
        items = [f"{key}: {value}" for key, value in built.items()]
    elif isinstance(built, (list, tuple, set, frozenset)):
        items = [str(item) for item in built]
    else:
        items = []
    if not items and isinstance(built, (list, tuple)):
        return f"examples in {repo.absolute()} are up to date\n"
    lines = [f"built examples in {repo.absolute()}"] + [f"  {item}" for item in items]
    return "\n".join(lines) + "\n"


def _check_repository(repo: Path) -> None:
    if not repo.exists():
        raise CliError(f"model repository {repo} does not exist")
    if not repo.is_dir():
        raise CliError(f"model repository {repo} is not a folder")


def _describe_models(models: Sequence[ModelStatus]) -> list[str]:
    if not models:
        return ["  models: none"]
    lines = ["  models:"]
    for model in models:
        version = f" (version {model.version})" if model.version else ""
        state = model.state or "UNKNOWN"
        reason = " ".join(model.reason.split())
        lines.append(f"    {model.name}{version}: {state}" + (f" - {reason}" if reason else ""))
    return lines


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    repo = Path(args.repo)
    _check_repository(repo)
    check_server_args(args.server_args)
    check_address(args.address)
    ports = {"--http-port": args.http_port, "--grpc-port": args.grpc_port}
    check_ports({**ports, "--metrics-port": args.metrics_port}, args.address)
    server_path = find_tritonserver()
    if args.build_examples or (repo / EXAMPLES_MARKER).exists():
        sys.stdout.write(_describe_built(repo, _build_examples(repo)))
        sys.stdout.flush()
    extra = [f"--log-verbose={args.log_verbose}"] if args.log_verbose else []
    host = "localhost" if args.address in _LOCAL_DISPLAY else client_host(args.address)
    with tempfile.TemporaryDirectory(prefix="pytorch-backend-") as tmp:
        # Also as backend "pytorch": repositories written for the C++ backend load unchanged
        # (this fresh folder never holds the C++ backend).
        backends = assemble_backends(Path(tmp) / "backends", server_path, as_pytorch=True)
        server = TritonServer(
            repo,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log=sys.stdout,
            extra_args=[*extra, *args.server_args],
            server=server_path,
            backend_directory=backends,
            address=args.address,
        )
        signal.signal(signal.SIGTERM, _raise_interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
        try:
            server.start()
            models = server.wait_ready(timeout=None)
            summary = [
                "pytorch-backend: tritonserver is ready",
                f"  HTTP     http://{host}:{args.http_port}",
                f"  gRPC     {host}:{args.grpc_port}",
                f"  metrics  http://{host}:{args.metrics_port}/metrics",
                f"  bound to {args.address}"
                + (" (all addresses)" if args.address in _ALL_ADDRESSES else "")
                + ("; --address 0.0.0.0 accepts other hosts" if args.address == LOCALHOST else ""),
                "  backends pytorch_python and pytorch (platform pytorch_libtorch / torch_aoti)",
                *_describe_models(models),
                "pytorch-backend: serving; press Ctrl-C to stop",
            ]
            sys.stdout.write("\n".join(summary) + "\n")
            sys.stdout.flush()
            code = _wait_for_exit(server)
            raise CliError(f"tritonserver exited unexpectedly with code {code}")
        except ServerError as error:
            raise CliError(f"{error.summary} (its log is above)") from None
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            sys.stdout.write("pytorch-backend: stopping tritonserver\n")
            sys.stdout.flush()
            return 0
        finally:
            server.stop()


def _wait_for_exit(server: TritonServer) -> int:
    while server.returncode is None:
        time.sleep(0.5)
    return server.returncode


def _examples(args: argparse.Namespace) -> int:
    repo = Path(args.repo)
    sys.stdout.write(_describe_built(repo, _build_examples(repo)))
    return 0


def _check(args: argparse.Namespace) -> int:
    repo = Path(args.repo)
    _check_repository(repo)
    from .check import check_repository

    results = check_repository(repo, report=print, verbose=args.verbose)
    return 0 if all(r.ok for r in results) else 1


def _example(spec: str, index: int) -> object:
    """``2,4`` or ``2,4:int64`` -> a random tensor of that shape and dtype."""
    import torch

    shape_text, _, dtype_name = spec.partition(":")
    try:
        shape = [int(d) for d in shape_text.split(",") if d.strip()]
    except ValueError:
        raise CliError(
            f"--input {spec!r}: the shape must be integers separated by commas"
        ) from None
    dtype = getattr(torch, dtype_name or "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise CliError(f"--input {spec!r}: {dtype_name!r} is not a torch dtype")
    generator = torch.Generator().manual_seed(index)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    return torch.randint(0, 10, shape, generator=generator).to(dtype)


def _factory(path: str) -> object:
    import importlib

    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise CliError(f"{path!r} is not MODULE:FACTORY (e.g. mymodels:build_model)")
    sys.path.insert(0, str(Path.cwd()))
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise CliError(f"cannot import {path}: {error}") from None
    return factory()


def _package(args: argparse.Namespace) -> int:
    from .package import package

    module = _factory(args.factory)
    examples = [_example(spec, i) for i, spec in enumerate(args.input)]
    package(
        module,
        examples,
        args.repository,
        args.name,
        format=args.format,
        max_batch_size=args.max_batch_size,
        version=args.version,
        overwrite=args.overwrite,
        compile_cache=args.compile_cache,
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert

    options = {"version": args.version, "sample_inputs": args.samples}
    convert(args.model_dir, args.output_dir, **options, overwrite=args.overwrite)
    return 0


def _backends(args: argparse.Namespace) -> int:
    if args.as_pytorch:
        check_pytorch_alias(Path(args.dest))  # before looking for a server: the clearer error
    dest = assemble_backends(Path(args.dest), find_tritonserver(), as_pytorch=args.as_pytorch)
    print(dest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pytorch-backend``."""
    parser = argparse.ArgumentParser(
        prog="pytorch-backend",
        description="Serve PyTorch models (TorchScript, AOT-Inductor, torch.export, nn.Module) on "
        "Triton (Python backend).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run tritonserver on a model repository")
    serve.add_argument("repo", metavar="REPO", help="the model repository folder")
    serve.add_argument("--http-port", type=int, default=8000, metavar="PORT")
    serve.add_argument("--grpc-port", type=int, default=8001, metavar="PORT")
    serve.add_argument("--metrics-port", type=int, default=8002, metavar="PORT")
    serve.add_argument(
        "--address",
        default=LOCALHOST,
        help=f"address the endpoints bind to (default {LOCALHOST}; 0.0.0.0 in a container)",
    )
    serve.add_argument("--log-verbose", type=int, default=0, metavar="N", help="server log level")
    serve.add_argument(
        "--build-examples",
        action="store_true",
        help=f"build the example models first (automatic when REPO holds {EXAMPLES_MARKER})",
    )
    serve.set_defaults(func=_serve)

    examples = commands.add_parser("examples", help="build the example model repository")
    examples.add_argument("repo", metavar="REPO", nargs="?", default=DEFAULT_EXAMPLES_REPO)
    examples.set_defaults(func=_examples)

    check = commands.add_parser(
        "check", help="load every model of a repository offline; exit 1 if any fails"
    )
    check.add_argument("repo", metavar="REPO", help="the model repository folder")
    check.add_argument("--verbose", action="store_true", help="also print what each load logs")
    check.set_defaults(func=_check)

    pack = commands.add_parser(
        "package", help="export an nn.Module and write a model directory with its config.pbtxt"
    )
    pack.add_argument("factory", metavar="MODULE:FACTORY", help="a callable returning the module")
    pack.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="SHAPE[:DTYPE]",
        help="one example positional input, e.g. 2,4 or 2,4:int64 (repeat per argument)",
    )
    pack.add_argument("--repository", required=True, metavar="REPO")
    pack.add_argument("--name", required=True)
    pack.add_argument("--format", choices=("pt2", "torchscript", "eager"), default="pt2")
    pack.add_argument("--max-batch-size", type=int, default=0, metavar="N")
    pack.add_argument("--version", type=int, default=1)
    pack.add_argument("--overwrite", action="store_true")
    pack.add_argument(
        "--compile-cache",
        action="store_true",
        help="eager: compile on CPU now and ship the artifacts in <version>/compile_cache/",
    )
    pack.set_defaults(func=_package)

    conv = commands.add_parser(
        "convert", help="convert a TorchScript model directory to an AOT-Inductor (.pt2) one"
    )
    conv.add_argument("model_dir", metavar="MODEL_DIR", help="the TorchScript model directory")
    conv.add_argument("output_dir", metavar="OUTPUT_DIR", help="the model directory to write")
    conv.add_argument("--version", default=None, help="version to convert (default: highest)")
    conv.add_argument("--samples", default=None, metavar="NPZ", help="sample inputs by name")
    conv.add_argument("--overwrite", action="store_true")
    conv.set_defaults(func=_convert)

    backends = commands.add_parser(
        "backends", help="write a backends folder for tritonserver --backend-directory"
    )
    backends.add_argument("dest", metavar="DEST")
    backends.add_argument(
        "--as-pytorch",
        action="store_true",
        help="also install as backend 'pytorch', so C++-backend configs load unchanged "
        "(refused when DEST/pytorch holds the C++ backend)",
    )
    backends.set_defaults(func=_backends)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pytorch-backend`` console script.

    ``serve REPO [options] -- ARGS``: every argument after ``--`` goes to tritonserver.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    server_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, server_args = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if server_args and args.command != "serve":
        parser.error("only serve passes arguments after -- to tritonserver")
    args.server_args = server_args
    try:
        return args.func(args)
    except ToolError as error:  # CliError, PackageError, ConvertError, BackendAssemblyError...
        print(f"pytorch-backend: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # interrupted before serving started
        return 130


if __name__ == "__main__":
    sys.exit(main())
