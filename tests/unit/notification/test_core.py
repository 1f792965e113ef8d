"""The pure notification core: kinds, low-balance alerts, preference inheritance, redaction."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.histories import History
from commands.evolve import fold
from contracts.errors import InvalidArgument
from projections.notifications.core import (
    DEFAULT_KINDS,
    CardState,
    Notification,
    ScopePrefs,
    effective,
    new_card_state,
    on_source_event,
    redact,
)
from projections.notifications.cursor import (
    Cursor,
    decode_cursor,
    decode_page_token,
    encode_token,
)
from tests.notifykit import Events

DEFAULT = effective(None, None)


def _fold(
    card: CardState, events: list[object], prefs: ScopePrefs | None = None
) -> list[Notification]:
    rule = effective(prefs, None)
    out: list[Notification] = []
    for seq, event in enumerate(events, start=1):
        out += on_source_event(card, event, "S", seq, rule)  # type: ignore[arg-type]
    return out


def test_each_money_event_tells_its_kind_and_low_balance_is_edge_triggered() -> None:
    e = Events("c1")
    card = new_card_state("c1")
    notes = _fold(
        card,
        [
            e.issue(),
            e.fund(1_000),
            e.purchase(950),
            e.purchase(10),
            e.decline(5_000),
            e.fund(1_000),
            e.purchase(1_000),
        ],
    )
    assert [(n.kind, n.sequence, n.sub) for n in notes] == [
        ("funding", 2, 0),
        ("purchase", 3, 0),
        ("low_balance", 3, 1),  # 50 < 10% of the 1,000 funded
        ("purchase", 4, 0),  # still low: no second alert
        ("decline", 5, 0),
        ("funding", 6, 0),  # back above: re-armed (reference now 1,040)
        ("purchase", 7, 0),
        ("low_balance", 7, 1),
    ]
    assert notes[2].balance == 50 and notes[2].notification_id == "S:3:low_balance"
    assert notes[1].message == "Purchase of 9.50 USD at m-1 on card ending 4242"
    assert card.available == 40


def test_credit_cards_alert_below_a_share_of_their_limit() -> None:
    e = Events("c2")
    card = new_card_state("c2")
    notes = _fold(
        card,
        [e.issue(limit=10_000), e.purchase(7_999), e.purchase(2)],
        ScopePrefs(low_balance_percent=20),
    )
    assert [n.kind for n in notes] == [
        "purchase",
        "purchase",
        "low_balance",
    ]  # 1,999 is below 2,000


def test_a_card_inherits_what_it_does_not_set() -> None:
    operator = ScopePrefs(kinds=("decline",), low_balance_threshold=500)
    assert effective(None, operator).kinds == ("decline",)
    assert effective(ScopePrefs(low_balance_percent=5), operator).low_balance_threshold is None
    assert effective(ScopePrefs(kinds=()), operator).kinds == ()
    assert DEFAULT.kinds == DEFAULT_KINDS and "posted" not in DEFAULT.kinds
    assert DEFAULT.low_balance_percent == 10


@given(
    st.text(alphabet="ab -:", max_size=20),
    st.from_regex(r"[0-9]{13,19}", fullmatch=True),
    st.sampled_from(["", " ", "-"]),
)
def test_no_card_number_survives_redaction(before: str, pan: str, sep: str) -> None:
    grouped = sep.join(pan[i : i + 4] for i in range(0, len(pan), 4))
    out = redact(f"{before}{grouped} tail")
    assert re.search(r"\d(?:[ -]?\d){11,}", out) is None
    assert out.endswith(pan[-4:] + " tail")


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8), st.tuples(st.integers(0, 2**40), st.integers(0, 1))
    )
)
def test_cursors_round_trip(positions: dict[str, tuple[int, int]]) -> None:
    cursor = Cursor(positions)
    assert decode_cursor(encode_token(cursor)) == cursor


@pytest.mark.parametrize("bad", ["%%%", "bm90IGpzb24", encode_token(Cursor({"S": (1, 0)}, v=9))])
def test_malformed_tokens_are_invalid_arguments(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        decode_cursor(bad)
    with pytest.raises(InvalidArgument):
        decode_page_token(bad)


def test_the_held_total_follows_the_holds_and_the_state_stays_small() -> None:
    history = History()
    history.issue("c1", limit=10**9)
    sizes = []
    for round_ in range(60):
        first = history.authorize("c1", "m1", 1_000 + round_)
        second = history.authorize("c1", "m2", 500)
        left_open = history.authorize("c1", "m3", 7)  # never ended: open holds pile up
        assert first and second and left_open
        history.capture("c1", first, 400)  # in part: still open
        history.capture("c1", first, 10**6)  # the rest: ended
        history.release("c1", second, expired=round_ % 2 == 0)
        card = new_card_state("c1")
        for seq, event in enumerate(history.events, start=1):
            on_source_event(card, event, "S", seq, DEFAULT)
        decided = fold(history.events)
        assert card.held == decided.held == sum(h.remaining for h in decided.holds.values())
        assert card.available == decided.posted + decided.credit_limit - decided.held
        sizes.append(len(msgspec.json.encode(card)))
    assert len(decided.holds) == 60
    assert sizes[-1] - sizes[0] <= 4, "one total, not one entry per open hold"


def test_a_state_stored_with_the_per_hold_map_decodes_into_the_total() -> None:
    stored = b'{"card_id":"c1","posted":-500,"credit_limit":2000,"holds":{"a1":300,"a2":45}}'
    card = msgspec.json.decode(stored, type=CardState)
    assert (card.held, card.holds, card.available) == (345, {}, 2000 - 500 - 345)
    assert b"holds" not in msgspec.json.encode(card)
