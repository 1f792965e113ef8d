"""The one table that maps domain errors to gRPC status codes (CONTRIBUTING.md, convention 7), and
the status boundary.

Servicers raise ``contracts.errors`` exceptions; ``translate_errors`` turns them into statuses.
A recorded decline also carries typed details in its ``google.rpc.Status`` (``services.outcomes``,
docs/intake.md) and, for older clients, its reason in the trailing metadata key ``jetledger-reason``.
``StatusBoundary``, the outermost interceptor of every server, answers whatever escapes a servicer
(undecodable bytes, unknown enum numbers, impossible timestamps, a dependency's outage) with
INVALID_ARGUMENT, UNAVAILABLE or INTERNAL, never UNKNOWN, and never with an exception's class name.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar, cast

import grpc
import nats.errors
import psycopg
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
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
from services.grpc_handlers import Handler, Kind, WrappingInterceptor, invoke, rewrap
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


# --- the status boundary ---------------------------------------------------------------------------
#
# Whatever a servicer does not translate itself ends here, so no caller ever sees UNKNOWN or an
# exception's class name: bytes that do not decode and enum numbers the schema does not know are
# the caller's fault (INVALID_ARGUMENT, checked before the servicer runs, so nothing is appended);
# a dependency that is down or restarting (Postgres, NATS, a socket) is UNAVAILABLE, retryable;
# anything else is a defect of ours: INTERNAL with a fixed message, the traceback in our log.

_log = logging.getLogger("jetledger.grpc")

DEPENDENCY_ERRORS: Final[tuple[type[BaseException], ...]] = (
    psycopg.OperationalError,  # server gone, admin shutdown, pool timeout, connection refused
    psycopg.InterfaceError,  # connection closed under us
    nats.errors.Error,  # NATS disconnected, timed out, no responders, JetStream unavailable
    OSError,  # sockets, TimeoutError
)


def dependency_of(exc: BaseException) -> str:
    """The dependency an outage error came from, in words for a status message."""
    if isinstance(exc, psycopg.Error):
        return "the database"
    if isinstance(exc, nats.errors.Error):
        return "the event store (NATS)"
    return "a dependency"


class _Undecodable:
    """What the boundary's deserializer returns for bytes that are not the request message."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, and whatever else a parser raises on garbage
            return _Undecodable("request is not a valid protobuf message of this method's type")

    return deserialize


# google.protobuf.Timestamp's valid range (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z)
TIMESTAMP_SECONDS: Final = range(-62_135_596_800, 253_402_300_800)


def malformed(message: Message, path: str = "") -> str | None:
    """Describe the first field of ``message`` (nested too) the schema cannot mean: an enum number
    its enum does not define (proto3 keeps such numbers) or a Timestamp outside its valid range;
    None when there is none. Messages whose type cannot hold either are not walked."""
    if not _checked(message.DESCRIPTOR):
        return None
    if message.DESCRIPTOR.full_name == "google.protobuf.Timestamp":
        seconds, nanos = getattr(message, "seconds", 0), getattr(message, "nanos", 0)
        if seconds not in TIMESTAMP_SECONDS or not 0 <= nanos < 1_000_000_000:
            return f"{path.rstrip('.') or 'timestamp'}: not a valid timestamp"
        return None
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.enum_type is not None:
            for number in value if field.is_repeated else (value,):
                if number not in field.enum_type.values_by_number:
                    return f"{name}: {number} is not a {field.enum_type.name} value"
        elif field.message_type is not None and _checked(field.message_type):
            if field.message_type.GetOptions().map_entry:
                items = [v for v in value.values() if isinstance(v, Message)]
            else:
                items = list(value) if field.is_repeated else [value]
            for item in items:
                if found := malformed(item, f"{name}."):
                    return found
    return None


_CHECKED: dict[str, bool] = {}  # message type -> whether ``malformed`` has anything to look at


def _checked(descriptor: Any) -> bool:  # protobuf's or upb's Descriptor
    """Tell whether messages of this type can hold an enum field or a Timestamp, themselves or in
    a message they nest (decided once per type: a batch request of 100 purchases was walked
    down to every ``Money`` for nothing, ~14 µs a command)."""
    known = _CHECKED.get(descriptor.full_name)
    if known is None:
        known = _CHECKED[descriptor.full_name] = _reaches_checked_field(descriptor, set())
    return known


def _reaches_checked_field(descriptor: Any, seen: set[str]) -> bool:
    if descriptor.full_name == "google.protobuf.Timestamp":
        return True
    seen.add(descriptor.full_name)  # message types may nest themselves
    for field in descriptor.fields:
        if field.enum_type is not None:
            return True
        nested = field.message_type
        if (
            nested is not None
            and nested.full_name not in seen
            and _reaches_checked_field(nested, seen)
        ):
            return True
    return False


async def _reject_invalid(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    if isinstance(request, _Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
    if isinstance(request, Message) and (problem := malformed(request)):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)


def _call_over(exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """The call has ended (the caller gave up: deadline, cancel) or gRPC's own transport failed
    while sending a status: there is no one to answer, and a second abort would only raise."""
    transport = type(exc).__module__.startswith("grpc._cython")
    return transport or context.cancelled() or context.done()


async def _abort_for(
    exc: Exception, method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    if _call_over(exc, context):
        _log.info(
            "call ended before its status could be sent",
            extra={"method": method, "error": type(exc).__name__},
        )
        return
    if isinstance(exc, LedgerError):  # a servicer without @translate_errors
        await context.abort(status_for(exc), str(exc))
    if isinstance(exc, DEPENDENCY_ERRORS):
        _log.warning(
            "dependency unavailable during a call",
            extra={"method": method, "error": type(exc).__name__},
        )
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, f"{dependency_of(exc)} is unavailable; retry shortly"
        )
    _log.exception("unexpected error in a call", extra={"method": method})
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")


def _boundary_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _reject_invalid(request, context)
        try:
            return await invoke(behavior, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, method, context)

    return call


def _boundary_stream(
    behavior: Callable[..., Any], method: str
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await _reject_invalid(request, context)
        try:
            async for item in behavior(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, method, context)

    return call


class StatusBoundary(WrappingInterceptor):
    """The innermost server interceptor of every jetledger service (``services.runtime``): it
    wraps the servicer, after the observing and access interceptors."""

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        method = str(details.method)

        def bound(behavior: Any, kind: Kind) -> Any:
            if kind.request_streaming:
                return None  # client streaming: jetledger has none; left as it is
            wrap = _boundary_stream if kind.response_streaming else _boundary_unary
            return wrap(behavior, method)

        return rewrap(handler, bound, request_deserializer=_tolerant(handler.request_deserializer))
