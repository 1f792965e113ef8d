"""Long-history soak: ``python -m bench.soak_bench`` (issue 16; docs/soak.md).

Runs the real system, the same processes as ``jetledger dev`` (nats-server, Postgres, the card,
transaction, ledger and notification services, projections included; ``services.dev.DevSystem``),
issues ``--cards`` credit cards, then sends ``--commands`` money commands over them, flat out or
at ``--rate`` commands/s: purchases mostly, with holds (captured whole, in part, or voided) and
refunds of earlier purchases mixed in. Every ``--window`` commands it reports throughput, call
latency p50/p99, errors by gRPC status, declines by reason, projection lag, the RSS of every
process, and the CPU each process (with its children: Postgres backends) and the driver itself
spent per command. At the end it waits for the projections, runs ``jetledger verify`` and checks that every
service still answers.

``--json`` prints one object: ``commands``, ``cards``, ``errors``, ``first_100k_cmd_per_s``,
``last_100k_cmd_per_s`` (the first and last window, whatever ``--window`` is), ``rss_mb``
(per process, first and last window), ``p99_ms`` (first and last), plus the windows, the
verification and the liveness checks. The exit status is 0 only with no errors, no unexpected
declines, verify OK and every service answering.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.dev.ports import SERVICES, with_free_ports
from services.dev.system import DevSystem
from services.grpc_errors import REASON_METADATA_KEY
from services.security.config import aio_channel, secure_locally
from services.settings import Settings

PROFILES: dict[str, dict[str, Any]] = {
    # A correctness check for `make test` (~2 minutes with start-up), not a measurement.
    "short": {"commands": 6_000, "cards": 60, "window": 2_000},
    # The shape that hit the cliff in issue 16 (≈ 1,000 commands a card).
    "medium": {"commands": 200_000, "cards": 200, "window": 50_000},
    # `make soak`: the targets of issue 16.
    "long": {"commands": 1_000_000, "cards": 1_000, "window": 100_000},
    "wide": {"commands": 1_000_000, "cards": 100_000, "window": 100_000},
}
CREDIT_LIMIT = 10**12  # minor units: no purchase of the mix is ever declined for funds
YARDSTICK_LOOPS = 300_000
EXPECTED_DECLINES: frozenset[str] = frozenset()  # the mix never asks for anything refusable


_LETTERS = str.maketrans("0123456789", "ghijklmnop")


def _id(prefix: str) -> str:
    # Letters only: a long run of digits would be refused as a possible card number.
    return f"{prefix}-{uuid.uuid4().hex[:20].translate(_LETTERS)}"


def _money(amount: int) -> tx.Money:
    return tx.Money(amount=amount, currency="USD")


# --- the workload -------------------------------------------------------------------------------


@dataclass
class _Card:
    """What the generator knows was accepted on one card (only settled ids are referred to)."""

    purchases: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=16))
    holds: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=16))


@dataclass
class _Item:
    card_id: str
    kind: str
    command: tx.TransactionCommand
    ref: tuple[str, int] | None = None  # the purchase or hold it follows up, and what remains
    amount: int = 0


class Workload:
    """Purchases (70 %), holds (12 %), captures and voids of them (10 %), refunds (8 %)."""

    def __init__(self, cards: Sequence[str], seed: int = 16) -> None:
        self.cards = list(cards)
        self.rng = random.Random(seed)
        self.known = {card_id: _Card() for card_id in cards}
        self.next_card = 0

    def batch(self, size: int) -> list[_Item]:
        items = []
        for _ in range(size):
            card_id = self.cards[self.next_card % len(self.cards)]
            self.next_card += 1
            items.append(self._one(card_id))
        return items

    def _one(self, card_id: str) -> _Item:
        card = self.known[card_id]
        roll = self.rng.random()
        amount = self.rng.randint(1, 5_000)
        if roll < 0.10 and card.holds:
            hold_id, remaining = card.holds.popleft()  # nobody else refers to it while in flight
            if self.rng.random() < 0.25:
                request = tx.VoidTransactionRequest(
                    transaction_id=_id("void"), card_id=card_id, authorization_id=hold_id
                )
                return _Item(card_id, "void", tx.TransactionCommand(void=request), (hold_id, 0))
            take = remaining if self.rng.random() < 0.7 else max(1, remaining // 2)
            capture = tx.CaptureTransactionRequest(
                transaction_id=_id("cap"),
                card_id=card_id,
                authorization_id=hold_id,
                amount=_money(take),
            )
            command = tx.TransactionCommand(capture=capture)
            return _Item(card_id, "capture", command, (hold_id, remaining - take), take)
        if roll < 0.18 and card.purchases:
            original, refundable = card.purchases.popleft()
            take = self.rng.randint(1, refundable)
            refund = tx.RefundTransactionRequest(
                transaction_id=_id("ref"),
                card_id=card_id,
                original_transaction_id=original,
                amount=_money(take),
            )
            command = tx.TransactionCommand(refund=refund)
            return _Item(card_id, "refund", command, (original, refundable - take), take)
        if roll < 0.30:
            authorize = tx.AuthorizeTransactionRequest(
                transaction_id=_id("auth"),
                card_id=card_id,
                merchant_id=f"m-{self.rng.randint(1, 50)}",
                amount=_money(amount),
            )
            return _Item(
                card_id, "authorize", tx.TransactionCommand(authorize=authorize), None, amount
            )
        create = tx.CreateTransactionRequest(
            transaction_id=_id("buy"),
            card_id=card_id,
            merchant_id=f"m-{self.rng.randint(1, 50)}",
            amount=_money(amount),
        )
        return _Item(card_id, "purchase", tx.TransactionCommand(create=create), None, amount)

    def settled(self, item: _Item, accepted: bool) -> None:
        """Learn from an answer: what may be captured, voided or refunded next."""
        card = self.known[item.card_id]
        if item.kind == "purchase" and accepted:
            card.purchases.append((item.command.create.transaction_id, item.amount))
        elif item.kind == "authorize" and accepted:
            card.holds.append((item.command.authorize.transaction_id, item.amount))
        elif item.kind == "capture" and item.ref is not None:
            hold_id, remaining = item.ref
            if accepted and remaining > 0:
                card.holds.append((hold_id, remaining))
            if accepted:
                card.purchases.append((item.command.capture.transaction_id, item.amount))
        elif item.kind == "refund" and item.ref is not None and item.ref[1] > 0:
            card.purchases.append(
                item.ref if accepted else (item.ref[0], item.ref[1] + item.amount)
            )


# --- measurement --------------------------------------------------------------------------------


@dataclass
class Window:
    index: int
    commands: int = 0
    started: float = 0.0
    ended: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, one per call
    errors: Counter[str] = field(default_factory=Counter)
    declines: Counter[str] = field(default_factory=Counter)
    lags: list[float] = field(default_factory=list)  # seconds, sampled each second
    lags_by: dict[str, list[float]] = field(default_factory=dict)  # the same, by projection
    rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU an accepted-or-not command, ms
    yardstick_ms: float = 0.0  # CPU time of a fixed piece of work at the window's end

    @property
    def rate(self) -> float:
        return self.commands / max(self.ended - self.started, 1e-9)

    def quantile(self, q: float) -> float:
        return _quantile(self.latencies, q) * 1000

    def summary(self) -> dict[str, Any]:
        return {
            "window": self.index,
            "commands": self.commands,
            "cmd_per_s": round(self.rate, 1),
            "p50_ms": round(self.quantile(0.50), 2),
            "p99_ms": round(self.quantile(0.99), 2),
            "errors": dict(self.errors),
            "declines": dict(self.declines),
            "lag_p99_s": round(_quantile(self.lags, 0.99), 3),
            "lag_p99_s_by_projection": {
                name: round(_quantile(lags, 0.99), 3) for name, lags in self.lags_by.items()
            },
            "rss_mb": {k: round(v, 1) for k, v in self.rss_mb.items()},
            "cpu_ms_per_cmd": {k: round(v, 3) for k, v in self.cpu_ms.items()},
            "yardstick_ms": round(self.yardstick_ms, 1),
        }


def _yardstick() -> float:
    """CPU seconds a fixed piece of pure-Python work takes right now (~40 ms on an idle core here).

    A shared machine's speed drifts: with both cores busy, or a neighbour busy, the same
    instructions cost more CPU time. Comparing windows means comparing their yardsticks too."""
    started = time.process_time()
    total = 0
    for i in range(YARDSTICK_LOOPS):
        total += i * i % 7
    return time.process_time() - started


def _cpu_now(system: DevSystem) -> dict[str, float]:
    """CPU seconds used so far by every process of the system, and by this driver ("bench")."""
    return {**system.cpu_seconds(), "bench": time.process_time()}


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _scrape_lag(urls: Sequence[str]) -> float:
    """The largest ``jetledger_projection_lag_seconds`` the projections report right now."""
    return max(_scrape_lags(urls).values(), default=0.0)


def _scrape_lags(urls: Sequence[str]) -> dict[str, float]:
    """Each projection's ``jetledger_projection_lag_seconds`` right now (its worst stream)."""
    found: dict[str, float] = {}
    for url in urls:
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, timeout=2) as reply,  # noqa: S310 (loopback)
        ):
            for line in reply.read().decode().splitlines():
                if line.startswith("jetledger_projection_lag_seconds{"):
                    labels, value = line.rsplit(" ", 1)
                    name = labels.split('projection="', 1)[1].split('"', 1)[0]
                    found[name] = max(found.get(name, 0.0), float(value))
    return found


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Options:
    commands: int
    cards: int
    window: int
    rate: float
    batch: int
    concurrency: int
    mode: str
    json: bool
    seed: int


