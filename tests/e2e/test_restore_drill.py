"""The restore drill: back up a running jetledger, lose its disks, restore, and check that it is
the same system: `jetledger verify` passes, the streams hold the same messages, every balance is
the same, and the webhook delivery state is back (no delivered webhook is sent again).

The system owns its NATS and Postgres (in a data directory this test deletes), and runs the four
services as processes (`jetledger dev`'s supervisor); every step is the CLI an operator runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from services.cli.main import main
from services.dev import DevSystem, with_free_ports
from services.localservers import LocalNats, LocalPostgres
from services.settings import Settings
from tests.e2e.test_cli_commands import client_env
from tests.notifykit import WebhookReceiver

pytestmark = pytest.mark.timeout(600)

CARDS = ("drill-alice", "drill-bob", "drill-carol")


@dataclasses.dataclass
class Disks:
    """NATS and Postgres whose every byte lives under ``root``."""

    root: Path
    nats: LocalNats | None = None
    postgres: LocalPostgres | None = None

    def start(self) -> Disks:
        self.nats = LocalNats(store_dir=self.root / "nats").start()
        self.postgres = LocalPostgres(data_dir=self.root / "postgres").start()
        return self

    def stop(self) -> None:
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def settings(self, base: Settings) -> Settings:
        assert self.nats is not None and self.postgres is not None
        return dataclasses.replace(base, nats_url=self.nats.url, database_url=self.postgres.url)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Disks]:
    made = Disks(tmp_path / "data").start()
    try:
        yield made
    finally:
        made.stop()


def cli(*argv: str) -> int:
    return main(list(argv))


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def use(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in client_env(settings).items():
        monkeypatch.setenv(key, value)


async def stream_digest(url: str, stream: str) -> tuple[int, str]:
    """(last sequence, sha256 over every message's sequence, subject, headers and data)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        digest = hashlib.sha256()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            headers = sorted((msg.headers or {}).items())
            digest.update(f"{seq}|{msg.subject}|{headers}|".encode() + (msg.data or b""))
        return info.state.last_seq, digest.hexdigest()
    finally:
        await nc.close()


def deliveries(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT notification_id, endpoint_id, status, attempts, last_http_status"
            " FROM notify_ops.deliveries ORDER BY notification_id, endpoint_id"
        ).fetchall()


def balances(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return {card: cli_json(capsys, "balance", card) for card in CARDS}


def test_back_up_lose_the_disks_restore_and_verify_equal(
    disks: Disks,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Security off: the drill is about the data (TLS and tokens are test_security.py's), and the
    # system's NATS and Postgres are ours, started on the disks this test destroys.
    base = with_free_ports(
        Settings(data_dir=tmp_path / "dev", webhook_allow_networks="127.0.0.0/8", security=False)
    )
    settings = disks.settings(base)
    use(settings, monkeypatch)
    backup_dir = tmp_path / "backup"
    with WebhookReceiver().running() as hook:
        with DevSystem(settings):
            for card in CARDS:
                assert cli("card", "issue", card, "--name", "Drill Holder", "--last4", "4242") == 0
                assert cli("tx", "fund", card, "500.00", "--id", f"{card}-topup") == 0
            assert (
                cli(
                    "notifications",
                    "webhook",
                    "--card",
                    CARDS[0],
                    "--endpoint",
                    "e1",
                    "--url",
                    hook.url,
                )
                == 0
            )
            for n in range(5):
                assert cli("tx", "create", CARDS[n % 3], f"{n + 1}.25", "--merchant", "m",
                           "--id", f"drill-{n}") == 0  # fmt: skip
            cli("tx", "create", CARDS[1], "9999.00", "--merchant", "m", "--id", "drill-no")
            assert cli("verify", "--wait", "60") == 0
            deadline = time.monotonic() + 60
            while not deliveries(settings.database_url) or any(
                row[2] != "delivered" for row in deliveries(settings.database_url)
            ):
                assert time.monotonic() < deadline, deliveries(settings.database_url)
                time.sleep(0.2)
            before_balances = balances(capsys)
            before_deliveries = deliveries(settings.database_url)
            before_streams = [
                asyncio.run(stream_digest(settings.nats_url, name))
                for name in (settings.stream, settings.derived_stream)
            ]
            # the backup is taken from the running system
            assert cli("backup", str(backup_dir)) == 0
        received = len(hook.received)
        assert received >= 1

        # lose the disks: NATS's and Postgres's data are gone
        disks.stop()
        shutil.rmtree(disks.root)
        disks.start()
        settings = disks.settings(base)
        use(settings, monkeypatch)
        assert cli("restore", str(backup_dir)) == 0
        with DevSystem(settings):
            assert cli("verify", "--wait", "120") == 0
            after_streams = [
                asyncio.run(stream_digest(settings.nats_url, name))
                for name in (settings.stream, settings.derived_stream)
            ]
            assert after_streams == before_streams
            assert balances(capsys) == before_balances
            assert deliveries(settings.database_url) == before_deliveries
            # a restore onto a system that has data is refused, and changes nothing
            assert cli("restore", str(backup_dir)) != 0
        assert len(hook.received) == received, "a delivered webhook was sent again"
