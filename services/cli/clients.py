"""Blocking gRPC clients of the four services, at the addresses in ``Settings``.

Every call goes through ``call``, so a failed RPC reaches the user as the domain error it stands
for (``services.grpc_errors.error_from_rpc``) and the CLI's exit status follows the gRPC status.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import grpc

from contracts.errors import LedgerError, Unavailable
from jetledger.card.v1 import card_pb2_grpc
from jetledger.ledger.v1 import ledger_pb2_grpc
from jetledger.notification.v1 import notification_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.grpc_errors import error_from_rpc
from services.security.config import channel
from services.settings import Settings

DEFAULT_TIMEOUT: Final = 15.0  # seconds; a read-your-writes wait is bounded server-side by less

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def call(method: Callable[..., Resp], request: Any, timeout: float = DEFAULT_TIMEOUT) -> Resp:
    """Invoke one unary RPC; a failure raises the matching ``LedgerError``."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise _error(exc) from None


def stream(method: Callable[..., Any], request: Any) -> Iterator[Any]:
    """Iterate a server-streaming RPC; a failure raises the matching ``LedgerError``."""
    try:
        yield from method(request)
    except grpc.RpcError as exc:
        raise _error(exc) from None


def _error(exc: grpc.RpcError) -> LedgerError:
    error = error_from_rpc(exc)
    if isinstance(error, Unavailable) and "connect" in str(error):
        # The usual cause on a laptop; the raw message names only a socket.
        return Unavailable(f"{error} (is `jetledger dev` running?)")
    return error


@dataclass
class Clients:
    """Stubs of the card, transaction, ledger and notification services."""

    cards: card_pb2_grpc.CardServiceStub
    transactions: transaction_pb2_grpc.TransactionServiceStub
    ledger: ledger_pb2_grpc.LedgerServiceStub
    notifications: notification_pb2_grpc.NotificationServiceStub
    stream: str  # the source stream's name, for read-your-writes positions
    channels: list[grpc.Channel] = field(default_factory=list)

    def close(self) -> None:
        """Close every channel."""
        for opened in self.channels:
            opened.close()


@contextlib.contextmanager
def connect(settings: Settings) -> Iterator[Clients]:
    """Open channels to the four services (lazily connected: nothing is dialled until used).

    With security on: TLS against ``JETLEDGER_TLS_CA_FILE``, the token of ``JETLEDGER_TOKEN_FILE``.
    """
    host = settings.host
    card = channel(settings, settings.card_target)
    transaction = channel(settings, f"{host}:{settings.transaction_port}")
    ledger = channel(settings, f"{host}:{settings.ledger_port}")
    notification = channel(settings, f"{host}:{settings.notification_port}")
    clients = Clients(
        cards=card_pb2_grpc.CardServiceStub(card),
        transactions=transaction_pb2_grpc.TransactionServiceStub(transaction),
        ledger=ledger_pb2_grpc.LedgerServiceStub(ledger),
        notifications=notification_pb2_grpc.NotificationServiceStub(notification),
        stream=settings.stream,
        channels=[card, transaction, ledger, notification],
    )
    try:
        yield clients
    finally:
        clients.close()
