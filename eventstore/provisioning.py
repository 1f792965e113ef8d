"""The configuration of jetledger's streams (docs/architecture.md, invariants 3 and 4): immutable, unlimited, durable.

- source stream: every card, command-marker and notification-preference event; atomic batches
  span all of them, so one command's events and its outcome marker are stored together or not at all;
- derived stream: ``ledger.entry_created.*``, published by the ledger's outbox relay with
  ``Nats-Msg-Id``; consumers dedupe by entry id, never by the dedup window.

Both refuse deletes and purges, keep everything (no age, size or count limit) and refuse new
messages rather than drop old ones if a limit is ever added (``discard: new``). Durability of an
ack comes from the server's ``sync_interval: always`` (or R3), which a stream cannot set itself.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from contracts.subjects import StreamNames

DEFAULT_DUPLICATE_WINDOW: Final = timedelta(minutes=2)


def _immutable(
    name: str, subjects: list[str], replicas: int, duplicate_window: timedelta, description: str
) -> StreamConfig:
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if duplicate_window <= timedelta(0):
        raise ValueError("duplicate_window must be positive")
    return StreamConfig(
        name=name,
        description=description,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        max_msgs_per_subject=-1,
        max_msg_size=-1,
        discard=DiscardPolicy.NEW,
        duplicate_window=duplicate_window.total_seconds(),
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
        allow_atomic=True,
    )


def source_stream_config(
    names: StreamNames, replicas: int = 1, duplicate_window: timedelta = DEFAULT_DUPLICATE_WINDOW
) -> StreamConfig:
    """Return the configuration of the source stream (the ledger's source of truth)."""
    return _immutable(
        names.source,
        names.subjects.source_stream_subjects(),
        replicas,
        duplicate_window,
        "jetledger source events: card lifecycle, money events, command outcome markers",
    )


def derived_stream_config(
    names: StreamNames, replicas: int = 1, duplicate_window: timedelta = DEFAULT_DUPLICATE_WINDOW
) -> StreamConfig:
    """Return the configuration of the derived stream (``ledger.entry_created.*``)."""
    return _immutable(
        names.derived,
        names.subjects.derived_stream_subjects(),
        replicas,
        duplicate_window,
        "jetledger derived events: ledger entries published by the ledger projection's outbox",
    )
