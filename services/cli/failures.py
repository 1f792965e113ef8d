"""How a failed command reaches its user: one line on stderr and an exit status, never a traceback.

``explain`` is the one table from "what went wrong" to "what we say and which status we exit with".
It takes our own errors (``contracts.errors``, whose classes decide the status) and the failures
of the clients we use — gRPC, NATS, Postgres, sockets — which must not escape as tracebacks: a
command whose server is down says so in one line and exits 6, whichever command it is. Anything it
does not recognise is a bug and keeps its traceback.

Exit statuses: 0 ok, 1 failure or difference found, 2 usage or invalid argument, 3 not found,
4 already exists, 5 declined (failed precondition), 6 unavailable, 7 not authenticated or not
allowed (no token, an unknown one, or one without the role the command needs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from contracts.errors import (
    AlreadyExists,
    Declined,
    InvalidArgument,
    LedgerError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

UNAVAILABLE: Final = 6
FAILURE: Final = 1

EXIT_CODES: Final[dict[type[LedgerError], int]] = {
    InvalidArgument: 2,
    NotFound: 3,
    AlreadyExists: 4,
    Declined: 5,
    Unavailable: UNAVAILABLE,
    Unauthenticated: 7,
    PermissionDenied: 7,
}

# SQLSTATE classes and codes that mean "the server cannot be reached or is going away":
# 08 connection exception, 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now.
_PG_UNAVAILABLE: Final = ("08", "57P01", "57P02", "57P03")


@dataclass(frozen=True, slots=True)
class Failure:
    """What the user is told (one line) and the exit status."""

    message: str
    status: int


def exit_code_for(error: LedgerError) -> int:
    """Map a domain error to the CLI's exit status."""
    for kind, code in EXIT_CODES.items():
        if isinstance(error, kind):
            return code
    return FAILURE


def explain(exc: BaseException) -> Failure | None:
    """The line and exit status for a failure, or ``None`` when it is not one we expect (a bug)."""
    if isinstance(exc, BaseExceptionGroup):
        # A task group fails with every task's error; the first one we can explain speaks for it.
        for inner in exc.exceptions:
            found = explain(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, LedgerError):
        return Failure(str(exc), exit_code_for(exc))
    return _grpc(exc) or _postgres(exc) or _nats(exc) or _socket(exc)


def _grpc(exc: BaseException) -> Failure | None:
    import grpc

    if not isinstance(exc, grpc.RpcError):
        return None
    from services.grpc_errors import error_from_rpc

    error = error_from_rpc(exc)
    return Failure(str(error), exit_code_for(error))


def _postgres(exc: BaseException) -> Failure | None:
    import psycopg

    if not isinstance(exc, psycopg.Error):
        return None
    # psycopg's connection errors span lines ("…failed: Connection refused\n\tIs the server…");
    # the first one names the server and the reason.
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    reason = lines[0].removeprefix("connection failed: ")
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.OperationalError) and (
        not state or state.startswith(_PG_UNAVAILABLE)
    ):
        return Failure(f"cannot reach Postgres: {reason}", UNAVAILABLE)
    return Failure(f"Postgres: {reason}", FAILURE)


def _nats(exc: BaseException) -> Failure | None:
    import nats.errors
    import nats.js.errors

    if not isinstance(exc, nats.errors.Error):
        return None
    reason = str(exc) or type(exc).__name__
    if isinstance(
        exc,
        nats.errors.NoServersError
        | nats.errors.ConnectionClosedError
        | nats.errors.StaleConnectionError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.js.errors.NoStreamResponseError
        | nats.js.errors.ServiceUnavailableError,
    ):
        return Failure(f"NATS is unavailable: {reason.removeprefix('nats: ')}", UNAVAILABLE)
    return Failure(f"NATS: {reason.removeprefix('nats: ')}", FAILURE)


def _socket(exc: BaseException) -> Failure | None:
    if isinstance(exc, ConnectionError | TimeoutError):
        return Failure(f"unavailable: {exc or type(exc).__name__}", UNAVAILABLE)
    return None
