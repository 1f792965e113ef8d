"""Regressions of the ledger's read path, through its real entry points (process, gRPC, CLI).

Each test failed on the code before the one-reader/one-runner rework:

- a delivery taken by another client left a gap the projection acked and skipped;
- balances of house and merchant accounts past 2^63−1 stopped the projection for good;
- ``verify`` said OK while the projection was behind, or while the derived stream had entries
  the table did not;
- a Postgres outage during a read answered UNKNOWN with a psycopg class name;
- a merchant or house account without activity answered NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import psycopg
import pytest
from nats.js import JetStreamContext

from contracts.accounts import FUNDING
from contracts.codec import encode
from contracts.events import LedgerEntryCreated
from contracts.subjects import StreamNames
from jetledger.ledger.v1 import ledger_pb2 as pb
from jetledger.ledger.v1 import ledger_pb2_grpc
from services.localservers import LocalPostgres
from tests.e2e.ledger.test_cli import cli
from tests.integration.ledger.process import LedgerProcess
from tests.ledgerkit import T0, History, append, busy_history, fresh_database

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")


async def _position(db: str, stream: str) -> int:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        try:
            cur = await conn.execute(
                "SELECT last_sequence FROM ledger.tracking WHERE stream = %s", (stream,)
            )
        except psycopg.errors.UndefinedTable:
            return 0
        row = await cur.fetchone()
        return 0 if row is None else int(row[0])


async def _until_position(db: str, stream: str, target: int, within: float) -> int:
    deadline = time.monotonic() + within
    while (reached := await _position(db, stream)) < target and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return reached


async def _retry_unavailable(calls: Iterator[Awaitable[T]]) -> T:
    """Await the calls one after the other until one is not UNAVAILABLE (0.2 s apart)."""
    codes = set()
    for call in calls:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            codes.add(exc.code())
        assert codes == {grpc.StatusCode.UNAVAILABLE}
        await asyncio.sleep(0.2)
    raise AssertionError("the service never answered after Postgres came back")


def _legs(history: History) -> int:
    return sum(len(getattr(event, "legs", ())) for event in history.events)


async def test_deliveries_taken_by_another_client_are_never_skipped(
    nats_url: str, ledger_db: str, js: JetStreamContext, streams: StreamNames, tmp_path: Path
) -> None:
    """Kill -9 mid-fetch showed it once in 7 runs; a competing puller shows it every time."""
    history = busy_history(cards=6, rounds=12)
    proc = LedgerProcess(nats_url, ledger_db, streams, tmp_path / "l.log").start()
    try:
        await append(js, streams, history.events[:10])
        await _until_position(ledger_db, streams.source, 1, 20)
        stolen = 0

        async def thief(stop: asyncio.Event) -> None:
            nonlocal stolen
            while not stop.is_set():
                for info in await js.consumers_info(streams.source):
                    if info.config.durable_name is None:
                        continue
                    sub = await js.pull_subscribe_bind(info.name, stream=streams.source)
                    try:
                        stolen += len(await sub.fetch(1, timeout=0.3))
                    except Exception:  # noqa: S110 - nothing to steal right now
                        pass
                    finally:
                        await sub.unsubscribe()

        stop = asyncio.Event()
        stealing = asyncio.create_task(thief(stop))
        last = 0
        for start in range(10, len(history.events), 20):
            last = await append(js, streams, history.events[start : start + 20])
            await asyncio.sleep(0.05)
        await asyncio.sleep(3)
        stop.set()
        await stealing
        assert stolen > 0, "the competing puller never got a delivery: the test proves nothing"
        reached = await _until_position(ledger_db, streams.source, last, 30)
        async with await psycopg.AsyncConnection.connect(ledger_db) as conn:
            cur = await conn.execute("SELECT count(*) FROM ledger.entries")
            row = await cur.fetchone()
        assert (reached, row) == (last, (_legs(history),))
    finally:
        proc.stop()


async def test_balances_past_int64_project_read_replay_and_verify(
    nats_url: str, ledger_db: str, js: JetStreamContext, streams: StreamNames, tmp_path: Path
) -> None:
    history = History()
    big = 2**62
    for n in range(4):  # four valid top-ups: the funding account goes to −2^64
        history.issue(f"k{n}")
        history.fund(f"k{n}", big)
    history.purchase("k0", "shop", big)
    history.purchase("k1", "shop", big)  # the merchant: +2^63, one past int64
    last = await append(js, streams, history.events)
    proc = LedgerProcess(nats_url, ledger_db, streams, tmp_path / "b.log").start()
    try:
        assert await _until_position(ledger_db, streams.source, last, 20) == last
        async with grpc.aio.insecure_channel(proc.target) as channel:
            stub = ledger_pb2_grpc.LedgerServiceStub(channel)
            funding = await stub.GetBalance(pb.GetBalanceRequest(account_id=FUNDING))
            merchant = await stub.GetBalance(pb.GetBalanceRequest(account_id="merchant-shop"))
            entries = await stub.ListEntries(pb.ListEntriesRequest(account_id="merchant-shop"))
        assert funding.balances[0].posted == str(-(2**64))
        assert merchant.balances[0].posted == str(2**63)
        assert [e.balance_after for e in entries.entries] == [str(2**62), str(2**63)]
        replay = await asyncio.to_thread(cli, ["replay", "ledger"], nats_url, ledger_db, streams)
        assert replay.returncode == 0, replay.stderr
        assert "Traceback" not in replay.stderr
        verify = await asyncio.to_thread(cli, ["verify"], nats_url, ledger_db, streams)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        proc.stop()


async def test_verify_fails_when_behind_or_when_the_derived_stream_differs(
    nats_url: str, ledger_db: str, js: JetStreamContext, streams: StreamNames, tmp_path: Path
) -> None:
    history = busy_history(cards=2, rounds=2)
    proc = LedgerProcess(nats_url, ledger_db, streams, tmp_path / "v.log").start()
    try:
        last = await append(js, streams, history.events)
        assert await _until_position(ledger_db, streams.source, last, 20) == last
        await asyncio.sleep(1.0)  # the relay publishes the entries
        ok = await asyncio.to_thread(cli, ["verify"], nats_url, ledger_db, streams)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        # an entry the table does not hold (a stray publisher, a damaged stream)
        stray = LedgerEntryCreated(
            entry_id=f"{streams.source}:1:9", transaction_id="x", card_id="c0",
            account_id="card-c0", amount=1, currency="USD", balance_after=1,
            event_type="card.funded.v1", effective_at=T0, stream=streams.source,
            stream_sequence=1,
        )  # fmt: skip
        await js.publish(
            streams.subjects.entry_created("card-c0"), encode(stray), stream=streams.derived
        )
        differs = await asyncio.to_thread(cli, ["verify"], nats_url, ledger_db, streams)
        assert differs.returncode == 1
        assert "in the derived stream are not in the table" in differs.stdout
    finally:
        proc.stop()
    more = History()
    more.issue("late")
    await append(js, streams, more.events)  # nobody projects it: the ledger is behind
    behind = await asyncio.to_thread(cli, ["verify"], nats_url, ledger_db, streams)
    assert behind.returncode == 1
    assert "behind the stream" in behind.stdout


async def test_a_postgres_outage_during_reads_is_unavailable_not_unknown(
    nats_url: str, js: JetStreamContext, streams: StreamNames, tmp_path: Path
) -> None:
    pg = LocalPostgres(data_dir=tmp_path / "pg").start()
    try:
        async with fresh_database(pg.url) as db:
            history = History()
            history.issue("o1")
            history.fund("o1", 1_000)
            last = await append(js, streams, history.events)
            proc = LedgerProcess(nats_url, db, streams, tmp_path / "o.log").start()
            try:
                await _until_position(db, streams.source, last, 20)
                await asyncio.to_thread(pg.stop)
                async with grpc.aio.insecure_channel(proc.target) as channel:
                    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
                    for request in (
                        pb.GetBalanceRequest(account_id="card-o1"),
                        pb.GetBalanceRequest(
                            account_id="card-o1",
                            min_position=pb.StreamPosition(stream=streams.source, sequence=last),
                        ),
                    ):
                        with pytest.raises(grpc.aio.AioRpcError) as err:
                            await stub.GetBalance(request, timeout=15)
                        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                        details = err.value.details() or ""
                        assert "Error" not in details and "Shutdown" not in details, details
                    await asyncio.to_thread(pg.start)
                    request = pb.GetBalanceRequest(account_id="card-o1")
                    reply = await _retry_unavailable(stub.GetBalance(request) for _ in range(100))
                    assert reply.balances[0].posted == "1000"
            finally:
                proc.stop()
    finally:
        pg.stop()


async def test_accounts_without_activity_answer_zero_and_only_unknown_ones_not_found(
    nats_url: str, ledger_db: str, js: JetStreamContext, streams: StreamNames, tmp_path: Path
) -> None:
    history = History()
    history.issue("z1")
    last = await append(js, streams, history.events)
    proc = LedgerProcess(nats_url, ledger_db, streams, tmp_path / "z.log").start()
    try:
        await _until_position(ledger_db, streams.source, last, 20)
        async with grpc.aio.insecure_channel(proc.target) as channel:
            stub = ledger_pb2_grpc.LedgerServiceStub(channel)
            for account in ("merchant-before-first-sale", FUNDING, "house-adjustments"):
                reply = await stub.GetBalance(pb.GetBalanceRequest(account_id=account))
                assert list(reply.balances) == [], account
            card = await stub.GetBalance(pb.GetBalanceRequest(account_id="card-z1"))
            assert card.balances[0].posted == "0"
            for unknown in ("card-nobody", "house-nothing"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetBalance(pb.GetBalanceRequest(account_id=unknown))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
        port = {"JETLEDGER_LEDGER_PORT": str(proc.port)}
        zero = await asyncio.to_thread(
            cli, ["balance", "merchant-before-first-sale"], nats_url, ledger_db, streams, **port
        )
        assert zero.returncode == 0, zero.stdout + zero.stderr
        assert "balance 0" in zero.stdout
        missing = await asyncio.to_thread(
            cli, ["balance", "card-nobody"], nats_url, ledger_db, streams, **port
        )
        assert missing.returncode == 3
    finally:
        proc.stop()
