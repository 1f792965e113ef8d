"""The exactly-once check every fault test ends with: live == fresh replay == independent fold."""

from __future__ import annotations

import psycopg

from contracts.codec import decode_entry
from eventstore import EventStore
from projections.ledger.rebuild import Rebuild, compare_schemas
from projections.ledger.verify import verify
from tests.integration.ledger.harness import wait_for_position, wait_outbox_empty


async def assert_exactly_once(db: str, store: EventStore, last: int) -> None:
    """Assert the live tables equal a fresh replay and the fold, and nothing was doubled."""
    streams = store.names
    await wait_for_position(db, streams.source, last, within=30)
    await wait_outbox_empty(db, within=30)
    shadow = await Rebuild(db, store).run(swap=False)
    async with await psycopg.AsyncConnection.connect(db) as conn:
        diff = await compare_schemas(conn, "ledger", shadow.schema)
        assert all(d == (0, 0) for d in diff.values()), diff
        cur = await conn.execute("SELECT count(*) FROM ledger.entries")
        row = await cur.fetchone()
        assert row is not None
        entries = int(row[0])
    report = await verify(db, store)
    assert report.ok, report.problems()
    # Every entry reached the derived stream exactly once (the relay reconciles after a crash).
    assert report.derived is not None and report.derived.published == entries
    ids = [
        decode_entry(m.data).entry_id
        async for m in store.replay(1, [streams.subjects.all_entries], stream=streams.derived)
    ]
    assert len(ids) == len(set(ids)) == entries
