"""Concurrent purchases on one card across several intake processes: ``python -m bench.race_bench``.

Each run issues a fresh card with a limit, fires ``--purchases`` concurrent ``CreateTransaction``
calls at once, spread round-robin over ``--processes`` transaction-service processes, then checks:

- no status other than OK and FAILED_PRECONDITION (a decline): no ABORTED, no UNAVAILABLE;
- no overdraft: the accepted amounts fit in the limit, and every decline was right when made;
- one outcome per id: the card's family holds exactly one event per purchase id, of the kind the
  caller was told (created for OK, declined for FAILED_PRECONDITION), and a retry of every id on
  another process replays that same outcome.

``--runs`` repeats it (each on a new card) for 2 and 4 processes by default and prints a table. The
same ``race`` function is the bounded test in ``tests/e2e/test_race.py``. Loopback only; stops
everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats

from bench.support import service_env, spawn_service, wait_serving
from contracts.codec import decode_event
from contracts.events import TransactionCreated, TransactionDeclined
from eventstore import EventStore
from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.localservers import LocalNats, free_port
from services.settings import Settings

LIMIT = 5_000


@dataclass
class RaceResult:
    """What one race showed."""

    processes: int
    statuses: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    problems: list[str] = field(default_factory=list)


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"  # 16 hex digits can look like a card number


async def race(
    settings: Settings, card_port: int, tx_ports: list[int], purchases: int = 50, seed: int = 7
) -> RaceResult:
    """One race on a new card; the result lists every broken promise in ``problems``."""
    result = RaceResult(processes=len(tx_ports))
    card_id = _id("hot")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{card_port}") as card_channel:
        cards = card_pb2_grpc.CardServiceStub(card_channel)
        await cards.IssueCard(
            card_pb2.IssueCardRequest(
                command_id=_id("issue"),
                card_id=card_id,
                cardholder_name="Race",
                card_type=card_pb2.CARD_TYPE_CREDIT,
                currency="USD",
                credit_limit=LIMIT,
                last4="4242",
            ),
            timeout=30,
        )
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in tx_ports]
    stubs = [transaction_pb2_grpc.TransactionServiceStub(c) for c in channels]
    rng = random.Random(seed)
    amounts = [rng.randint(50, 400) for _ in range(purchases)]
    ids = [_id("spend") for _ in range(purchases)]

    async def spend(index: int, shift: int) -> str:
        stub = stubs[(index + shift) % len(stubs)]
        request = tx.CreateTransactionRequest(
            transaction_id=ids[index],
            card_id=card_id,
            merchant_id="m",
            amount=tx.Money(amount=amounts[index], currency="USD"),
        )
        try:
            await stub.CreateTransaction(request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"

    try:
        statuses = await asyncio.gather(*(spend(i, 0) for i in range(purchases)))
        retried = await asyncio.gather(*(spend(i, 1) for i in range(purchases)))
    finally:
        for channel in channels:
            await channel.close()
    result.statuses.update(statuses)
    if set(statuses) - {"OK", "FAILED_PRECONDITION"}:
        result.problems.append(f"unexpected statuses {dict(result.statuses)}")
    if retried != statuses:
        changed = sum(a != b for a, b in zip(statuses, retried, strict=True))
        result.problems.append(f"{changed} retries answered differently from the first call")
    result.accepted = sum(a for a, s in zip(amounts, statuses, strict=True) if s == "OK")
    if result.accepted > LIMIT:
        result.problems.append(f"overdraft: accepted {result.accepted} > limit {LIMIT}")
    declined = [a for a, s in zip(amounts, statuses, strict=True) if s == "FAILED_PRECONDITION"]
    if declined and LIMIT - result.accepted >= min(declined):
        result.problems.append("a decline was wrong: what was left covered it")
    await _check_stream(settings, card_id, ids, statuses, result)
    return result


async def _check_stream(
    settings: Settings, card_id: str, ids: list[str], statuses: list[str], result: RaceResult
) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        store = EventStore(nc, settings.streams)
        loaded = await store.load(settings.streams.subjects.card(card_id))
    finally:
        await nc.close()
    kinds: dict[str, list[str]] = {}
    for message in loaded.messages:
        event = decode_event(message.data)
        if isinstance(event, TransactionCreated | TransactionDeclined):
            kinds.setdefault(event.command_id, []).append(
                "OK" if isinstance(event, TransactionCreated) else "FAILED_PRECONDITION"
            )
    for command_id, status in zip(ids, statuses, strict=True):
        recorded = kinds.get(command_id, [])
        if recorded != [status]:
            result.problems.append(f"{command_id}: told {status}, stream holds {recorded}")


async def _runs(args: argparse.Namespace) -> list[RaceResult]:
    results: list[RaceResult] = []
    with tempfile.TemporaryDirectory(prefix="jetledger-race-") as tmp:
        nats_server = LocalNats(store_dir=Path(tmp) / "nats").start()
        settings = Settings(
            security=False,  # a plain local NATS
            nats_url=nats_server.url,
            log_format="console",
            log_level="WARNING",
        )
        try:
            for processes in args.processes:
                card_port = free_port()
                tx_ports = [free_port() for _ in range(processes)]
                procs = [
                    spawn_service(
                        "services.card.main",
                        service_env(settings, card_port=card_port, card_metrics_port=free_port()),
                        Path(tmp) / "card.log",
                    )
                ]
                for n, port in enumerate(tx_ports):
                    env = service_env(
                        settings,
                        transaction_port=port,
                        transaction_metrics_port=free_port(),
                        card_service_addr=f"127.0.0.1:{card_port}",
                    )
                    procs.append(
                        spawn_service("services.transaction.main", env, Path(tmp) / f"tx{n}.log")
                    )
                try:
                    await wait_serving(card_port, 60)
                    for port in tx_ports:
                        await wait_serving(port, 60)
                    for run in range(args.runs):
                        outcome = await race(
                            settings, card_port, tx_ports, args.purchases, seed=run
                        )
                        results.append(outcome)
                        print(
                            f"{processes} processes, run {run + 1:2}: "
                            f"{dict(outcome.statuses)} accepted {outcome.accepted}/{LIMIT}"
                            f"{'  PROBLEMS: ' + '; '.join(outcome.problems) if outcome.problems else ''}",
                            flush=True,
                        )
                finally:
                    for proc in procs:
                        proc.terminate()
                    for proc in procs:
                        proc.wait(15)
        finally:
            nats_server.stop()
    return results


def main() -> None:
    """Run the races and print a summary; exit 1 if any promise was broken."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--purchases", type=int, default=50)
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    results = asyncio.run(_runs(args))
    for processes in args.processes:
        mine = [r for r in results if r.processes == processes]
        aborted = sum(r.statuses.get("ABORTED", 0) for r in mine)
        broken = sum(bool(r.problems) for r in mine)
        print(
            f"{processes} processes: {len(mine)} runs, ABORTED {aborted}, runs with problems {broken}"
        )
    raise SystemExit(1 if any(r.problems for r in results) else 0)


if __name__ == "__main__":
    main()
