"""The intake's card-state cache keeps to its entry and byte budgets and never moves a card back."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import msgspec

from commands.state import CardState
from contracts.subjects import Subjects
from services.intake.cards import CardStates, state_bytes
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
    cards = CardStates(NO_STORE, Subjects(), budget_bytes=budget)
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
