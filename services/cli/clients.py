"""Blocking gRPC clients of the four services, at the addresses in ``Settings``.

Every call goes through ``call`` (or ``stream``), so a failed RPC reaches the user as the domain
error it stands for (``services.grpc_errors.error_from_rpc``) and the CLI's exit status follows the
gRPC status. A service's channel is connected on first use, with its own short deadline: a service
that refuses the connection is reported at once, one that accepts but never answers (a stopped
process) after ``CONNECT_TIMEOUT_SECONDS``, in both cases naming the service and its address
rather than waiting out the call's much longer deadline.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
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
CONNECT_TIMEOUT_SECONDS: Final = 2.0  # to establish a channel (TCP + HTTP/2 settings exchange)

Resp = TypeVar("Resp")
_SETTLED: Final = frozenset(
    {
        grpc.ChannelConnectivity.READY,
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        grpc.ChannelConnectivity.SHUTDOWN,
    }
)


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


def wait_connected(channel: grpc.Channel, service: str, target: str) -> None:
    """Return once ``channel`` is connected; raise ``Unavailable`` naming the service otherwise.

    gRPC reports TRANSIENT_FAILURE as soon as a connection attempt fails (refused, reset), so
    that is final here rather than waiting for its reconnect backoff.
    """
    settled = threading.Event()
    seen: list[grpc.ChannelConnectivity] = []

    def watch(state: grpc.ChannelConnectivity) -> None:
        if state in _SETTLED:
            seen.append(state)
            settled.set()

    channel.subscribe(watch, try_to_connect=True)
    try:
        settled.wait(CONNECT_TIMEOUT_SECONDS)
    finally:
        channel.unsubscribe(watch)
    if seen and seen[0] is grpc.ChannelConnectivity.READY:
        return
    why = (
        "the connection failed (is `jetledger dev` running?)"
        if seen
        else f"no answer within {CONNECT_TIMEOUT_SECONDS:.0f}s (is it stopped or overloaded?)"
    )
    raise Unavailable(f"cannot reach the {service} service at {target}: {why}")


class Clients:
    """Stubs of the card, transaction, ledger and notification services, connected on first use."""

    def __init__(self, settings: Settings) -> None:
        host = settings.host
        self._settings = settings
        self.stream = settings.stream  # the source stream's name, for read-your-writes positions
        self._targets = {
            "card": settings.card_target,
            "transaction": f"{host}:{settings.transaction_port}",
            "ledger": f"{host}:{settings.ledger_port}",
            "notification": f"{host}:{settings.notification_port}",
        }
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Any] = {}

    def _stub(self, service: str, make: Callable[[grpc.Channel], Any]) -> Any:
        if service not in self._stubs:
            target = self._targets[service]
            opened = channel(self._settings, target)  # TLS + our token when security is on
            self._channels[service] = opened
            wait_connected(opened, service, target)
            self._stubs[service] = make(opened)
        return self._stubs[service]

    @property
    def cards(self) -> card_pb2_grpc.CardServiceStub:
        stub: card_pb2_grpc.CardServiceStub = self._stub("card", card_pb2_grpc.CardServiceStub)
        return stub

    @property
    def transactions(self) -> transaction_pb2_grpc.TransactionServiceStub:
        stub: transaction_pb2_grpc.TransactionServiceStub = self._stub(
            "transaction", transaction_pb2_grpc.TransactionServiceStub
        )
        return stub

    @property
    def ledger(self) -> ledger_pb2_grpc.LedgerServiceStub:
        stub: ledger_pb2_grpc.LedgerServiceStub = self._stub(
            "ledger", ledger_pb2_grpc.LedgerServiceStub
        )
        return stub

    @property
    def notifications(self) -> notification_pb2_grpc.NotificationServiceStub:
        stub: notification_pb2_grpc.NotificationServiceStub = self._stub(
            "notification", notification_pb2_grpc.NotificationServiceStub
        )
        return stub

    def close(self) -> None:
        """Close every channel opened so far."""
        for opened in self._channels.values():
            opened.close()
        self._channels.clear()
        self._stubs.clear()


@contextlib.contextmanager
def connect(settings: Settings) -> Iterator[Clients]:
    """Clients of the four services; each is dialled when first used, and all closed on exit.

    With security on: TLS against ``JETLEDGER_TLS_CA_FILE``, the token of ``JETLEDGER_TOKEN_FILE``.
    """
    clients = Clients(settings)
    try:
        yield clients
    finally:
        clients.close()
