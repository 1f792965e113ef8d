"""The root of jetledger's exceptions and the domain errors every layer shares.

Infrastructure errors are translated into these at the adapter boundary; the gRPC layer maps them
to status codes in exactly one table (``services/grpc_errors.py``).
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error jetledger raises on purpose."""


class InvalidArgument(LedgerError):
    """The input is malformed: nothing was decided and nothing was appended."""


class NotFound(LedgerError):
    """The named card, account, transaction or command does not exist."""


class AlreadyExists(LedgerError):
    """An id was reused with a different payload (idempotency conflict)."""


class Declined(LedgerError):
    """A well-formed command was refused by the rules (recorded as a ``declined`` event)."""

    def __init__(self, reason: str, detail: str = "", details: tuple[object, ...] = ()) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        # Typed error details for the wire (``services.outcomes``: ErrorInfo and the recorded
        # CommandOutcome); empty for a decline that was never recorded.
        self.details = details


class Conflict(LedgerError):
    """Someone else wrote first; the caller should reload and decide again."""


class Aborted(LedgerError):
    """A conflict that did not resolve within the bounded number of retries."""


class Unauthenticated(LedgerError):
    """The caller presented no credential, or one nobody issued."""


class PermissionDenied(LedgerError):
    """A known caller lacks the role, or the card scope, the call needs."""


class Unavailable(LedgerError):
    """A dependency (NATS, Postgres, the card service) cannot be reached."""
