"""Sync gRPC clients of a running system (``DevSystem``), for the fault tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import grpc

from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.ledger.v1 import ledger_pb2_grpc
from jetledger.notification.v1 import notification_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.settings import Settings


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def usd(amount: int) -> tx.Money:
    return tx.Money(amount=amount, currency="USD")


@dataclass
class Clients:
    """One channel and stub per service."""

    settings: Settings
    channels: list[grpc.Channel] = field(default_factory=list)

    def __post_init__(self) -> None:
        def channel(name: str) -> grpc.Channel:
            opened = grpc.insecure_channel(f"127.0.0.1:{getattr(self.settings, f'{name}_port')}")
            self.channels.append(opened)
            return opened

        self.cards = card_pb2_grpc.CardServiceStub(channel("card"))
        self.transactions = transaction_pb2_grpc.TransactionServiceStub(channel("transaction"))
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(channel("ledger"))
        self.notifications = notification_pb2_grpc.NotificationServiceStub(channel("notification"))

    def close(self) -> None:
        for opened in self.channels:
            opened.close()

    def issue(
        self, card_id: str, card_type: int = card_pb2.CARD_TYPE_DEBIT, limit: int = 0
    ) -> None:
        self.cards.IssueCard(
            card_pb2.IssueCardRequest(
                command_id=new_id("issue"),
                card_id=card_id,
                cardholder_name="Ada Lovelace",
                card_type=card_type,  # type: ignore[arg-type]
                currency="USD",
                credit_limit=limit,
                last4="4242",
            ),
            timeout=30,
        )
