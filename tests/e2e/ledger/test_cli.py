"""``jetledger replay ledger`` and ``jetledger verify`` as a user runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from nats.js import JetStreamContext

from contracts.subjects import StreamNames
from eventstore import EventStore
from tests.integration.ledger.harness import running_projector, wait_for_position
from tests.ledgerkit import append, busy_history

pytestmark = pytest.mark.timeout(60)


def cli(
    args: list[str], nats_url: str, db: str, streams: StreamNames, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run ``jetledger ARGS`` as a child process against this test's streams and database."""
    env = {
        **extra,
        **os.environ,
        "JETLEDGER_NATS_URL": nats_url,
        "JETLEDGER_DATABASE_URL": db,
        "JETLEDGER_STREAM": streams.source,
        "JETLEDGER_DERIVED_STREAM": streams.derived,
        "JETLEDGER_SUBJECT_PREFIX": streams.subjects.prefix,
        "COLUMNS": "200",
    }
    exe = Path(sys.executable).parent / "jetledger"
    return subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, timeout=50, check=False
    )


async def test_replay_then_verify_then_detect_tampering(
    nats_url: str, ledger_db: str, js: JetStreamContext, ledger_store: EventStore,
    streams: StreamNames,
) -> None:  # fmt: skip
    last = await append(js, streams, busy_history(cards=3, rounds=4).events)
    async with running_projector(ledger_db, ledger_store):
        await wait_for_position(ledger_db, streams.source, last)
        replay = await asyncio.to_thread(cli, ["replay", "ledger"], nats_url, ledger_db, streams)
        assert replay.returncode == 0, replay.stderr
        assert "events/s" in replay.stderr
        assert "swapped in as 'ledger'" in replay.stderr
    ok = await asyncio.to_thread(cli, ["verify"], nats_url, ledger_db, streams)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK" in ok.stdout
    async with await psycopg.AsyncConnection.connect(ledger_db, autocommit=True) as conn:
        await conn.execute(
            "UPDATE ledger.balances SET posted = posted + 1 WHERE account_id = 'card-c1'"
        )
        await conn.execute(
            "UPDATE ledger.entries SET amount = amount + 7"
            " WHERE (stream, stream_sequence, leg_index) IN"
            " (SELECT stream, stream_sequence, leg_index FROM ledger.entries"
            "  WHERE account_id = 'merchant-m1' LIMIT 1)"
        )
    bad = await asyncio.to_thread(cli, ["verify"], nats_url, ledger_db, streams)
    assert bad.returncode == 1
    assert "FAILED ledger:" in bad.stdout
    assert "card-c1" in bad.stdout
    assert "posted" in bad.stdout
    assert "merchant-m1" in bad.stdout
    assert "checksum" in bad.stdout
