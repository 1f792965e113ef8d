"""The exactly-once check every fault test ends with: live == fresh replay == independent fold."""

from __future__ import annotations

import psycopg
from nats.js import JetStreamContext

from contracts.codec import decode_entry
from contracts.subjects import StreamNames
from projections.ledger.rebuild import Rebuild, compare_schemas
from projections.ledger.verify import verify
from tests.integration.ledger.harness import wait_for_position, wait_outbox_empty


async def assert_exactly_once(
    db: str, js: JetStreamContext, streams: StreamNames, last: int
) -> None:
    """Assert the live tables equal a fresh replay and the fold, and nothing was doubled."""
    await wait_for_position(db, streams.source, last, within=30)
    await wait_outbox_empty(db, within=30)
    shadow = await Rebuild(db, js, streams).run(swap=False)
    async with await psycopg.AsyncConnection.connect(db) as conn:
        diff = await compare_schemas(conn, "ledger", shadow.schema)
        assert all(d == (0, 0) for d in diff.values()), diff
        cur = await conn.execute("SELECT count(*) FROM ledger.entries")
        row = await cur.fetchone()
        assert row is not None
        entries = int(row[0])
    report = await verify(db, js, streams)
    assert report.ok, report.differences
    # Every entry reached the derived stream exactly once (Nats-Msg-Id dedup + outbox delete).
    info = await js.stream_info(streams.derived)
    assert info.state.messages == entries
    sub = await js.subscribe(
        streams.subjects.all_entries, stream=streams.derived, ordered_consumer=True
    )
    ids = set()
    for _ in range(entries):
        msg = await sub.next_msg(timeout=5)
        ids.add(decode_entry(msg.data).entry_id)
    await sub.unsubscribe()
    assert len(ids) == entries
