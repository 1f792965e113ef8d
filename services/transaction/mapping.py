"""Translation between ``jetledger.transaction.v1`` messages and the pure core's commands, and of
outcomes into replies (a decline as a typed error detail: ``services.outcomes``, docs/intake.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any

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
from contracts.errors import InvalidArgument, LedgerError
from contracts.ids import check_id
from jetledger.transaction.v1 import transaction_pb2 as pb
from services.grpc_errors import status_of
from services.intake import CommandOutcome
from services.outcomes import declined, outcome_message

__all__ = ["declined", "outcome_message"]  # the servicer's renderers, shared with the card service


def _transaction_id(request: object) -> str:
    # The API calls a command's id ``transaction_id``: a bad one is reported by that name, not by
    # the core's ``command_id``.
    return check_id(getattr(request, "transaction_id", ""), "transaction_id")


def _money(request: object, field: str = "amount") -> tuple[int, str]:
    if not request.HasField(field):  # type: ignore[attr-defined]
        raise InvalidArgument(f"{field} is required (amount in minor units and currency)")
    money: pb.Money = getattr(request, field)
    return money.amount, money.currency


def create(request: pb.CreateTransactionRequest) -> Command:
    """A one-step purchase."""
    amount, currency = _money(request)
    return CreateTransaction(
        command_id=_transaction_id(request),
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
        command_id=_transaction_id(request),
        card_id=request.card_id,
        amount=amount,
        currency=currency,
    )


def adjust(request: pb.AdjustBalanceRequest) -> Command:
    """An operator correction."""
    amount, currency = _money(request)
    return AdjustBalance(
        command_id=_transaction_id(request),
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
        command_id=_transaction_id(request),
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
        command_id=_transaction_id(request),
        card_id=request.card_id,
        authorization_id=request.authorization_id,
        amount=amount,
        currency=currency,
    )


def void(request: pb.VoidTransactionRequest) -> Command:
    """Release the rest of a hold."""
    return VoidTransaction(
        command_id=_transaction_id(request),
        card_id=request.card_id,
        authorization_id=request.authorization_id,
    )


def refund(request: pb.RefundTransactionRequest) -> Command:
    """A full or partial refund of a posted purchase or capture."""
    amount, currency = _money(request)
    return RefundTransaction(
        command_id=_transaction_id(request),
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


def submit_result(outcome: CommandOutcome) -> pb.SubmitResult:
    """One ``SubmitTransactions`` result: the outcome, and for a decline the very status (typed
    details included) that the unary RPC would have ended with."""
    if outcome.accepted:
        return pb.SubmitResult(outcome=outcome_message(outcome))
    return pb.SubmitResult(outcome=outcome_message(outcome), status=status_of(declined(outcome)))


def submit_error(error: LedgerError) -> pb.SubmitResult:
    """One ``SubmitTransactions`` result for a command that was not decided (bad input, …)."""
    status = status_of(error)
    return pb.SubmitResult(error_code=status.code, error_message=status.message, status=status)