async def _issue_cards(channel: grpc.aio.Channel, count: int, out: Console) -> list[str]:
    stub = card_pb2_grpc.CardServiceStub(channel)
    ids = [f"soak-{index:06d}-{_id('c')[2:8]}" for index in range(count)]
    gate = asyncio.Semaphore(32)

    async def issue(card_id: str) -> None:
        request = card_pb2.IssueCardRequest(
            command_id=_id("issue"),
            card_id=card_id,
            cardholder_name="Soak Tester",
            card_type=card_pb2.CARD_TYPE_CREDIT,
            currency="USD",
            credit_limit=CREDIT_LIMIT,
            last4="4242",
        )
        async with gate:
            await stub.IssueCard(request, timeout=60)

    started = time.perf_counter()
    await asyncio.gather(*(issue(card_id) for card_id in ids))
    out.print(f"issued {count:,} cards in {time.perf_counter() - started:.1f} s")
    return ids


async def _drive(system: DevSystem, options: Options, out: Console) -> dict[str, Any]:
    endpoints = system.endpoints()
    # TLS and the operator's token when the system is secure, as `jetledger dev` is by default.
    card_channel = aio_channel(system.settings, endpoints["card"])
    tx_channel = aio_channel(system.settings, endpoints["transaction"])
    stub = transaction_pb2_grpc.TransactionServiceStub(tx_channel)
    cards = await _issue_cards(card_channel, options.cards, out)
    workload = Workload(cards, options.seed)
    lag_urls = [endpoints["ledger_metrics"], endpoints["notification_metrics"]]
    windows: list[Window] = []
    sent = 0
    done = 0
    started = time.perf_counter()
    current = Window(0, started=started)
    calls = options.batch if options.mode == "submit" else 1
    cpu_before = _cpu_now(system)

    def close_window(now: float) -> None:
        nonlocal current, cpu_before
        current.ended = now
        current.rss_mb = {name: kib / 1024 for name, kib in system.rss().items()}
        cpu_now = _cpu_now(system)
        current.cpu_ms = {
            name: (used - cpu_before.get(name, 0.0)) * 1000 / max(current.commands, 1)
            for name, used in cpu_now.items()
        }
        cpu_before = cpu_now
        current.yardstick_ms = _yardstick() * 1000
        windows.append(current)
        out.print(_line(current))
        current = Window(current.index + 1, started=now)

    def record(items: Sequence[_Item], outcomes: Sequence[tuple[str, str]], seconds: float) -> None:
        nonlocal done
        current.latencies.append(seconds)
        for item, (status, reason) in zip(items, outcomes, strict=True):
            accepted = status == "OK" and not reason
            if status != "OK":
                current.errors[status] += 1
            elif reason:
                current.declines[reason] += 1
            workload.settled(item, accepted)
        current.commands += len(items)
        done += len(items)
        if current.commands >= options.window or done >= options.commands:
            close_window(time.perf_counter())

    async def one_call(items: list[_Item]) -> None:
        t0 = time.perf_counter()
        outcomes: list[tuple[str, str]] = []
        try:
            if options.mode == "submit":
                reply = await stub.SubmitTransactions(
                    tx.SubmitTransactionsRequest(commands=[i.command for i in items]), timeout=60
                )
                for result in reply.results:
                    if result.error_code:
                        outcomes.append((_status_name(result.error_code), ""))
                        _sample(result.error_message)
                    else:
                        outcomes.append(("OK", result.outcome.reason))
            else:
                outcomes.append(await _unary(stub, items[0]))
        except grpc.aio.AioRpcError as exc:
            outcomes = [(exc.code().name, "")] * len(items)
            _sample(f"{exc.code().name}: {exc.details()}")
        record(items, outcomes, time.perf_counter() - t0)

    async def worker() -> None:
        nonlocal sent
        while sent < options.commands:
            size = min(calls, options.commands - sent)
            items = workload.batch(size)
            if options.rate > 0:  # open loop: each call has its slot in time
                due = started + sent / options.rate
                sent += size
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            else:
                sent += size
            await one_call(items)

    async def sample_lag() -> None:
        while True:
            lags = await asyncio.to_thread(_scrape_lags, lag_urls)
            current.lags.append(max(lags.values(), default=0.0))
            for name, lag in lags.items():
                current.lags_by.setdefault(name, []).append(lag)
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_lag())
    try:
        await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    elapsed = time.perf_counter() - started
    caught_up = await _wait_caught_up(lag_urls)
    problems = await _verify(system)
    answering = await _answering(system, card_channel, cards[0])
    await card_channel.close()
    await tx_channel.close()
    return _result(options, windows, elapsed, caught_up, problems, answering)


