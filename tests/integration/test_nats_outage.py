"""``kill -9`` of the real nats-server under a trickle of commands (issue 10, defect 4).

While the server is down, commands fail fast with UNAVAILABLE (they do not run to their deadline);
once it is back, commands succeed again within seconds. Bounds are generous (a loaded machine);
the measured figures are printed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import grpc
import pytest

from contracts.subjects import StreamNames
from jetledger.card.v1 import card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.card import main as card_main
from services.localservers import LocalNats
from services.preflight import provision
from services.transaction import main as transaction_main
from tests.e2e.conftest import settings_for
from tests.e2e.support import issue_request, new_id, usd

DEADLINE = 10.0  # the callers' gRPC deadline
DOWN_SECONDS = 3.0


@dataclasses.dataclass
class Call:
    started: float
    ended: float
    status: str


async def test_commands_fail_fast_while_nats_is_down_and_recover_when_it_is_back(
    tmp_path: Path, streams: StreamNames
) -> None:
    server = LocalNats(store_dir=tmp_path / "nats").start()
    try:
        settings = settings_for(streams, server.url, "")
        await provision(settings)
        card_runtime = await card_main.start(settings, port=0, metrics=False)
        settings = dataclasses.replace(settings, card_service_addr=f"127.0.0.1:{card_runtime.port}")
        tx_runtime = await transaction_main.start(
            settings, port=0, metrics=False, sweep_interval=60
        )
        calls: list[Call] = []
        try:
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{card_runtime.port}") as card_channel,
                grpc.aio.insecure_channel(f"127.0.0.1:{tx_runtime.port}") as channel,
            ):
                cards = card_pb2_grpc.CardServiceStub(card_channel)
                stub = transaction_pb2_grpc.TransactionServiceStub(channel)
                card_ids = [new_id("card") for _ in range(4)]
                for card_id in card_ids:
                    await cards.IssueCard(issue_request(card_id, credit_limit=10**9))

                async def one(n: int) -> None:
                    started = time.monotonic()
                    try:
                        await stub.CreateTransaction(
                            tx.CreateTransactionRequest(
                                transaction_id=new_id("t"),
                                card_id=card_ids[n % len(card_ids)],
                                merchant_id="m",
                                amount=usd(1),
                            ),
                            timeout=DEADLINE,
                        )
                        status = "OK"
                    except grpc.aio.AioRpcError as exc:
                        status = exc.code().name
                    calls.append(Call(started, time.monotonic(), status))

                stop = asyncio.Event()
                tasks: set[asyncio.Task[None]] = set()

                async def trickle() -> None:
                    n = 0
                    while not stop.is_set():
                        task = asyncio.create_task(one(n))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        n += 1
                        await asyncio.sleep(0.05)

                trickling = asyncio.create_task(trickle())
                await asyncio.sleep(1.0)
                killed_at = time.monotonic()
                server.kill()
                await asyncio.sleep(DOWN_SECONDS)
                await asyncio.to_thread(server.start)
                back_at = time.monotonic()
                await asyncio.sleep(8.0)
                stop.set()
                await trickling
                await asyncio.gather(*tasks)
        finally:
            await tx_runtime.stop(grace=1)
            await card_runtime.stop(grace=1)
    finally:
        server.stop()

    before = [c for c in calls if c.ended < killed_at]
    assert before and all(c.status == "OK" for c in before)
    # Started while the server was down (after the client noticed): each failed fast, retryably.
    down = [c for c in calls if killed_at + 0.5 < c.started < back_at - 0.5]
    assert down, "no command was tried while the server was down"
    assert {c.status for c in down} == {"UNAVAILABLE"}, {c.status for c in down}
    slowest = max(c.ended - c.started for c in down)
    first_ok = min(c.ended for c in calls if c.status == "OK" and c.started > killed_at)
    print(
        f"\nslowest failure while down: {slowest:.3f} s; first OK {first_ok - back_at:.3f} s after"
    )
    assert slowest < DEADLINE / 2, "a command waited for its deadline instead of failing fast"
    assert first_ok - back_at < 5.0, "commands did not recover within 5 s of the server's return"
    late = [c for c in calls if c.started > back_at + 5.0]
    assert late and all(c.status == "OK" for c in late), {c.status for c in late}


@pytest.fixture
def streams() -> StreamNames:
    """This test runs its own server: the default stream names are its alone."""
    return StreamNames()
