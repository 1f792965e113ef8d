"""Translation between ``jetledger.transaction.v1`` messages and the pure core's commands."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from commands.messages import (
    AdjustBalance,
    AuthorizeTransaction,
    CaptureTransaction,
    Command,
    CreateTransaction,
    FundCard,
    RefundTransaction,
    VoidTransaction,
)
from contracts.errors import InvalidArgument
from jetledger.transaction.v1 import transaction_pb2 as pb
from services.intake import CommandOutcome

OUTCOME_ENUM = {"accepted": pb.OUTCOME_ACCEPTED, "declined": pb.OUTCOME_DECLINED}


def _money(request: object, field: str = "amount") -> tuple[int, str]:
    if not request.HasField(field):  # type: ignore[attr-defined]
        raise InvalidArgument(f"{field} is required (amount in minor units and currency)")
    money: pb.Money = getattr(request, field)
    return money.amount, money.currency


def create(request: pb.CreateTransactionRequest) -> Command:
    """A one-step purchase."""
    amount, currency = _money(request)
    return CreateTransaction(
        command_id=request.transaction_id,
        card_id=request.card_id,
        merchant_id=request.merchant_id,
        amount=amount,
        currency=currency,
        description=request.description,
    )


def fund(request: pb.FundCardRequest) -> Command:
    """A top-up or repayment."""
    amount, currency = _money(request)
    return FundCard(
        command_id=request.transaction_id, card_id=request.card_id, amount=amount, currency=currency
    )


def adjust(request: pb.AdjustBalanceRequest) -> Command:
    """An operator correction."""
    amount, currency = _money(request)
    return AdjustBalance(
        command_id=request.transaction_id,
        card_id=request.card_id,
        amount=amount,
        currency=currency,
        reason=request.reason,
        actor=request.actor,
    )


def authorize(request: pb.AuthorizeTransactionRequest) -> Command:
    """A hold; the server's hold TTL applies when ``expires_at`` is unset."""
    amount, currency = _money(request)
    expires_at = (
        request.expires_at.ToDatetime(tzinfo=UTC) if request.HasField("expires_at") else None
    )
    return AuthorizeTransaction(
        command_id=request.transaction_id,
        card_id=request.card_id,
        merchant_id=request.merchant_id,
        amount=amount,
        currency=currency,
        expires_at=expires_at,
        description=request.description,
    )


def capture(request: pb.CaptureTransactionRequest) -> Command:
    """A full or partial capture of a hold."""
    amount, currency = _money(request)
    return CaptureTransaction(
        command_id=request.transaction_id,
        card_id=request.card_id,
        authorization_id=request.authorization_id,
        amount=amount,
        currency=currency,
    )


def void(request: pb.VoidTransactionRequest) -> Command:
    """Release the rest of a hold."""
    return VoidTransaction(
        command_id=request.transaction_id,
        card_id=request.card_id,
        authorization_id=request.authorization_id,
    )


def refund(request: pb.RefundTransactionRequest) -> Command:
    """A full or partial refund of a posted purchase or capture."""
    amount, currency = _money(request)
    return RefundTransaction(
        command_id=request.transaction_id,
        card_id=request.card_id,
        original_transaction_id=request.original_transaction_id,
        amount=amount,
        currency=currency,
    )


def from_submitted(item: pb.TransactionCommand) -> Command:
    """The command inside one ``SubmitTransactions`` entry."""
    which = item.WhichOneof("command")
    if which is None:
        raise InvalidArgument(
            "each command must set one of create, fund, adjust, authorize, capture, void, refund"
        )
    builders: dict[str, Callable[[Any], Command]] = {
        "create": create,
        "fund": fund,
        "adjust": adjust,
        "authorize": authorize,
        "capture": capture,
        "void": void,
        "refund": refund,
    }
    return builders[which](getattr(item, which))


def outcome_message(outcome: CommandOutcome) -> pb.CommandOutcome:
    """Render a recorded outcome."""
    decided_at = Timestamp()
    decided_at.FromDatetime(outcome.decided_at)
    return pb.CommandOutcome(
        transaction_id=outcome.command_id,
        outcome=OUTCOME_ENUM[outcome.outcome],
        reason=outcome.reason,
        detail=outcome.detail,
        stream_sequence=outcome.stream_sequence,
        stream=outcome.stream,
        replayed=outcome.replayed,
        card_id=outcome.card_id,
        command_type=outcome.command_type,
        decided_at=decided_at,
    )