async def _unary(stub: Any, item: _Item) -> tuple[str, str]:
    kind = str(item.command.WhichOneof("command"))
    method = {
        "create": stub.CreateTransaction,
        "authorize": stub.AuthorizeTransaction,
        "capture": stub.CaptureTransaction,
        "void": stub.VoidTransaction,
        "refund": stub.RefundTransaction,
    }[kind]
    try:
        await method(getattr(item.command, kind), timeout=60)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            reason = dict(exc.trailing_metadata() or ()).get(REASON_METADATA_KEY, "declined")
            return ("OK", str(reason))
        _sample(f"{exc.code().name}: {exc.details()}")
        return (exc.code().name, "")
    return ("OK", "")


ERROR_SAMPLES: list[str] = []  # the first few error messages, to say what went wrong


def _sample(message: str) -> None:
    if len(ERROR_SAMPLES) < 10:
        ERROR_SAMPLES.append(message)


def _status_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return f"STATUS_{code}"


async def _wait_caught_up(urls: Sequence[str], within: float = 1800.0) -> float:
    """Seconds until the projections report no lag (or -1 if they never did)."""
    started = time.perf_counter()
    while time.perf_counter() - started < within:
        if await asyncio.to_thread(_scrape_lag, urls) == 0.0:
            return time.perf_counter() - started
        await asyncio.sleep(0.5)
    return -1.0


