"""The command index's batch upsert on a real Postgres: one row per command id, as event-by-event
upserts would leave it (a later event of the command moves its sequence and outcome; the same id on
another card leaves the first card's row alone), within a batch and across batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from contracts.codec import encode
from contracts.events import CardFunded, Event, Leg, TransactionDeclined
from contracts.subjects import StreamNames
from eventstore import StoredMessage
from projections.commandindex import CommandIndexProjection, create_schema, merge_rows
from tests.notifykit import fresh_database

SCHEMA = "command_index_test"
AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _funded(command_id: str, card_id: str, minutes: int = 0) -> CardFunded:
    return CardFunded(
        card_id=card_id,
        command_id=command_id,
        at=AT + timedelta(minutes=minutes),
        command_type="fund_card",
        fingerprint=f"fp-{command_id}-{card_id}",
        amount=100,
        currency="USD",
        legs=(Leg(account_id=f"acct-{card_id}", amount=100, currency="USD"),),
    )


def _declined(command_id: str, card_id: str) -> TransactionDeclined:
    return TransactionDeclined(
        card_id=card_id,
        command_id=command_id,
        at=AT,
        command_type="create_transaction",
        fingerprint=f"fp-{command_id}-{card_id}",
        reason="card_frozen",
        detail="frozen since noon",
    )


def _stored(streams: StreamNames, sequence: int, event: Event) -> StoredMessage:
    subject = streams.subjects.card(event.card_id)
    return StoredMessage(streams.source, sequence, subject, encode(event), {}, AT)


async def _apply(db: str, streams: StreamNames, *events: tuple[int, Event]) -> None:
    projection = CommandIndexProjection(SCHEMA, streams)
    async with await psycopg.AsyncConnection.connect(db) as conn, conn.transaction():
        await projection.apply(conn, streams.source, [_stored(streams, s, e) for s, e in events])


async def _rows(db: str) -> dict[str, tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        cur = await conn.execute(
            "SELECT command_id, card_id, fingerprint, outcome, reason, detail, sequence,"
            " decided_at FROM command_index_test.commands"
        )
        return {row[0]: row[1:] for row in await cur.fetchall()}


def test_merging_keeps_what_event_by_event_upserts_would() -> None:
    rows = [
        ("a", "c1", "t", "fp1", "accepted", "", "", 1, AT),
        ("b", "c1", "t", "fp2", "accepted", "", "", 2, AT),
        ("a", "c1", "t2", "fp4", "declined", "y", "d", 4, AT + timedelta(1)),
    ]
    assert merge_rows(rows) == (
        [
            ("a", "c1", "t", "fp1", "declined", "y", "d", 4, AT),  # first's type, print and time
            ("b", "c1", "t", "fp2", "accepted", "", "", 2, AT),
        ],
        [],
    )
    reused = ("b", "c2", "t", "fp3", "declined", "x", "", 5, AT)  # b on another card
    assert merge_rows([*rows, reused]) == (
        [("a", "c1", "t", "fp1", "declined", "y", "d", 4, AT)],
        [rows[1], reused],  # which card keeps b depends on the table: one by one, in order
    )


async def test_one_row_per_command_within_a_batch_and_across_batches(
    database_url: str, streams: StreamNames
) -> None:
    async with fresh_database(database_url) as db:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await create_schema(conn, SCHEMA)
        await _apply(
            db,
            streams,
            (1, _funded("a", "c1")),
            (2, _funded("a", "c1", minutes=1)),  # a later event of the same command
            (3, _funded("a", "c2")),  # the id reused on another card
            (4, _declined("b", "c1")),
        )
        rows = await _rows(db)
        assert rows["a"] == ("c1", "fp-a-c1", "accepted", "", "", 2, AT)
        assert rows["b"] == ("c1", "fp-b-c1", "declined", "card_frozen", "frozen since noon", 4, AT)
        await _apply(db, streams, (5, _funded("a", "c2")), (6, _declined("a", "c1")))
        rows = await _rows(db)
        assert rows["a"] == ("c1", "fp-a-c1", "declined", "card_frozen", "frozen since noon", 6, AT)
        # batches of one card each: one statement, the table's row decides
        await _apply(db, streams, (7, _funded("a", "c1", minutes=2)))
        await _apply(db, streams, (8, _funded("a", "c2", minutes=3)))
        rows = await _rows(db)
        assert rows["a"] == ("c1", "fp-a-c1", "accepted", "", "", 7, AT)
        assert len(rows) == 2
