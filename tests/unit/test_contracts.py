"""Ids, money and subjects: the closed alphabets every layer relies on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.errors import InvalidArgument
from contracts.ids import check_id, is_valid_id
from contracts.money import MAX_AMOUNT, check_amount, check_currency, format_minor
from contracts.subjects import Subjects


@given(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))
def test_valid_ids_pass(value: str) -> None:
    assert check_id(value) == value


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "a*", "a>", "x" * 65, "é", "a\n"])
def test_malformed_ids_are_invalid_arguments(bad: str) -> None:
    assert not is_valid_id(bad)
    with pytest.raises(InvalidArgument, match="card_id"):
        check_id(bad, "card_id")


@pytest.mark.parametrize("bad", [0, -1, MAX_AMOUNT + 1, 1.0, True])
def test_bad_amounts_are_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        check_amount(bad)  # type: ignore[arg-type]


def test_currency_is_iso4217() -> None:
    assert check_currency("JPY") == "JPY"
    for bad in ["usd", "XXX", "", "US"]:
        with pytest.raises(InvalidArgument):
            check_currency(bad)


def test_format_minor_uses_the_currency_exponent() -> None:
    assert format_minor(-1234, "USD") == "-12.34 USD"
    assert format_minor(1234, "JPY") == "1234 JPY"
    assert format_minor(1234, "KWD") == "1.234 KWD"


def test_subjects_are_built_broad_to_narrow() -> None:
    s = Subjects("t1.")
    assert s.card("c1") == "t1.card.c1"
    assert s.all_cards == "t1.card.*"
    assert s.command_marker("tx-9") == "t1.command.tx-9"
    assert s.card_id_of("t1.card.c1") == "c1"
    with pytest.raises(InvalidArgument):
        s.card("c.1")
    with pytest.raises(ValueError, match="prefix"):
        Subjects("nodot")


def test_every_event_of_a_card_is_on_one_literal_subject() -> None:
    # a literal subject is answered from nats-server's per-subject index; a per-kind family read
    # through a wildcard scans the stream after its start (docs/eventstore.md, one subject per card)
    s = Subjects()
    assert "*" not in s.card("c1") and ">" not in s.card("c1")
    with pytest.raises(ValueError, match="not a card subject"):
        s.card_id_of("card.c1.transaction.created")  # the first layout's per-kind subject