async def _verify(system: DevSystem) -> list[str]:
    from services.cli import ledger as ledger_cli

    console = Console(file=io.StringIO(), width=160)
    try:
        return await ledger_cli.check_projections(system.settings, console)
    except Exception as exc:  # a verify that cannot run is a failed verify, said plainly
        return [f"verify could not run: {exc}"]


async def _answering(
    system: DevSystem, card_channel: grpc.aio.Channel, card_id: str
) -> dict[str, bool]:
    endpoints = system.endpoints()
    found: dict[str, bool] = {}
    for name in SERVICES:
        found[name] = await _serving(system, endpoints[name])
    try:
        stub = card_pb2_grpc.CardServiceStub(card_channel)
        await stub.GetCard(card_pb2.CardRequest(card_id=card_id), timeout=15)
    except grpc.aio.AioRpcError:
        found["card"] = False
    rss = system.rss()
    for name in ("nats", "postgres"):
        found[name] = name in rss
    return found


async def _serving(system: DevSystem, target: str) -> bool:
    """Whether the gRPC server at ``target`` reports SERVING within 15 s."""
    async with aio_channel(system.settings, target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        for _ in range(15):
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(1.0)
    return False


def _result(
    options: Options,
    windows: list[Window],
    elapsed: float,
    caught_up: float,
    problems: list[str],
    answering: dict[str, bool],
) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    declines: Counter[str] = Counter()
    for window in windows:
        errors.update(window.errors)
        declines.update(window.declines)
    first, last = windows[0], windows[-1]
    names = sorted(set(first.rss_mb) | set(last.rss_mb))
    lags = [lag for window in windows for lag in window.lags]
    unexpected = {k: v for k, v in declines.items() if k not in EXPECTED_DECLINES}
    ok = not errors and not unexpected and not problems and all(answering.values())
    return {
        "commands": sum(w.commands for w in windows),
        "cards": options.cards,
        "mode": options.mode,
        "rate": options.rate or "flat out",
        "batch": options.batch if options.mode == "submit" else 1,
        "concurrency": options.concurrency,
        "seconds": round(elapsed, 1),
        "cmd_per_s": round(sum(w.commands for w in windows) / elapsed, 1),
        "errors": dict(errors),
        "error_samples": ERROR_SAMPLES[:10],
        "declines": dict(declines),
        "window": options.window,
        "first_100k_cmd_per_s": round(first.rate, 1),
        "last_100k_cmd_per_s": round(last.rate, 1),
        "p99_ms": {"first": round(first.quantile(0.99), 2), "last": round(last.quantile(0.99), 2)},
        "yardstick_ms": {
            "first": round(first.yardstick_ms, 1),
            "last": round(last.yardstick_ms, 1),
        },
        "rss_mb": {
            name: {
                "first": round(first.rss_mb.get(name, 0.0), 1),
                "last": round(last.rss_mb.get(name, 0.0), 1),
            }
            for name in names
        },
        "lag_p99_s": round(_quantile(lags, 0.99), 3),
        "caught_up_after_s": round(caught_up, 1),
        "verify": "OK" if not problems else problems[:10],
        "answering": answering,
        "ok": ok,
        "windows": [w.summary() for w in windows],
    }


def _line(window: Window) -> str:
    rss = " ".join(f"{k}={v:.0f}" for k, v in sorted(window.rss_mb.items()))
    cpu = " ".join(f"{k}={v:.2f}" for k, v in sorted(window.cpu_ms.items()))
    by = " ".join(f"{k}={_quantile(v, 0.99):.2f}" for k, v in sorted(window.lags_by.items()))
    errors = ",".join(f"{k}:{v}" for k, v in window.errors.items()) or "0"
    return (
        f"[{window.index:>3}] {window.commands:>7,} cmds {window.rate:>8.1f}/s "
        f"p50 {window.quantile(0.5):7.1f} ms p99 {window.quantile(0.99):7.1f} ms "
        f"errors {errors} lag p99 {_quantile(window.lags, 0.99):.2f} s ({by}) | RSS MB {rss}"
        f" | CPU ms/cmd {cpu} | yardstick {window.yardstick_ms:.0f} ms"
    )


def run(options: Options, data_dir: Path, out: Console) -> dict[str, Any]:
    """Start the system in ``data_dir``, soak it, stop it; return the result object."""
    settings = secure_locally(
        with_free_ports(Settings(data_dir=data_dir / ".jetledger", log_format="json"))
    )
    with DevSystem(settings, fresh=True) as system:
        out.print(f"system up: {', '.join(sorted(system.pids()))}")
        return asyncio.run(_drive(system, options, out))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--commands", type=int, help="money commands to send (profile's default)")
    parser.add_argument("--cards", type=int, help="cards to spread them over")
    parser.add_argument("--window", type=int, help="commands per report line (default 100,000)")
    parser.add_argument("--rate", type=float, default=0.0, help="commands/s; 0: flat out")
    parser.add_argument("--mode", choices=("submit", "unary"), default="submit")
    parser.add_argument("--batch", type=int, default=100, help="commands per SubmitTransactions")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--data-dir", type=Path, help="where the system keeps its data (temp)")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    profile = PROFILES[args.profile]
    options = Options(
        commands=args.commands or profile["commands"],
        cards=args.cards or profile["cards"],
        window=args.window or profile["window"],
        rate=args.rate,
        batch=args.batch,
        concurrency=args.concurrency,
        mode=args.mode,
        json=args.json,
        seed=args.seed,
    )
    out = Console(stderr=True) if args.json else Console()
    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        result = run(options, data_dir, out)
    if args.json:
        print(json.dumps(result))
    else:
        out.print({k: v for k, v in result.items() if k != "windows"})
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
