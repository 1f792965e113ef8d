"""Crash consistency: ``kill -9`` the nats-server mid-load; every acknowledged append survives.

The test runs its own nats-server (in a temporary directory) so the session's server is never
disturbed. A process kill keeps the page cache, so this proves crash consistency, not durability
against power loss; ``test_varz`` proves the fsync setting for that (docs/architecture.md, invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import nats
import pytest

from contracts.errors import LedgerError
from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore, Expectation, GroupCommitWriter, OutgoingMessage, Position
from services.localservers import LocalNats

pytestmark = pytest.mark.timeout(30)

NAMES = StreamNames("CRASH", "CRASH_DERIVED", Subjects("crash."))


async def test_a_killed_server_keeps_every_acknowledged_append(tmp_path: Path) -> None:
    server = LocalNats(store_dir=tmp_path / "nats", server_name="jetledger-crash").start()
    acked: dict[Position, tuple[str, bytes]] = {}
    enough = asyncio.Event()
    try:
        # no reconnect: in-flight appends must fail (outcome unknown), not wait for the restart
        nc = await nats.connect(server.url, allow_reconnect=False, connect_timeout=5)
        store = EventStore(nc, NAMES, timeout=2)
        await store.ensure_streams()
        writer = GroupCommitWriter(store, max_batch=200)

        async def appender(card: int) -> None:
            version = 0
            for n in range(10_000):
                marker = NAMES.subjects.command_marker(f"k{card}-{n}")
                unit = [
                    OutgoingMessage(
                        NAMES.subjects.card(f"c{card}"),
                        f"{card}:{n}".encode(),
                        expect=Expectation(NAMES.subjects.card(f"c{card}"), version),
                    ),
                    OutgoingMessage(marker, b"done", expect=Expectation(marker, 0)),
                ]
                try:
                    positions = await writer.submit(unit)
                except LedgerError:
                    return  # the server is gone: this unit's outcome is unknown, not acked
                for message, position in zip(unit, positions, strict=True):
                    acked[position] = (message.subject, message.data)
                if len(acked) >= 2000:
                    enough.set()
                version = positions[0].sequence

        appenders = [asyncio.create_task(appender(i)) for i in range(50)]
        await asyncio.wait_for(enough.wait(), 15)
        # land the kill inside the next batches, not on a batch boundary
        await asyncio.sleep(random.uniform(0.002, 0.02))
        server.kill()
        await asyncio.wait_for(asyncio.gather(*appenders), 20)
        with contextlib.suppress(Exception):
            await writer.close()
        with contextlib.suppress(Exception):
            await nc.close()

        server.start()  # same store directory, same ports
        nc = await nats.connect(server.url, connect_timeout=5)
        store = EventStore(nc, NAMES)
        stored = {m.position: (m.subject, m.data) async for m in store.replay()}
        await nc.close()
    finally:
        server.stop()

    assert len(acked) >= 2000
    missing = {p: v for p, v in acked.items() if stored.get(p) != v}
    assert not missing, f"{len(missing)} acknowledged messages lost or changed: {list(missing)[:3]}"
    # nothing unacknowledged is half-stored: every unit is complete (event and marker, or neither)
    events = sum(1 for subject, _ in stored.values() if ".card." in subject)
    markers = sum(1 for subject, _ in stored.values() if ".command." in subject)
    assert events == markers
