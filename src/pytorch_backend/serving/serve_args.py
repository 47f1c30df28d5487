"""What ``pytorch-backend serve`` checks of its arguments before it starts tritonserver, and the
CLI's one error type."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence

from .errors import ToolError
from .server import port_in_use

#: tritonserver flags that ``serve`` sets itself, and what to use instead.
OWN_FLAGS = {
    "--model-repository": "give the repository as REPO",
    "--model-store": "give the repository as REPO",
    "--backend-directory": "serve assembles it; use `pytorch-backend backends` and run "
    "tritonserver yourself",
    "--http-port": "use --http-port",
    "--grpc-port": "use --grpc-port",
    "--metrics-port": "use --metrics-port",
    "--http-address": "use --address",
    "--grpc-address": "use --address",
    "--metrics-address": "use --address",
}


class CliError(ToolError):
    """A user-facing error: printed as one line, exit code 1."""


def check_address(address: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
    except OSError as error:
        reason = error.strerror or str(error)
        raise CliError(f"cannot bind to --address {address}: {reason}") from None


def check_server_args(server_args: Sequence[str]) -> None:
    """Arguments after ``--`` go to tritonserver, except those ``serve`` sets itself."""
    for arg in server_args:
        flag = arg.split("=", 1)[0]
        if flag in OWN_FLAGS:
            raise CliError(
                f"{flag} is set by pytorch-backend serve; {OWN_FLAGS[flag]} instead of "
                "passing it after --"
            )


def check_ports(ports: Mapping[str, int], address: str) -> None:
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if not 0 < port < 65536:
            raise CliError(f"{flag} {port} is not a valid port number")
        if port in seen:
            raise CliError(f"{seen[port]} and {flag} are both {port}; give each its own port")
        seen[port] = flag
        if port_in_use(port, address):
            raise CliError(f"port {port} ({flag}) is already in use; choose another with {flag}")
