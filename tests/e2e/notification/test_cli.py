"""``jetledger replay notifications`` under a running service: same rows, nothing re-sent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contracts.subjects import StreamNames
from eventstore import EventStore
from services.notification.preferences import PreferenceCommands
from services.security.webhookpolicy import WebhookUrlPolicy
from tests.e2e.notification.service import ServiceProcess
from tests.notifykit import (
    Events,
    WebhookReceiver,
    append,
    create_streams,
    fresh_database,
    nats_client,
)

pytestmark = pytest.mark.timeout(90)
SECRET = "cli-secret-0123456789abcdef"
LOCAL = WebhookUrlPolicy.from_setting("127.0.0.0/8,::1/128")  # the receiver is on loopback


def _cli(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "JETLEDGER_SECURITY": "off",  # the session's plain NATS
        "JETLEDGER_NATS_URL": service.nats_url,
        "JETLEDGER_DATABASE_URL": service.database_url,
        "JETLEDGER_STREAM": service.streams.source,
        "JETLEDGER_DERIVED_STREAM": service.streams.derived,
        "JETLEDGER_SUBJECT_PREFIX": service.streams.subjects.prefix,
        "JETLEDGER_NOTIFICATION_PORT": str(service.port),
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "jetledger"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _snapshot(db: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(db) as conn:
        out: dict[str, Any] = {}
        for table in [
            "notify.notifications",
            "notify.preferences",
            "notify.webhook_endpoints",
            "notify.cards",
        ]:
            cur = await conn.execute(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608 - fixed names
            out[table] = await cur.fetchall()
        cur = await conn.execute(
            "SELECT delivery_id, status, attempts FROM notify_ops.deliveries ORDER BY 1"
        )
        out["deliveries"] = await cur.fetchall()
        return out


async def test_replay_rebuilds_the_same_rows_and_resends_nothing(
    nats_url: str, database_url: str, streams: StreamNames, tmp_path: Path
) -> None:
    with WebhookReceiver().running() as hook:
        async with nats_client(nats_url) as nc, fresh_database(database_url) as db:
            js = nc.jetstream()
            await create_streams(js, streams)
            commands = PreferenceCommands(EventStore(nc, streams), url_policy=LOCAL)
            await commands.set_webhook("w1", "c1", "e1", hook.url, SECRET)
            await commands.set_preferences("p1", "", None, None, 50)  # operator: alert below 50%
            card = Events("c1")
            await append(
                js,
                streams,
                card.issue(),
                card.fund(10_000),
                card.purchase(6_000),
                card.decline(9_999),
            )
            service = ServiceProcess(nats_url, db, streams, tmp_path / "service.log").start()
            try:
                await service.serving()
                deadline = time.monotonic() + 20
                while len(hook.ids()) < 4:  # funding, purchase, low balance (below 50%), decline
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                before, sent = await _snapshot(db), len(hook.received)
                rebuilt = await asyncio.to_thread(_cli, service, "replay", "notifications")
                assert rebuilt.returncode == 0, rebuilt.stderr
                assert "rebuilt 4 notifications" in rebuilt.stderr
                assert await _snapshot(db) == before  # replay equals live; deliveries untouched
                checked = await asyncio.to_thread(_cli, service, "notifications", "verify")
                assert checked.returncode == 0, checked.stdout + checked.stderr
                # The live projector carries on after the swap, and still delivers only new ones.
                await append(js, streams, card.purchase(100, "m-after"))
                deadline = time.monotonic() + 20
                while len(hook.ids()) < 5:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                assert len(hook.received) == sent + 1
                listed = await asyncio.to_thread(
                    _cli, service, "notifications", "list", "--card", "c1"
                )
                assert listed.returncode == 0 and "m-after" in listed.stdout, listed.stderr
            finally:
                service.stop()
