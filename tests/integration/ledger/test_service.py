"""The ledger service over gRPC: read-your-writes, queries, errors, and poison events."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from nats.js import JetStreamContext

from contracts.subjects import StreamNames
from jetledger.ledger.v1 import ledger_pb2 as pb
from jetledger.ledger.v1 import ledger_pb2_grpc
from services.ledger.convert import timestamp
from tests.integration.ledger.harness import position
from tests.integration.ledger.process import LedgerProcess
from tests.ledgerkit import T0, History, append, append_raw, append_with_markers

pytestmark = pytest.mark.timeout(60)


async def test_read_your_writes_and_queries(
    nats_url: str, ledger_db: str, js: JetStreamContext, streams: StreamNames, tmp_path: Path
) -> None:
    proc = LedgerProcess(nats_url, ledger_db, streams, tmp_path / "s.log").start()
    try:
        h = History()
        h.issue("k1", limit=1_000)
        h.fund("k1", 5_000)
        auth = h.authorize("k1", "shop", 700)
        assert auth is not None
        h.capture("k1", auth, 300, "shop")
        h.purchase("k1", "shop", 250)
        await append(js, streams, h.events)
        cutoff = T0 + timedelta(seconds=4)  # after the capture, before the purchase
        # A fresh "command": its events, then its outcome marker, then ask right away.
        h.events.clear()
        h.purchase("k1", "shop", 1_000)
        seqs = await append_with_markers(js, streams, [(h.events[0], ""), (None, "cmd-last")])
        async with grpc.aio.insecure_channel(proc.target) as channel:
            stub = ledger_pb2_grpc.LedgerServiceStub(channel)
            mine = pb.StreamPosition(stream=streams.source, sequence=seqs[-1])
            reply = await stub.GetBalance(
                pb.GetBalanceRequest(account_id="card-k1", min_position=mine)
            )
            (bal,) = reply.balances
            assert (bal.posted, bal.pending, bal.available) == (
                "3450",
                "400",
                str(3_450 + 1_000 - 400),
            )
            assert reply.position.sequence >= seqs[0]
            past = await stub.GetBalance(
                pb.GetBalanceRequest(account_id="card-k1", as_of=timestamp(cutoff))
            )
            assert (past.balances[0].posted, past.balances[0].pending) == ("4700", "400")
            known = await stub.GetBalance(
                pb.GetBalanceRequest(
                    account_id="card-k1",
                    as_known_at=pb.StreamPosition(stream=streams.source, sequence=2),
                )
            )
            assert (known.balances[0].posted, known.balances[0].available) == ("5000", "6000")
            merchant = await stub.GetBalance(pb.GetBalanceRequest(account_id="merchant-shop"))
            assert merchant.balances[0].posted == merchant.balances[0].available == "1550"

            seen: list[pb.Entry] = []
            token = ""
            while True:
                page = await stub.ListEntries(
                    pb.ListEntriesRequest(account_id="card-k1", page_size=2, page_token=token)
                )
                seen.extend(page.entries)
                token = page.next_page_token
                if not token:
                    break
            assert [e.amount.amount for e in seen] == [5_000, -300, -250, -1_000]
            assert [int(e.balance_after) for e in seen] == [5_000, 4_700, 4_450, 3_450]
            assert len({e.entry_id for e in seen}) == 4

            tx = (
                await stub.GetTransaction(pb.GetTransactionRequest(transaction_id=auth))
            ).transaction
            assert tx.status == pb.TRANSACTION_STATUS_PARTIALLY_CAPTURED
            assert [c.amount.amount for c in tx.captures] == [300]
            assert tx.captured.amount == 300

            for bad, code in [
                (pb.GetBalanceRequest(account_id="nope"), grpc.StatusCode.INVALID_ARGUMENT),
                (pb.GetBalanceRequest(account_id="card-unknown"), grpc.StatusCode.NOT_FOUND),
                (
                    pb.GetBalanceRequest(
                        account_id="card-k1",
                        min_position=pb.StreamPosition(stream="OTHER", sequence=1),
                    ),
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetBalance(bad)
                assert err.value.code() == code
    finally:
        proc.stop()


async def test_poison_event_stops_the_projector_loudly(
    nats_url: str, ledger_db: str, js: JetStreamContext, streams: StreamNames, tmp_path: Path
) -> None:
    h = History()
    h.issue("p1")
    h.fund("p1", 100)
    good = await append(js, streams, h.events)
    await append_raw(js, streams, streams.subjects.card("p1"), b'{"type":"nope"}')
    h.events.clear()
    h.fund("p1", 50)
    await append(js, streams, h.events)
    proc = LedgerProcess(nats_url, ledger_db, streams, tmp_path / "poison.log")
    proc.start(wait=False)  # it may report NOT_SERVING before a first health check
    try:
        proc.wait_health(serving=False)
        assert await position(ledger_db, streams.source) == good  # nothing after it, never skipped
        assert proc.metric('jetledger_projection_poison_events_total{projection="ledger"}') == 1.0
        assert proc.metric('jetledger_projection_stopped{projection="ledger"}') == 1.0
        assert "poison message" in proc.log()
        await asyncio.sleep(1.0)
        assert proc.proc is not None
        assert proc.proc.poll() is None  # stays up and says so: no crash loop
        assert proc.metric('jetledger_projection_poison_events_total{projection="ledger"}') == 1.0
    finally:
        proc.stop()
