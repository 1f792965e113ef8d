"""No overdraft under concurrency: two intake processes, 60 clients, one card (docs/architecture.md, invariant 6)."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from pathlib import Path

import grpc

from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.localservers import free_port
from services.settings import Settings
from tests.e2e.support import issue_request, new_id, service_env, spawn_service, usd, wait_serving

LIMIT = 5_000
CLIENTS = 60


async def test_two_intake_processes_never_overdraw_one_card(
    settings: Settings, tmp_path: Path
) -> None:
    card_port = free_port()
    ports = [free_port(), free_port()]
    procs = [
        spawn_service(
            "services.card.main",
            service_env(settings, card_port=card_port, card_metrics_port=free_port()),
            tmp_path / "card.log",
        )
    ]
    for index, port in enumerate(ports):
        env = service_env(
            settings,
            transaction_port=port,
            transaction_metrics_port=free_port(),
            card_service_addr=f"127.0.0.1:{card_port}",
            max_conflict_retries=100,
        )
        procs.append(
            spawn_service("services.transaction.main", env, tmp_path / f"intake{index}.log")
        )
    try:
        await asyncio.gather(wait_serving(card_port), *(wait_serving(p) for p in ports))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{card_port}") as card_channel:
            cards = card_pb2_grpc.CardServiceStub(card_channel)
            card_id = new_id("hot")
            await cards.IssueCard(issue_request(card_id, credit_limit=LIMIT))

            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports]
            stubs = [transaction_pb2_grpc.TransactionServiceStub(c) for c in channels]
            rng = random.Random(7)
            amounts = [rng.randint(50, 400) for _ in range(CLIENTS)]

            async def spend(index: int) -> tuple[int, str]:
                stub = stubs[index % len(stubs)]
                request = tx.CreateTransactionRequest(
                    transaction_id=new_id("spend"),
                    card_id=card_id,
                    merchant_id="m",
                    amount=usd(amounts[index]),
                )
                try:
                    await stub.CreateTransaction(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    return amounts[index], exc.code().name
                return amounts[index], "OK"

            results = await asyncio.gather(*(spend(i) for i in range(CLIENTS)))
            for channel in channels:
                await channel.close()

            accepted = sum(amount for amount, status in results if status == "OK")
            statuses = {status for _, status in results}
            assert statuses <= {"OK", "FAILED_PRECONDITION"}, statuses
            assert "FAILED_PRECONDITION" in statuses, "the limit should have refused some"
            assert accepted <= LIMIT
            card = await cards.GetCard(card_pb2.CardRequest(card_id=card_id))
            assert card.posted == -accepted, "the stream holds exactly the accepted purchases"
            assert card.available == LIMIT - accepted >= 0
            # Every decline was right when it was made: each declined amount exceeded what was left.
            smallest_declined = min(a for a, s in results if s == "FAILED_PRECONDITION")
            assert LIMIT - accepted < smallest_declined
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for proc in procs:
            try:
                codes.append(proc.wait(15))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(None)
    # SIGTERM is a graceful shutdown: NOT_SERVING, drain, close, exit 0.
    assert codes == [0, 0, 0], codes
