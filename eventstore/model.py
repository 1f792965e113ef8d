"""The event store's value types: what goes in, what comes out, and where it landed.

Positions always name their stream (DESIGN §7): the ledger may later be split into several streams
by card, so no sequence is meaningful without the stream it belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from eventstore.headers import RESERVED

# dot-separated tokens without wildcards or whitespace: a subject one can publish to
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

    @property
    def is_wildcard(self) -> bool:
        """Tell whether the filter contains a ``*`` or ``>`` token."""
        return any(token in ("*", ">") for token in self.subject_filter.split("."))


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


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as stored in a stream."""

    stream: str
    sequence: int
    subject: str
    data: bytes
    headers: Mapping[str, str]
    time: datetime

    @property
    def position(self) -> Position:
        """Return where this message is stored."""
        return Position(self.stream, self.sequence)


@dataclass(frozen=True, slots=True)
class Loaded:
    """One aggregate's messages in stream order, and the family's last sequence (for CAS).

    ``last_sequence`` is 0 when nothing is stored under the filter.
    """

    stream: str
    messages: list[StoredMessage]
    last_sequence: int
