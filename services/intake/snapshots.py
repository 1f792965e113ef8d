"""Card snapshots: a card's decision state and command log at a source sequence, for cold loads.

A cold load (a card this process has not decided yet) reads the card's latest snapshot (one direct
get on ``snapshot.card.<id>`` in the ``<source>_SNAPSHOTS`` stream, which keeps one message per
subject) and then only the card's events after the snapshot's version. Without a snapshot, or with
one that cannot be read or decoded (an older format, missing permissions), it reads the card's whole
family as before: a snapshot is a cache, never the source of truth. Snapshots are written by the
intake in the background, every ``SNAPSHOT_EVERY`` events of a card, from a state that
compare-and-set has already confirmed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec

from commands.state import CardState, with_totals

SNAPSHOT_EVERY: Final = 64  # events of a card between two snapshots
FORMAT: Final = 1


class SnapshotRecord(msgspec.Struct, frozen=True, array_like=True):
    """One recent command of the card (see ``services.intake.cards.Recorded``)."""

    command_id: str
    command_type: str
    fingerprint: str
    card_id: str
    outcome: str
    reason: str
    detail: str
    sequence: int
    at: datetime


class Snapshot(msgspec.Struct, frozen=True):
    """A card's state at ``state.version`` and its command log then."""

    state: CardState
    horizon: int
    complete: bool
    recent: tuple[SnapshotRecord, ...]
    forgotten: bytes | None = None
    format: int = FORMAT


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Snapshot)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """Serialise a snapshot (msgpack)."""
    return _encoder.encode(snapshot)


def decode_snapshot(data: bytes) -> Snapshot | None:
    """Decode a snapshot; None when it is of another format (the caller loads the full family).

    The state's ``held`` and ``next_expiry`` are computed from its holds, not read: snapshots
    written before those fields existed decode the same.
    """
    try:
        snapshot = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if snapshot.format != FORMAT:
        return None
    return msgspec.structs.replace(snapshot, state=with_totals(snapshot.state))
