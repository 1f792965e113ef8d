"""The event store's errors, and the one place NATS errors are translated into them.

Everything the store raises on purpose derives from ``contracts.errors.LedgerError``: a
compare-and-set failure is a ``Conflict`` (reload and decide again), an unreachable or overloaded
server is ``Unavailable`` (retry later), anything else is a ``StoreError``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Final

import nats.errors
import nats.js.errors

from contracts.errors import Conflict, DataLoss, LedgerError, Unavailable
from eventstore.model import Expectation

# JetStream API err_codes (nats-server server/errors.json) the store tells apart.
ERR_WRONG_LAST_SEQUENCE: Final = 10071
ERR_WRONG_LAST_SEQUENCE_CONSTANT: Final = 10164  # a check on a subject already written in the batch
ERR_STREAM_NAME_IN_USE: Final = 10058
ERR_BATCH_INCOMPLETE: Final = 10176
ERR_BATCH_TOO_LARGE: Final = 10199
ERR_BATCH_DUPLICATE_MSG_ID: Final = 10201
ERR_BATCH_TOO_MANY_INFLIGHT: Final = 10210

_FOUND: Final = re.compile(r"wrong last sequence: (\d+)")


class StoreError(LedgerError):
    """The event store refused a request for a reason other than a conflict."""

    def __init__(self, message: str, *, err_code: int | None = None) -> None:
        super().__init__(message)
        self.err_code = err_code


class IncompatibleStream(StoreError):
    """The stream was written in a layout this release does not read (e.g. per-kind card
    subjects); nothing reads or writes it until it is migrated."""


class StoreUnavailable(StoreError, Unavailable):
    """NATS cannot be reached, timed out, or is shedding load; the outcome may be unknown."""


class BatchRejected(StoreUnavailable):
    """The server dropped an atomic batch under load (too many in flight): nothing was stored."""


class InvalidBatch(StoreError, ValueError):
    """A batch breaks an ADR-50 rule; it was not sent (or the server refused it unstored)."""


class WrongLastSequence(Conflict):
    """A compare-and-set failed: someone appended under the filter first. Nothing was stored.

    ``found`` is the last sequence the server found for the failing check. In a batch with several
    checks the server does not say which one failed: ``expected`` and ``subject_filter`` are set
    only when ``found`` singles one out, and ``candidates`` lists every check that could have.
    """

    err_code: Final = ERR_WRONG_LAST_SEQUENCE

    def __init__(
        self,
        found: int | None,
        candidates: Sequence[Expectation] = (),
        description: str = "",
    ) -> None:
        self.found = found
        self.candidates = tuple(
            e for e in candidates if found is None or e.last_sequence != found
        ) or tuple(candidates)
        single = self.candidates[0] if len(self.candidates) == 1 else None
        self.expected: int | None = None if single is None else single.last_sequence
        self.subject_filter: str | None = None if single is None else single.subject_filter
        where = f" on {self.subject_filter}" if self.subject_filter else ""
        super().__init__(
            f"wrong last sequence{where}: expected {self.expected}, found {found}"
            + (f" ({description})" if description and found is None else "")
        )


class DuplicateMessageId(Conflict):
    """An atomic batch carried a ``Nats-Msg-Id`` already seen in the duplicate window."""

    err_code: Final = ERR_BATCH_DUPLICATE_MSG_ID


def parse_found(description: str) -> int | None:
    """Return N from a "wrong last sequence: N" description, if present."""
    match = _FOUND.search(description)
    return int(match.group(1)) if match else None


def from_api_error(
    code: int | None,
    err_code: int | None,
    description: str,
    expectations: Sequence[Expectation] = (),
) -> LedgerError:
    """Translate a JetStream API error (from an ack or an API reply) into a store error."""
    if err_code == ERR_WRONG_LAST_SEQUENCE:
        return WrongLastSequence(parse_found(description), expectations, description)
    if err_code == ERR_BATCH_DUPLICATE_MSG_ID:
        return DuplicateMessageId(description)
    if err_code in (ERR_WRONG_LAST_SEQUENCE_CONSTANT, ERR_BATCH_TOO_LARGE):
        return InvalidBatch(f"batch refused by the server: {description}", err_code=err_code)
    if err_code in (ERR_BATCH_INCOMPLETE, ERR_BATCH_TOO_MANY_INFLIGHT):
        return BatchRejected(f"batch dropped by the server: {description}", err_code=err_code)
    if code == 503:
        return StoreUnavailable(f"JetStream unavailable: {description}", err_code=err_code)
    return StoreError(f"JetStream error {code}/{err_code}: {description}", err_code=err_code)


def translate(exc: BaseException, expectations: Sequence[Expectation] = ()) -> LedgerError:
    """Translate an exception raised by nats-py into a store error (ours pass through)."""
    if isinstance(exc, LedgerError):
        return exc
    if isinstance(exc, nats.js.errors.APIError):
        return from_api_error(exc.code, exc.err_code, exc.description or "", expectations)
    if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
        return StoreUnavailable("no JetStream stream answered (is the stream provisioned?)")
    if isinstance(exc, asyncio.TimeoutError | nats.errors.TimeoutError):
        return StoreUnavailable("JetStream did not answer in time; the outcome is unknown")
    if isinstance(exc, nats.errors.Error | OSError | ConnectionError):
        return StoreUnavailable(f"NATS connection problem: {exc!r}")
    return StoreError(f"unexpected error from NATS: {exc!r}")


class TamperedEvent(StoreError, DataLoss):
    """A message read to decide on does not carry a MAC that checks (``eventstore.integrity``):
    a forgery that got past the permissions, or an alteration. Nothing is decided on it."""
