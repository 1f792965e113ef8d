"""Command intake throughput and latency: ``python -m bench.intake_bench``.

Starts a local nats-server (``sync_interval: always``), the card service and one transaction
service as separate processes (everything co-located on this machine, as in the targets of
issue 3), then measures from this process over loopback gRPC:

- unary ``CreateTransaction`` at a fixed concurrency: commands/s and latency p50/p99;
- ``SubmitTransactions`` in batches: commands/s;
- the raw ceiling of the same run: single-message durable publishes/s straight to JetStream.

Purchases are spread over many cards (one card is decided one command at a time). Bounded in
count and time, loopback only; stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import nats

from bench.support import service_env, spawn_service, wait_serving
from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.localservers import LocalNats, free_port
from services.settings import Settings


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


async def _raw_publish_rate(nats_url: str, count: int) -> float:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name="RAWBENCH", subjects=["rawbench.>"])
    payload = b"x" * 200
    started = time.perf_counter()
    for i in range(count):
        await js.publish(f"rawbench.{i % 100}", payload)
    elapsed = time.perf_counter() - started
    await js.delete_stream("RAWBENCH")
    await nc.close()
    return count / elapsed


async def _unary(
    stub: transaction_pb2_grpc.TransactionServiceAsyncStub,
    cards: list[str],
    total: int,
    concurrency: int,
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            request = tx.CreateTransactionRequest(
                transaction_id=_id("u"),
                card_id=cards[i % len(cards)],
                merchant_id="bench",
                amount=tx.Money(amount=1, currency="USD"),
            )
            t0 = time.perf_counter()
            await stub.CreateTransaction(request, timeout=30)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started), latencies


async def _batched(
    stub: transaction_pb2_grpc.TransactionServiceAsyncStub,
    cards: list[str],
    total: int,
    batch: int,
    concurrency: int,
) -> float:
    batches = total // batch
    queue: asyncio.Queue[int] = asyncio.Queue()
    for b in range(batches):
        queue.put_nowait(b)

    async def worker() -> None:
        while True:
            try:
                b = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            commands = [
                tx.TransactionCommand(
                    create=tx.CreateTransactionRequest(
                        transaction_id=_id("b"),
                        card_id=cards[(b * batch + i) % len(cards)],
                        merchant_id="bench",
                        amount=tx.Money(amount=1, currency="USD"),
                    )
                )
                for i in range(batch)
            ]
            reply = await stub.SubmitTransactions(
                tx.SubmitTransactionsRequest(commands=commands), timeout=60
            )
            failed = [r for r in reply.results if r.outcome.outcome != tx.OUTCOME_ACCEPTED]
            if failed:
                raise RuntimeError(f"{len(failed)} commands not accepted, e.g. {failed[0]}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return batches * batch / (time.perf_counter() - started)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="jetledger-bench-") as tmp:
        nats_server = LocalNats(store_dir=Path(tmp) / "nats").start()
        settings = Settings(
            security=False,  # a plain local NATS: measures the intake, not TLS
            nats_url=nats_server.url,
            log_format="console",
            log_level="WARNING",
            writer_max_inflight=args.inflight,
        )
        card_port, tx_port = free_port(), free_port()
        procs = [
            spawn_service(
                "services.card.main",
                service_env(settings, card_port=card_port, card_metrics_port=free_port()),
                Path(tmp) / "card.log",
            ),
            spawn_service(
                "services.transaction.main",
                service_env(
                    settings,
                    transaction_port=tx_port,
                    transaction_metrics_port=free_port(),
                    card_service_addr=f"127.0.0.1:{card_port}",
                ),
                Path(tmp) / "tx.log",
            ),
        ]
        try:
            await wait_serving(card_port)
            await wait_serving(tx_port)
            raw = await _raw_publish_rate(nats_server.url, args.raw)
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{card_port}") as cc,
                grpc.aio.insecure_channel(f"127.0.0.1:{tx_port}") as tc,
            ):
                card_stub = card_pb2_grpc.CardServiceStub(cc)
                stub = transaction_pb2_grpc.TransactionServiceStub(tc)
                cards = [_id("card") for _ in range(args.cards)]
                for card_id in cards:
                    await card_stub.IssueCard(
                        card_pb2.IssueCardRequest(
                            command_id=_id("i"),
                            card_id=card_id,
                            cardholder_name="Bench",
                            card_type=card_pb2.CARD_TYPE_CREDIT,
                            currency="USD",
                            credit_limit=10**12,
                            last4="0000",
                        )
                    )
                await _unary(
                    stub, cards, min(500, args.unary), args.concurrency
                )  # warm caches and connections
                rate, latencies = await _unary(stub, cards, args.unary, args.concurrency)
                quantiles = statistics.quantiles(latencies, n=100)
                batch_rate = await _batched(
                    stub, cards, args.batched, args.batch, args.batch_concurrency
                )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
            nats_server.stop()
    print(f"raw durable single publish (one at a time): {raw:8.0f} msg/s")
    print(
        f"unary CreateTransaction, {args.concurrency} in flight:  {rate:8.0f} commands/s  p50 {quantiles[49] * 1000:.1f} ms  p99 {quantiles[98] * 1000:.1f} ms"
    )
    print(
        f"SubmitTransactions, batches of {args.batch} x {args.batch_concurrency}:   {batch_rate:8.0f} commands/s"
    )
    print(f"ratios: unary/raw-single {rate / raw:.2f}  batched/raw-single {batch_rate / raw:.2f}")


def main() -> None:
    """Run the benchmark with command-line sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=200)
    parser.add_argument("--unary", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batched", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--raw", type=int, default=2000)
    parser.add_argument(
        "--inflight",
        type=int,
        default=Settings().writer_max_inflight,
        help="atomic batches in flight",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
