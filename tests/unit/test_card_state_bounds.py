"""A card's state is bounded whatever its age: the refund window and the ended holds kept.

Per docs/intake.md ("What a card remembers"): the last ``REFUNDABLE_POSTINGS`` purchases and
captures stay refundable, the last ``CLOSED_HOLDS_KEPT`` ended holds answer late captures exactly,
every open hold is kept, and the totals never forget anything.
"""

from __future__ import annotations

import msgspec

from commands.state import CLOSED_HOLDS_KEPT, REFUNDABLE_POSTINGS, CardState
from tests.unit.test_commands_decide import (
    buy,
    capture,
    declined,
    fund,
    hold,
    issue,
    ok,
    refund,
    void,
)


def _aged(purchases: int) -> tuple[CardState, list[str]]:
    state = ok(issue("debit"), fund(10 * purchases))
    ids = []
    for _ in range(purchases):
        command = buy(7)
        state = ok(state, command)
        ids.append(command.command_id)
    return state, ids


def test_postings_keep_only_the_refund_window_and_totals_stay_exact() -> None:
    extra = 250
    state, ids = _aged(REFUNDABLE_POSTINGS + extra)
    assert len(state.postings) == REFUNDABLE_POSTINGS
    assert state.posted == 10 * (REFUNDABLE_POSTINGS + extra) - 7 * (REFUNDABLE_POSTINGS + extra)
    # The oldest have left the window: declined, and the decline names the window.
    decision = declined(state, refund(ids[0], 7), "transaction_not_found")
    assert "refund window" in decision.detail
    declined(state, refund(ids[extra - 1], 1), "transaction_not_found")
    # The oldest still inside it is refundable, up to its amount, and stays where it was.
    state = ok(state, refund(ids[extra], 5))
    declined(state, refund(ids[extra], 3), "refund_exceeds_captured")
    state = ok(state, buy(7))
    assert ids[extra] not in state.postings, "a refund does not make a purchase younger"
    assert ids[extra + 1] in state.postings


def test_ended_holds_are_bounded_and_open_holds_are_all_kept() -> None:
    state = ok(issue("debit"), fund(10_000_000))
    ended = []
    for _ in range(CLOSED_HOLDS_KEPT + 10):
        authorization = hold(3)
        state = ok(state, authorization)
        state = ok(state, void(authorization.command_id))
        ended.append(authorization.command_id)
    open_ids = []
    for _ in range(1500):
        authorization = hold(1)
        state = ok(state, authorization)
        open_ids.append(authorization.command_id)
    assert len(state.closed_holds) == CLOSED_HOLDS_KEPT
    assert set(open_ids) == set(state.holds), "open holds are money: never forgotten"
    declined(state, capture(ended[0], 1), "authorization_not_found")
    declined(state, capture(ended[-1], 1), "authorization_not_open")
    settle = capture(open_ids[0], 1)
    state = ok(state, settle)
    assert settle.command_id in state.postings and open_ids[0] in state.closed_holds


def test_an_ended_hold_keeps_the_id_string_it_was_opened_under() -> None:
    state = ok(issue("debit"), fund(1_000))
    opened, other = hold(30), hold(40)
    state = ok(ok(state, opened), other)
    for end in (capture("".join(list(opened.command_id)), 30), void("".join(other.command_id))):
        state = ok(state, end)
    keys = {key: key for key in state.closed_holds}
    assert keys[opened.command_id] is opened.command_id, "not the capture's equal copy"
    assert keys[other.command_id] is other.command_id, "not the void's equal copy"


def test_the_size_of_a_state_does_not_grow_with_the_cards_age() -> None:
    young, _ = _aged(REFUNDABLE_POSTINGS)
    old, _ = _aged(5 * REFUNDABLE_POSTINGS)
    assert len(young.postings) == len(old.postings)
    # Same shape, same size (ids and totals differ by a few characters at most).
    assert abs(len(msgspec.msgpack.encode(old)) - len(msgspec.msgpack.encode(young))) < 2_000
