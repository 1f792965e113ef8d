"""The JetStream event store: immutable appends with compare-and-set, atomic batches, reads.

- ``EventStore`` — provisioning, ``append``, ``append_batch`` (ADR-50), ``load`` (one aggregate),
  ``last_by_subject`` (direct get), ``replay``/``replay_batches`` (ordered, bounded or following)
  and ``subscribe`` (a durable subscription anchored at the caller's position): the one reader,
  ``eventstore.reader``, on lean connections of its own (``eventstore.wire``);
- ``GroupCommitWriter`` — coalesces concurrent commands into atomic batches (group commit);
- value types (``Position``, ``Expectation``, ``OutgoingMessage``, ``StoredMessage``, ``Loaded``)
  and errors (``WrongLastSequence`` is a ``Conflict``; transport trouble is ``Unavailable``).

See docs/eventstore.md for the subject scheme, the idempotency marker and the measurements.
"""

from __future__ import annotations

from eventstore import headers
from eventstore.batching import MAX_BATCH, check_batch, subject_matches
from eventstore.errors import (
    BatchRejected,
    DuplicateMessageId,
    IncompatibleStream,
    InvalidBatch,
    StoreError,
    StoreUnavailable,
    TamperedEvent,
    WrongLastSequence,
)
from eventstore.groupcommit import GroupCommitWriter, WriterStats
from eventstore.jetstream import EventStore
from eventstore.model import Expectation, Loaded, OutgoingMessage, Position, StoredMessage
from eventstore.provisioning import (
    DEFAULT_DUPLICATE_WINDOW,
    derived_stream_config,
    snapshot_stream_config,
    source_stream_config,
)
from eventstore.reader import ReadBatch, SubjectFilter, Subscription

__all__ = [
    "DEFAULT_DUPLICATE_WINDOW",
    "MAX_BATCH",
    "BatchRejected",
    "DuplicateMessageId",
    "EventStore",
    "Expectation",
    "GroupCommitWriter",
    "IncompatibleStream",
    "InvalidBatch",
    "Loaded",
    "OutgoingMessage",
    "Position",
    "ReadBatch",
    "StoreError",
    "StoreUnavailable",
    "StoredMessage",
    "SubjectFilter",
    "Subscription",
    "TamperedEvent",
    "WriterStats",
    "WrongLastSequence",
    "check_batch",
    "derived_stream_config",
    "headers",
    "snapshot_stream_config",
    "source_stream_config",
    "subject_matches",
]
