"""Conversions between the ledger's query views and ``jetledger.ledger.v1`` messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from jetledger.ledger.v1 import ledger_pb2 as pb
from projections.ledger.queries import BalanceView, EntryView, TransactionView

ACCOUNT_KINDS: Final = {
    "card": pb.ACCOUNT_KIND_CARD,
    "merchant": pb.ACCOUNT_KIND_MERCHANT,
    "house": pb.ACCOUNT_KIND_HOUSE,
}
TRANSACTION_KINDS: Final = {
    "purchase": pb.TRANSACTION_KIND_PURCHASE,
    "authorization": pb.TRANSACTION_KIND_AUTHORIZATION,
    "capture": pb.TRANSACTION_KIND_CAPTURE,
    "void": pb.TRANSACTION_KIND_VOID,
    "expiry": pb.TRANSACTION_KIND_EXPIRY,
    "refund": pb.TRANSACTION_KIND_REFUND,
    "funding": pb.TRANSACTION_KIND_FUNDING,
    "adjustment": pb.TRANSACTION_KIND_ADJUSTMENT,
    "decline": pb.TRANSACTION_KIND_DECLINE,
}
STATUSES: Final = {
    "posted": pb.TRANSACTION_STATUS_POSTED,
    "authorized": pb.TRANSACTION_STATUS_AUTHORIZED,
    "partially_captured": pb.TRANSACTION_STATUS_PARTIALLY_CAPTURED,
    "captured": pb.TRANSACTION_STATUS_CAPTURED,
    "voided": pb.TRANSACTION_STATUS_VOIDED,
    "expired": pb.TRANSACTION_STATUS_EXPIRED,
    "partially_refunded": pb.TRANSACTION_STATUS_PARTIALLY_REFUNDED,
    "refunded": pb.TRANSACTION_STATUS_REFUNDED,
    "declined": pb.TRANSACTION_STATUS_DECLINED,
    "completed": pb.TRANSACTION_STATUS_COMPLETED,
}


def timestamp(at: datetime) -> Timestamp:
    """Return a protobuf Timestamp for an aware datetime."""
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    """Return an aware UTC datetime for a protobuf Timestamp."""
    return ts.ToDatetime(tzinfo=UTC)


def position(stream: str, sequence: int) -> pb.StreamPosition:
    """Return a StreamPosition message."""
    return pb.StreamPosition(stream=stream, sequence=sequence)


def balance(view: BalanceView) -> pb.Balance:
    """Return a Balance message (amounts as base-10 strings: they are not bounded by int64)."""
    return pb.Balance(
        currency=view.currency,
        posted=str(view.posted),
        pending=str(view.pending),
        available=str(view.available),
        credit_limit=str(view.credit_limit),
        entry_count=view.entry_count,
    )


def entry(view: EntryView) -> pb.Entry:
    """Return an Entry message."""
    return pb.Entry(
        entry_id=view.entry_id,
        transaction_id=view.transaction_id,
        card_id=view.card_id,
        account_id=view.account_id,
        amount=pb.Money(amount=view.amount, currency=view.currency),
        direction=pb.DIRECTION_DEBIT if view.direction == "debit" else pb.DIRECTION_CREDIT,
        balance_after=str(view.balance_after),
        effective_time=timestamp(view.effective_at),
        position=position(view.stream, view.stream_sequence),
        event_type=view.event_type,
    )


def related(view: TransactionView) -> pb.RelatedTransaction:
    """Return a RelatedTransaction message for a follower (capture, refund, void, expiry)."""
    return pb.RelatedTransaction(
        transaction_id=view.transaction_id,
        kind=TRANSACTION_KINDS[view.kind],
        amount=pb.Money(amount=view.amount, currency=view.currency),
        effective_time=timestamp(view.effective_at),
        position=position(view.stream, view.stream_sequence),
    )


def transaction(view: TransactionView) -> pb.Transaction:
    """Return a Transaction message with legs and followers."""

    def money(amount: int) -> pb.Money:
        return pb.Money(amount=amount, currency=view.currency)

    msg = pb.Transaction(
        transaction_id=view.transaction_id,
        kind=TRANSACTION_KINDS[view.kind],
        status=STATUSES[view.status],
        card_id=view.card_id,
        merchant_id=view.merchant_id,
        amount=money(view.amount),
        effective_time=timestamp(view.effective_at),
        position=position(view.stream, view.stream_sequence),
        parent_transaction_id=view.parent_id or "",
        reason=view.reason,
        detail=view.detail,
        description=view.description,
        legs=[entry(e) for e in view.legs],
        captures=[related(c) for c in view.children if c.kind == "capture"],
        refunds=[related(c) for c in view.children if c.kind == "refund"],
        releases=[related(c) for c in view.children if c.kind in ("void", "expiry")],
        captured=money(view.total("capture")),
        refunded=money(view.total("refund")),
        released=money(view.total("void", "expiry")),
    )
    if view.expires_at is not None:
        msg.expire_time.CopyFrom(timestamp(view.expires_at))
    return msg
