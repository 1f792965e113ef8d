"""Exactly-once under faults (docs/architecture.md, invariants 7 and 8): the projector runs as a real process and is
killed with SIGKILL at exact points (``JETLEDGER_LEDGER_FAULT``), paused past its ack wait, loses
Postgres mid-batch, and competes with a second instance. Each time the result must equal a fresh
replay, with no entry lost or doubled."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from contracts.subjects import StreamNames
from eventstore import EventStore
from services.localservers import LocalPostgres
from tests.integration.ledger.checks import assert_exactly_once
from tests.integration.ledger.harness import migrate, position, wait_for_position
from tests.integration.ledger.process import LedgerProcess
from tests.ledgerkit import append, busy_history, fresh_database

pytestmark = pytest.mark.timeout(60)
BATCH = {"JETLEDGER_LEDGER_BATCH": "20"}


def _process(nats_url: str, db: str, streams: StreamNames, log: Path, **env: str) -> LedgerProcess:
    return LedgerProcess(nats_url, db, streams, log, env={**BATCH, **env})


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
async def test_sigkill_mid_batch(
    point: str, nats_url: str, ledger_db: str, js: JetStreamContext, ledger_store: EventStore, streams: StreamNames,
    tmp_path: Path,
) -> None:  # fmt: skip
    first = _process(
        nats_url, ledger_db, streams, tmp_path / "a.log", JETLEDGER_LEDGER_FAULT=f"{point}@3"
    )
    first.start()
    last = await append(js, streams, busy_history(cards=4, rounds=6).events)
    assert await asyncio.to_thread(first.wait_exit) == -signal.SIGKILL
    assert f"SIGKILL at {point}" in first.log()
    stopped_at = await position(ledger_db, streams.source)
    assert 0 < stopped_at < last
    second = _process(nats_url, ledger_db, streams, tmp_path / "b.log").start()
    try:
        await assert_exactly_once(ledger_db, ledger_store, last)
    finally:
        second.stop()


async def test_paused_past_ack_wait(
    nats_url: str,
    ledger_db: str,
    js: JetStreamContext,
    ledger_store: EventStore,
    streams: StreamNames,
    tmp_path: Path,
) -> None:
    proc = _process(
        nats_url, ledger_db, streams, tmp_path / "p.log", JETLEDGER_LEDGER_ACK_WAIT_SECONDS="1"
    ).start()
    try:
        history = busy_history(cards=4, rounds=8).events
        await append(js, streams, history[:100])
        proc.signal(signal.SIGSTOP)  # most likely mid-batch: the batch outlives its ack wait
        last = await append(js, streams, history[100:])
        await asyncio.sleep(2.5)
        proc.signal(signal.SIGCONT)
        await assert_exactly_once(ledger_db, ledger_store, last)
    finally:
        proc.signal(signal.SIGCONT)
        proc.stop()


async def test_postgres_restart_mid_batch(
    nats_url: str,
    js: JetStreamContext,
    ledger_store: EventStore,
    streams: StreamNames,
    tmp_path: Path,
) -> None:
    pg = LocalPostgres(data_dir=tmp_path / "pg").start()
    try:
        async with fresh_database(pg.url) as db:
            await migrate(db)
            proc = _process(nats_url, db, streams, tmp_path / "r.log").start()
            try:
                history = busy_history(cards=5, rounds=10).events
                writer = asyncio.create_task(_trickle(js, streams, history))
                await wait_for_position(db, streams.source, 1)
                await asyncio.to_thread(pg.stop)  # fast shutdown: open transactions roll back
                await asyncio.sleep(0.5)
                await asyncio.to_thread(pg.start)
                last = await writer
                await assert_exactly_once(db, ledger_store, last)
                assert "projection restarting" in proc.log()
            finally:
                proc.stop()
    finally:
        pg.stop()


async def test_second_instance_stands_by_and_takes_over(
    nats_url: str,
    ledger_db: str,
    js: JetStreamContext,
    ledger_store: EventStore,
    streams: StreamNames,
    tmp_path: Path,
) -> None:
    history = busy_history(cards=5, rounds=10).events
    first = _process(nats_url, ledger_db, streams, tmp_path / "1.log").start()
    second = _process(nats_url, ledger_db, streams, tmp_path / "2.log").start()
    try:
        writer = asyncio.create_task(_trickle(js, streams, history))
        await asyncio.sleep(0.3)
        first.signal(signal.SIGKILL)  # the leader dies mid-stream; the standby must take over
        last = await writer
        await assert_exactly_once(ledger_db, ledger_store, last)
        assert "projector leads" in second.log()
    finally:
        first.stop()
        second.stop()


async def _trickle(js: JetStreamContext, streams: StreamNames, events: list) -> int:  # type: ignore[type-arg]
    last = 0
    for start in range(0, len(events), 15):
        last = await append(js, streams, events[start : start + 15])
        await asyncio.sleep(0.02)
    return last
