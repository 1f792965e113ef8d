"""Where webhooks may go: public addresses only, unless the operator allow-lists a network.

A webhook URL is chosen by whoever registers the endpoint, and the notification service POSTs to it
from inside the deployment: without a policy that is a server-side request forgery waiting to
happen (cloud metadata at 169.254.169.254 hands out credentials; Postgres, NATS and the services'
own ports are one hop away). So:

- the scheme is http or https, the URL carries no user info;
- every address the host resolves to must be globally routable: loopback, private (RFC 1918),
  carrier-grade NAT, link-local (metadata included), unique-local IPv6 (``fd00:ec2::254``),
  multicast, reserved and unspecified addresses are refused, as are IPv4-mapped or NAT64 forms of
  them — unless ``JETLEDGER_WEBHOOK_ALLOW_NETWORKS`` names a network that contains the address;
- the check runs at registration (a clear INVALID_ARGUMENT) and again at every delivery, where it
  is done by the HTTP client's resolver (``GuardedResolver``): the addresses checked are the
  addresses connected to, so a DNS answer that changes after registration (rebinding) gains
  nothing. Redirects are not followed; a 3xx is a failed attempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from contracts.errors import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Named for the reader; every one is also outside the global address space.
METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


class WebhookUrlRefused(InvalidArgument):
    """A webhook URL (or what its host resolves to) is not allowed."""


def _embedded_v4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True, slots=True)
class WebhookUrlPolicy:
    """Refuses internal addresses except those inside an allow-listed network."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_setting(cls, text: str) -> WebhookUrlPolicy:
        """Read ``JETLEDGER_WEBHOOK_ALLOW_NETWORKS`` (comma-separated CIDRs or addresses)."""
        networks: list[IPNetwork] = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise InvalidArgument(f"JETLEDGER_WEBHOOK_ALLOW_NETWORKS: {exc}") from None
        return cls(tuple(networks))

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be called, or ``None`` when it may."""
        if any(address in network for network in self.allowed):
            return None
        inner = _embedded_v4(address)
        if inner is not None:
            return self.refusal(inner)
        if address in METADATA_ADDRESSES:
            return f"{address} is a cloud metadata address"
        if address.is_multicast or not address.is_global:
            return f"{address} is an internal address (loopback, private, link-local or reserved)"
        return None

    def check_url(self, url: str) -> tuple[str, int]:
        """Check the URL's form (and its host when it is an address); return (host, port)."""
        if len(url) > 2048:
            raise WebhookUrlRefused("url must be at most 2048 characters")
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise WebhookUrlRefused("url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise WebhookUrlRefused("url must not carry a user name or password")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise WebhookUrlRefused("url has an invalid port") from None
        host = parts.hostname
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            self.require(host, [literal])
        return host, port

    def require(self, host: str, addresses: Iterable[IPAddress]) -> None:
        """Raise ``WebhookUrlRefused`` unless every address of ``host`` may be called."""
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                raise WebhookUrlRefused(
                    f"webhook host {host} is refused: {why}; an operator can allow its network"
                    " with JETLEDGER_WEBHOOK_ALLOW_NETWORKS"
                )

    async def check(self, url: str) -> None:
        """Check a URL at registration: its form, and every address its host resolves to now."""
        host, port = self.check_url(url)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise WebhookUrlRefused(f"webhook host {host} does not resolve: {exc}") from None
        self.require(host, [ipaddress.ip_address(info[4][0]) for info in infos])


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses to hand out an address the policy refuses."""

    def __init__(self, policy: WebhookUrlPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        try:
            self._policy.require(host, [ipaddress.ip_address(r["host"]) for r in found])
        except WebhookUrlRefused as exc:
            raise OSError(str(exc)) from None  # aiohttp reports it as a connection error
        return found

    async def close(self) -> None:
        await self._inner.close()


def guarded_connector_kwargs(policy: WebhookUrlPolicy) -> dict[str, Any]:
    """Keyword arguments of ``aiohttp.TCPConnector`` that route every lookup through the policy."""
    return {"resolver": GuardedResolver(policy)}
