"""Least-privilege NATS on a real nats-server: each service's certificate is its user, and each
user is refused what it must not do — above all, nobody but the intake writes a card's events,
and no service can create, change or delete a stream."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from contracts.events import (
    NotificationPreferencesSet,
    WebhookEndpointRemoved,
    WebhookEndpointSet,
)
from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore
from services.localservers import LocalNats
from services.security import natsauth
from services.security.local import (
    LocalCredentials,
    ensure_local_credentials,
    nats_client_options,
    nats_server_config,
)
from tests.conftest import unique_token

STREAMS = StreamNames("PERMS", "PERMS_DERIVED", Subjects("perm."))


@dataclass
class Secured:
    nats: LocalNats
    creds: LocalCredentials
    violations: dict[str, list[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.nats.port}"

    async def connect(self, user: str) -> NATS:
        seen = self.violations.setdefault(user, [])

        async def on_error(exc: Exception) -> None:
            seen.append(str(exc))

        return await nats.connect(
            self.url,
            connect_timeout=5,
            allow_reconnect=False,
            error_cb=on_error,
            **nats_client_options(self.creds, user),
        )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secure-nats")
    creds = ensure_local_credentials(root / "security")
    server = LocalNats(store_dir=root / "nats", extra_config=nats_server_config(creds, STREAMS))
    server.start()
    try:
        yield Secured(server, creds)
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def provisioned(secured: Secured) -> Secured:
    admin = await secured.connect(natsauth.ADMIN)
    try:
        await EventStore(admin, STREAMS).ensure_streams()
    finally:
        await admin.close()
    return secured


async def publish(nc: NATS, subject: str, data: bytes = b"{}") -> Any:
    return await nc.jetstream().publish(subject, data, timeout=1.0)


async def last_seq(secured: Secured, stream: str) -> int:
    reader = await secured.connect(natsauth.READER)
    try:
        return int((await reader.jetstream().stream_info(stream)).state.last_seq)
    finally:
        await reader.close()


def card_subject(card: str) -> str:
    return STREAMS.subjects.card(card)


async def test_no_certificate_no_connection(provisioned: Secured) -> None:
    context = ssl.create_default_context(cafile=str(provisioned.creds.ca))
    with pytest.raises((OSError, nats.errors.Error, asyncio.TimeoutError)):
        await nats.connect(provisioned.url, tls=context, connect_timeout=3, allow_reconnect=False)
    with pytest.raises((OSError, nats.errors.Error, asyncio.TimeoutError)):
        await nats.connect(
            f"nats://127.0.0.1:{provisioned.nats.port}", connect_timeout=3, allow_reconnect=False
        )


async def test_a_certificate_from_another_ca_is_refused(
    provisioned: Secured, tmp_path: Path
) -> None:
    stranger = ensure_local_credentials(tmp_path / "other")  # same names, another CA
    options = nats_client_options(stranger, "card")
    options["tls"].load_verify_locations(str(provisioned.creds.ca))  # trusts our server
    with pytest.raises((OSError, nats.errors.Error, asyncio.TimeoutError)):
        await nats.connect(provisioned.url, connect_timeout=3, allow_reconnect=False, **options)


@pytest.mark.parametrize("user", ["card", "transaction"])
async def test_the_intake_writes_card_events(provisioned: Secured, user: str) -> None:
    nc = await provisioned.connect(user)
    try:
        ack = await publish(nc, card_subject(f"{user}-{unique_token()}"))
        assert ack.stream == STREAMS.source
    finally:
        await nc.close()


@pytest.mark.parametrize("user", ["ledger", "notification", "reader", "admin"])
async def test_a_forged_card_event_with_another_services_credentials_is_refused(
    provisioned: Secured, user: str
) -> None:
    before = await last_seq(provisioned, STREAMS.source)
    nc = await provisioned.connect(user)
    try:
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await publish(nc, card_subject("victim"), b'{"amount": 1000000}')
        await asyncio.sleep(0.1)
    finally:
        await nc.close()
    assert await last_seq(provisioned, STREAMS.source) == before
    assert any("permissions violation" in v.lower() for v in provisioned.violations[user])


@pytest.mark.parametrize("user", ["card", "transaction", "notification", "reader", "admin"])
async def test_only_the_ledger_relay_publishes_entries(provisioned: Secured, user: str) -> None:
    subject = STREAMS.subjects.entry_created("card-victim")
    nc = await provisioned.connect(user)
    try:
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await publish(nc, subject)
    finally:
        await nc.close()
    ledger = await provisioned.connect("ledger")
    try:
        assert (await publish(ledger, subject)).stream == STREAMS.derived
    finally:
        await ledger.close()


ADMIN_API = (
    "$JS.API.STREAM.CREATE.ROGUE",
    f"$JS.API.STREAM.UPDATE.{STREAMS.source}",
    f"$JS.API.STREAM.PURGE.{STREAMS.source}",
    f"$JS.API.STREAM.DELETE.{STREAMS.source}",
    f"$JS.API.STREAM.MSG.DELETE.{STREAMS.source}",
)


@pytest.mark.parametrize("user", ["card", "transaction", "ledger", "notification", "reader"])
async def test_services_hold_no_stream_admin_rights(provisioned: Secured, user: str) -> None:
    nc = await provisioned.connect(user)
    try:
        answers = await asyncio.gather(
            *(nc.request(subject, b"{}", timeout=1.0) for subject in ADMIN_API),
            return_exceptions=True,
        )
        await nc.flush()
    finally:
        await nc.close()
    # The server drops a forbidden request: no answer, and a permissions violation reported.
    assert all(isinstance(answer, nats.errors.Error | TimeoutError) for answer in answers), answers
    refused = " ".join(provisioned.violations[user]).lower()
    for subject in ADMIN_API:
        assert f'permissions violation for publish to "{subject.lower()}"' in refused


async def test_the_admin_provisions(provisioned: Secured) -> None:
    admin = await provisioned.connect(natsauth.ADMIN)
    try:
        names = StreamNames(
            f"ADM{unique_token()}", f"ADM{unique_token()}", Subjects(f"a{unique_token()}.")
        )
        await EventStore(admin, names).ensure_streams()
        info = await admin.jetstream().stream_info(names.source)
        assert info.config.deny_delete
    finally:
        await admin.close()


async def test_projections_and_readers_can_read(provisioned: Secured) -> None:
    writer = await provisioned.connect("card")
    card = f"read-{unique_token()}"
    try:
        await publish(writer, card_subject(card))
    finally:
        await writer.close()
    for user in ("ledger", "notification", "reader"):
        provisioned.violations[user] = []
        nc = await provisioned.connect(user)
        try:
            store = EventStore(nc, STREAMS)
            loaded = await store.load(STREAMS.subjects.card(card))
            assert len(loaded.messages) == 1
            replayed = [
                m async for m in store.replay(subject_filters=[STREAMS.subjects.card(card)])
            ]
            assert len(replayed) == 1
            sub = await store.subscribe(
                f"{user}-{unique_token()}",
                0,
                [STREAMS.subjects.card(card)],
                server_filter=True,
            )
            got = await sub.next_batch(10, 2.0)
            assert got is not None and len(got.messages) == 1
            sub.ack(got)
            await sub.close()
        finally:
            await nc.close()
        assert not any(
            "permissions violation" in v.lower() for v in provisioned.violations.get(user, [])
        )


async def test_nobody_reads_another_users_replies(provisioned: Secured) -> None:
    nc = await provisioned.connect("ledger")
    try:
        await nc.subscribe(f"{natsauth.inbox_prefix('card')}.>")
        await nc.flush()
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    assert any("subscription" in v.lower() for v in provisioned.violations["ledger"])


async def test_preference_commands_publish_only_their_own_subjects(provisioned: Secured) -> None:
    sub = STREAMS.subjects
    card = f"pref-{unique_token()}"
    nc = await provisioned.connect("notification")
    try:
        for event in (NotificationPreferencesSet, WebhookEndpointSet, WebhookEndpointRemoved):
            for scope in (card, ""):
                assert (await publish(nc, sub.notify_event(scope, event))).stream == STREAMS.source
        assert (await publish(nc, sub.command_marker(f"m-{card}"))).stream == STREAMS.source
        provisioned.violations["notification"].clear()
        for subject in (f"{sub.prefix}notify.card.{card}.forged", f"{sub.prefix}notify.x"):
            with pytest.raises((TimeoutError, nats.errors.Error)):
                await publish(nc, subject)
        await asyncio.sleep(0.1)
    finally:
        await nc.close()
    refused = " ".join(provisioned.violations["notification"]).lower()
    assert f"notify.card.{card}.forged" in refused


@pytest.mark.parametrize(
    ("user", "what"),
    [
        ("card", "preference"),
        ("transaction", "preference"),
        ("ledger", "preference"),
        ("reader", "preference"),
        ("admin", "preference"),
        ("ledger", "marker"),
        ("reader", "marker"),
        ("admin", "marker"),
    ],
)
async def test_preferences_and_outcome_markers_are_refused_to_others(
    provisioned: Secured, user: str, what: str
) -> None:
    sub = STREAMS.subjects
    subject = (
        sub.notify_event("victim", WebhookEndpointSet)
        if what == "preference"
        else sub.command_marker(f"stolen-{unique_token()}")
    )
    before = await last_seq(provisioned, STREAMS.source)
    nc = await provisioned.connect(user)
    try:
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await publish(nc, subject)
    finally:
        await nc.close()
    assert await last_seq(provisioned, STREAMS.source) == before
