"""Delivery-time webhook guard with a real HTTP client and real receivers on loopback: a host that
resolves inside is refused at connect time unless allow-listed, an address literal is refused by
``check_url``, and a redirect is never followed to a second (internal) receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from services.localservers import free_port
from services.security.webhookpolicy import (
    GuardedResolver,
    WebhookUrlPolicy,
    WebhookUrlRefused,
    guarded_connector_kwargs,
)


@dataclass
class Receiver:
    host: str
    port: int
    hits: list[str] = field(default_factory=list)
    redirect_to: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        if self.redirect_to:
            raise web.HTTPFound(self.redirect_to)
        return web.Response(text="ok")


async def serve(receiver: Receiver) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, receiver.host, receiver.port).start()
    return runner


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[Receiver, Receiver]]:
    inner = Receiver("127.0.0.2", free_port("127.0.0.2"))
    outer = Receiver("127.0.0.1", free_port(), redirect_to=f"http://127.0.0.2:{inner.port}/steal")
    runners = [await serve(inner), await serve(outer)]
    try:
        yield outer, inner
    finally:
        for runner in runners:
            await runner.cleanup()


async def post(policy: WebhookUrlPolicy, url: str) -> int:
    policy.check_url(url)
    connector = aiohttp.TCPConnector(**guarded_connector_kwargs(policy))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, data=b"{}", allow_redirects=False) as response,
    ):
        return response.status


async def test_a_name_resolving_to_loopback_is_refused_at_connect(
    receivers: tuple[Receiver, Receiver],
) -> None:
    outer, _ = receivers
    with pytest.raises(aiohttp.ClientConnectorError) as refused:
        await post(WebhookUrlPolicy(), f"http://localhost:{outer.port}/hook")
    assert "internal address" in str(refused.value.os_error)
    assert outer.hits == []


async def test_an_address_literal_is_refused_before_any_request(
    receivers: tuple[Receiver, Receiver],
) -> None:
    outer, _ = receivers
    with pytest.raises(WebhookUrlRefused):
        await post(WebhookUrlPolicy(), f"http://127.0.0.1:{outer.port}/hook")
    assert outer.hits == []


async def test_an_allowed_receiver_is_called_and_its_redirect_is_not_followed(
    receivers: tuple[Receiver, Receiver],
) -> None:
    outer, inner = receivers
    policy = WebhookUrlPolicy.from_setting("127.0.0.1/32,::1/128")
    assert await post(policy, f"http://localhost:{outer.port}/hook") == 302  # a failed attempt
    assert outer.hits == ["/hook"]
    assert inner.hits == []


async def test_the_resolver_refuses_what_the_policy_refuses() -> None:
    resolver = GuardedResolver(WebhookUrlPolicy())
    try:
        with pytest.raises(OSError, match="internal address"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
