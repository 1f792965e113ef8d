"""Every NATS header name the event store reads or writes, in one place (CONTRIBUTING.md, convention 6).

Header values are strings on the wire; sequences are decimal integers.
"""

from __future__ import annotations

from typing import Final

# -- set by us on publish -------------------------------------------------------------------------

MSG_ID: Final = "Nats-Msg-Id"
"""Server-side dedup key, remembered for the stream's duplicate window only."""

EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
"""Compare-and-set: the last sequence stored on the subject (or filter); ``0`` = none yet."""

EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"
"""The subject or wildcard filter the compare-and-set covers, when not the message's subject."""

BATCH_ID: Final = "Nats-Batch-Id"
BATCH_SEQUENCE: Final = "Nats-Batch-Sequence"
BATCH_COMMIT: Final = "Nats-Batch-Commit"
BATCH_COMMIT_STORE: Final = "1"
"""``Nats-Batch-Commit`` value that stores the last message and commits the batch (ADR-50)."""

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
"""W3C trace context names (CONTRIBUTING.md, convention 11). The event store passes a caller's headers
through unchanged; no service sets these yet (tracing is not wired)."""

MAC: Final = "Jetledger-Mac"
MAC_KEY_ID: Final = "Jetledger-Mac-Key"
"""Tamper evidence (``eventstore.integrity``): the event's HMAC and the id of the key that made it."""

ACTOR: Final = "Jetledger-Actor"
"""The acting identity: who caused the event (the authenticated caller, or ``system``); MAC-covered."""

# -- added by the server to direct-get replies and status messages --------------------------------

STREAM: Final = "Nats-Stream"
SUBJECT: Final = "Nats-Subject"
SEQUENCE: Final = "Nats-Sequence"
TIME_STAMP: Final = "Nats-Time-Stamp"
NUM_PENDING: Final = "Nats-Num-Pending"
LAST_SEQUENCE: Final = "Nats-Last-Sequence"
UP_TO_SEQUENCE: Final = "Nats-UpTo-Sequence"
STATUS: Final = "Status"

# Headers the store owns: an OutgoingMessage may not set them through its ``headers`` mapping.
RESERVED: Final = frozenset(
    {
        MSG_ID,
        EXPECTED_LAST_SUBJECT_SEQUENCE,
        EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
        "Nats-Expected-Last-Sequence",
        "Nats-Expected-Last-Msg-Id",
        "Nats-Expected-Stream",
        BATCH_ID,
        BATCH_SEQUENCE,
        BATCH_COMMIT,
    }
)

# Reply metadata of a direct get: describes the read, not the stored message, so it is dropped.
DIRECT_GET_METADATA: Final = frozenset(
    {STREAM, SUBJECT, SEQUENCE, TIME_STAMP, NUM_PENDING, LAST_SEQUENCE, UP_TO_SEQUENCE}
)
