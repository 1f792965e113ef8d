"""No id a client chooses may be a card number, and nothing shown to people shows one whole."""

from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.messages import CreateTransaction, FundCard, IssueCard
from commands.validation import validate
from contracts.errors import InvalidArgument
from contracts.ids import (
    check_client_id,
    check_id,
    contains_card_number,
    mask_card_numbers,
    may_hold_digit_run,
    needs_masking,
)
from services.observability.logs import JsonFormatter

VISA = "4111111111111111"  # Luhn-valid test numbers of 16, 15 and 13 digits
AMEX = "378282246310005"
SHORT = "4222222222222"


def luhn_digit(body: str) -> str:
    total = 0
    for position, ch in enumerate(reversed(body)):
        digit = int(ch)
        if position % 2 == 0:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str((10 - total % 10) % 10)


@pytest.mark.parametrize("pan", [VISA, AMEX, SHORT, "4111-1111-1111-1111"])
def test_ids_holding_a_card_number_are_refused(pan: str) -> None:
    for value in (pan, f"tx-{pan}", f"{pan}_x"):
        with pytest.raises(InvalidArgument, match="card number"):
            check_client_id(value, "merchant_id")
        check_id(value)  # the format alone is fine: we generate such ids ourselves


def test_digit_runs_that_fail_luhn_or_are_short_pass() -> None:
    assert check_client_id("9999999999999990") == "9999999999999990"  # no window passes Luhn
    assert check_client_id("order-123456789012") == "order-123456789012"  # 12 digits


@given(
    body=st.text("0123456789", min_size=12, max_size=18),
    before=st.text("abcXYZ_", max_size=5),
    after=st.text("abcXYZ_", max_size=5),
)
def test_any_luhn_valid_run_of_13_to_19_digits_is_found(body: str, before: str, after: str) -> None:
    pan = body + luhn_digit(body)
    assert contains_card_number(before + pan + after)
    with pytest.raises(InvalidArgument):
        check_client_id(before + pan + after)


@pytest.mark.parametrize(
    "command",
    [
        CreateTransaction(command_id=VISA, card_id="c", merchant_id="m", amount=1, currency="USD"),
        CreateTransaction(
            command_id="t", card_id=f"c-{VISA}", merchant_id="m", amount=1, currency="USD"
        ),
        CreateTransaction(command_id="t", card_id="c", merchant_id=AMEX, amount=1, currency="USD"),
        FundCard(command_id="t", card_id=SHORT, amount=1, currency="USD"),
        IssueCard(
            command_id="i",
            card_id="c",
            cardholder_name="Ada",
            card_type="debit",
            currency="USD",
            last4="4242",
        ),
    ],
)
def test_commands_naming_a_card_number_are_invalid(command: object) -> None:
    if isinstance(command, IssueCard):
        validate(command)  # the control: a clean command passes
        return
    with pytest.raises(InvalidArgument, match="card number"):
        validate(command)  # type: ignore[arg-type]


def test_masking_keeps_only_the_last_four_digits() -> None:
    assert mask_card_numbers(f"paid with {VISA} today") == "paid with ****1111 today"
    assert mask_card_numbers("4111 1111 1111 1111") == "****1111"
    assert mask_card_numbers("seq 42, amount 12.50") == "seq 42, amount 12.50"


def test_log_lines_never_show_a_card_number() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "command %s", (VISA,), None)
    record.command_id = f"tx-{VISA}"
    record.latency = 0.1234567890123456
    line = json.loads(JsonFormatter().format(record))
    assert VISA not in json.dumps(line)
    assert line["msg"] == "command ****1111"
    assert line["command_id"] == "tx-****1111"
    assert line["latency"] == 0.1234567890123456  # numbers stay numbers


_CARDISH = st.text(alphabet="0123456789 --x\u0663", max_size=60)  # digits, separators, other


@given(_CARDISH)
def test_the_quick_check_never_hides_a_digit_run_the_regexes_find(text: str) -> None:
    # The quick check only lets the searches be skipped: where it says "no", they find nothing.
    for length, pattern in ((13, r"[0-9](?:[ -]?[0-9]){12,}"), (12, r"\d(?:[ -]?\d){11,}")):
        if re.search(pattern, text):
            assert may_hold_digit_run(text, length)


def test_the_quick_check_answers_no_for_text_with_only_short_digit_runs() -> None:
    line = '{"ts":"2026-12-03T15:08:22.389Z","msg":"Posted USD 12.34; balance USD -1,234.56"}'
    assert not may_hold_digit_run(line)
    assert not needs_masking(line) and mask_card_numbers(line) == line
    assert may_hold_digit_run("4111 1111-1111 1111") and may_hold_digit_run("x" + VISA)
    # It over-approximates: two separators in a row break a run, which only the search sees.
    assert may_hold_digit_run("4111  1111 1111 1111") and not needs_masking("4111  1111 1111 1111")
    assert mask_card_numbers(f"card {VISA}, ts 2026-12-03") == "card ****1111, ts 2026-12-03"
    assert may_hold_digit_run("\u0661" * 13)  # other scripts' digits: the regex decides
