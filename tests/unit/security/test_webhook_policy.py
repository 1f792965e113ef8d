"""Webhook URLs: internal and metadata addresses are refused unless allow-listed (pure checks)."""

from __future__ import annotations

import ipaddress

import pytest

from contracts.errors import InvalidArgument
from services.security.webhookpolicy import WebhookUrlPolicy, WebhookUrlRefused

POLICY = WebhookUrlPolicy()

INTERNAL = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254",  # cloud metadata
    "169.254.170.2",
    "100.100.100.200",
    "0.0.0.0",  # noqa: S104 - an address to refuse, not to bind
    "224.0.0.1",
    "::1",
    "fe80::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fc00::5",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 form of 169.254.169.254
    "::",
]


@pytest.mark.parametrize("address", INTERNAL)
def test_internal_addresses_are_refused(address: str) -> None:
    assert POLICY.refusal(ipaddress.ip_address(address)) is not None
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(WebhookUrlRefused, match="refused"):
        POLICY.check_url(f"http://{host}:8080/hook")


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert POLICY.refusal(ipaddress.ip_address(address)) is None


def test_an_allow_list_opens_only_the_networks_it_names() -> None:
    policy = WebhookUrlPolicy.from_setting("127.0.0.1/32, 10.20.0.0/16")
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("127.0.0.2")) is not None
    assert policy.refusal(ipaddress.ip_address("169.254.169.254")) is not None
    with pytest.raises(InvalidArgument, match="ALLOW_NETWORKS"):
        WebhookUrlPolicy.from_setting("not-a-network")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "http:///nohost",
        "http://user:pw@example.com/",
        "https://example.com:99999/",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(WebhookUrlRefused):
        POLICY.check_url(url)


async def test_a_name_that_resolves_inside_is_refused_at_registration() -> None:
    with pytest.raises(WebhookUrlRefused, match="localhost is refused"):
        await POLICY.check("http://localhost:9/hook")
    await WebhookUrlPolicy.from_setting("127.0.0.0/8,::1/128").check("http://localhost:9/hook")
