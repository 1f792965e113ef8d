"""Every event type round-trips through the codec unchanged (hypothesis-generated instances)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_type_hints

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import codec
from contracts.events import SOURCE_EVENT_TYPES, CommandRecorded, Event, LedgerEntryCreated, Leg

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
amounts = st.integers(min_value=-(10**15), max_value=10**15)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
legs = st.builds(
    Leg, account_id=ids.map(lambda i: f"card-{i}"), amount=amounts, currency=st.just("USD")
)

st.register_type_strategy(Leg, legs)
st.register_type_strategy(datetime, instants)


def _strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Build instances of a struct, every field drawn from its annotated type."""
    hints = get_type_hints(cls)
    fields = msgspec.structs.fields(cls)
    return st.builds(cls, **{f.name: st.from_type(hints[f.name]) for f in fields})


@pytest.mark.parametrize("cls", SOURCE_EVENT_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_source_event_round_trips(cls: type[Event], data: st.DataObject) -> None:
    event = data.draw(_strategy(cls))
    encoded = codec.encode(event)
    assert codec.decode_event(encoded) == event
    assert codec.event_type(event).endswith(".v1")
    assert b"." in encoded  # the tag is in the payload


@given(marker=_strategy(CommandRecorded))
def test_marker_round_trips(marker: CommandRecorded) -> None:
    assert codec.decode_marker(codec.encode(marker)) == marker


@given(entry=_strategy(LedgerEntryCreated))
def test_entry_round_trips(entry: LedgerEntryCreated) -> None:
    assert codec.decode_entry(codec.encode(entry)) == entry


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b'{"type":"nope.v1"}',
        b'{"type":"card.frozen.v1"}',
        b'{"type":"transaction.created.v1","amount":1.5}',
    ],
)
def test_poison_payloads_are_rejected_loudly(payload: bytes) -> None:
    with pytest.raises(codec.UndecodableEvent):
        codec.decode_event(payload)


def test_money_fields_refuse_floats() -> None:
    raw = (
        b'{"type":"card.funded.v1","card_id":"c","command_id":"x","at":"2026-01-01T00:00:00Z",'
        b'"amount":10.0,"currency":"USD","legs":[]}'
    )
    with pytest.raises(codec.UndecodableEvent):
        codec.decode_event(raw)
