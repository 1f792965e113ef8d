"""The loopback ports of the four services: which setting names each, and a clear error when taken."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from typing import Final

from contracts.errors import Unavailable
from services.localservers import free_port
from services.settings import ENV_PREFIX, Settings

# The services in start (and display) order; each is ``python -m services.<name>.main``.
SERVICES: Final = ("card", "transaction", "ledger", "notification")


class PortInUse(Unavailable):
    """A port the dev system needs is already taken by another process."""


@dataclass(frozen=True, slots=True)
class PortUse:
    """One port a service listens on, and the setting that moves it."""

    service: str
    role: str  # "gRPC" or "metrics"
    port: int
    setting: str  # the Settings field, e.g. "card_port"

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.setting.upper()


def service_ports(settings: Settings, service: str) -> list[PortUse]:
    """The gRPC and metrics ports of one service, as configured."""
    grpc_field, metrics_field = f"{service}_port", f"{service}_metrics_port"
    return [
        PortUse(service, "gRPC", getattr(settings, grpc_field), grpc_field),
        PortUse(service, "metrics", getattr(settings, metrics_field), metrics_field),
    ]


def all_ports(settings: Settings) -> list[PortUse]:
    """Every port the four services take."""
    return [use for service in SERVICES for use in service_ports(settings, service)]


def is_free(host: str, port: int) -> bool:
    """Tell whether nothing listens on ``host:port`` (sockets in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the servers themselves use it: a just-stopped run must not block a restart.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def check_free(host: str, uses: list[PortUse]) -> None:
    """Raise ``PortInUse`` naming the first taken port and the variable that moves it."""
    seen: dict[int, PortUse] = {}
    for use in uses:
        if use.port in seen:
            other = seen[use.port]
            raise PortInUse(
                f"port {use.port} is configured for both {other.service} {other.role}"
                f" and {use.service} {use.role}: set {use.env_var} to another port"
            )
        seen[use.port] = use
        if not is_free(host, use.port):
            raise PortInUse(
                f"port {use.port} ({use.service} {use.role}) on {host} is already in use"
                f" (another `jetledger dev`?): stop it or set {use.env_var} to another port"
            )


def with_free_ports(settings: Settings) -> Settings:
    """Return ``settings`` with every service port replaced by a distinct free one (the demo's)."""
    chosen: set[int] = set()
    values: dict[str, int] = {}
    for use in all_ports(settings):
        port = free_port(settings.host)
        while port in chosen:  # the kernel may hand the same ephemeral port out twice
            port = free_port(settings.host)
        chosen.add(port)
        values[use.setting] = port
    return dataclasses.replace(settings, **values)  # type: ignore[arg-type]
