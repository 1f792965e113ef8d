"""The one table that maps domain errors to gRPC status codes (CONTRIBUTING.md, convention 7).

Servicers raise ``contracts.errors`` exceptions; ``translate_errors`` turns them into statuses.
A recorded decline also carries typed details in its ``google.rpc.Status`` (``services.outcomes``,
docs/intake.md) and, for older clients, its reason in the trailing metadata key ``jetledger-reason``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from grpc_status import rpc_status

from contracts.errors import (
    Aborted,
    AlreadyExists,
    Conflict,
    DataLoss,
    Declined,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from services.outcomes import DETAIL_TYPES, declined_from

REASON_METADATA_KEY: Final = "jetledger-reason"
# google.rpc.Status with typed details, as grpcio-status (and every gRPC language) reads it
STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"

STATUS_FOR: Final[dict[type[LedgerError], grpc.StatusCode]] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Declined: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.ABORTED,
    Aborted: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    DataLoss: grpc.StatusCode.DATA_LOSS,
}

# The reverse direction, for clients (the CLI, the intake calling GetCard).
ERROR_FOR: Final[dict[grpc.StatusCode, type[LedgerError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: Declined,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


def status_for(error: LedgerError) -> grpc.StatusCode:
    """Return the gRPC status code for a domain error (INTERNAL for anything unmapped)."""
    for kind in type(error).__mro__:
        if kind in STATUS_FOR:
            return STATUS_FOR[kind]
    return grpc.StatusCode.INTERNAL


def status_of(error: LedgerError) -> status_pb2.Status:
    """The ``google.rpc.Status`` a call ends with for ``error``: code, message, typed details."""
    details = error.details if isinstance(error, Declined) else ()
    packed = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)  # type: ignore[arg-type]
        packed.append(wrapped)
    return status_pb2.Status(code=status_for(error).value[0], message=str(error), details=packed)


def _unpacked(exc: grpc.RpcError) -> tuple[object, ...]:
    """The typed details of a failed call that this client knows (none when it sent none)."""
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except (ValueError, DecodeError):  # details that contradict the call or do not parse
        return ()
    found: list[object] = []
    for wrapped in status.details if status is not None else ():
        for kind in DETAIL_TYPES:
            if wrapped.Is(kind.DESCRIPTOR):
                message = kind()
                wrapped.Unpack(message)
                found.append(message)
    return tuple(found)


def error_from_rpc(exc: grpc.aio.AioRpcError | grpc.RpcError) -> LedgerError:
    """Turn a failed call into the domain error it stands for (client side)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    kind = ERROR_FOR.get(code, LedgerError)
    if kind is Declined:
        structured = declined_from(_unpacked(exc))
        if structured is not None:
            return structured
        reason = _reason(exc) or "declined"
        # The status message is the server's str(Declined), "reason: detail"; the reason comes
        # from the trailer, so keep only the detail or the reason would be said twice.
        detail = "" if details == reason else (details or "").removeprefix(f"{reason}: ")
        return Declined(reason, detail)
    return kind(details or code.name)


def _reason(exc: grpc.RpcError) -> str:
    trailing = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == REASON_METADATA_KEY:
            return str(value)
    return ""


M = TypeVar("M", bound=Callable[..., Awaitable[Any]])


def translate_errors(method: M) -> M:
    """Decorate an async servicer method so domain errors end the call with the mapped status."""

    @functools.wraps(method)
    async def wrapper(
        self: object, request: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        try:
            return await method(self, request, context)
        except LedgerError as exc:
            trailing: list[tuple[str, str | bytes]] = []
            if isinstance(exc, Declined):
                trailing.append((REASON_METADATA_KEY, exc.reason))
                if exc.details:
                    trailing.append((STATUS_DETAILS_KEY, status_of(exc).SerializeToString()))
            await context.abort(status_for(exc), str(exc), tuple(trailing))

    return cast(M, wrapper)
