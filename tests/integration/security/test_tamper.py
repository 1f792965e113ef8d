"""Tamper evidence, wired: the event store seals every message it sends and records who acted;
the projection runner halts on an event whose MAC does not check; ``jetledger verify`` lists it.

The NATS server of these tests has no authentication at all — the permissions a forger would
have to get past are simply not there, which is the case the MAC exists for.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from contracts.codec import encode
from contracts.subjects import StreamNames
from eventstore import EventStore, GroupCommitWriter, OutgoingMessage, TamperedEvent
from eventstore import headers as h
from eventstore.integrity import Keyring, Verdict, check_stored
from projections.ledger.rebuild import Rebuild
from projections.model import Poison
from projections.notifications.rebuild import rebuild as rebuild_notifications
from projections.notifications.schema import create_schemas
from services.cli.ledger import check_projections
from services.security.audit import audit_all
from services.security.identity import Identity, Role, bind, unbind
from services.settings import Settings
from tests.integration.ledger.harness import position, running_projector, wait_for_position
from tests.ledgerkit import History, fresh_database, nats_client

RING = Keyring("k1", {"k1": os.urandom(32)})


async def _wait_halted(runner: object, within: float = 60.0) -> BaseException:
    deadline = asyncio.get_running_loop().time() + within
    while getattr(runner, "halted", None) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the projection did not halt")
        await asyncio.sleep(0.05)
    halted = getattr(runner, "halted", None)
    assert isinstance(halted, BaseException)
    return halted


async def test_a_forged_event_halts_the_projection_and_fails_verify(
    nats_url: str, database_url: str, streams: StreamNames, tmp_path: Path
) -> None:
    subjects = streams.subjects
    async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
        store = EventStore(nc, streams, keyring=RING)
        await store.ensure_streams()
        history = History()
        history.issue("k1")
        history.fund("k1", 5_000)
        async with GroupCommitWriter(store) as writer:
            for event in history.events:
                await writer.submit([OutgoingMessage(subjects.card(event.card_id), encode(event))])
        last_good = await store.last_sequence()
        async with running_projector(db, store) as runner:
            await wait_for_position(db, streams.source, last_good, within=60)
            # A raw publish on the card's subject: a million, out of nowhere.
            history.events.clear()
            history.fund("k1", 1_000_000)
            forged = history.events[0]
            ack = await nc.jetstream().publish(
                subjects.card("k1"), encode(forged), stream=streams.source
            )
            halted = await _wait_halted(runner)
            assert isinstance(halted, Poison)
            assert halted.message.sequence == ack.seq
            assert "MAC missing" in str(halted)
            assert await position(db, streams.source) == last_good  # never applied

        # `jetledger replay` refuses it as the live projection did.
        with pytest.raises(Poison, match="MAC missing") as rebuilt:
            await Rebuild(db, store).run(swap=False)
        assert rebuilt.value.message.sequence == ack.seq  # the genuine events before it check
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await create_schemas(conn, "notify")
            with pytest.raises(Poison, match="MAC missing") as replayed:
                await rebuild_notifications(conn, store, "notify")
            assert replayed.value.message.sequence == ack.seq

        report = await audit_all(store, RING)
        assert [(f.sequence, f.verdict) for f in report.findings] == [(ack.seq, Verdict.MISSING)]

        keys = tmp_path / "event-keys.json"
        keys.write_text(RING.to_json())
        settings = Settings(
            security=False,  # plain NATS; the keyring alone turns the MAC checks on
            nats_url=nats_url,
            database_url=db,
            stream=streams.source,
            derived_stream=streams.derived,
            subject_prefix=subjects.prefix,
            event_keys_file=str(keys),
        )
        console = Console(record=True, width=200)
        problems = await check_projections(settings, console)
        assert f"integrity: {streams.source}:{ack.seq} " in "\n".join(problems)
        assert "FORGED" in console.export_text()


async def test_every_event_records_the_acting_identity_under_its_mac(
    nats_url: str, streams: StreamNames
) -> None:
    subjects = streams.subjects
    async with nats_client(nats_url) as nc:
        store = EventStore(nc, streams, keyring=RING)
        await store.ensure_streams()
        history = History()
        issued = history.issue("alice")
        msg = OutgoingMessage(subjects.card("alice"), encode(issued))
        binding = bind(Identity("card-desk", frozenset({Role.CARD_ADMIN})))
        try:
            async with GroupCommitWriter(store) as writer:
                await writer.submit([msg])
        finally:
            unbind(binding)
        await store.append(OutgoingMessage(subjects.command_marker("c-1"), b"{}"))

        stored = (await store.load(subjects.card("alice"))).messages[0]
        assert stored.headers[h.ACTOR] == "card-desk"
        assert check_stored(RING, stored) is Verdict.VALID
        marker = await store.last_by_subject(subjects.command_marker("c-1"))
        assert marker is not None and marker.headers[h.ACTOR] == "system"

        # The actor is covered by the MAC: a copy claiming someone else does not check.
        relabelled = {**stored.headers, h.ACTOR: "operator"}
        ack = await nc.jetstream().publish(
            subjects.card("alice"),
            stored.data,
            headers=relabelled,
            stream=streams.source,
        )
        raw = EventStore(nc, streams)  # no keyring: reads whatever is stored
        copy = (await raw.load(subjects.card("alice"), ack.seq - 1)).messages[0]
        assert check_stored(RING, copy) is Verdict.MISMATCH
        with pytest.raises(TamperedEvent, match="MAC mismatch"):  # the write path fails closed
            await store.load(subjects.card("alice"))
