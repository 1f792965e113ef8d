"""Every command, with what it needs out of reach, answers in one line with exit status 6, fast.

Out of reach two ways, each against real servers: a port nobody listens on (refused at once), and a
real server stopped with SIGSTOP (the kernel still accepts the connection, then nothing answers:
what a hung or frozen process looks like, and the case that used to hang for minutes). The bound is
the product's: connections give up after 2 s (``CLIENT_CONNECT_SECONDS``, ``CONNECT_TIMEOUT_SECONDS``,
``PGCONNECT_TIMEOUT``), so a command must be done well within 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from contracts.subjects import StreamNames
from eventstore import EventStore
from services.cli.main import main
from services.dev.ports import all_ports
from services.localservers import LocalNats, LocalPostgres, Servers, free_port
from services.settings import ENV_PREFIX, Settings
from tests.e2e.support import service_env, spawn_service, wait_serving

WITHIN_SECONDS = 5.0

GRPC_COMMANDS = [
    ["card", "list"],
    ["card", "get", "alice"],
    ["card", "issue", "alice", "--name", "Alice", "--last4", "4242"],
    ["card", "freeze", "alice"],
    ["tx", "create", "alice", "1.00", "--merchant", "m"],
    ["tx", "fund", "alice", "1.00"],
    ["tx", "outcome", "t-1"],
    ["balance", "alice"],
    ["entries", "alice"],
    ["notifications", "list"],
    ["notifications"],
    ["notifications", "prefs"],
    ["notifications", "deliveries"],
    ["notifications", "watch"],
    ["notifications", "--watch"],
    ["notifications", "webhook", "--endpoint", "e1", "--url", "http://127.0.0.1:1/hook"],
]
SERVICE_OF = {"card": "card", "tx": "transaction", "balance": "ledger", "entries": "ledger"}
NATS_COMMANDS = [
    ["verify"],
    ["replay", "ledger"],
    ["replay", "notifications"],
    ["notifications", "verify"],
    ["events", "tail"],
    ["events", "tail", "-f"],
]
POSTGRES_COMMANDS = [
    ["verify"],
    ["replay", "ledger"],
    ["replay", "notifications"],
    ["notifications", "verify"],
]


def ids(argv: list[str]) -> str:
    return " ".join(argv)


def unavailable(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``jetledger ARGV``; check one line, exit 6, no traceback, in time; return the line."""
    capsys.readouterr()
    began = time.monotonic()
    code = main(argv)
    seconds = time.monotonic() - began
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 6, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("jetledger: error: "), err
    assert "Traceback" not in err + out
    assert seconds < WITHIN_SECONDS, f"{ids(argv)} took {seconds:.1f}s"
    return lines[0]


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streams: StreamNames, nats_url: str
) -> dict[str, str]:
    """JETLEDGER_* pointing at this test's streams (provisioned), no dev system to fall back on."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)

    async def provision() -> None:
        nc = await nats.connect(nats_url)
        try:
            await EventStore(nc, streams).ensure_streams()
        finally:
            await nc.close()

    asyncio.run(provision())
    values = {
        "SECURITY": "off",  # the session's plain servers
        "DATA_DIR": str(tmp_path / "no-dev-here"),
        "STREAM": streams.source,
        "DERIVED_STREAM": streams.derived,
        "SUBJECT_PREFIX": streams.subjects.prefix,
    }
    for key, value in values.items():
        monkeypatch.setenv(ENV_PREFIX + key, value)
    return values


@pytest.fixture
def database(servers: Servers) -> Iterator[str]:
    """A database of this test's own on the session's Postgres (replay migrates what it finds)."""
    name = f"jl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(servers.database_url, dbname=name)
    finally:
        with psycopg.connect(servers.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process frozen (SIGSTOP) for the block: it holds its port, and never answers."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# -- gRPC services ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", GRPC_COMMANDS, ids=ids)
def test_a_service_nobody_listens_on(
    argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    port = free_port()
    for use in all_ports(Settings()):
        monkeypatch.setenv(use.env_var, str(port))
    line = unavailable(capsys, argv)
    service = SERVICE_OF.get(argv[0], "notification")
    assert f"cannot reach the {service} service at 127.0.0.1:{port}" in line
    assert "jetledger dev" in line


@pytest.fixture(scope="module")
def card_service(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A real card service process on its own streams and ports."""
    token = uuid.uuid4().hex[:8]
    port = free_port()
    settings = Settings(
        security=False,  # the session's plain servers
        nats_url=servers.nats_url,
        database_url=servers.database_url,
        stream=f"U{token}",
        derived_stream=f"U{token}_DERIVED",
        subject_prefix=f"u{token}.",
        card_port=port,
        card_metrics_port=free_port(),
    )
    log = tmp_path_factory.mktemp("card") / "card.log"
    proc = spawn_service("services.card.main", service_env(settings), log)
    try:
        asyncio.run(wait_serving(port, within=60))
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("argv", [["card", "list"], ["card", "get", "alice"]], ids=ids)
def test_a_stopped_service(
    argv: list[str], card_service: tuple[subprocess.Popen[bytes], int], env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    proc, port = card_service
    monkeypatch.setenv(f"{ENV_PREFIX}CARD_PORT", str(port))
    with stopped(proc.pid):
        line = unavailable(capsys, argv)
    assert f"cannot reach the card service at 127.0.0.1:{port}: no answer within 2s" in line
    # Thawed, the same command works: it was the stop, not the address.
    capsys.readouterr()
    assert main(["card", "list", "--json"]) == 0, capsys.readouterr().err


# -- NATS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", NATS_COMMANDS, ids=ids)
def test_nats_nobody_listens_on(
    argv: list[str], env: dict[str, str], database: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    url = f"nats://127.0.0.1:{free_port()}"
    monkeypatch.setenv(f"{ENV_PREFIX}NATS_URL", url)
    monkeypatch.setenv(f"{ENV_PREFIX}DATABASE_URL", database)
    line = unavailable(capsys, argv)
    # `replay ledger` migrates Postgres first, so NATS is the failure either way.
    assert f"cannot connect to NATS at {url}: connection refused" in line


@pytest.fixture(scope="module")
def frozen_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNats]:
    server = LocalNats(store_dir=tmp_path_factory.mktemp("frozen-nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("argv", NATS_COMMANDS, ids=ids)
def test_a_stopped_nats(
    argv: list[str], env: dict[str, str], database: str, frozen_nats: LocalNats,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv(f"{ENV_PREFIX}NATS_URL", frozen_nats.url)
    monkeypatch.setenv(f"{ENV_PREFIX}DATABASE_URL", database)
    assert frozen_nats.pid is not None
    with stopped(frozen_nats.pid):
        line = unavailable(capsys, argv)
    assert f"cannot connect to NATS at {frozen_nats.url}: no answer within 2s" in line


# -- Postgres -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", POSTGRES_COMMANDS, ids=ids)
def test_postgres_nobody_listens_on(
    argv: list[str], env: dict[str, str], nats_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    port = free_port()
    monkeypatch.setenv(f"{ENV_PREFIX}NATS_URL", nats_url)
    monkeypatch.setenv(f"{ENV_PREFIX}DATABASE_URL", f"postgresql://postgres@127.0.0.1:{port}/x")
    line = unavailable(capsys, argv)
    assert f'cannot reach Postgres: connection to server at "127.0.0.1", port {port}' in line
    assert "Connection refused" in line


@pytest.fixture(scope="module")
def frozen_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    server = LocalPostgres(data_dir=tmp_path_factory.mktemp("frozen-pg")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("argv", POSTGRES_COMMANDS, ids=ids)
def test_a_stopped_postgres(
    argv: list[str], env: dict[str, str], nats_url: str, frozen_postgres: LocalPostgres,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv(f"{ENV_PREFIX}NATS_URL", nats_url)
    monkeypatch.setenv(f"{ENV_PREFIX}DATABASE_URL", frozen_postgres.url)
    assert frozen_postgres.pid is not None
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    with stopped(frozen_postgres.pid):
        line = unavailable(capsys, argv)
    assert "cannot reach Postgres: connection timeout expired" in line
    assert "PGCONNECT_TIMEOUT" not in os.environ  # the CLI's default does not outlive the command


# -- the dev system and the demo ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["dev", "demo"])
@pytest.mark.parametrize("down", ["NATS", "Postgres"])
def test_dev_and_demo_with_an_unreachable_server(
    command: str, down: str, env: dict[str, str], servers: Servers,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    for use in all_ports(Settings()):
        monkeypatch.setenv(use.env_var, str(free_port()))
    nowhere = free_port()
    urls: dict[str, Any] = {
        "NATS_URL": f"nats://127.0.0.1:{nowhere}" if down == "NATS" else servers.nats_url,
        "DATABASE_URL": (
            f"postgresql://postgres@127.0.0.1:{nowhere}/postgres"
            if down == "Postgres"
            else servers.database_url
        ),
    }
    for key, value in urls.items():
        monkeypatch.setenv(ENV_PREFIX + key, value)
    capsys.readouterr()
    began = time.monotonic()
    code = main([command])
    seconds = time.monotonic() - began
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 6 and len(lines) == 1, err
    assert f"cannot connect to {down}" in lines[0] and str(nowhere) in lines[0]
    assert "Traceback" not in out + err
    assert seconds < WITHIN_SECONDS, f"{command} took {seconds:.1f}s"
