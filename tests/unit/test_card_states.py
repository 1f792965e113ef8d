"""The intake's card-state cache keeps to its entry and byte budgets and never moves a card back."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from bench.histories import Events
from commands.evolve import evolve
from commands.state import EMPTY, CardState
from contracts.events import SourceEvent
from contracts.subjects import Subjects
from eventstore import Position
from services.intake import cards as cards_module
from services.intake.cards import CardStates, Recorded, state_bytes
from services.intake.snapshots import Snapshot, decode_snapshot, encode_snapshot
from tests.unit.test_commands_decide import buy, fund, hold, issue, ok

NO_STORE: Any = None  # these tests never read the stream


def _card(purchases: int = 0, holds: int = 0) -> CardState:
    state = ok(issue("debit"), fund(10**9))
    for _ in range(purchases):
        state = ok(state, buy(7))
    for _ in range(holds):
        state = ok(state, hold(3))
    return state


def test_the_estimate_is_not_below_what_a_state_really_holds() -> None:
    # What a state holds is what its release frees: measure the drop when it is let go.
    tracemalloc.start()
    try:
        state = _card(purchases=500, holds=100)
        estimate = state_bytes(state)
        gc.collect()
        holding = tracemalloc.get_traced_memory()[0]
        del state
        gc.collect()
        used = holding - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert used <= estimate, (used, estimate)
    assert estimate < 3 * used, "and not wildly above it"


def test_the_byte_budget_evicts_the_least_recently_used() -> None:
    big = _card(purchases=300)
    budget = 5 * state_bytes(big)
    cards = CardStates(NO_STORE, Subjects(), budget_bytes=budget, packed_budget_bytes=0)
    for index in range(20):
        cards.applied(f"c{index}", big, [], [])
        assert cards.estimated_bytes <= budget
    assert len(cards) == 5
    assert [cards.cached(f"c{i}").exists for i in (14, 15, 19)] == [False, True, True]
    cards.forget("c19")
    assert cards.estimated_bytes == 4 * state_bytes(big)


def test_the_entry_budget_holds_too() -> None:
    small = _card()
    cards = CardStates(NO_STORE, Subjects(), capacity=3)
    for index in range(10):
        cards.applied(f"c{index}", small, [], [])
    assert len(cards) == 3
    assert cards.estimated_bytes == 3 * state_bytes(small)


def test_a_late_older_state_never_replaces_a_newer_one() -> None:
    cards = CardStates(NO_STORE, Subjects())
    newer = msgspec.structs.replace(_card(purchases=2), version=20)
    older = msgspec.structs.replace(_card(purchases=1), version=10)
    cards.applied("c", newer, [], [])
    cards.applied("c", older, [], [])
    assert cards.cached("c").version == 20


def test_a_card_pushed_out_comes_back_packed_without_reading_the_stream() -> None:
    # NO_STORE: a reload from the stream would fail; a packed card must not need one.
    big = _card(purchases=300)
    cards = CardStates(NO_STORE, Subjects(), budget_bytes=3 * state_bytes(big))
    states = {
        f"c{i}": msgspec.structs.replace(big, card_id=f"c{i}", version=i + 1) for i in range(10)
    }
    for card_id, state in states.items():
        cards.applied(card_id, state, [], [])
    assert len(cards) == 3
    assert cards.packed[0] == 7
    for card_id, state in states.items():
        assert cards.cached(card_id) == state
    assert cards.stats.unpacked == 10  # c0..c6 at first, then c7..c9 pushed out by them
    assert len(cards) + cards.packed[0] == 10


def test_a_snapshot_without_hold_totals_decodes_with_them() -> None:
    """Snapshots written before ``held``/``next_expiry`` existed lack them: they are recomputed."""
    state = _card(purchases=3, holds=4)
    assert state.held == 12 and state.next_expiry is not None
    older = msgspec.structs.replace(state, held=0, next_expiry=None)  # as an older writer left it
    snapshot = decode_snapshot(encode_snapshot(Snapshot(older, 0, True, ())))
    assert snapshot is not None
    assert snapshot.state == state
    assert state.next_expiry is not None
    assert snapshot.state.pending(state.next_expiry - timedelta(seconds=1)) == 12


def test_the_packed_tier_keeps_to_its_budget() -> None:
    state = _card(purchases=50)
    cards = CardStates(
        NO_STORE, Subjects(), budget_bytes=state_bytes(state), packed_budget_bytes=4_000
    )
    for index in range(50):
        cards.applied(f"c{index}", msgspec.structs.replace(state, card_id=f"c{index}"), [], [])
        assert cards.packed[1] <= 4_000
    count, _ = cards.packed
    assert 0 < count < 49
    assert not cards.cached("c0").exists  # pushed out of both tiers: it would be read again
    cards.forget("c48")
    assert cards.packed[0] == count - 1


def test_a_packed_log_still_answers_for_its_commands() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    small = _card()
    cards = CardStates(NO_STORE, Subjects(), budget_bytes=state_bytes(small) + 100)
    cards.applied("a", small, [], [])
    cards.log("a").add(
        Recorded("cmd-a", "create_transaction", "f" * 64, "a", "accepted", "", "", 7, at)
    )
    cards.applied("b", small, [], [])  # pushes "a" out, packed with its log
    assert cards.packed[0] == 1
    record = cards.log("a").get("cmd-a")
    assert record is not None and (record.sequence, record.at) == (7, at)


def test_the_ids_of_other_cards_are_remembered_up_to_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cards_module, "KNOWN_IDS", 5)
    history = Events("a")
    events: list[SourceEvent] = [history.issue(), history.fund(10_000)]
    events += [history.purchase(10 + n) for n in range(6)]
    cards = CardStates(NO_STORE, Subjects())
    state = EMPTY
    for sequence, event in enumerate(events, 1):
        state = cards.applied("a", state, [event], [Position("S", sequence)])
    ids = [event.command_id for event in events]
    assert [cards.card_of(command_id) for command_id in ids] == [None] * 3 + ["a"] * 5
    again = events[-1]  # noted twice: still one slot, and still the newest
    cards.applied("a", state, [again], [Position("S", len(events) + 1)])
    assert [cards.card_of(command_id) for command_id in ids[3:]] == ["a"] * 5


def test_entries_share_one_string_per_merchant() -> None:
    history = Events("a")
    events: list[SourceEvent] = [history.issue(), history.fund(10_000)]
    events += [history.purchase(10, "m-" + str(7)) for _ in range(3)]  # a fresh string each
    events = [msgspec.json.decode(msgspec.json.encode(e), type=type(e)) for e in events]
    state = EMPTY
    for sequence, event in enumerate(events, 1):
        state = evolve(state, event, sequence)
    merchants = [posting.merchant_id for posting in state.postings.values()]
    assert merchants == ["m-7"] * 3
    assert all(merchant is merchants[0] for merchant in merchants)
