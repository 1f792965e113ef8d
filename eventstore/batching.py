"""The rules of ADR-50 atomic batches, without I/O: header building, validation, admission.

The server evaluates every compare-and-set in a batch against the stream *as it was before the
batch* (verified on nats-server 2.15.1). So a check whose filter covers a subject written earlier in
the same batch would pass stale: e.g. ``a.c1.frozen`` then a purchase expecting the old ``a.c1.>``
sequence would both be stored. The server only refuses the narrowest form of this
(a plain per-subject check on an already-written subject, err_code 10164); ``check_batch`` refuses
all of it before anything is sent, and ``BatchGuard`` keeps the group-commit writer from building
such batches out of independent commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from eventstore import headers as h
from eventstore.errors import InvalidBatch, StoreError
from eventstore.integrity import Keyring, sign
from eventstore.model import Expectation, OutgoingMessage, Position

MAX_BATCH: Final = 1000
"""Server limit on the messages of one atomic batch (nats-server 2.15.1 default)."""


def subject_matches(subject_filter: str, subject: str) -> bool:
    """Tell whether a literal ``subject`` matches a NATS filter (``*`` one token, ``>`` the rest)."""
    if subject_filter == subject:
        return True
    if "*" not in subject_filter and ">" not in subject_filter[:-1]:
        # the common shapes: a literal subject (the write path's card.c1), or a family such as a.b.>
        if subject_filter == ">":
            return True
        return subject_filter.endswith(".>") and subject.startswith(subject_filter[:-1])
    ftokens = subject_filter.split(".")
    stokens = subject.split(".")
    for i, ftoken in enumerate(ftokens):
        if ftoken == ">":
            return len(stokens) > i
        if i >= len(stokens) or (ftoken != "*" and ftoken != stokens[i]):
            return False
    return len(stokens) == len(ftokens)


class BatchGuard:
    """What one batch has written so far, to tell whether a check or a Msg-Id may still join it."""

    __slots__ = ("_filters", "_msg_ids", "_prefixes", "_subjects", "count")

    def __init__(self) -> None:
        self._subjects: set[str] = set()
        # every proper token prefix of a written subject: makes "does a.b.> cover anything" O(1)
        self._prefixes: set[str] = set()
        self._filters: set[str] = set()
        self._msg_ids: set[str] = set()
        self.count = 0

    def covers_written(self, subject_filter: str) -> bool:
        """Tell whether the filter matches any subject already in the batch."""
        if not self._subjects:
            return False
        tokens = subject_filter.split(".")
        if "*" not in tokens and ">" not in tokens:
            return subject_filter in self._subjects
        if tokens[-1] == ">" and "*" not in tokens and tokens.count(">") == 1:
            return len(tokens) == 1 or ".".join(tokens[:-1]) in self._prefixes
        return any(subject_matches(subject_filter, s) for s in self._subjects)

    def conflict(self, msg: OutgoingMessage, *, same_filter: bool = False) -> str | None:
        """Say why ``msg`` cannot follow what is in the batch, or return None if it can."""
        if msg.msg_id is not None and msg.msg_id in self._msg_ids:
            return f"Nats-Msg-Id {msg.msg_id!r} appears twice"
        if msg.expect is not None:
            f = msg.expect.subject_filter
            if self.covers_written(f):
                return (
                    f"the check on {f!r} covers a subject written earlier in the batch "
                    "(the server checks against the stream before the batch, so it would pass stale)"
                )
            if same_filter and f in self._filters:
                return f"two checks on {f!r}"
        return None

    def admits(self, unit: Sequence[OutgoingMessage]) -> bool:
        """Tell whether a whole unit (one command's messages) may join the batch unchanged."""
        return all(self.conflict(m, same_filter=True) is None for m in unit)

    def add(self, msg: OutgoingMessage) -> None:
        """Record a message as part of the batch."""
        subject = msg.subject
        self._subjects.add(subject)
        end = subject.rfind(".")
        while end > 0:
            prefix = subject[:end]
            if prefix in self._prefixes:
                break  # its own prefixes are there already
            self._prefixes.add(prefix)
            end = subject.rfind(".", 0, end)
        if msg.expect is not None:
            self._filters.add(msg.expect.subject_filter)
        if msg.msg_id is not None:
            self._msg_ids.add(msg.msg_id)
        self.count += 1

    def add_all(self, msgs: Iterable[OutgoingMessage]) -> None:
        """Record several messages."""
        for msg in msgs:
            self.add(msg)


def check_batch(msgs: Sequence[OutgoingMessage], max_messages: int = MAX_BATCH) -> None:
    """Raise ``InvalidBatch`` unless ``msgs`` can be sent as one atomic batch."""
    if not msgs:
        raise InvalidBatch("an atomic batch needs at least one message")
    if len(msgs) > max_messages:
        raise InvalidBatch(
            f"an atomic batch holds at most {max_messages} messages, got {len(msgs)}"
        )
    if len(msgs) <= _SMALL:
        _check_small(msgs)
        return
    guard = BatchGuard()
    for index, msg in enumerate(msgs):
        reason = guard.conflict(msg)
        if reason is not None:
            raise InvalidBatch(f"message {index + 1} ({msg.subject}): {reason}")
        guard.add(msg)


_SMALL: Final = 8


def _check_small(msgs: Sequence[OutgoingMessage]) -> None:
    # One command's unit: pairwise is cheaper than building a guard (this runs on every submit).
    for index, msg in enumerate(msgs):
        earlier = msgs[:index]
        if msg.msg_id is not None and any(e.msg_id == msg.msg_id for e in earlier):
            raise InvalidBatch(f"message {index + 1}: Nats-Msg-Id {msg.msg_id!r} appears twice")
        if msg.expect is not None:
            f = msg.expect.subject_filter
            for e in earlier:
                if subject_matches(f, e.subject):
                    raise InvalidBatch(
                        f"message {index + 1} ({msg.subject}): the check on {f!r} covers "
                        f"{e.subject!r}, written earlier in the batch (the server checks against "
                        "the stream before the batch, so it would pass stale)"
                    )


def message_headers(msg: OutgoingMessage, keyring: Keyring | None = None) -> dict[str, str]:
    """Return the NATS headers of one message: the caller's, plus CAS and dedup headers, and,
    given the store's ``keyring``, the MAC over all of it (``eventstore.integrity``)."""
    headers = dict(msg.headers)
    if msg.msg_id is not None:
        headers[h.MSG_ID] = msg.msg_id
    if msg.expect is not None:
        headers[h.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(msg.expect.last_sequence)
        if msg.expect.subject_filter != msg.subject:
            headers[h.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT] = msg.expect.subject_filter
    if keyring is not None:
        sign(keyring, msg.subject, msg.data, headers)
    return headers


def expectations(msgs: Iterable[OutgoingMessage]) -> list[Expectation]:
    """Return the checks carried by ``msgs``, in order."""
    return [m.expect for m in msgs if m.expect is not None]


def batch_positions(stream: str, last_sequence: int, count: int, expected: int) -> list[Position]:
    """Return the positions of a committed batch from its ack (last sequence and count)."""
    if count != expected or last_sequence < count:
        raise StoreError(
            f"batch ack says {count} messages ending at {last_sequence}, sent {expected}"
        )
    # A committed batch is stored contiguously: its messages are the `count` sequences up to the last.
    first = last_sequence - count + 1
    return [Position(stream, seq) for seq in range(first, last_sequence + 1)]
