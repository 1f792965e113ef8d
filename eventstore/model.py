"""The event store's value types: what goes in, what comes out, and where it landed.

Positions always name their stream (docs/architecture.md, §5): the ledger may later be split into several streams
by card, so no sequence is meaningful without the stream it belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from eventstore.headers import RESERVED

# dot-separated tokens without wildcards or whitespace: a subject one can publish to
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PUBLISH_SUBJECT: Final = re.compile(r"[^.\s*>]+(?:\.[^.\s*>]+)*")


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a message is stored: a stream and its sequence in that stream."""

    stream: str
    sequence: int


@dataclass(frozen=True, slots=True)
class Expectation:
    """A compare-and-set on the last sequence stored under a subject or wildcard filter.

    ``last_sequence=0`` means "nothing stored under this filter yet".
    """

    subject_filter: str
    last_sequence: int

    def __post_init__(self) -> None:
        if not self.subject_filter or " " in self.subject_filter:
            raise ValueError(f"invalid subject filter {self.subject_filter!r}")
        if self.last_sequence < 0:
            raise ValueError(f"last_sequence must be >= 0, got {self.last_sequence}")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to append: subject, payload, user headers, and optional CAS and dedup id."""

    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    expect: Expectation | None = None
    msg_id: str | None = None

    def __post_init__(self) -> None:
        if _PUBLISH_SUBJECT.fullmatch(self.subject) is None:
            raise ValueError(f"invalid publish subject {self.subject!r}")
        reserved = RESERVED.intersection(self.headers) if self.headers else None
        if reserved:
            raise ValueError(
                f"headers {sorted(reserved)} are set by the event store, not by callers"
            )


class StoredMessage:
    """One message as stored in a stream: its position, subject, payload, headers and store time.

    Readers build millions of these, so the headers and the time are kept as the server sent them
    (raw ``NATS/1.0`` header bytes, nanoseconds) and parsed only when asked for.
    """

    __slots__ = ("_headers", "_raw_headers", "_time", "_time_ns", "data", "sequence", "stream",
                 "subject")  # fmt: skip

    def __init__(
        self,
        stream: str,
        sequence: int,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None = None,
        time: datetime | None = None,
        raw_headers: bytes = b"",
        time_ns: int = 0,
    ) -> None:
        self.stream = stream
        self.sequence = sequence
        self.subject = subject
        self.data = data
        self._headers = headers
        self._raw_headers = raw_headers
        self._time = time
        self._time_ns = time_ns

    @property
    def headers(self) -> Mapping[str, str]:
        """The message's own headers (the server's read metadata is not among them)."""
        if self._headers is None:
            self._headers = _parse_headers(self._raw_headers) if self._raw_headers else {}
        return self._headers

    @property
    def raw_headers(self) -> bytes:
        """The headers as the server sent them (``NATS/1.0`` lines), empty when unknown."""
        return self._raw_headers

    @property
    def time_ns(self) -> int:
        """When the stream stored the message, in nanoseconds since the epoch."""
        if not self._time_ns and self._time is not None:
            self._time_ns = (self._time - _EPOCH) // timedelta(microseconds=1) * 1000
        return self._time_ns

    @property
    def time(self) -> datetime:
        """When the stream stored the message (UTC, microseconds)."""
        if self._time is None:
            self._time = _EPOCH + timedelta(microseconds=self._time_ns // 1000)
        return self._time

    @property
    def position(self) -> Position:
        """Return where this message is stored."""
        return Position(self.stream, self.sequence)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredMessage):
            return NotImplemented
        return (self.stream, self.sequence, self.subject, self.data) == (
            other.stream,
            other.sequence,
            other.subject,
            other.data,
        )

    def __hash__(self) -> int:
        return hash((self.stream, self.sequence))

    def __repr__(self) -> str:
        return f"StoredMessage({self.stream}:{self.sequence} {self.subject!r}, {len(self.data)} B)"


def _parse_headers(raw: bytes) -> dict[str, str]:
    """Parse raw ``NATS/1.0`` headers (the first line is the version and an optional status)."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep:
            out[key.strip().decode()] = value.strip().decode()
    return out


@dataclass(frozen=True, slots=True)
class Loaded:
    """One aggregate's messages in stream order, and the family's last sequence (for CAS).

    ``last_sequence`` is 0 when nothing is stored under the filter.
    """

    stream: str
    messages: list[StoredMessage]
    last_sequence: int
