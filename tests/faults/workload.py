"""The campaign's bank-style workload: an open loop at a fixed rate, every request logged.

Cards are issued first (half credit with a limit, half debit funded up front). Then, at a fixed
rate whatever the answers (open loop: a slow system gets more requests in flight, not fewer),
one of: purchase, funding, hold, partial capture of an open hold, void, refund of an earlier
purchase. Every request is logged with its id, card, status, outcome and returned stream sequence;
a command whose outcome is unknown (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, …) is retried with
the same id after the faults, until it is decided, and asked again to prove the answer stable.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc

from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.notification.v1 import notification_pb2, notification_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.settings import Settings

DECIDED = {"OK", "FAILED_PRECONDITION"}  # accepted, or declined (and recorded)
REJECTED = {"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS"}  # refused, nothing recorded
RECORDED_AT = re.compile(r"recorded at \S+:(\d+)")
CREDIT_LIMIT = 50_000
OPENING_FUNDS = 50_000


@dataclass
class Op:
    """One logged request (and, after the campaign, its retries)."""

    op_id: str
    kind: str  # issue, purchase, fund, hold, capture, void, refund
    card_id: str
    method: str
    request: Any
    start: float
    end: float = 0.0
    status: str = ""
    outcome: str = ""  # accepted | declined | ""
    sequence: int = 0
    reason: str = ""
    retries: list[tuple[str, str, int]] = field(default_factory=list)  # (status, outcome, seq)

    @property
    def decided(self) -> bool:
        return self.status in DECIDED

    @property
    def unknown(self) -> bool:
        return self.status not in DECIDED and self.status not in REJECTED


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def _usd(amount: int) -> tx.Money:
    return tx.Money(amount=amount, currency="USD")


class Workload:
    """Drives the transaction and card services of one system; ``log`` holds every request."""

    def __init__(self, settings: Settings, cards: int, seed: int = 7) -> None:
        self.settings = settings
        self.rng = random.Random(seed)
        self.card_ids = [f"fc-{uuid.uuid4().hex[:8]}-{n}" for n in range(cards)]
        self.log: list[Op] = []
        self.holds: dict[str, list[tuple[str, int]]] = {c: [] for c in self.card_ids}
        self.purchases: dict[str, list[tuple[str, int]]] = {c: [] for c in self.card_ids}
        self.in_flight = 0
        self._channels: list[grpc.aio.Channel] = []

    def _channel(self, name: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{getattr(self.settings, f'{name}_port')}",
            options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
            ],
        )
        self._channels.append(channel)
        return channel

    async def open(self) -> None:
        self.cards = card_pb2_grpc.CardServiceStub(self._channel("card"))
        self.tx = transaction_pb2_grpc.TransactionServiceStub(self._channel("transaction"))
        self.notify = notification_pb2_grpc.NotificationServiceStub(self._channel("notification"))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    # -- one request ----------------------------------------------------------------------------

    def _stub(self, method: str) -> Any:
        return getattr(self.cards if method == "IssueCard" else self.tx, method)

    async def send(self, op: Op, deadline: float = 5.0) -> tuple[str, str, int, str]:
        """Send ``op``'s request; (status, outcome, sequence, reason)."""
        try:
            reply = await self._stub(op.method)(op.request, timeout=deadline)
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
            if status == "FAILED_PRECONDITION":
                found = RECORDED_AT.search(exc.details() or "")
                reason = next(
                    (str(v) for k, v in exc.trailing_metadata() or () if k == "jetledger-reason"),
                    "",
                )
                return status, "declined", int(found.group(1)) if found else 0, reason
            return status, "", 0, (exc.details() or "")[:120]
        outcome = getattr(reply, "outcome", None)
        if outcome is None:  # IssueCard
            return "OK", "accepted", int(reply.result.stream_sequence), ""
        return "OK", "accepted", int(outcome.stream_sequence), ""

    async def run_op(self, op: Op, deadline: float = 5.0) -> Op:
        self.log.append(op)
        self.in_flight += 1
        try:
            op.status, op.outcome, op.sequence, op.reason = await self.send(op, deadline)
        finally:
            self.in_flight -= 1
            op.end = time.monotonic()
        if op.status == "OK":
            self._remember(op)
        return op

    def _remember(self, op: Op) -> None:
        request = op.request
        if op.kind == "hold":
            self.holds[op.card_id].append((request.transaction_id, request.amount.amount))
        elif op.kind == "purchase":
            self.purchases[op.card_id].append((request.transaction_id, request.amount.amount))

    # -- setup ----------------------------------------------------------------------------------

    async def setup(self, webhook_url: str = "", webhook_cards: int = 0) -> None:
        """Issue every card (retrying until decided), fund the debit ones, register webhooks."""
        for n, card_id in enumerate(self.card_ids):
            credit = n % 2 == 0
            request = card_pb2.IssueCardRequest(
                command_id=_id("issue"),
                card_id=card_id,
                cardholder_name="Fault Campaign",
                card_type=card_pb2.CARD_TYPE_CREDIT if credit else card_pb2.CARD_TYPE_DEBIT,
                currency="USD",
                credit_limit=CREDIT_LIMIT if credit else 0,
                last4="4242",
            )
            await self._until_decided(
                Op(request.command_id, "issue", card_id, "IssueCard", request, time.monotonic())
            )
            if not credit:
                await self._until_decided(self.fund(card_id, OPENING_FUNDS))
        for card_id in self.card_ids[:webhook_cards]:
            await self.notify.SetWebhookEndpoint(
                notification_pb2.SetWebhookEndpointRequest(
                    command_id=_id("hook"),
                    card_id=card_id,
                    endpoint_id="campaign",
                    url=webhook_url,
                    secret="whsec_" + "k" * 32,
                ),
                timeout=30,
            )

    async def _until_decided(self, op: Op) -> Op:
        await self.run_op(op, deadline=10)
        while op.unknown:
            await asyncio.sleep(0.5)
            op.status, op.outcome, op.sequence, op.reason = await self.send(op, deadline=10)
        return op

    # -- the mix --------------------------------------------------------------------------------

    def fund(self, card_id: str, amount: int) -> Op:
        request = tx.FundCardRequest(
            transaction_id=_id("fund"), card_id=card_id, amount=_usd(amount)
        )
        return Op(request.transaction_id, "fund", card_id, "FundCard", request, time.monotonic())

    def next_op(self) -> Op:
        rng = self.rng
        card_id = rng.choice(self.card_ids)
        roll = rng.random()
        now = time.monotonic()
        amount = rng.randint(1, 2_000)
        request: Any
        holds, purchases = self.holds[card_id], self.purchases[card_id]
        if roll < 0.12 and holds:
            auth_id, held = rng.choice(holds)
            part = max(1, held // rng.choice([1, 2, 3]))
            request = tx.CaptureTransactionRequest(
                transaction_id=_id("cap"),
                card_id=card_id,
                authorization_id=auth_id,
                amount=_usd(part),
            )
            return Op(
                request.transaction_id, "capture", card_id, "CaptureTransaction", request, now
            )
        if roll < 0.20 and holds:
            auth_id, _ = holds.pop(rng.randrange(len(holds)))
            request = tx.VoidTransactionRequest(
                transaction_id=_id("void"), card_id=card_id, authorization_id=auth_id
            )
            return Op(request.transaction_id, "void", card_id, "VoidTransaction", request, now)
        if roll < 0.28 and purchases:
            original, paid = rng.choice(purchases)
            request = tx.RefundTransactionRequest(
                transaction_id=_id("ref"),
                card_id=card_id,
                original_transaction_id=original,
                amount=_usd(max(1, paid // 2)),
            )
            return Op(request.transaction_id, "refund", card_id, "RefundTransaction", request, now)
        if roll < 0.43:
            return self.fund(card_id, amount * 3)
        if roll < 0.63:
            request = tx.AuthorizeTransactionRequest(
                transaction_id=_id("auth"),
                card_id=card_id,
                merchant_id=f"m{rng.randint(1, 9)}",
                amount=_usd(amount),
            )
            return Op(request.transaction_id, "hold", card_id, "AuthorizeTransaction", request, now)
        request = tx.CreateTransactionRequest(
            transaction_id=_id("buy"),
            card_id=card_id,
            merchant_id=f"m{rng.randint(1, 9)}",
            amount=_usd(amount),
        )
        return Op(request.transaction_id, "purchase", card_id, "CreateTransaction", request, now)

    async def run(
        self, rate: float, commands: int, stop: asyncio.Event, max_in_flight: int = 400
    ) -> None:
        """Issue ``commands`` requests at ``rate`` per second (or until ``stop`` is set)."""
        tasks: set[asyncio.Task[Op]] = set()
        interval = 1.0 / rate
        next_at = time.monotonic()
        for _ in range(commands):
            if stop.is_set():
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at += interval
            if self.in_flight >= max_in_flight:  # shed rather than pile up unboundedly
                continue
            task = asyncio.create_task(self.run_op(self.next_op()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    # -- after the faults -----------------------------------------------------------------------

    async def resolve_unknowns(self, attempts: int = 20) -> list[Op]:
        """Retry every command with an unknown outcome (same id) until decided, then ask twice
        more (the command again, and GetCommandOutcome) and record every answer."""
        unknown = [op for op in self.log if op.unknown]
        for op in unknown:
            for _ in range(attempts):
                answer = await self.send(op, deadline=10)
                op.retries.append(answer[:3])
                if answer[0] in DECIDED or answer[0] in REJECTED:
                    break
                await asyncio.sleep(0.5)
            again = await self.send(op, deadline=10)
            op.retries.append(again[:3])
            op.retries.append(await self.outcome_of(op))
        return unknown

    async def outcome_of(self, op: Op) -> tuple[str, str, int]:
        """GetCommandOutcome for ``op`` (status, outcome, sequence)."""
        request = tx.GetCommandOutcomeRequest(transaction_id=op.op_id)
        if "card_id" in tx.GetCommandOutcomeRequest.DESCRIPTOR.fields_by_name:
            setattr(request, "card_id", op.card_id)  # noqa: B010 - the field is newer than us
        try:
            reply = await self.tx.GetCommandOutcome(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, "", 0
        outcome = {tx.OUTCOME_ACCEPTED: "accepted", tx.OUTCOME_DECLINED: "declined"}.get(
            reply.outcome.outcome, ""
        )
        return "OUTCOME", outcome, int(reply.outcome.stream_sequence)
