"""Command intake against TigerBeetle: ``python -m bench.intake_bench [--tigerbeetle PATH] [--json]``.

Starts a local nats-server (``sync_interval: always``), Postgres (the command index; ``--no-index``
to leave it out), the card service and ``--processes`` transaction services as separate processes,
all on this machine, then measures from this process over loopback gRPC, purchases spread over
``--cards`` cards:

- one at a time: ``CreateTransaction`` latency p50/p99 (``sequential_p50_ms``);
- unary ``CreateTransaction`` with 32 in flight: commands/s, p50, p99 (``unary_*``);
- ``SubmitTransactions`` in batches (500 x 4 in flight): commands/s (``batch_cmd_per_s``);
- nats-server's RSS afterwards (``nats_rss_mb``).

Everything is stopped, then with ``--tigerbeetle PATH`` the peer runs alone (``bench.tigerbeetle_peer``:
``seq_1x1``, ``async32x1``, ``seq_batch100``) and the ratios are printed: never both at once.
``--growth`` instead measures nats-server's RSS after 100k and after ``--growth-commands``
(default 1M) commands over ``--growth-cards`` (10k) cards. ``--json`` prints one JSON object.
Bounded in count and time, loopback only; stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import grpc
import nats

from bench.support import service_env, spawn_service, wait_serving
from bench.tigerbeetle_peer import run_peer
from eventstore import EventStore
from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.intake.cards import CardStates
from services.localservers import LocalNats, LocalPostgres, free_port
from services.settings import Settings


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"  # 16 hex digits can look like a card number


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
    stub: _Router,
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
            card = cards[i % len(cards)]
            request = tx.CreateTransactionRequest(
                transaction_id=_id("u"),
                card_id=card,
                merchant_id="bench",
                amount=tx.Money(amount=1, currency="USD"),
            )
            t0 = time.perf_counter()
            for attempt in range(6):
                try:
                    await stub.for_card(card).CreateTransaction(request, timeout=30)
                    break
                except grpc.aio.AioRpcError as exc:  # retryable: same id again (issue 10)
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 5:
                        raise
                    await asyncio.sleep(0.1 * (attempt + 1))
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started), latencies


async def _batched(
    stub: _Router,
    total: int,
    batch: int,
    concurrency: int,
    cards_per_batch: int = 0,
) -> float:
    batches = total // batch
    spread = cards_per_batch or batch
    stats = {"retried": 0}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for b in range(batches):
        queue.put_nowait(b)

    async def worker() -> None:
        while True:
            try:
                b = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            target, allowed = stub.for_batch(b)
            commands = [
                tx.TransactionCommand(
                    create=tx.CreateTransactionRequest(
                        transaction_id=_id("b"),
                        card_id=allowed[(b * spread + i % spread) % len(allowed)],
                        merchant_id="bench",
                        amount=tx.Money(amount=1, currency="USD"),
                    )
                )
                for i in range(batch)
            ]
            for attempt in range(6):
                reply = await target.SubmitTransactions(
                    tx.SubmitTransactionsRequest(commands=commands), timeout=60
                )
                # UNAVAILABLE is retryable: a client resends those commands with the same ids
                # (the card lookup can time out on this loaded machine; issue 10).
                retry = [
                    c
                    for c, r in zip(commands, reply.results, strict=True)
                    if r.error_code == grpc.StatusCode.UNAVAILABLE.value[0]
                ]
                failed = [
                    r
                    for r in reply.results
                    if r.outcome.outcome != tx.OUTCOME_ACCEPTED
                    and r.error_code != grpc.StatusCode.UNAVAILABLE.value[0]
                ]
                if failed:
                    raise RuntimeError(f"{len(failed)} commands not accepted, e.g. {failed[0]}")
                if not retry:
                    break
                stats["retried"] += len(retry)
                commands = retry
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                example = next(r for r in reply.results if r.error_code)
                raise RuntimeError(
                    f"{len(commands)} commands still UNAVAILABLE after retries, e.g. {example}"
                )

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if stats["retried"]:
        print(f"({stats['retried']} UNAVAILABLE commands were retried)", file=sys.stderr)
    return batches * batch / (time.perf_counter() - started)


def _rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _issue(card_stub: card_pb2_grpc.CardServiceAsyncStub, cards: list[str]) -> None:
    queue = list(cards)

    async def worker() -> None:
        while queue:
            card_id = queue.pop()
            await card_stub.IssueCard(
                card_pb2.IssueCardRequest(
                    command_id=_id("i"),
                    card_id=card_id,
                    cardholder_name="Bench",
                    card_type=card_pb2.CARD_TYPE_CREDIT,
                    currency="USD",
                    credit_limit=10**12,
                    last4="0000",
                ),
                timeout=60,
            )

    await asyncio.gather(*(worker() for _ in range(16)))


async def _stack(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    """Start nats-server, Postgres (the command index) and the services; run the phases."""
    nats_server = LocalNats(store_dir=tmp / "nats").start()
    postgres = None if args.no_index else LocalPostgres(data_dir=tmp / "pg").start()
    settings = Settings(
        security=False,  # a plain local NATS: measures the intake, not TLS
        nats_url=nats_server.url,
        database_url="" if postgres is None else postgres.url,
        log_format="console",
        log_level="WARNING",
        writer_max_inflight=args.inflight,
    )
    card_port = free_port()
    tx_ports = [free_port() for _ in range(args.processes)]
    procs = [
        spawn_service(
            "services.card.main",
            service_env(settings, card_port=card_port, card_metrics_port=free_port()),
            tmp / "card.log",
        )
    ]
    for n, port in enumerate(tx_ports):
        procs.append(
            spawn_service(
                "services.transaction.main",
                service_env(
                    settings,
                    transaction_port=port,
                    transaction_metrics_port=free_port(),
                    card_service_addr=f"127.0.0.1:{card_port}",
                    # a loaded machine: the card lookup's cache refresh must not fail commands
                    card_lookup_timeout_seconds=10,
                ),
                tmp / f"tx{n}.log",
                profile=Path(args.profile) / f"tx{n}.prof" if args.profile else None,
            )
        )
    out: dict[str, object] = {}
    try:
        await wait_serving(card_port, 60)
        for port in tx_ports:
            await wait_serving(port, 60)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in tx_ports]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{card_port}") as cc:
            card_stub = card_pb2_grpc.CardServiceStub(cc)
            stubs = [transaction_pb2_grpc.TransactionServiceStub(c) for c in channels]
            cards = [_id("card") for _ in range(args.cards)]
            await _issue(card_stub, cards)
            if args.growth:
                out.update(await _growth(args, stubs, card_stub, nats_server))
            else:
                out.update(await _phases(args, stubs, cards, nats_server.url))
                out["nats_rss_mb"] = round(_rss_mb(nats_server.pid), 1)
        for channel in channels:
            await channel.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        nats_server.stop()
        if postgres is not None:
            postgres.stop()
    return out


class _Router:
    """Which intake process a call goes to. With card affinity (several processes), a card's
    commands always go to the same process, so its cached card state stays current there; without
    it, calls go round robin and a process often decides on a state another one has moved (a
    compare-and-set conflict, then a re-read)."""

    def __init__(
        self,
        stubs: list[transaction_pb2_grpc.TransactionServiceAsyncStub],
        cards: list[str],
        affinity: bool,
    ) -> None:
        self._stubs = stubs
        self._n = 0
        self.affinity = affinity and len(stubs) > 1
        count = len(stubs) if self.affinity else 1
        self.parts = [[c for c in cards if self._owner(c, count) == k] for k in range(count)]

    @staticmethod
    def _owner(card: str, count: int) -> int:
        return zlib.crc32(card.encode()) % count

    def next(self) -> transaction_pb2_grpc.TransactionServiceAsyncStub:
        self._n += 1
        return self._stubs[self._n % len(self._stubs)]

    def for_card(self, card: str) -> transaction_pb2_grpc.TransactionServiceAsyncStub:
        return self._stubs[self._owner(card, len(self._stubs))] if self.affinity else self.next()

    def for_batch(
        self, number: int
    ) -> tuple[transaction_pb2_grpc.TransactionServiceAsyncStub, list[str]]:
        """The process batch ``number`` goes to and the cards it may name."""
        if self.affinity:
            k = number % len(self.parts)
            return self._stubs[k], self.parts[k]
        return self.next(), self.parts[0]


async def _phases(
    args: argparse.Namespace,
    stubs: list[transaction_pb2_grpc.TransactionServiceAsyncStub],
    cards: list[str],
    nats_url: str,
) -> dict[str, object]:
    stub = _Router(stubs, cards, args.affinity)
    await _unary(stub, cards, min(500, args.unary), args.concurrency)  # warm caches, connections
    _, seq_latencies = await _unary(stub, cards, args.sequential, 1)
    rate, latencies = await _unary(stub, cards, args.unary, args.concurrency)
    batch_rate = await _batched(stub, args.batched, args.batch, args.batch_concurrency)
    seq_q = statistics.quantiles(seq_latencies, n=100)
    q = statistics.quantiles(latencies, n=100)
    out: dict[str, object] = {
        "unary_cmd_per_s": round(rate, 1),
        "unary_p50_ms": round(q[49] * 1000, 2),
        "unary_p99_ms": round(q[98] * 1000, 2),
        "sequential_p50_ms": round(seq_q[49] * 1000, 2),
        "sequential_p99_ms": round(seq_q[98] * 1000, 2),
        "batch_cmd_per_s": round(batch_rate, 1),
    }
    if args.raw:
        out["raw_single_publish_per_s"] = round(await _raw_publish_rate(nats_url, args.raw), 1)
    return out


async def _growth(
    args: argparse.Namespace,
    stubs: list[transaction_pb2_grpc.TransactionServiceAsyncStub],
    card_stub: card_pb2_grpc.CardServiceAsyncStub,
    nats_server: LocalNats,
) -> dict[str, object]:
    """nats-server RSS after 100k and after ``--growth-commands`` commands over the cards."""
    cards = [_id("g") for _ in range(args.growth_cards)]
    stub = _Router(stubs, cards, args.affinity)
    await _issue(card_stub, cards)
    out: dict[str, object] = {"growth_cards": args.growth_cards}
    done = 0
    checkpoints = sorted({min(100_000, args.growth_commands), args.growth_commands})
    started = time.perf_counter()
    for checkpoint in checkpoints:
        # 50 cards per request: each request's card lookups stay few (issue 10's lookup storms)
        await _batched(
            stub, checkpoint - done, args.batch, args.batch_concurrency, cards_per_batch=50
        )
        done = checkpoint
        out[f"nats_rss_mb_after_{checkpoint}"] = round(_rss_mb(nats_server.pid), 1)
        print(
            f"growth: {done} commands over {len(cards)} cards in"
            f" {time.perf_counter() - started:.0f} s: nats-server RSS"
            f" {out[f'nats_rss_mb_after_{checkpoint}']} MB",
            file=sys.stderr,
            flush=True,
        )
    if len(checkpoints) == 2:
        low, high = (out[f"nats_rss_mb_after_{c}"] for c in checkpoints)
        out["growth_ratio"] = round(float(high) / float(low), 2)  # type: ignore[arg-type]
    out.update(await _cold_loads(nats_server.url, cards[:200]))
    return out


async def _cold_loads(nats_url: str, cards: list[str]) -> dict[str, object]:
    """Cold-load p50/p99 of cards whose histories span the whole stream: snapshot + tail, or all."""
    nc = await nats.connect(nats_url)
    out: dict[str, object] = {}
    try:
        store = EventStore(nc, Settings().streams)
        out["stream_messages"] = await store.last_sequence()
        for label, stream in (("snapshot", store.names.snapshots), ("full", "")):
            states = CardStates(store, store.names.subjects, snapshot_stream=stream)
            latencies = []
            for card_id in cards:
                t0 = time.perf_counter()
                await states.current(card_id)
                latencies.append(time.perf_counter() - t0)
            q = statistics.quantiles(latencies, n=100)
            out[f"cold_load_{label}_p50_ms"] = round(q[49] * 1000, 2)
            out[f"cold_load_{label}_p99_ms"] = round(q[98] * 1000, 2)
            out[f"cold_load_{label}_events_per_card"] = round(
                states.stats.events_read / len(cards), 1
            )
    finally:
        await nc.close()
    return out


def _peer(args: argparse.Namespace) -> dict[str, object]:
    result = run_peer(args.tigerbeetle, duration=args.tb_duration)
    return {
        "tb_seq_1x1_per_s": round(result.seq_1x1.per_s, 1),
        "tb_seq_1x1_p50_ms": round(result.seq_1x1.p50_ms, 3),
        "tb_async32x1_per_s": round(result.async32x1.per_s, 1),
        "tb_async32x1_p50_ms": round(result.async32x1.p50_ms, 3),
        "tb_async32x1_p99_ms": round(result.async32x1.p99_ms, 3),
        "tb_seq_batch100_per_s": round(result.seq_batch100.per_s, 1),
        "tb_rss_mb": round(result.rss_mb, 1),
    }


def _ratios(out: dict[str, object]) -> dict[str, float]:
    def num(key: str) -> float:
        value = out[key]
        assert isinstance(value, int | float)
        return float(value)

    return {
        "ratio_unary_vs_tb_async32x1": round(num("unary_cmd_per_s") / num("tb_async32x1_per_s"), 3),
        "ratio_batch_vs_tb_seq_batch100": round(
            num("batch_cmd_per_s") / num("tb_seq_batch100_per_s"), 3
        ),
        "ratio_sequential_p50_tb_over_ours": round(
            num("tb_seq_1x1_p50_ms") / num("sequential_p50_ms"), 3
        ),
    }


async def _ours(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="jetledger-bench-") as tmp:
        return await _stack(args, Path(tmp))


def run(args: argparse.Namespace) -> dict[str, object]:
    """Run jetledger's phases, then (never at the same time) the peer's."""
    out = asyncio.run(_ours(args))
    if args.tigerbeetle and not args.growth:
        out.update(_peer(args))
        out.update(_ratios(out))
    return out


def _print(out: dict[str, object], args: argparse.Namespace) -> None:
    if args.growth:
        for key, value in out.items():
            print(f"{key}: {value}")
        return
    print(
        f"jetledger  unary CreateTransaction x{args.concurrency}: {out['unary_cmd_per_s']:>9} cmd/s"
        f"  p50 {out['unary_p50_ms']} ms  p99 {out['unary_p99_ms']} ms"
    )
    print(
        f"jetledger  one at a time:                     p50 {out['sequential_p50_ms']} ms"
        f"  p99 {out['sequential_p99_ms']} ms"
    )
    print(
        f"jetledger  SubmitTransactions {args.batch}x{args.batch_concurrency}:"
        f"        {out['batch_cmd_per_s']:>9} cmd/s"
    )
    print(f"jetledger  nats-server RSS: {out['nats_rss_mb']} MB")
    if "tb_async32x1_per_s" in out:
        print(
            f"TigerBeetle b_async32x1: {out['tb_async32x1_per_s']} /s"
            f"  p50 {out['tb_async32x1_p50_ms']} ms  p99 {out['tb_async32x1_p99_ms']} ms"
        )
        print(f"TigerBeetle a_seq_1x1: p50 {out['tb_seq_1x1_p50_ms']} ms")
        print(f"TigerBeetle c_seq_batch100: {out['tb_seq_batch100_per_s']} /s")
        print(
            f"ratios: unary/async32x1 {out['ratio_unary_vs_tb_async32x1']}"
            f"  batch/batch100 {out['ratio_batch_vs_tb_seq_batch100']}"
            f"  sequential p50 TB/ours {out['ratio_sequential_p50_tb_over_ours']}"
        )


def main() -> None:
    """Run the benchmark with command-line sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=200)
    parser.add_argument("--unary", type=int, default=5000)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batched", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--raw", type=int, default=0, help="also time N raw durable publishes")
    parser.add_argument("--processes", type=int, default=1, help="transaction-service processes")
    parser.add_argument(
        "--no-affinity",
        dest="affinity",
        action="store_false",
        help="with --processes > 1, spread calls round robin instead of by card",
    )
    parser.add_argument("--no-index", action="store_true", help="no Postgres command index")
    parser.add_argument(
        "--inflight",
        type=int,
        default=Settings().writer_max_inflight,
        help="atomic batches in flight",
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="DIR",
        help="run the transaction services under cProfile, stats in DIR/tx<n>.prof",
    )
    parser.add_argument("--tigerbeetle", default="", metavar="PATH", help="peer server binary")
    parser.add_argument("--tb-duration", type=float, default=5.0, help="seconds per peer phase")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--growth", action="store_true", help="nats-server RSS vs commands")
    parser.add_argument("--growth-cards", type=int, default=10_000)
    parser.add_argument("--growth-commands", type=int, default=1_000_000)
    args = parser.parse_args()
    out = run(args)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        _print(out, args)


if __name__ == "__main__":
    main()
