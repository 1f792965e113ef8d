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
from tests.integration.ledger.harness import (
    running_projector,
    wait_for_position,
    wait_outbox_empty,
)
from tests.ledgerkit import append, busy_history

pytestmark = pytest.mark.timeout(60)


def cli(
    args: list[str], nats_url: str, db: str, streams: StreamNames, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run ``jetledger ARGS`` as a child process against this test's streams and database."""
    env = {
        **extra,
        **os.environ,
        "JETLEDGER_SECURITY": "off",  # the session's plain NATS
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


async def test_repair_derived_re_emits_the_missing_entries_once(
    nats_url: str, ledger_db: str, js: JetStreamContext, ledger_store: EventStore,
    streams: StreamNames,
) -> None:  # fmt: skip
    last = await append(js, streams, busy_history(cards=2, rounds=3).events)
    async with running_projector(ledger_db, ledger_store):
        await wait_for_position(ledger_db, streams.source, last)
        await wait_outbox_empty(ledger_db)
    entries = (await js.stream_info(streams.derived)).state.messages
    assert entries > 0
    # the derived stream is lost (an operator re-created it, a bad restore): nothing re-emits it
    await js.delete_stream(streams.derived)
    await ledger_store.ensure_streams()
    bad = await asyncio.to_thread(cli, ["verify"], nats_url, ledger_db, streams)
    assert bad.returncode == 1
    assert f"{entries} entries are missing from the derived stream" in bad.stdout
    repair = await asyncio.to_thread(cli, ["repair", "derived"], nats_url, ledger_db, streams)
    assert repair.returncode == 0, repair.stderr
    assert f"re-emitted {entries} " in repair.stdout
    again = await asyncio.to_thread(cli, ["repair", "derived"], nats_url, ledger_db, streams)
    assert "re-emitted 0 " in again.stdout  # idempotent by entry id, not by the dedup window
    ok = await asyncio.to_thread(cli, ["verify"], nats_url, ledger_db, streams)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (await js.stream_info(streams.derived)).state.messages == entries
