"""Encoding and decoding of events and markers: canonical JSON via msgspec, with upcasting.

Upcasting: when an event gets a breaking ``v2``, register a function from the old tag's raw dict
to the new shape in ``UPCASTERS``; ``decode_event`` applies it before typed decoding, so consumers
only ever see current versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

from contracts.errors import LedgerError
from contracts.events import CommandRecorded, LedgerEntryCreated, PreferenceEvent, SourceEvent

_encoder: Final = msgspec.json.Encoder(order="sorted")
_event_decoder: Final[msgspec.json.Decoder[SourceEvent]] = msgspec.json.Decoder(SourceEvent)
_marker_decoder: Final = msgspec.json.Decoder(CommandRecorded)
_entry_decoder: Final = msgspec.json.Decoder(LedgerEntryCreated)
_preference_decoder: Final[msgspec.json.Decoder[PreferenceEvent]] = msgspec.json.Decoder(
    PreferenceEvent
)

# tag of an old version -> function turning its raw mapping into the next version's raw mapping
UPCASTERS: Final[dict[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


class UndecodableEvent(LedgerError):
    """A stored message is not a known event: a poison message that must stop its consumer."""


def encode(value: msgspec.Struct) -> bytes:
    """Encode an event, marker or entry as canonical JSON (sorted keys, no floats)."""
    return _encoder.encode(value)


def decode_event(data: bytes) -> SourceEvent:
    """Decode a source event, upcasting old versions; raise ``UndecodableEvent`` on anything else."""
    try:
        if UPCASTERS:
            raw = msgspec.json.decode(data)
            while isinstance(raw, dict) and raw.get("type") in UPCASTERS:
                raw = UPCASTERS[raw["type"]](raw)
            upcast: SourceEvent = msgspec.convert(raw, SourceEvent)
            return upcast
        return _event_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableEvent(f"undecodable event: {exc}") from exc


def decode_marker(data: bytes) -> CommandRecorded:
    """Decode a command outcome marker."""
    try:
        return _marker_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableEvent(f"undecodable command marker: {exc}") from exc


def decode_entry(data: bytes) -> LedgerEntryCreated:
    """Decode a derived ``ledger.entry_created`` event."""
    try:
        return _entry_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableEvent(f"undecodable ledger entry: {exc}") from exc


def decode_preference_event(data: bytes) -> PreferenceEvent:
    """Decode a notification-preference event (``notify.…`` subjects)."""
    try:
        return _preference_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableEvent(f"undecodable preference event: {exc}") from exc


_TAGS: dict[type, str] = {}


def event_type(event: msgspec.Struct) -> str:
    """Return the versioned tag of an event, e.g. ``"transaction.created.v1"``."""
    kind = type(event)
    tag = _TAGS.get(kind)
    if tag is None:
        found = kind.__struct_config__.tag
        assert isinstance(found, str)
        tag = _TAGS[kind] = found
    return tag
